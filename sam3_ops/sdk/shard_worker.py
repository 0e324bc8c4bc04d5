"""One shard of a sharded run, in a worker (:mod:`~sam3_ops.sdk.shards` queues them and reads their
status): the plugin's ``segment_shard`` operator calls :func:`run_shard`, which proves the worker
alive (a heartbeat), segments the shard's range as an in-process image run
(:func:`~sam3_ops.sdk.media.segment_in_process` of :data:`~sam3_ops.sdk.images.IMAGES`), stops when its operation is no longer running, stores
its summary in the run's store and, as the last shard done, completes the run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from fiftyone.operators.executor import ExecutionProgress, ExecutionRunState

from .fields import root_dataset
from .images import IMAGES
from .media import segment_in_process
from .runs import get_run
from .settings import DEFAULT_BATCH_SIZE, RunOptions, Sam3Settings
from .shards import ShardSuperseded, finalize, shard_view
from .shardstore import ShardStore, operation_service

logger = logging.getLogger(__name__)

#: the environment variable giving a worker's heartbeat interval, in seconds (default 10)
HEARTBEAT_ENV = "SAM3_OPS_HEARTBEAT_S"
DEFAULT_HEARTBEAT = 10.0
#: shards of a run report progress this often (seconds)
PROGRESS_INTERVAL = 2.0
#: a running shard checks that its operation is still running at most this often (seconds), between batches
CHECK_INTERVAL = 1.0


class _Heartbeat:
    """Keeps a running shard's operation fresh (``status.updated_at``) every ``interval`` seconds
    from a thread, and notices when the operation stops being RUNNING (failed as stale, cancelled)."""

    def __init__(self, operation_id, interval: float):
        self.operation_id = operation_id
        self.interval = interval
        self.progress = 0.0
        self.label = "starting"
        self.superseded = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.operation_id is not None:
            self._thread = threading.Thread(target=self._run, name="sam3-shard-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self):
        service = operation_service()
        while not self._stop.wait(self.interval):
            try:
                if service.get(self.operation_id).run_state != ExecutionRunState.RUNNING:
                    self.superseded.set()
                    return
                service.set_progress(self.operation_id, ExecutionProgress(progress=self.progress, label=self.label))
            except Exception as error:  # a transient database error must not end the shard
                logger.debug("shard heartbeat: %s", error)


def _heartbeat_interval() -> float:
    try:
        return max(0.1, float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT)))
    except ValueError:
        return DEFAULT_HEARTBEAT


def run_shard(samples, params: dict, token: str | None = None, set_progress=None, operation_id=None) -> dict:
    """Segments one shard of a sharded run: what a ``segment_shard`` operation does in a worker.

    Args:
        samples: the run's view (rebuilt from the operation's serialized stages)
        params: the operation's params (:func:`~sam3_ops.sdk.shards.queue_shards` writes them)
        token (None): the Hugging Face token (from the worker's environment or the plugin secret)
        set_progress (None): ``set_progress(progress=, label=)`` of the operation
        operation_id (None): the operation's id (for the heartbeat)

    Returns:
        the shard's summary (``samples_processed``, ``detections``, ``samples_skipped``, ``skipped``),
        its ``shard``, ``attempt``, ``worker``, and whether it ``finalized`` the run

    Raises:
        ShardSuperseded: the operation stopped being RUNNING meanwhile
    """
    dataset = root_dataset(samples)
    dataset.reload()  # a long-lived worker's dataset may predate the run
    index, count, attempt = int(params["shard"]), int(params["shards"]), int(params.get("attempt", 1))
    label_field, run_id = params["label_field"], params["run_id"]
    settings = Sam3Settings.from_dict(params["settings"])
    target = shard_view(samples, index, list(params["edges"]))
    store = ShardStore(dataset, run_id)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    store.set_worker(
        index,
        {"worker": worker, "pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt, "at": time.time()},
    )
    name = f"shard {index + 1} of {count}"
    _check_current(dataset, label_field, run_id, name)
    heartbeat = _Heartbeat(operation_id, _heartbeat_interval())
    try:
        with heartbeat:
            # a run that replaces the field: each shard clears its range when it first starts (only then)
            if params.get("replace") and not store.cleared(index):
                target.clear_sample_field(label_field)
                store.mark_cleared(index)
            if set_progress is not None:
                set_progress(progress=0.0, label=f"{name}: loading the model")
            run = RunOptions(
                token=token,
                batch_size=int(params.get("batch_size") or DEFAULT_BATCH_SIZE),
                num_workers=params.get("num_workers"),
                skip_failures=bool(params.get("skip_failures", True)),
                progress=_ShardProgress(name, label_field, heartbeat, set_progress),
                only_missing=True,  # what the shard's range lacks: a re-run writes nothing twice
                output_dir=params.get("output_dir"),
                record=False,
            )
            result = segment_in_process(IMAGES, target, label_field, run, settings)
            if heartbeat.superseded.is_set():
                raise ShardSuperseded(f"{name} of {label_field!r}: its operation is no longer running")
    finally:  # after the last writes were flushed: a cancelled run's next run may start now
        store.mark_stopped(index, attempt, worker)
    summary = result.counts().to_dict()
    store.set_done(index, {**summary, "attempt": attempt, "worker": worker, "at": time.time()})
    _check_current(dataset, label_field, run_id, name)
    finalized = finalize(samples, label_field, settings, store, count, by=worker)
    return {"shard": index, "shards": count, "attempt": attempt, "worker": worker, **summary, "finalized": finalized}


def _check_current(dataset, label_field: str, run_id: str, name: str) -> None:
    """Stops a shard whose run is no longer the field's recorded run (a newer run replaced it)."""
    record = get_run(dataset, label_field)
    current = (record.shards or {}).get("run_id") if record is not None else None
    if current != run_id:
        raise ShardSuperseded(f"{name} of {label_field!r}: the field's run is no longer this one ({run_id}); stopping")


def _still_running(operation_id) -> bool:
    try:
        return operation_service().get(operation_id).run_state == ExecutionRunState.RUNNING
    except Exception as error:  # a transient database error must not end the shard
        logger.debug("shard check: %s", error)
        return True


class _ShardProgress:
    """The progress callback of a running shard: reports progress (at most every
    :data:`PROGRESS_INTERVAL` s) and stops the shard between batches once its operation is no longer
    running (checked at most every :data:`CHECK_INTERVAL` s)."""

    def __init__(self, name: str, label_field: str, heartbeat: _Heartbeat, set_progress: Callable | None):
        self.name, self.label_field, self.heartbeat, self.set_progress = name, label_field, heartbeat, set_progress
        self.checked = time.monotonic()
        self.next_report = 0.0

    def __call__(self, bar) -> None:
        heartbeat, now = self.heartbeat, time.monotonic()
        if heartbeat.operation_id is not None and now - self.checked >= CHECK_INTERVAL:
            self.checked = now
            if not _still_running(heartbeat.operation_id):
                heartbeat.superseded.set()
        if heartbeat.superseded.is_set():
            raise ShardSuperseded(f"{self.name} of {self.label_field!r}: its operation is no longer running; stopping")
        if now >= self.next_report or bar.complete:
            self.next_report = now + PROGRESS_INTERVAL
            heartbeat.progress = float(bar.progress or 0.0)
            heartbeat.label = f"{self.name}: {bar.iteration} of {bar.total} samples"
            if self.set_progress is not None:
                self.set_progress(progress=heartbeat.progress, label=heartbeat.label)
