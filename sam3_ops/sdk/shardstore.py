"""Where a sharded run's state lives, and whether one is still going: the lookups that both the run
records (:mod:`~sam3_ops.sdk.runs`, which refuses a new run of a field while its sharded run goes on)
and the shards themselves (:mod:`~sam3_ops.sdk.shards`) need.

A sharded run keeps its state in two places FiftyOne provides:

- its **execution store** (one per run, scoped to the dataset), read and written only through
  :class:`ShardStore`, which owns its key scheme: ``worker_<k>`` (who runs shard ``k``),
  ``cleared_<k>`` (its range was cleared), ``done_<k>`` (its summary), ``cancelled_<k>`` /
  ``stopped_<k>_<attempt>`` (a cancelled running shard, and its worker's word that it stopped),
  ``finalized`` and ``summary`` (the run's completion);
- its **delegated operations** (:func:`run_operations`), one per shard and attempt, found by the
  ``run_id`` in their params; :func:`queue_shard` queues one, :func:`queue_again` its next attempt,
  :func:`requeue_shard` that of a dead one.

This module knows nothing of run records: callers pass the ``run_id`` a record holds.
"""

from __future__ import annotations

import datetime
import time

from fiftyone.factory import DelegatedOperationPagingParams
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionResult, ExecutionRunState
from fiftyone.operators.store import ExecutionStore

#: the operator every shard runs (the plugin's, unlisted)
SHARD_OPERATOR = "@sam3-ops/sam3/segment_shard"
#: a running shard silent this long (seconds) is presumed dead, by default
DEFAULT_STALE_AFTER = 600.0
#: how long a cancelled running shard may take to stop (and say so) before it is presumed dead (seconds)
STOP_GRACE = 60.0
STORE_PREFIX = "sam3_ops_shards_"


class ShardStore:
    """The execution store of the sharded run ``run_id`` of ``dataset``: the one owner of its keys.

    Every read and write of a run's store goes through a method here; no other module spells a key.
    """

    def __init__(self, dataset, run_id: str):
        self.run_id = run_id
        self._store = ExecutionStore.create(STORE_PREFIX + run_id, dataset_id=dataset._doc.id)

    # -- a shard's worker and its range ---------------------------------------------------------------

    def set_worker(self, shard: int, info: dict) -> None:
        """Records who runs ``shard`` now (``worker``, ``pid``, ``host``, ``attempt``, ``at``)."""
        self._store.set(f"worker_{shard}", info)

    def worker(self, shard: int) -> dict:
        """Who ran ``shard`` last (``{}`` if nobody has)."""
        return self._store.get(f"worker_{shard}") or {}

    def cleared(self, shard: int) -> bool:
        """Whether ``shard`` cleared its range already (a run that replaces the field does once)."""
        return self._store.has(f"cleared_{shard}")

    def mark_cleared(self, shard: int) -> None:
        self._store.set(f"cleared_{shard}", {"at": time.time()})

    # -- a shard's completion -------------------------------------------------------------------------

    def set_done(self, shard: int, summary: dict) -> None:
        """Stores ``shard``'s summary: the shard is done."""
        self._store.set(f"done_{shard}", summary)

    def done(self, shard: int) -> dict | None:
        """``shard``'s summary, or ``None`` while it is not done."""
        return self._store.get(f"done_{shard}")

    def done_shards(self) -> set[int]:
        """The shards that stored their summary."""
        return {int(key[len("done_") :]) for key in self._store.list_keys() if key.startswith("done_")}

    # -- cancelling -----------------------------------------------------------------------------------

    def mark_cancelled(self, shard: int, attempt: int) -> None:
        """``shard``'s running ``attempt`` was cancelled: its worker may still be writing."""
        self._store.set(f"cancelled_{shard}", {"attempt": attempt, "at": time.time()})

    def forget_cancelled(self, shard: int) -> None:
        self._store.delete(f"cancelled_{shard}")

    def mark_stopped(self, shard: int, attempt: int, worker: str) -> None:
        """``shard``'s ``attempt`` stopped, its last writes flushed."""
        self._store.set(f"stopped_{shard}_{attempt}", {"worker": worker, "at": time.time()})

    def stopping(self) -> int:
        """Shards cancelled while running whose worker has not said it stopped (for at most
        :data:`STOP_GRACE` s)."""
        stopping = 0
        for key in self._store.list_keys():
            if key.startswith("cancelled_"):
                cancelled = self._store.get(key) or {}
                stopped = self._store.has(f"stopped_{key[len('cancelled_') :]}_{cancelled.get('attempt')}")
                stopping += not stopped and time.time() - float(cancelled.get("at", 0)) < STOP_GRACE
        return stopping

    # -- the run's completion -------------------------------------------------------------------------

    def claim_finalize(self, by: str) -> bool:
        """Claims the run's completion (an atomic insert: exactly one claimant gets ``True``)."""
        return bool(self._store.set_if_absent("finalized", {"by": by, "at": time.time()}))

    def set_summary(self, summary: dict) -> None:
        self._store.set("summary", summary)

    def summary(self) -> dict | None:
        """The run's summed summary once finalized, else ``None``."""
        return self._store.get("summary")

    def clear(self) -> None:
        """Forgets everything of the run (a new run of its field replaces it)."""
        self._store.clear()


