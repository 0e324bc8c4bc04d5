"""Sharded runs on FiftyOne's delegated-operation queue (issue 15): real ``fiftyone delegated launch``
workers started by the plugin's launcher (``python -m sam3_ops.sdk.workers``), the session's private
mongod, the tiny checkpoint on the CPU with one torch thread per worker; workers killed with SIGKILL.
No mocks.

The in-process tests come first: they run queued shards in this process through FiftyOne's own
``DelegatedOperationService``. The worker tests share one pair of workers (started once, the
launcher stopped at the end); the one that kills a worker is last.
"""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import fiftyone as fo
import fiftyone.operators as foo
import pytest
import torch
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext

import sam3_ops
from sam3_ops.app.operators import OPERATORS, SegmentWithTextPrompts
from sam3_ops.sdk import shard_worker, shardstore
from sam3_ops.sdk import workers as launcher
from sam3_ops.sdk.runs import active_run_problem, get_run
from sam3_ops.sdk.shard_worker import HEARTBEAT_ENV, run_shard
from sam3_ops.sdk.shards import (
    MAX_SHARDS,
    SHARD_OPERATOR,
    ShardSuperseded,
    shard_counts,
    shard_view,
)

from .helpers import REPO_ROOT, write_image

PLUGIN = "@sam3-ops/sam3"
TEXT_URI = f"{PLUGIN}/segment_with_text_prompts"
STATUS_URI = f"{PLUGIN}/sharded_run_status"
#: threshold 0.2 keeps every query of the tiny model (its scores are ~0.25): no result sits on the
#: threshold, so runs with other batch compositions or thread counts give the same detections
SETTINGS = {"prompts": ["cat"], "threshold": 0.2, "device": "cpu"}
SAMPLES = 200
WORKER_APP = "sam3-shard-worker"  # the workers' MongoDB appName, for the database profiler


@pytest.fixture
def heartbeat(monkeypatch):
    monkeypatch.setenv(HEARTBEAT_ENV, "0.5")


def _ops(dataset, **query):
    return DelegatedOperationService().list_operations(operator=SHARD_OPERATOR, dataset_id=dataset._doc.id, **query)


def _cleanup(dataset):
    DelegatedOperationService().delete_for_dataset(dataset._doc.id)


def drain(run):
    """Runs every queued shard of ``run`` in this process (FiftyOne's service claims each atomically,
    as a worker does); returns the run's status."""
    service = DelegatedOperationService()
    while True:
        results = service.execute_queued_operations(operator=SHARD_OPERATOR, dataset_name=run.dataset_name)
        for result in results:
            assert result is None or result.error is None, result.error
        if not results:
            return run.status(stale_after=None)


def _detections(samples, field):
    """Per sample: its detections as sorted (label, confidence to 4 places); None where not written."""
    return {
        sample_id: None if value is None else sorted((d.label, round(d.confidence, 4)) for d in value.detections)
        for sample_id, value in zip(samples.values("id"), samples.values(field))
    }


def _processed(dataset, run_id):
    """samples_processed of each completed shard operation of a run, by (shard, attempt)."""
    return {
        (op.context.request_params["params"]["shard"], op.context.request_params["params"]["attempt"]): (
            op.result.result["samples_processed"]
        )
        for op in _ops(dataset, **{"context.request_params.params.run_id": run_id})
        if op.run_state == "completed"
    }


# -- bad values, edge cases (in this process) ----------------------------------------------------------


@pytest.mark.parametrize("shards", [0, -2, 2.5, "4", True, MAX_SHARDS + 1])
def test_bad_shards_are_refused_before_anything_is_written(dataset, tiny_checkpoint, shards):
    with pytest.raises(ValueError, match="shards must be a whole number from 1"):
        sam3_ops.segment(dataset, "sam3", shards=shards, model_path=tiny_checkpoint, **SETTINGS)
    dataset.reload()
    assert dataset.get_field("sam3") is None and not _ops(dataset)


