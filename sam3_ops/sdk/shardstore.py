"""Where a sharded run's state lives, and whether one is still going: the lookups that both the run
records (:mod:`~sam3_ops.sdk.runs`, which refuses a new run of a field while its sharded run goes on)
and the shards themselves (:mod:`~sam3_ops.sdk.shards`) need.

A sharded run keeps its state in two places FiftyOne provides:

- its **execution store** (:func:`run_store`, one per run, scoped to the dataset), under the keys
  ``worker_<k>`` (who runs shard ``k``), ``cleared_<k>`` (its range was cleared), ``done_<k>`` (its
  summary), ``cancelled_<k>`` / ``stopped_<k>_<attempt>`` (a cancelled running shard, and its
  worker's word that it stopped), ``finalized`` and ``summary`` (the run's completion);
- its **delegated operations** (:func:`run_operations`), one per shard and attempt, found by the
  ``run_id`` in their params.

This module knows nothing of run records: callers pass the ``run_id`` a record holds.
"""

from __future__ import annotations

import datetime
import time

#: the operator every shard runs (the plugin's, unlisted)
SHARD_OPERATOR = "@sam3-ops/sam3/segment_shard"
#: a running shard silent this long (seconds) is presumed dead, by default
DEFAULT_STALE_AFTER = 600.0
#: how long a cancelled running shard may take to stop (and say so) before it is presumed dead (seconds)
STOP_GRACE = 60.0
STORE_PREFIX = "sam3_ops_shards_"


def run_store(dataset, run_id: str):
    """The execution store of the sharded run ``run_id`` of ``dataset`` (created if need be)."""
    from fiftyone.operators.store import ExecutionStore

    return ExecutionStore.create(STORE_PREFIX + run_id, dataset_id=dataset._doc.id)


def operation_service():
    """FiftyOne's delegated-operation service."""
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def utc_now() -> datetime.datetime:
    """Now, as FiftyOne stamps its operations (naive UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def run_operations(dataset, run_id: str) -> dict[int, list]:
    """The operations of the sharded run ``run_id``, by shard, latest attempt first."""
    from fiftyone.factory import DelegatedOperationPagingParams

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


def attempt_of(op) -> int:
    """Which attempt at its shard the operation ``op`` is (1 for the first)."""
    return int(op.context.request_params["params"].get("attempt", 1))


def last_seen(op) -> datetime.datetime | None:
    """The last sign of life of the operation ``op`` (start, progress, heartbeat), or ``None``."""
    times = [op.started_at, op.updated_at, getattr(op.status, "updated_at", None) if op.status else None]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def stopping_shards(store) -> int:
    """Shards cancelled while running whose worker has not said it stopped (for at most :data:`STOP_GRACE` s)."""
    stopping = 0
    for key in store.list_keys():
        if key.startswith("cancelled_"):
            cancelled = store.get(key) or {}
            stopped = store.has(f"stopped_{key[len('cancelled_') :]}_{cancelled.get('attempt')}")
            stopping += not stopped and time.time() - float(cancelled.get("at", 0)) < STOP_GRACE
    return stopping


def active_shards(dataset, run_id: str) -> int:
    """Shards of the sharded run ``run_id`` that are queued, running and not silent, or cancelled
    while running and not yet stopped (for at most :data:`STOP_GRACE` seconds)."""
    from fiftyone.operators.executor import ExecutionRunState

    now, active = utc_now(), 0
    for ops in run_operations(dataset, run_id).values():
        op = ops[0]
        if op.run_state in (ExecutionRunState.QUEUED, ExecutionRunState.SCHEDULED):
            active += 1
        elif op.run_state == ExecutionRunState.RUNNING:
            seen = last_seen(op)
            active += seen is not None and (now - seen).total_seconds() < DEFAULT_STALE_AFTER
    return active + stopping_shards(run_store(dataset, run_id))