def operation_service():
    """FiftyOne's delegated-operation service."""
    return DelegatedOperationService()


def utc_now() -> datetime.datetime:
    """Now, as FiftyOne stamps its operations (naive UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def run_operations(dataset, run_id: str) -> dict[int, list]:
    """The operations of the sharded run ``run_id``, by shard, latest attempt first."""
    found = operation_service().list_operations(
        operator=SHARD_OPERATOR,
        dataset_id=dataset._doc.id,
        paging=DelegatedOperationPagingParams(limit=0),
        **{"context.request_params.params.run_id": run_id},
    )
    by_shard: dict[int, list] = {}
    for op in found:
        params = op.context.request_params.get("params", {})
        by_shard.setdefault(int(params["shard"]), []).append(op)
    for ops in by_shard.values():
        ops.sort(key=lambda op: (attempt_of(op), op.queued_at), reverse=True)
    return by_shard


def queue_shard(request: dict, delegation_target: str | None = None):
    """Queues one shard's operation of the :data:`SHARD_OPERATOR` with the request ``request``
    (its ``params`` name the ``label_field``, ``shard``, ``shards`` and ``attempt``); returns it."""
    params = request["params"]
    attempt = int(params["attempt"])
    label = f"SAM3 -> {params['label_field']}: shard {int(params['shard']) + 1} of {int(params['shards'])}"
    return operation_service().queue_operation(
        operator=SHARD_OPERATOR,
        label=label + (f" (attempt {attempt})" if attempt > 1 else ""),
        delegation_target=delegation_target,
        context={"request_params": request},
        metadata={"inputs_schema": None, "outputs_schema": None},
    )


def queue_again(op):
    """Queues the shard of the operation ``op`` again: the same request, ``attempt`` + 1; returns
    the new operation."""
    request = {k: v for k, v in op.context.request_params.items() if k not in ("run_doc", "results", "target")}
    request["params"] = {**request["params"], "attempt": attempt_of(op) + 1}
    return queue_shard(request, op.delegation_target)


def requeue_shard(op, reason: str):
    """Marks the running operation ``op`` failed with ``reason`` (only if it is still running) and
    queues its shard again; returns the new operation, or ``None`` if ``op`` was no longer running."""
    failed = operation_service().set_failed(
        op.id, result=ExecutionResult(error=reason), required_state=ExecutionRunState.RUNNING
    )
    return None if failed is None else queue_again(op)


def attempt_of(op) -> int:
    """Which attempt at its shard the operation ``op`` is (1 for the first)."""
    return int(op.context.request_params["params"].get("attempt", 1))


def last_seen(op) -> datetime.datetime | None:
    """The last sign of life of the operation ``op`` (start, progress, heartbeat), or ``None``."""
    times = [op.started_at, op.updated_at, getattr(op.status, "updated_at", None) if op.status else None]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def active_shards(dataset, run_id: str) -> int:
    """Shards of the sharded run ``run_id`` that are queued, running and not silent, or cancelled
    while running and not yet stopped (for at most :data:`STOP_GRACE` seconds)."""
    now, active = utc_now(), 0
    for ops in run_operations(dataset, run_id).values():
        op = ops[0]
        if op.run_state in (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED):
            active += 1
        elif op.run_state == ExecutionRunState.RUNNING:
            seen = last_seen(op)
            active += seen is not None and (now - seen).total_seconds() < DEFAULT_STALE_AFTER
    return active + ShardStore(dataset, run_id).stopping()