def test_a_sharded_run_needs_settings_and_a_record(dataset, tiny_checkpoint):
    model = sam3_ops.load_model(tiny_checkpoint, **SETTINGS)
    with pytest.raises(ValueError, match="give settings, not model"):
        sam3_ops.segment(dataset, "sam3", shards=2, model=model)
    with pytest.raises(ValueError, match="always recorded"):
        sam3_ops.segment(dataset, "sam3", shards=2, record=False, model_path=tiny_checkpoint, **SETTINGS)
    with pytest.raises(ValueError, match="never overwritten"):
        sam3_ops.segment(dataset, "filepath", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    assert not _ops(dataset)


def test_the_shards_partition_any_view():
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/images/{i}.png", number=i) for i in range(300)])
        view = ds.match(fo.ViewField("number") % 3 != 0)
        from sam3_ops.sdk.shards import shard_edges

        for count in (1, 2, 7, 64):
            edges = shard_edges(view, count)
            ids = [set(shard_view(view, k, edges).values("id")) for k in range(count)]
            assert sum(map(len, ids)) == len(view) == len(set().union(*ids))  # disjoint, complete
            assert shard_counts(view, edges) == [len(part) for part in ids]
            if count == 7:  # _rand is uniform: no shard is empty or holds most of the view
                assert all(10 < len(part) < 60 for part in ids)
    finally:
        ds.delete()


def test_one_shard_and_more_shards_than_samples(plugins_dir, dataset, tiny_checkpoint, caplog, heartbeat):
    sam3_ops.segment(dataset, "expected", model_path=tiny_checkpoint, batch_size=4, **SETTINGS)
    expected = _detections(dataset, "expected")

    one = sam3_ops.segment(dataset, "one", shards=1, model_path=tiny_checkpoint, batch_size=4, **SETTINGS)
    assert one.shards == 1 and len(one.operation_ids) == 1
    status = drain(one)
    assert (status.done, status.samples_written, status.finalized) == (1, len(dataset), True)
    assert _detections(dataset, "one") == expected

    with caplog.at_level(logging.WARNING):
        many = sam3_ops.segment(dataset, "many", shards=50, model_path=tiny_checkpoint, batch_size=4, **SETTINGS)
    assert "50 shards for 6 samples" in caplog.text
    assert many.shards == len(dataset) == len(many.operation_ids)
    status = drain(many)
    assert status.done == status.shards and status.samples_written == len(dataset)
    assert sum(_processed(dataset, many.run_id).values()) == len(dataset)  # each sample once
    assert _detections(dataset, "many") == expected
    run = get_run(dataset, "many")
    assert run.shards["count"] == len(dataset) and run.summary["samples_processed"] == len(dataset)
    assert run.settings.threshold == SETTINGS["threshold"]
    _cleanup(dataset)


def test_a_second_run_waits_for_the_first_or_cancels_it(plugins_dir, dataset, tiny_checkpoint, heartbeat):
    run = sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    with pytest.raises(ValueError, match="still going"):
        sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    assert run.cancel() == 2
    status = run.status()
    assert (status.failed, status.queued, status.done) == (2, 0, 0)
    assert all("cancelled" in entry["error"] for entry in status.per_shard)

    again = sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    assert drain(again).done == 2
    assert dataset.count("sam3") == len(dataset)
    _cleanup(dataset)


DOG = {**SETTINGS, "prompts": ["dog"]}


def _labels(dataset, field="sam3"):
    return set(dataset.distinct(f"{field}.detections.label"))


def test_a_new_run_waits_until_a_cancelled_running_shard_stopped(
    plugins_dir, dataset, tiny_checkpoint, heartbeat, monkeypatch
):
    """A worker that claimed a shard before the run was cancelled may still be writing: a new run of
    the field (which would clear it) waits until that worker said it stopped, its writes flushed."""
    sam3_ops.segment(dataset, "sam3", shards=1, model_path=tiny_checkpoint, **SETTINGS)
    (op,) = _ops(dataset)
    DelegatedOperationService().set_running(op.id)  # a worker claimed it ...
    assert sam3_ops.cancel_shards(dataset, "sam3") == 1  # ... and the run is cancelled under it
    for shards in (None, 2):  # sharded or not, a new run of the field waits for that worker
        with pytest.raises(ValueError, match="still going"):
            sam3_ops.segment(dataset, "sam3", shards=shards, model_path=tiny_checkpoint, **DOG)
    with pytest.raises(ValueError, match="not stopped yet"):
        sam3_ops.resume_shards(dataset, "sam3")
    with monkeypatch.context() as patch:  # a worker that died never says it stopped: after the grace, go on
        patch.setattr(shardstore, "STOP_GRACE", 0.0)
        assert active_run_problem(dataset, "sam3") is None

    monkeypatch.setattr(shard_worker, "CHECK_INTERVAL", 0.0)  # the worker checks before its first batch
    with pytest.raises(ShardSuperseded, match="no longer running"):
        run_shard(dataset.view(), op.context.request_params["params"], operation_id=op.id)
    result = sam3_ops.segment(dataset, "sam3", model_path=tiny_checkpoint, **DOG)  # it stopped: go
    assert result.samples_processed == len(dataset) and _labels(dataset) == {"dog"}
    _cleanup(dataset)


def test_a_shard_of_a_replaced_run_never_writes_nor_completes_it(plugins_dir, dataset, tiny_checkpoint, heartbeat):
    old = sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    with pytest.raises(ValueError, match="still going"):  # a plain run too would be overwritten by the shards
        sam3_ops.segment(dataset, "sam3", model_path=tiny_checkpoint, **DOG)
    assert old.cancel() == 2
    sam3_ops.segment(dataset, "sam3", model_path=tiny_checkpoint, **DOG)
    record = get_run(dataset, "sam3")
    for op in _ops(dataset):  # the old shards run anyway (say, by a worker that claimed them earlier)
        with pytest.raises(ShardSuperseded, match="no longer this one"):
            run_shard(dataset.view(), op.context.request_params["params"])
    assert _labels(dataset) == {"dog"} and dataset.count("sam3") == len(dataset)
    assert get_run(dataset, "sam3").summary == record.summary and record.shards is None
    _cleanup(dataset)


def test_views_that_select_samples_by_the_written_field_are_refused(plugins_dir, dataset, tiny_checkpoint):
    sam3_ops.segment(dataset.limit(2), "sam3", model_path=tiny_checkpoint, **SETTINGS)
    for view in (
        dataset.exists("sam3", False).limit(2),
        dataset.match(fo.ViewField("sam3.detections").length() == 0),
        dataset.sort_by("sam3"),
    ):
        with pytest.raises(ValueError, match="selects samples by 'sam3'"):
            sam3_ops.segment(view, "sam3", shards=2, model_path=tiny_checkpoint, **SETTINGS)
    assert not _ops(dataset)
    # the way to fill the gaps of the first 4 samples: only_missing on a view that does not read the field
    run = sam3_ops.segment(dataset.limit(4), "sam3", shards=2, only_missing=True, model_path=tiny_checkpoint, **DOG)
    drain(run)
    assert dataset.limit(4).count("sam3") == 4 and dataset.skip(4).count("sam3") == 0
    assert _labels(dataset.limit(2)) == {"cat"} and _labels(dataset.skip(2).limit(2)) == {"dog"}
    _cleanup(dataset)


def test_a_cancelled_run_loses_nothing_and_resumes(plugins_dir, dataset, tiny_checkpoint, heartbeat):
    sam3_ops.segment(dataset, "sam3", model_path=tiny_checkpoint, **SETTINGS)
    before = _detections(dataset, "sam3")
    run = sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, **DOG)  # replaces the field
    assert _detections(dataset, "sam3") == before  # a shard clears its range only when it starts
    assert run.cancel() == 2
    assert _detections(dataset, "sam3") == before
    resumed = foo.execute_operator(STATUS_URI, {"dataset": dataset, "params": {"label_field": "sam3", "resume": True}})
    assert resumed.result["resumed"] == 2 and resumed.result["queued"] == 2
    status = drain(run)
    assert (status.done, status.finalized, status.samples_written) == (2, True, len(dataset))
    assert _labels(dataset) == {"dog"}
    assert sam3_ops.resume_shards(dataset, "sam3") == 0  # nothing failed, nothing to resume
    _cleanup(dataset)


