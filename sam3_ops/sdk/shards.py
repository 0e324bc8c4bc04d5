"""Sharded runs: one segmentation over many GPUs and machines, on FiftyOne's delegated-operation queue.

``sam3_ops.segment(dataset, "sam3", shards=N, ...)`` does not segment anything itself: it declares
the field, records the run (one record, :mod:`~sam3_ops.sdk.runs`) and queues N delegated
operations of the plugin's unlisted ``segment_shard`` operator, each segmenting one shard of the
view with the same :class:`~sam3_ops.sdk.settings.Sam3Settings`. Any number of
``fiftyone delegated launch`` workers, one per GPU (``python -m sam3_ops.sdk.workers``), on any
number of machines that reach the same database, claim the operations (FiftyOne claims each
atomically: QUEUED -> RUNNING only if still queued). No scheduler of our own.

**A shard** is a range of FiftyOne's per-sample ``_rand`` value (uniform, written when a sample is
added, never changed): shard ``k`` of ``N`` is ``edges[k-1] <= _rand < edges[k]`` (the first has no
lower bound, the last no upper bound, so the shards partition the view whatever the values). The
``N - 1`` edges are cut evenly between the view's smallest and largest ``_rand`` when the run is
queued and travel in the operation's params with the settings; the view travels as its serialized
stages, as FiftyOne's own delegated operations carry it. No sample ids are ever stored.

**Resuming.** Every shard segments only the samples of its range without a value in the field
(:func:`~sam3_ops.sdk.images.without_image_results`); a run that replaces a field has each shard clear
its own range when it first starts (marked done in the run's store, so a re-run does not clear
again): until a shard runs, its samples keep their earlier values, so a run cancelled or never
served loses nothing. So a shard run twice, or re-run after its worker died, writes exactly the
samples it lacks: nothing twice, nothing lost. The view must not select samples by the field the
run writes (e.g. ``exists(field, False).limit(n)``): each shard evaluates the view when it runs,
after others wrote; such views are refused (``only_missing=True`` is the way to fill the gaps).

**Workers that die.** A running shard proves it is alive: its operation's ``updated_at`` /
``status.updated_at`` move with each progress report and with a heartbeat every
``SAM3_OPS_HEARTBEAT_S`` seconds (default 10; FiftyOne's monitored workers, ``-m``, also ping).
:func:`shard_status` only reads: it lists a running shard silent for ``stale_after`` seconds as
``stale``. :func:`reconcile` (which :meth:`ShardedRun.wait` and the *Sharded run status* operator
call) marks such a shard failed (atomically, only if it is still running) and queues the same shard
again (``attempt`` + 1). Should the "dead" worker be alive after all, it sees its operation
failed before its next batch (a check at most every :data:`~sam3_ops.sdk.shard_worker.CHECK_INTERVAL` seconds) and stops.

**Cancelling, and runs over runs.** :func:`cancel_shards` marks the run's operations failed; a
running shard stops before its next batch and says so in the run's store once its last writes are
flushed. Until every cancelled running shard has said so (or :data:`~sam3_ops.sdk.shardstore.STOP_GRACE` seconds passed),
the field's run counts as still going: a new run of the field, sharded or not (every door records
its run through :func:`~sam3_ops.sdk.runs.record_run`, which refuses), would otherwise have its
samples overwritten by the old run's last batches. A shard whose run is no longer the field's
recorded run stops at once and never completes that run.

**The end of the run.** Each shard writes its summary to FiftyOne's execution store (scoped to the
dataset, one store per run); the shard that finds every shard done claims the run's completion
there (an atomic insert: exactly one claimant), checks the field's declaration and stores the
summed summary as the run's results (should that shard die in between, :func:`reconcile` completes
the run). Shards never touch the dataset's schema: the field is
declared before the first shard is queued (FiftyOne saves a dataset's whole field list when a
process adds a field, so processes that add fields at the same moment can lose each other's
declarations; tests/test_shards.py watches the database for such writes).

A shard's own run, in its worker, is :mod:`~sam3_ops.sdk.shard_worker`'s. (About 600 lines: queueing,
status, reconcile and cancelling read and write the same run record and store, and stay together.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field

import fiftyone as fo
from fiftyone import ViewExpression
from fiftyone import ViewField as F
from fiftyone.operators.executor import ExecutionResult, ExecutionRunState

from .fields import ensure_detections_field, root_dataset
from .images import check_image_run, without_image_results
from .runs import Run, RunSummary, active_run_problem, get_run
from .settings import MAX_SHARDS as MAX_SHARDS  # re-exported: the operators' shard input reads it here
from .settings import RunOptions, Sam3Settings, check_shards
from .shardstore import (
    DEFAULT_STALE_AFTER,
    SHARD_OPERATOR,
    ShardStore,
    attempt_of,
    last_seen,
    operation_service,
    queue_again,
    queue_shard,
    requeue_shard,
    run_operations,
    utc_now,
)

logger = logging.getLogger(__name__)

#: how long :meth:`ShardedRun.wait` waits for a done shard's operation to be marked completed (seconds)
_CLOSE_WAIT = 30.0


class ShardSuperseded(RuntimeError):
    """The shard's operation is no longer running (presumed dead and re-queued, or cancelled):
    this attempt stops before writing more."""


# -- the shards ------------------------------------------------------------------------------------


def shard_edges(samples, count: int) -> list[float]:
    """The ``count - 1`` inner edges cutting the ``_rand`` range of ``samples`` evenly."""
    low, high = samples.bounds(ViewExpression("$_rand"))  # a private field: by expression, not by name
    if low is None or count < 2:
        return []
    if low == high:
        logger.warning("every sample of the view has the same _rand value: the last shard gets them all")
    return [low + (high - low) * k / count for k in range(1, count)]


def shard_view(samples, index: int, edges: list[float]):
    """Shard ``index`` of ``samples`` cut at ``edges`` (the shards partition ``samples``)."""
    expression = None
    if index > 0:
        expression = F("_rand") >= edges[index - 1]
    if index < len(edges):
        upper = F("_rand") < edges[index]
        expression = upper if expression is None else expression & upper
    return samples if expression is None else samples.match(expression)


def shard_counts(samples, edges: list[float]) -> list[int]:
    """How many samples of ``samples`` each shard holds, in one aggregation."""
    if not edges:
        return [samples.count()]
    # a sample's shard = the number of edges at or below its _rand (one flat $add: no deep nesting)
    index = ViewExpression({"$add": [{"$cond": [{"$gte": ["$_rand", edge]}, 1, 0]} for edge in edges]})
    counts = samples.count_values(index)
    return [int(counts.get(k, 0)) for k in range(len(edges) + 1)]


# -- queueing ----------------------------------------------------------------------------------------


@dataclass
class ShardedRun:
    """A run queued as delegated operations, one per shard (what ``segment(..., shards=N)`` returns).

    Attributes:
        dataset_name: the dataset
        label_field: the field the shards write
        run_id: the run's id (in every shard's params and the run record)
        shards: the number of shards
        operation_ids: the delegated operations queued, shard by shard
        samples: the samples of the view when the run was queued
    """

    dataset_name: str
    label_field: str
    run_id: str
    shards: int
    operation_ids: list = field(default_factory=list)
    samples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def _dataset(self):
        return fo.load_dataset(self.dataset_name)

    def status(self, stale_after: float | None = DEFAULT_STALE_AFTER) -> ShardStatus:
        """The run's :class:`ShardStatus`, read only (see :func:`shard_status`)."""
        return shard_status(self._dataset(), self.label_field, stale_after=stale_after)

    def reconcile(self, stale_after: float | None = DEFAULT_STALE_AFTER) -> ShardStatus:
        """Re-queues the run's dead shards and completes it if due (see :func:`reconcile`)."""
        return reconcile(self._dataset(), self.label_field, stale_after=stale_after)

    def wait(
        self, timeout: float | None = None, poll: float = 5.0, stale_after: float | None = DEFAULT_STALE_AFTER
    ) -> ShardStatus:
        """Waits until no shard is queued or running (each poll is a :func:`reconcile`: dead shards
        are queued again, the run is completed once every shard is done) and FiftyOne
        has closed every shard's operation (a shard is done once its summary is stored; its worker
        then marks the operation completed, moments later); returns the last :class:`ShardStatus`.
        Workers do the work: start them first.

        Raises:
            TimeoutError: ``timeout`` seconds passed first
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        settled = None
        while True:
            status = self.reconcile(stale_after=stale_after)
            if not status.queued and not status.running:
                settled = settled or time.monotonic()
                closed = all(entry["run_state"] in ("completed", "failed", None) for entry in status.per_shard)
                if closed or time.monotonic() - settled > _CLOSE_WAIT:  # its worker may have died since
                    return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sharded run of {self.label_field!r} not finished after {timeout} s: {status}")
            time.sleep(poll)

    def cancel(self) -> int:
        """Cancels the shards still queued or running (see :func:`cancel_shards`)."""
        return cancel_shards(self._dataset(), self.label_field)


def _shard_info(run_id: str, count: int, edges: list[float]) -> dict:
    return {"run_id": run_id, "count": count, "edges": edges, "operator": SHARD_OPERATOR}


def _request_params(samples, params: dict, delegation_target=None) -> dict:
    dataset = root_dataset(samples)
    view = samples if samples is not dataset else dataset.view()
    request = {
        "dataset_name": dataset.name,
        "dataset_id": str(dataset._doc.id),
        "view": view._serialize(),
        "params": params,
        "delegated": True,
    }
    if delegation_target:
        request["delegation_target"] = delegation_target
    return request


def queue_shards(
    samples, label_field: str, settings: Sam3Settings, run: RunOptions, delegation_target: str | None = None
) -> ShardedRun:
    """Queues a sharded run of ``settings`` over ``samples`` into ``label_field`` (checked by the
    caller, :func:`segment_sharded`): declares the field, records the run with its shards, queues
    one operation per shard (each clears its own range when it first starts, unless
    ``run.only_missing``) carrying ``run``'s batch size, workers, failure policy and output directory.

    ``run.shards`` larger than the number of samples to segment is lowered to it (a warning says so).

    Raises:
        ValueError: a bad ``shards``; a sharded run of ``label_field`` still going; a view that
            selects samples by ``label_field``
    """
    count, only_missing = check_shards(run.shards), run.only_missing
    dataset = root_dataset(samples)
    dataset.reload()
    problem = active_run_problem(dataset, label_field) or view_reads_field(samples, label_field)
    if problem:
        raise ValueError(problem)
    missing = only_missing and samples.has_field(label_field)
    pending = len(without_image_results(samples, label_field) if missing else samples)
    if count > max(1, pending):
        logger.warning("%d shards for %d samples to segment: queueing %d", count, pending, max(1, pending))
        count = max(1, pending)
    previous = get_run(samples, label_field)
    if previous is not None and previous.shards:
        ShardStore(dataset, previous.shards["run_id"]).clear()

    ensure_detections_field(samples, label_field)  # declared once, before any shard can run
    run_id = uuid.uuid4().hex
    edges = shard_edges(samples, count)
    Run(samples, label_field, settings).start(shards=_shard_info(run_id, count, edges))

    operation_ids = []
    for shard in range(count):
        params = {
            "run_id": run_id,
            "label_field": label_field,
            "shard": shard,
            "shards": count,
            "edges": edges,
            "attempt": 1,
            "settings": settings.to_dict(),
            "batch_size": int(run.batch_size),
            "num_workers": run.num_workers,
            "skip_failures": bool(run.skip_failures),
            "output_dir": os.fspath(run.output_dir) if run.output_dir else None,
            "replace": not only_missing,  # each shard clears its range when it first starts
        }
        request = _request_params(samples, params, delegation_target)
        operation_ids.append(str(queue_shard(request, delegation_target).id))
    logger.info("Queued %d shards of %s (run %s): start workers to run them", count, label_field, run_id)
    return ShardedRun(dataset.name, label_field, run_id, count, operation_ids, samples=len(samples))


def segment_sharded(
    samples,
    label_field: str,
    run: RunOptions,
    *,
    model=None,
    delegation_target: str | None = None,
    **settings,
) -> ShardedRun:
    """``sam3_ops.segment(..., shards=N)``: the same checks as an in-process run, then
    :func:`queue_shards`. The workers build the model from the settings; the token never travels
    (each worker reads ``HF_TOKEN`` from its environment or the plugin secret).

    Args:
        samples: an image dataset or view
        label_field: the field to write
        run: the run options, validated (``run.shards``: how many)
        model (None): refused (each worker builds its own)
        delegation_target (None): FiftyOne's delegation target of the operations
        **settings: :class:`~sam3_ops.sdk.settings.Sam3Settings`

    Raises:
        ValueError: a bad ``shards``, setting, output or prompt field; a video collection; a
            ``model`` instead of settings; ``record=False`` (the run record holds the shards)
    """
    check_shards(run.shards)
    if getattr(samples, "media_type", None) == "video":
        raise ValueError("shards: sharded runs segment image collections; run videos with shards=None")
    if model is not None:
        raise ValueError("shards: each worker builds its model from the settings: give settings, not model=")
    if not run.record:
        raise ValueError("shards: a sharded run is always recorded (its record lists its shards): drop record=False")
    if run.token:
        logger.warning("shards: the token is not sent to the workers; give them HF_TOKEN (or the plugin secret)")
    if run.progress not in (None, False, True):
        logger.info("shards: progress is reported by each shard's operation, not to this callback")
    resolved = Sam3Settings(**settings)
    check_image_run(samples, label_field, resolved)
    if resolved.device and resolved.device.startswith("cuda:") and resolved.device != "cuda:0":
        logger.warning(
            "shards: device %r names one GPU for every worker; give device='cuda' (or None) so each worker "
            "uses the GPU its CUDA_VISIBLE_DEVICES shows it",
            resolved.device,
        )
    return queue_shards(samples, label_field, resolved, run, delegation_target)


def finalize(samples, label_field: str, settings: Sam3Settings, store: ShardStore, count: int, by: str) -> bool:
    """Completes the run once every shard is done; exactly one caller does (an atomic claim)."""
    if len(store.done_shards()) < count or not store.claim_finalize(by):
        return False
    run = Run(samples, label_field, settings)  # recorded when queued; finished here
    for shard in range(count):
        run.add(RunSummary.from_dict(store.done(shard)))
    ensure_detections_field(samples, label_field)  # lost meanwhile by somebody else's schema write? declare it
    extra = {"shards": count, "samples_with_results": samples.count(label_field)}
    run.finish(**extra)
    store.set_summary(run.summary.to_dict() | extra)
    counts = {k: v for k, v in run.summary.to_dict().items() if k != "skipped"}
    logger.info("Sharded run of %s complete: %s", label_field, counts)
    return True


# -- progress, dead workers, cancelling --------------------------------------------------------------


@dataclass
class ShardStatus:
    """Where a sharded run stands.

    Attributes:
        label_field, run_id: the run
        shards: the number of shards
        queued, running, done, failed: how many shards are in each state (a shard's state is its
            latest attempt's; ``done`` once it stored its summary)
        requeued: the shards found dead and queued again by this call (only :func:`reconcile` does)
        stale: the running shards silent for over ``stale_after`` and not re-queued (what
            :func:`shard_status` reports; :func:`reconcile` re-queues them)
        samples: samples in the run's view; samples_written: those holding a value in the field
        finished: every shard is done; finalized: the run's summary is stored (its results)
        summary: the run's summary once finalized
        per_shard: for each shard ``shard``, ``state``, ``attempt``, ``operation_id``, ``samples``,
            ``written``, ``worker`` (host:pid of the last attempt), ``last_seen`` (seconds ago), ``error``,
            ``run_state`` (FiftyOne's state of its latest operation)
    """

    label_field: str
    run_id: str
    shards: int
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    requeued: list = field(default_factory=list)
    stale: list = field(default_factory=list)
    samples: int = 0
    samples_written: int = 0
    finished: bool = False
    finalized: bool = False
    summary: dict | None = None
    per_shard: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self):
        return (
            f"{self.label_field}: {self.done}/{self.shards} shards done, {self.running} running, "
            f"{self.queued} queued, {self.failed} failed; {self.samples_written}/{self.samples} samples written"
        )


def _sharded_run(samples, label_field: str):
    """The dataset of ``samples`` (reloaded) and the record of the sharded run of ``label_field``."""
    dataset = root_dataset(samples)
    dataset.reload()
    record = get_run(dataset, label_field)
    if record is None or not record.shards:
        raise ValueError(f"{label_field!r} has no sharded run recorded (sam3_ops.segment(..., shards=N) records one)")
    return dataset, record


def view_reads_field(samples, label_field: str) -> str | None:
    """Why a sharded run of ``samples`` into ``label_field`` would go wrong, or ``None``: each shard
    evaluates the view when it runs, so a view that selects samples by the field the run writes
    (``exists``, ``match`` or ``filter_labels`` on it, then ``limit``...) changes under the run."""
    dataset = root_dataset(samples)
    if samples is dataset:
        return None
    pattern = re.compile(r'"\$?' + re.escape(label_field) + r'(\.[^"]*)?"')
    for stage in samples._serialize():
        if pattern.search(json.dumps(stage.get("kwargs"), default=str)):
            return (
                f"the view selects samples by {label_field!r} ({stage.get('_cls', 'a stage').rsplit('.', 1)[-1]}), "
                f"the field this run writes: each shard evaluates the view when it runs, after other shards wrote. "
                f"Drop that stage and pass only_missing=True to segment only the samples without {label_field!r}, "
                f"or write to another field"
            )
    return None


@dataclass
class _Reading:
    """What one reading of a sharded run found: its status and what :func:`reconcile` acts on."""

    status: ShardStatus
    view: object
    record: object
    store: ShardStore
    latest: dict = field(default_factory=dict)  # shard -> its latest operation


def _state_of(op, done: bool, age: float | None, stale_after: float | None) -> str:
    """A shard's state from its latest operation (``stale``: running, silent over ``stale_after``)."""
    if done:
        return "done"
    if op is None:
        return "failed"
    if op.run_state in (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED):
        return "queued"
    if op.run_state == ExecutionRunState.RUNNING:
        return "stale" if stale_after is not None and age is not None and age > stale_after else "running"
    return "done" if op.run_state == ExecutionRunState.COMPLETED else "failed"


def _read_run(samples, label_field: str, stale_after: float | None) -> _Reading:
    """Reads where the sharded run of ``label_field`` stands; writes nothing."""
    dataset, record = _sharded_run(samples, label_field)
    run_id, count, edges = record.shards["run_id"], int(record.shards["count"]), list(record.shards["edges"])
    store = ShardStore(dataset, run_id)
    reading = _Reading(ShardStatus(label_field, run_id, count), dataset.load_run_view(record.key), record, store)
    done, operations = store.done_shards(), run_operations(dataset, run_id)
    totals = shard_counts(reading.view, edges)
    written = shard_counts(reading.view.exists(label_field), edges)
    now = utc_now()
    for shard in range(count):
        op = (operations.get(shard) or [None])[0]
        seen = last_seen(op) if op is not None else None
        age = (now - seen).total_seconds() if seen is not None else None
        state = _state_of(op, shard in done, age, stale_after)
        if state == "stale":
            reading.status.stale.append(shard)
            state = "running"
        reading.latest[shard] = op
        reading.status.per_shard.append(
            {
                "shard": shard,
                "state": state,
                "attempt": attempt_of(op) if op else None,
                "operation_id": str(op.id) if op else None,
                "samples": totals[shard],
                "written": written[shard],
                "worker": store.worker(shard).get("worker"),
                "last_seen": age,
                "error": _error_of(op),
                "run_state": op.run_state if op is not None else None,
            }
        )
    reading.status.samples, reading.status.samples_written = sum(totals), sum(written)
    _tally(reading.status, store)
    return reading


def _error_of(op) -> str | None:
    if op is None:
        return "no operation found (deleted?)"
    return op.result.error if op.result is not None else None


def _tally(status: ShardStatus, store: ShardStore) -> None:
    """Counts the shards by state and reads the run's completion."""
    for state in ("queued", "running", "done", "failed"):
        setattr(status, state, sum(entry["state"] == state for entry in status.per_shard))
    status.finished = status.done == status.shards
    status.summary = store.summary()
    status.finalized = status.summary is not None


def shard_status(samples, label_field: str, stale_after: float | None = DEFAULT_STALE_AFTER) -> ShardStatus:
    """Where the sharded run of ``label_field`` stands. Reads only: it writes nothing to the
    dataset, the run's store or the delegated queue (:func:`reconcile` acts on what it finds).

    A running shard whose operation showed no sign of life (start, progress, heartbeat, a monitored
    worker's ping) for ``stale_after`` seconds is presumed dead and listed in ``stale``.

    Args:
        samples: the dataset (or a view of it)
        label_field: the field of the sharded run
        stale_after (600): seconds of silence after which a running shard is presumed dead;
            ``None``: never

    Raises:
        ValueError: the field has no sharded run recorded
    """
    return _read_run(samples, label_field, stale_after).status


def reconcile(samples, label_field: str, stale_after: float | None = DEFAULT_STALE_AFTER) -> ShardStatus:
    """Brings the sharded run of ``label_field`` up to date and returns where it stands: each running
    shard silent for ``stale_after`` seconds (see :func:`shard_status`) is marked failed (atomically,
    only if still running) and queued again (``attempt`` + 1; it then writes only the samples it
    lacks), listed in ``requeued``; a run whose shards are all done and that nobody completed is
    completed (its summed summary stored as the run's results). :meth:`ShardedRun.wait` and the
    *Sharded run status* operator call it. Keep ``stale_after`` well above the workers' heartbeat
    (``SAM3_OPS_HEARTBEAT_S``, 10 s) and the clock skew between machines.

    Args:
        samples: the dataset (or a view of it)
        label_field: the field of the sharded run
        stale_after (600): seconds of silence after which a running shard is presumed dead;
            ``None``: re-queue nothing (only complete the run if due)

    Raises:
        ValueError: the field has no sharded run recorded
    """
    reading = _read_run(samples, label_field, stale_after)
    status, count = reading.status, reading.status.shards
    for shard in list(status.stale):
        entry, worker = status.per_shard[shard], status.per_shard[shard]["worker"]
        reason = (
            f"sam3_ops: no sign of life for {entry['last_seen']:.0f} s (stale_after={stale_after:g} s): worker "
            f"{worker or '?'} presumed dead; shard {shard + 1} of {count} queued again"
        )
        new = requeue_shard(reading.latest[shard], reason)
        if new is not None:
            logger.warning("%s", reason)
            status.stale.remove(shard)
            status.requeued.append(shard)
            entry.update(
                state="queued", attempt=entry["attempt"] + 1, operation_id=str(new.id), run_state=new.run_state
            )
    _tally(status, reading.store)
    if status.finished and not status.finalized:
        by = f"status@{socket.gethostname()}:{os.getpid()}"
        finalize(reading.view, label_field, reading.record.settings, reading.store, count, by=by)
        _tally(status, reading.store)
    return status


def cancel_shards(samples, label_field: str) -> int:
    """Cancels the shards of the field's sharded run that are queued or running (marked failed; a
    running shard stops before its next batch, and a new run of the field waits until it has).
    Shards that never started leave their samples' earlier values; :func:`resume_shards` goes on
    with the same run later. Returns how many were cancelled."""
    dataset, record = _sharded_run(samples, label_field)
    run_id = record.shards["run_id"]
    service, store, cancelled = operation_service(), ShardStore(dataset, run_id), 0
    for shard, ops in run_operations(dataset, run_id).items():
        for op in ops:
            for state in (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED, ExecutionRunState.RUNNING):
                if op.run_state == state:
                    result = ExecutionResult(error="sam3_ops: cancelled")
                    done = service.set_failed(op.id, result=result, required_state=state) is not None
                    cancelled += done
                    if done and state == ExecutionRunState.RUNNING:  # its worker may still be writing
                        store.mark_cancelled(shard, attempt_of(op))
    return cancelled


def resume_shards(samples, label_field: str) -> int:
    """Queues again the shards of the field's sharded run that failed or were cancelled (``attempt``
    + 1, same run, same settings): each writes what its range lacks (a shard that had not started
    yet replaces its range as it would have). Returns how many were queued.

    Raises:
        ValueError: the field has no sharded run recorded, or shards of it are still stopping
    """
    dataset, record = _sharded_run(samples, label_field)
    run_id = record.shards["run_id"]
    store, queued = ShardStore(dataset, run_id), 0
    stopping = store.stopping()
    if stopping:
        raise ValueError(f"{stopping} cancelled shards of {label_field!r} have not stopped yet: try again in a moment")
    done = store.done_shards()
    for shard, ops in sorted(run_operations(dataset, run_id).items()):
        op = ops[0]
        if shard in done or op.run_state != ExecutionRunState.FAILED:
            continue
        store.forget_cancelled(shard)
        queue_again(op)
        queued += 1
    return queued
