"""Scale-out benchmark: sharded runs on FiftyOne's delegated-operation queue, and the database side.

Two measures (``--parts workers,db``), each figure recorded with ``os.getloadavg()``:

  workers  throughput of 1 vs 2 ``fiftyone delegated launch`` workers (started by
           ``python -m sam3_ops.sdk.workers --cpu W --threads 1 --no-monitor``) on one sharded run
           (``sam3_ops.segment(..., shards=S)``) of the ``small`` config (bench/bench_engine.py: 336 px,
           ViT 256 x 4 layers; random weights saved as a checkpoint), one torch thread per worker, so
           the model dominates. Workers are warmed by a small run first (imports, weights); the
           time is the run's span in the database, first shard started to last shard completed.
  db       label writes per second into one mongod: 1, 2, 4, 8 writer processes, each writing its
           share of ``--db-samples`` samples of ``--masks`` Detections with masks (blob-shaped,
           40-200 px a side, as SAM3 crops them to their boxes) through FiftyOne's own write path
           (``SaveContext`` + ``sample.add_labels``, what ``apply_model`` does); plus mongod's and
           the writers' CPU seconds per 1000 samples, and the stored bytes per sample, so the
           capacity of a database server can be estimated away from this 2-core machine.

Usage::

    python bench/bench_scale.py                       # both parts (~6 min on 2 idle cores)
    python bench/bench_scale.py --parts db --writers 1,2,4,8

Runs its own mongod in a temporary directory (``sam3_ops.testing.PrivateMongo``), deletes it at the
end; writes ``results.json`` under ``--out`` (default ``bench/results/scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_split() -> dict:
    """The machine's CPU time so far, in seconds: busy (user + system), idle, and stolen by the
    hypervisor (``/proc/stat``; zeros where there is none)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return {"busy": 0.0, "idle": 0.0, "steal": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait = values[:5]
    steal = values[7] if len(values) > 7 else 0
    return {"busy": (user + nice + system) / tick, "idle": (idle + iowait) / tick, "steal": steal / tick}


def cpu_delta(before: dict) -> dict:
    after = cpu_split()
    return {key: round(after[key] - before[key], 1) for key in after}


# -- the small checkpoint ------------------------------------------------------------------------


def build_small_checkpoint(path: str) -> str:
    """bench_engine's ``small`` config as a ``sam3_video`` checkpoint (random weights, hub layout)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig, Sam3VideoModel

    sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
    import bench_engine

    detector, tracker, image = bench_engine._small_configs()
    grid = image // 14
    video_tracker = Sam3TrackerVideoConfig(
        image_size=image,
        vision_config=tracker.vision_config.to_dict(),
        prompt_encoder_config=tracker.prompt_encoder_config.to_dict(),
        mask_decoder_config=tracker.mask_decoder_config.to_dict(),
        memory_attention_hidden_size=256,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=1024,
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_hidden_size=256,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=256,
        memory_fuser_embed_dim=256,
        memory_fuser_intermediate_dim=1024,
    )
    torch.manual_seed(0)
    model = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=video_tracker))
    os.makedirs(path, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    bench_engine.build_processors(image)[0].save_pretrained(path)
    return path


def write_images(directory: str, count: int, size=(240, 320)) -> list[str]:
    import numpy as np
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"{i:05d}.jpg")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


# -- part 1: workers -------------------------------------------------------------------------------


def calibrate(checkpoint: str, paths: list[str], hits: float) -> float:
    """The score threshold keeping about ``hits`` detections per image of the random model."""
    import fiftyone as fo
    import numpy as np
    import torch

    import sam3_ops

    torch.set_num_threads(1)
    dataset = fo.Dataset()
    try:
        dataset.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
        model = sam3_ops.load_model(checkpoint, prompts=["cat"], threshold=0.0, device="cpu")
        dataset.apply_model(model, label_field="calib", batch_size=4, num_workers=0, progress=False)
        scores = np.sort(np.concatenate([[d.confidence for d in dets.detections] for dets in dataset.values("calib")]))
        return float(scores[-int(hits * len(paths))])
    finally:
        dataset.delete()


def start_workers(count: int, plugins_dir: str, log_dir: str) -> subprocess.Popen:
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": plugins_dir}
    args = ["--cpu", str(count), "--threads", "1", "--no-monitor", "--log-dir", log_dir]
    process = subprocess.Popen(
        [sys.executable, "-m", "sam3_ops.sdk.workers", *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    for _ in range(count):
        process.stdout.readline()
    return process


def worker_cpu(launcher: subprocess.Popen) -> float:
    """CPU seconds (user + system) used so far by the launcher's workers."""
    import psutil

    total = 0.0
    for process in psutil.Process(launcher.pid).children(recursive=True):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def stop_workers(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def span(dataset, run) -> dict:
    """The run's span in the database: first shard started to last shard completed."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from sam3_ops.sdk.shards import SHARD_OPERATOR

    ops = DelegatedOperationService().list_operations(
        operator=SHARD_OPERATOR, dataset_id=dataset._doc.id, **{"context.request_params.params.run_id": run.run_id}
    )
    started = min(op.started_at for op in ops)
    completed = max(op.completed_at for op in ops)
    per_op = sorted((op.completed_at - op.started_at).total_seconds() for op in ops)
    return {"seconds": (completed - started).total_seconds(), "per_shard_s": [round(s, 2) for s in per_op]}


def bench_workers(args, work: str) -> list[dict]:
    import fiftyone as fo

    import sam3_ops

    checkpoint = build_small_checkpoint(os.path.join(work, "small"))
    paths = write_images(os.path.join(work, "images"), args.samples + 8)
    threshold = calibrate(checkpoint, paths[-8:], args.hits)
    print(f"small checkpoint at {checkpoint}; threshold {threshold:.4f} (~{args.hits:g} hits per image)", flush=True)
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins, exist_ok=True)
    os.symlink(REPO_ROOT, os.path.join(plugins, "sam3"))
    dataset = fo.Dataset("bench-scale-workers")
    dataset.persistent = True
    dataset.add_samples([fo.Sample(filepath=p) for p in paths[: args.samples]], progress=False)
    settings = {"model_path": checkpoint, "prompts": ["cat"], "threshold": threshold, "device": "cpu"}
    rows = []
    for count in args.workers:
        launcher = start_workers(count, plugins, os.path.join(work, f"logs-{count}"))
        try:
            warm = sam3_ops.segment(
                dataset.limit(2 * count), f"warm{count}", shards=count, batch_size=2, num_workers=0, **settings
            )
            warm.wait(timeout=900, poll=1.0, stale_after=None)
            before, cpu0, machine = load(), worker_cpu(launcher), cpu_split()
            run = sam3_ops.segment(
                dataset, f"run{count}", shards=args.shards, batch_size=args.batch_size, num_workers=0, **settings
            )
            status = run.wait(timeout=3600, poll=1.0, stale_after=None)
            cpu = worker_cpu(launcher) - cpu0
            assert status.done == args.shards and status.samples_written == args.samples, status
            timing = span(dataset, run)
            row = {
                "workers": count,
                "shards": args.shards,
                "samples": args.samples,
                "seconds": round(timing["seconds"], 2),
                "images_per_s": round(args.samples / timing["seconds"], 3),
                "per_shard_s": timing["per_shard_s"],
                # CPU the workers got: the same per image whatever their number means sharding costs
                # nothing; cores_used below `workers` means the machine was busy with other work
                "worker_cpu_s_per_image": round(cpu / args.samples, 3),
                "cores_used": round(cpu / timing["seconds"], 2),
                "machine_cpu_s": cpu_delta(machine),  # all processes: busy / idle / stolen by the hypervisor
                "detections": status.summary["detections"],
                "load_before": before,
                "load_after": load(),
            }
        finally:
            stop_workers(launcher)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) >= 2:
        print(
            f"speedup {rows[-1]['workers']} vs {rows[0]['workers']} workers: "
            f"{rows[-1]['images_per_s'] / rows[0]['images_per_s']:.2f}x",
            flush=True,
        )
    return rows


# -- control: what the cores give two processes -------------------------------------------------------

_COMPUTE = """
import sys, time
import torch
torch.set_num_threads(1)
a, b = torch.randn(384, 1024), torch.randn(1024, 1024)
at, seconds = float(sys.argv[1]), float(sys.argv[2])
while time.time() < at:
    time.sleep(0.001)
count, end = 0, at + seconds
while time.time() < end:
    torch.relu(a @ b)
    count += 1
print(count / seconds)
"""


def bench_ceiling(args) -> list[dict]:
    """Pure compute, no FiftyOne, no database: matmul iterations/s of 1 process alone, then of each
    of ``max(workers)`` processes at once (one thread each). Their ratio is the most any scale-out
    can get from these cores; below ``workers``, the cores are not independent or are busy."""
    rows = []
    for count in sorted({1, max(args.workers)}):
        at = time.time() + 8
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _COMPUTE, str(at), str(args.ceiling_seconds)], stdout=subprocess.PIPE
            )
            for _ in range(count)
        ]
        before = load()
        rates = [float(p.communicate()[0]) for p in processes]
        row = {
            "processes": count,
            "iterations_per_s_each": [round(r, 1) for r in rates],
            "total": round(sum(rates), 1),
            "load_before": before,
            "load_after": load(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) == 2:
        print(f"compute ceiling, {rows[1]['processes']} processes vs 1: {rows[1]['total'] / rows[0]['total']:.2f}x")
    return rows


# -- part 2: the database ------------------------------------------------------------------------------

_WRITER = """
import json, os, sys, time
import numpy as np
import fiftyone as fo
import fiftyone.core.collections as foc

name, field, start, stop, masks, at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
dataset = fo.load_dataset(name)
view = dataset.skip(start).limit(stop - start)
rng = np.random.default_rng(start)
labels = []
for _ in range(stop - start):
    detections = []
    for _ in range(masks):
        h, w = (int(v) for v in rng.integers(40, 200, 2))
        y, x = np.ogrid[:h, :w]
        mask = ((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 2)) ** 2 <= 1.0  # a blob, as SAM3 masks are
        box = [float(v) for v in rng.uniform(0, 0.5, 2)] + [w / 640, h / 480]
        detections.append(fo.Detection(label="cat", bounding_box=box, mask=mask, confidence=float(rng.random())))
    labels.append(fo.Detections(detections=detections))
view.first()  # connect before the clock starts
while time.time() < at:
    time.sleep(0.001)
cpu = os.times()
begin = time.time()
with foc.SaveContext(view) as ctx:
    for sample, detections in zip(view.iter_samples(), labels):
        sample.add_labels(detections, label_field=field)
        ctx.save(sample)
end = time.time()
used = os.times()
print(json.dumps({"begin": begin, "end": end, "samples": stop - start,
                  "cpu_s": (used.user - cpu.user) + (used.system - cpu.system)}))
"""


def bench_db(args, mongo) -> list[dict]:
    import fiftyone as fo
    import psutil
    from fiftyone.core.odm import get_db_conn

    mongod = psutil.Process(mongo.process.pid)
    rows = []
    for writers in args.writers:
        dataset = fo.Dataset(f"bench-scale-db-{writers}")
        dataset.persistent = True
        dataset.add_samples([fo.Sample(filepath=f"/images/{i}.jpg") for i in range(args.db_samples)], progress=False)
        dataset.add_sample_field("sam3", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        share = args.db_samples // writers
        at = time.time() + 15 + 2 * writers  # every writer imported and connected by then
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, dataset.name, "sam3", str(k * share), str((k + 1) * share)]
                + [str(args.masks), str(at)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(writers)
        ]
        while time.time() < at:
            time.sleep(0.01)
        before, cpu0, machine = load(), mongod.cpu_times(), cpu_split()
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes]
        cpu1, machine = mongod.cpu_times(), cpu_delta(machine)
        seconds = max(r["end"] for r in results) - min(r["begin"] for r in results)
        written = sum(r["samples"] for r in results)
        stats = get_db_conn().command("collStats", dataset._sample_collection_name)
        row = {
            "writers": writers,
            "samples": written,
            "masks_per_sample": args.masks,
            "seconds": round(seconds, 2),
            "samples_per_s": round(written / seconds, 1),
            "labels_per_s": round(written * args.masks / seconds, 1),
            "mongod_cpu_s_per_1000": round(1000 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / written, 3),
            "writer_cpu_s_per_1000": round(1000 * sum(r["cpu_s"] for r in results) / written, 3),
            "bytes_per_sample": int(stats["avgObjSize"]),
            "machine_cpu_s": machine,  # from the writers' start time until the last one ended
            "load_before": before,
            "load_after": load(),
        }
        assert dataset.count("sam3.detections") == written * args.masks
        dataset.delete()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="ceiling,workers,db")
    parser.add_argument("--ceiling-seconds", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--samples", type=int, default=160, help="images of the timed sharded run")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hits", type=float, default=5, help="detections per image (calibrated threshold)")
    parser.add_argument("--writers", default="1,2,4,8")
    parser.add_argument("--db-samples", type=int, default=1600, help="samples written per writer count, in all")
    parser.add_argument("--masks", type=int, default=10, help="masks per sample")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results", "scale"))
    args = parser.parse_args(argv)
    args.parts = args.parts.split(",")
    args.workers = [int(v) for v in args.workers.split(",")]
    args.writers = [int(v) for v in args.writers.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="sam3-bench-scale-")
    os.environ.update(FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false", HF_HUB_OFFLINE="1")
    from sam3_ops.testing import PrivateMongo

    mongo = PrivateMongo(work).start()  # before fiftyone is imported; the workers inherit it
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "args": vars(args)}
    started = time.time()
    try:
        if "ceiling" in args.parts:
            result["ceiling"] = bench_ceiling(args)
        if "workers" in args.parts:
            result["workers"] = bench_workers(args, work)
        if "db" in args.parts:
            result["db"] = bench_db(args, mongo)
    finally:
        mongo.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.time() - started, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    print(f"wrote {args.out}/results.json ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