def _database() -> dict:
    """Every document of FiftyOne's database, by collection and id (the profiler's aside)."""
    db = fo.core.odm.get_db_conn()
    names = [name for name in db.list_collection_names() if not name.startswith("system.")]
    return {name: {str(doc["_id"]): doc for doc in db[name].find()} for name in names}


def _changes(before: dict, after: dict) -> list:
    """What was written between two :func:`_database` readings: (collection, id, changed keys).
    A dataset's ``last_loaded_at`` aside: FiftyOne stamps every load (``Dataset.reload`` too, outside
    the App's server), a mark of who read, not of the run's state."""
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, {}), after.get(name, {})
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key, {}), new.get(key, {})
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if name == "datasets":
                changed = [k for k in changed if k != "last_loaded_at"]
            if changed or (key in old) != (key in new):
                changes.append((name, key, changed))
    return changes


def test_status_only_reads_and_reconcile_requeues_the_dead_and_completes_the_run(
    plugins_dir, dataset, tiny_checkpoint, heartbeat, monkeypatch
):
    """shard_status writes nothing (not the delegated queue, the run's store nor the dataset), even on
    a run with a dead shard and a run whose finishing shard died before completing it; reconcile
    re-queues the dead shard and completes the run."""
    run = sam3_ops.segment(dataset, "sam3", shards=2, model_path=tiny_checkpoint, batch_size=4, **SETTINGS)
    service = DelegatedOperationService()
    victim = run.operation_ids[0]
    assert service.set_running(ObjectId(victim)) is not None  # claimed by a worker that died at once: running, silent
    time.sleep(0.1)
    before = _database()
    status = sam3_ops.shard_status(dataset, "sam3", stale_after=0.05)
    assert (status.stale, status.requeued, status.running, status.queued) == ([0], [], 1, 1)
    assert _changes(before, _database()) == []  # nothing written
    params = {"label_field": "sam3", "stale_after_minutes": 0.05 / 60, "requeue": False}
    shown = foo.execute_operator(STATUS_URI, {"dataset": dataset, "params": params}).result
    assert (shown["stale"], shown["requeued"], shown["running"]) == ([0], [], 1)  # the operator, told not to
    assert _changes(before, _database()) == []

    status = sam3_ops.reconcile(dataset, "sam3", stale_after=0.05)
    assert (status.stale, status.requeued, status.running, status.queued) == ([], [0], 0, 2)
    dead = service.get(ObjectId(victim))
    assert dead.run_state == "failed" and "presumed dead" in dead.result.error
    assert status.per_shard[0]["attempt"] == 2 and status.per_shard[0]["operation_id"] != victim

    # every shard done, but the one that would complete the run died first: nobody completed it
    monkeypatch.setattr(shard_worker, "finalize", lambda *args, **kwargs: False)
    status = drain(run)
    assert (status.done, status.finished, status.finalized, status.samples_written) == (2, True, False, len(dataset))
    monkeypatch.undo()
    before = _database()
    status = sam3_ops.shard_status(dataset, "sam3", stale_after=0.05)
    assert (status.finished, status.finalized) == (True, False)
    assert _changes(before, _database()) == []  # reading did not complete it
    assert get_run(dataset, "sam3").summary is None

    status = sam3_ops.reconcile(dataset, "sam3")
    assert status.finalized and status.summary["samples_processed"] == len(dataset)
    dataset.reload()
    assert get_run(dataset, "sam3").summary["samples_processed"] == len(dataset)
    assert sam3_ops.reconcile(dataset, "sam3").summary == status.summary  # completed once
    _cleanup(dataset)


# -- the operators (in this process) ----------------------------------------------------------------


def test_enterprise_flags_are_harmless_on_open_source_fiftyone(plugins_dir, dataset, tiny_checkpoint):
    segmenters = [op() for op in OPERATORS if op.__name__.startswith("Segment") and op.__name__ != "SegmentShard"]
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {}})
    for operator in segmenters:
        # declared, and forced off by open-source FiftyOne (Enterprise only), which must not break
        assert operator.config.allow_distributed_execution is False
        options = operator.resolve_execution_options(ctx)
        assert options.allow_delegated_execution and not options.allow_distributed_execution
        assert ctx.num_distributed_tasks is None

    params = {**SETTINGS, "label_field": "sam3", "batch_size": 3, "model_path": str(tiny_checkpoint)}
    request = {"dataset": dataset, "params": params, "request_delegation": True, "num_distributed_tasks": 3}
    queued = foo.execute_operator(TEXT_URI, request)
    service = DelegatedOperationService()
    doc = service.get(queued.result["id"])
    assert "num_distributed_tasks" not in doc.context.request_params  # FiftyOne dropped it
    (result,) = service.execute_queued_operations(operator=TEXT_URI, dataset_name=dataset.name)
    assert result.error is None, result.error
    assert result.result["samples_processed"] == len(dataset)  # one ordinary run, no shards
    assert not _ops(dataset) and dataset.count("sam3") == len(dataset)
    _cleanup(dataset)


def test_the_delegated_form_splits_a_run_into_shards(plugins_dir, dataset, tiny_checkpoint, heartbeat):
    params = {**SETTINGS, "label_field": "sam3", "batch_size": 3, "model_path": str(tiny_checkpoint), "shards": 3}
    form = SegmentWithTextPrompts().resolve_input(ExecutionContext(request_params={"dataset_name": dataset.name}))
    assert form.type.properties["shards"].view.label == "Split into N tasks"
    queued = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": params, "request_delegation": True})
    service = DelegatedOperationService()
    (parent,) = service.execute_queued_operations(operator=TEXT_URI, dataset_name=dataset.name)
    assert parent.error is None, parent.error
    assert parent.result["shards"] == 3 and len(parent.result["operation_ids"]) == 3
    assert service.get(queued.result["id"]).run_state == "completed"  # it queued the shards and ended

    run = sam3_ops.ShardedRun(**{k: parent.result[k] for k in ("dataset_name", "label_field", "run_id", "shards")})
    drain(run)
    result = foo.execute_operator(STATUS_URI, {"dataset": dataset, "params": {"label_field": "sam3"}})
    status = result.result
    assert (status["done"], status["queued"], status["running"], status["failed"]) == (3, 0, 0, 0)
    assert status["samples_written"] == len(dataset) and status["finalized"]
    assert status["summary"]["samples_processed"] == len(dataset)

    # immediate execution queues the shards as well, and shows what it queued
    immediate = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": {**params, "overwrite": True}})
    (shown,) = [r["params"] for r in immediate.executor.to_json()["requests"] if r["operator_uri"] == "show_output"]
    assert len(shown["results"]["operation_ids"]) == 3
    sam3_ops.cancel_shards(dataset, "sam3")
    _cleanup(dataset)


# -- the launcher ------------------------------------------------------------------------------------


def test_the_launcher_starts_one_worker_per_visible_gpu(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    workers = launcher.plan(threads=4)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["2", "5"]
    assert all(w.argv[-3:] == ["delegated", "launch", "-m"] and w.env["OMP_NUM_THREADS"] == "4" for w in workers)
    assert launcher.main(["--gpus", "0,1,3", "--no-monitor", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [f"CUDA_VISIBLE_DEVICES={k}" for k in (0, 1, 3)]
    assert all(line.endswith("delegated launch") for line in lines)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert launcher.visible_gpus() == []
    assert launcher.main(["--dry-run"]) == 2
    assert "no GPU visible" in capsys.readouterr().err
    cpu = launcher.plan(cpu=2, threads=1, monitor=False)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in cpu] == ["", ""] and "-m" not in cpu[0].argv


# -- real workers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shard-images")
    return [write_image(directory / f"s{i}.png", 48 + i % 5 * 8, 64 + i % 3 * 8, seed=100 + i) for i in range(SAMPLES)]


@pytest.fixture(scope="module")
def shard_dataset(shard_images, tiny_checkpoint):
    """200 samples, persistent (the workers load it), with ``reference``: one in-process run."""
    ds = fo.Dataset()
    ds.persistent = True
    ds.add_samples([fo.Sample(filepath=path) for path in shard_images], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: with other work on the cores, more threads only thrash
    try:
        sam3_ops.segment(ds, "reference", model_path=tiny_checkpoint, batch_size=4, num_workers=0, **SETTINGS)
    finally:
        torch.set_num_threads(threads)
    yield ds
    _cleanup(ds)
    ds.delete()


@pytest.fixture(scope="module")
def workers(plugins_dir, tmp_path_factory):
    """Two CPU workers (one torch thread each) started by the plugin's launcher, as a user does."""
    logs = tmp_path_factory.mktemp("worker-logs")
    uri = os.environ["FIFTYONE_DATABASE_URI"]
    env = {
        **os.environ,
        "FIFTYONE_PLUGINS_DIR": str(plugins_dir),
        "FIFTYONE_DATABASE_URI": f"{uri.rstrip('/')}/?appName={WORKER_APP}",
        HEARTBEAT_ENV: "0.5",
    }
    args = ["--cpu", "2", "--threads", "1", "--no-monitor", "--log-dir", str(logs)]
    process = subprocess.Popen(
        [sys.executable, "-m", "sam3_ops.sdk.workers", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(process.stdout.readline().rsplit("pid", 1)[1]) for _ in range(2)]
    yield {"launcher": process, "pids": pids, "logs": logs}
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def _worker_log(workers):
    return "\n".join((workers["logs"] / name).read_text()[-3000:] for name in sorted(os.listdir(workers["logs"])))


def test_four_shards_on_two_workers_equal_one_process(shard_dataset, workers, tiny_checkpoint):
    dataset = shard_dataset
    run = sam3_ops.segment(dataset, "sharded", shards=4, model_path=tiny_checkpoint, batch_size=4, **SETTINGS)
    assert dataset.has_field("sharded")  # declared once, before any shard could run
    assert len(set(run.operation_ids)) == 4 and run.samples == SAMPLES

    try:
        status = run.wait(timeout=240, poll=1.0, stale_after=None)  # cold workers: no stale detection
    except TimeoutError:
        pytest.fail(f"workers did not finish: {_worker_log(workers)}")
    assert (status.done, status.failed, status.samples_written) == (4, 0, SAMPLES), status
    assert status.finalized and status.summary["samples_processed"] == SAMPLES
    assert len({entry["worker"] for entry in status.per_shard}) == 2  # both workers took shards
    processed = _processed(dataset, run.run_id)
    assert sorted(processed) == [(k, 1) for k in range(4)]  # one attempt per shard
    assert sum(processed.values()) == SAMPLES  # every sample segmented exactly once
    assert _detections(dataset, "sharded") == _detections(dataset, "reference")
    record = get_run(dataset, "sharded")
    assert record.shards["run_id"] == run.run_id and record.summary["samples_with_results"] == SAMPLES


def test_shards_never_write_the_dataset_schema(shard_dataset, workers, tiny_checkpoint, tmp_path):
    """FiftyOne saves a dataset's whole field list when a process adds a field, so processes adding
    fields at the same moment can lose each other's declarations. The field is declared before the
    shards are queued; while 2 shards write, another process keeps adding fields: the database
    profiler shows no worker write to the schema, and every declaration survives."""
    from fiftyone.core.odm import get_db_conn

    dataset, view = shard_dataset, shard_dataset.limit(80)
    stop = tmp_path / "stop"
    churn = textwrap.dedent(
        """
        import os, sys, time
        import fiftyone as fo
        from fiftyone.operators.delegated import DelegatedOperationService
        dataset, stop = fo.load_dataset(sys.argv[1]), sys.argv[2]
        service = DelegatedOperationService()
        print("ready", flush=True)
        while not service.list_operations(operator=sys.argv[3], dataset_id=dataset._doc.id, run_state="running"):
            if os.path.exists(stop):
                break
            time.sleep(0.02)
        added = 0
        while not os.path.exists(stop) and added < 300:
            dataset.add_sample_field(f"churn_{added}", fo.StringField)
            added += 1
            time.sleep(0.02)
        print(added)
        """
    )
    db = get_db_conn()
    db.command({"profile": 2, "filter": {"ns": f"{db.name}.datasets"}})
    churner = subprocess.Popen(
        [sys.executable, "-c", churn, dataset.name, str(stop), SHARD_OPERATOR],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        while churner.stdout.readline().strip() not in ("ready", ""):  # imported: it churns once a shard runs
            pass
        run = sam3_ops.segment(view, "raced", shards=2, model_path=tiny_checkpoint, batch_size=2, **SETTINGS)
        status = run.wait(timeout=180, poll=0.5, stale_after=None)
    finally:
        stop.touch()
        added = int(churner.communicate(timeout=120)[0].strip().splitlines()[-1])
        db.command({"profile": 0})
    seen = list(db.system.profile.find({"appName": WORKER_APP}))
    db.system.profile.drop()
    writes = [entry for entry in seen if entry["op"] in ("update", "insert", "remove", "command")]

    assert any(entry["op"] == "query" for entry in seen)  # the profiler sees the workers (they read the dataset)
    assert not [w for w in writes if "sample_fields" in repr(w.get("command"))]
    assert added > 0  # the churner wrote the schema while the shards ran
    dataset.reload()
    assert status.done == 2 and status.samples_written == len(view) == dataset.count("raced")
    assert dataset.has_field("raced") and all(dataset.has_field(f"churn_{i}") for i in range(added))
    assert _detections(view, "raced") == _detections(view, "reference")
    dataset.delete_sample_fields([f"churn_{i}" for i in range(added)])


def test_a_killed_worker_s_shard_is_queued_again_and_nothing_is_lost_or_doubled(
    shard_dataset, workers, tiny_checkpoint
):
    dataset = shard_dataset
    run = sam3_ops.segment(dataset, "killed", shards=2, model_path=tiny_checkpoint, batch_size=1, **SETTINGS)
    edges = get_run(dataset, "killed").shards["edges"]
    totals = shard_counts(dataset, edges)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:  # a shard part-written by one of the pair
        for entry in run.status(stale_after=None).per_shard:
            pid = int((entry["worker"] or ":0").rsplit(":", 1)[1])
            if (
                entry["state"] == "running"
                and pid in workers["pids"]
                and 0 < entry["written"] < totals[entry["shard"]] - 5
            ):
                os.kill(pid, signal.SIGKILL)
                victim = entry["shard"]
                break
        time.sleep(0.02)
    assert victim is not None, f"no shard caught mid-way: {_worker_log(workers)}"
    shard = victim
    time.sleep(0.5)
    part = shard_view(dataset, shard, edges).exists("killed")
    before = {s.id: [d.id for d in s.killed.detections] for s in part.select_fields("killed")}
    assert 0 < len(before) < totals[shard]

    status = run.wait(timeout=180, poll=0.5, stale_after=4.0)  # the survivor runs the shard again
    assert (status.done, status.failed, status.samples_written) == (2, 0, SAMPLES), status
    query = {"context.request_params.params.run_id": run.run_id, "context.request_params.params.shard": shard}
    attempts = {op.context.request_params["params"]["attempt"]: op for op in _ops(dataset, **query)}
    assert sorted(attempts) == [1, 2]
    assert attempts[1].run_state == "failed" and "presumed dead" in attempts[1].result.error
    assert attempts[2].run_state == "completed"
    processed = _processed(dataset, run.run_id)
    assert processed[(shard, 2)] == totals[shard] - len(before)  # the re-run wrote only what was missing
    assert processed[(1 - shard, 1)] == totals[1 - shard]
    after = {s.id: [d.id for d in s.killed.detections] for s in dataset.select(list(before)).select_fields("killed")}
    assert after == before  # written before the kill: kept, not redone
    assert _detections(dataset, "killed") == _detections(dataset, "reference")  # nothing lost, nothing twice
    assert workers["launcher"].poll() is None  # the launcher reported the dead worker and kept the other
