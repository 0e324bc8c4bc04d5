"""End-to-end benchmark with FiftyOne: ``dataset.apply_model`` vs the plain transformers loop.

N images of mixed sizes are written to disk as JPEGs; both pipelines read them, segment them with
the SAME in-memory model (random weights, calibrated as in ``bench_engine.py``) and write the
results into the dataset. Reported: images/s including decoding and database writes, and, for
ours, the share of the main thread's wall time in decode / model / post-processing / writes,
measured by timing wrappers installed here (no package code is edited).

The reference (what a user writes from the transformers docs): PIL decode -> processor -> model ->
``post_process_instance_segmentation`` -> one ``fo.Detection`` per hit with its full-size mask
cropped to the box -> either ``sample.save()`` per sample (``ref-save``) or one
``dataset.set_values`` bulk write per batch (``ref-set_values``); at every batch size of
``--ref-batch-sizes``, so "its best batch size" is measured, not guessed.

The database is a private mongod in a temporary directory (``sam3_ops.testing.PrivateMongo``, set
before fiftyone is imported; FiftyOne's own service is shared machine-wide), stopped and deleted at
exit; the dataset is non-persistent and deleted: nothing is left behind, nobody else's database is touched.

Usage::

    python bench/bench_e2e.py --device cpu --config tiny --images 48
    python bench/bench_e2e.py --device cuda --config full --images 512 --batch-size 16 --num-workers 0,8
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sam3_ops.testing import PrivateMongo  # noqa: E402  (imports neither fiftyone nor torch)

# Before fiftyone is imported: a database server of our own, removed at exit; no telemetry, no hub.
_TMP = tempfile.mkdtemp(prefix="sam3ops-bench-e2e-")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
_MONGO = PrivateMongo(_TMP).start()


def _cleanup():
    """Stops the private mongod, then deletes its files."""
    _MONGO.stop()
    shutil.rmtree(_TMP, ignore_errors=True)


atexit.register(_cleanup)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_engine as be  # noqa: E402  (also puts the repo root on sys.path)
import fiftyone as fo  # noqa: E402
import fiftyone.core.collections as foc  # noqa: E402
import fiftyone.core.models as fom  # noqa: E402

import sam3_ops.core.engine as engine_module  # noqa: E402
import sam3_ops.sdk.model as model_module  # noqa: E402
from sam3_ops.core.masks import crop_box  # noqa: E402
from sam3_ops.sdk.model import Sam3Model  # noqa: E402
from sam3_ops.sdk.settings import Sam3Settings  # noqa: E402

PROMPT = be.PROMPTS[0]


class Timers(be.StageTimer):
    """The engine bench's stage timer, plus the waits on FiftyOne's data loader; undone by :meth:`restore`."""

    def wrap_loader(self, stage):
        """Times the waits for the next batch of fiftyone's data loader (decode on the critical path)."""
        original = fom._make_data_loader
        timers = self

        class TimedLoader:
            def __init__(self, loader):
                self.loader = loader

            def __iter__(self):
                iterator = iter(self.loader)
                while True:
                    start = time.perf_counter()
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                    finally:
                        timers.totals[stage] += time.perf_counter() - start
                    yield item

        def make(*args, **kwargs):
            return TimedLoader(original(*args, **kwargs))

        self._patches.append((fom, "_make_data_loader", original))
        fom._make_data_loader = make


def write_images(directory, count, seed=0):
    """JPEG files of mixed sizes (smooth content, so they decode like photos)."""
    paths = []
    for i, image in enumerate(be.make_images(count, seed=seed)):
        path = os.path.join(directory, f"img{i:05d}.jpg")
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def run_ours(bench, dataset, field, threshold, batch_size, num_workers, instrument):
    """``apply_model`` with the plugin's model; returns (seconds, stage seconds or None)."""
    settings = Sam3Settings(model_path="facebook/sam3", mode="text", prompts=(PROMPT,), threshold=threshold)
    model = Sam3Model(settings, engine=bench.engine)
    timers = None
    if instrument:
        timers = Timers(bench.device)
        engine = bench.engine
        timers.wrap_loader("loader wait (decode + prompts)")
        timers.wrap(model_module, "load_image", "decode (in-process)", synchronise=False)
        timers.wrap(engine, "preprocess", "model: preprocess")
        timers.wrap(engine, "_vision_features", "_vision")
        timers.wrap(engine, "_segment", "_segment")
        timers.wrap(engine_module._HitCollector, "add", "post: mask crops")
        timers.wrap(engine_module, "_finish", "post: host copy")
        timers.wrap(model_module, "to_detections", "post: to fo.Detections", synchronise=False)
        timers.wrap(fo.Sample, "add_labels", "writes: add_labels", synchronise=False)
        timers.wrap(foc.SaveContext, "save", "writes: SaveContext.save", synchronise=False)
        timers.wrap(foc.SaveContext, "__exit__", "writes: final flush", synchronise=False)
        timers.wrap(foc.SaveContext, "_do_save_batch", "bulk writes (background thread)", synchronise=False)
    be.sync(bench.device)
    start = time.perf_counter()
    try:
        dataset.apply_model(model, label_field=field, batch_size=batch_size, num_workers=num_workers, progress=False)
        be.sync(bench.device)
    finally:
        seconds = time.perf_counter() - start
        if timers is not None:
            timers.restore()
    if model.failures:
        raise RuntimeError(f"ours failed on {len(model.failures)} samples: {model.failures[:3]}")
    if timers is None:
        return seconds, None
    t = dict(timers.totals)
    segment = t.get("_segment", 0.0)
    post_in_segment = t.get("post: mask crops", 0.0) + t.get("post: host copy", 0.0)
    stages = {
        "decode": t.get("loader wait (decode + prompts)", 0.0),
        "model: preprocess (resize+normalise)": t.get("model: preprocess", 0.0),
        "model: vision encoder": t.get("_vision", 0.0) - t.get("model: preprocess", 0.0),
        "model: heads/decoder": segment - t.get("_vision", 0.0) - post_in_segment,
        "post-processing": post_in_segment + t.get("post: to fo.Detections", 0.0),
        "writes (main thread)": t.get("writes: add_labels", 0.0)
        + t.get("writes: SaveContext.save", 0.0)
        + t.get("writes: final flush", 0.0),
    }
    stages["other (fiftyone loop, progress)"] = seconds - sum(stages.values())
    return seconds, {
        "stages_s": stages,
        "share": {k: v / seconds for k, v in stages.items()},
        "decode_in_process_s": t.get("decode (in-process)", 0.0),
        "bulk_writes_background_thread_s": t.get("bulk writes (background thread)", 0.0),
    }


def _to_detection(label, score, box, mask, width, height):
    x0, y0, x1, y1 = crop_box(box, width, height)  # whole pixels, inside the image
    return fo.Detection(
        label=label,
        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
        mask=np.ascontiguousarray(mask[y0:y1, x0:x1]),
        confidence=float(score),
    )


def run_reference(bench, dataset, field, threshold, batch_size, write, dtype=None):
    """The transformers-docs loop into the dataset; returns (seconds, stage seconds)."""
    model, processor, device = bench.detector, bench.processor, bench.device
    stages = defaultdict(float)
    be.sync(device)
    start = time.perf_counter()
    ids, paths = dataset.values(["id", "filepath"])
    for at in range(0, len(ids), batch_size):
        batch_ids, batch_paths = ids[at : at + batch_size], paths[at : at + batch_size]
        t0 = time.perf_counter()
        images = [Image.open(path).convert("RGB") for path in batch_paths]
        t1 = time.perf_counter()
        inputs = processor(images=images, text=[PROMPT] * len(images), return_tensors="pt").to(device)
        with torch.inference_mode(), be.autocast(device, dtype):
            outputs = model(**inputs)
            be.sync(device)
            t2 = time.perf_counter()
            results = processor.post_process_instance_segmentation(
                outputs, threshold=threshold, mask_threshold=0.5, target_sizes=inputs["original_sizes"].tolist()
            )
            labels = []
            for image, result in zip(images, results):
                width, height = image.size
                scores = result["scores"].float().cpu().numpy()
                boxes = result["boxes"].float().cpu().numpy()
                masks = result["masks"].bool().cpu().numpy()
                labels.append(
                    fo.Detections(
                        detections=[
                            _to_detection(PROMPT, s, b, m, width, height) for s, b, m in zip(scores, boxes, masks)
                        ]
                    )
                )
        t3 = time.perf_counter()
        if write == "save":
            for sample, detections in zip(dataset.select(batch_ids, ordered=True), labels):
                sample[field] = detections
                sample.save()
        else:
            dataset.set_values(field, dict(zip(batch_ids, labels)), key_field="id")
        t4 = time.perf_counter()
        stages["decode"] += t1 - t0
        stages["model (processor + forward)"] += t2 - t1
        stages["post-processing"] += t3 - t2
        stages["writes"] += t4 - t3
    seconds = time.perf_counter() - start
    stages["other"] = seconds - sum(stages.values())
    return seconds, {"stages_s": dict(stages), "share": {k: v / seconds for k, v in stages.items()}}


def check_fields(dataset, ours_field, ref_field) -> dict:
    """Same number of detections per sample, confidences within 0.01."""
    ours = dataset.values(f"{ours_field}.detections.confidence")
    ref = dataset.values(f"{ref_field}.detections.confidence")
    mismatched, max_diff = 0, 0.0
    for a, b in zip(ours, ref):
        a, b = a or [], b or []
        if len(a) != len(b):
            mismatched += 1
        elif a:
            max_diff = max(max_diff, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
    return {
        "detections_ours": int(sum(len(a or []) for a in ours)),
        "detections_reference": int(sum(len(b or []) for b in ref)),
        "samples_with_count_mismatch": mismatched,
        "max_confidence_diff": max_diff,
        "ok": mismatched == 0 and max_diff <= 0.01,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--config", choices=("tiny", "small", "full"), default=None, help="default: full on cuda, tiny on cpu"
    )
    parser.add_argument("--images", type=int, default=None, help="default 512 on cuda, 48 on cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default 16 on cuda, 8 on cpu)")
    parser.add_argument("--num-workers", default="0,2", help="ours: loader workers to try, comma-separated")
    parser.add_argument(
        "--ref-batch-sizes", default=None, help="reference batch sizes (default 1,4,8,16 cuda; 1,4,8 cpu)"
    )
    parser.add_argument("--dets-per-image", type=float, default=8.0)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per measurement, fastest kept (each rewrites its field)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    args.config = args.config or ("full" if cuda else "tiny")
    args.images = args.images or (512 if cuda else 48)
    args.batch_size = args.batch_size or (16 if cuda else 8)
    args.num_workers = [int(v) for v in args.num_workers.split(",")]
    args.ref_batch_sizes = [int(v) for v in (args.ref_batch_sizes or ("1,4,8,16" if cuda else "1,4,8")).split(",")]
    args.out = args.out or os.path.join(be.REPO_ROOT, "bench", "results", f"e2e-{args.config}-{args.device.type}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    bench = be.Bench(args.config, args.device)
    threshold = be.calibrate_detector(bench, be.make_images(4, seed=99), args.dets_per_image)
    image_dir = os.path.join(_TMP, "images")
    os.makedirs(image_dir)
    paths = write_images(image_dir, args.images)
    dataset = fo.Dataset()  # non-persistent, deleted below
    rows, breakdowns, checks = [], {}, []
    try:
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])
        # warm-up (lazy imports, first kernels, the text cache) on a few samples
        warm = dataset.limit(min(4, len(paths)))
        run_ours(bench, warm, "warm", threshold, args.batch_size, 0, False)
        run_reference(bench, warm, "warm", threshold, args.batch_size, "set_values")
        ref_dtypes = [("", None), ("-bf16", torch.bfloat16)] if args.device.type == "cuda" else [("", None)]

        def add(pipeline, setting, seconds, breakdown):
            row = {
                "pipeline": pipeline,
                "setting": setting,
                "seconds": seconds,
                "images_per_s": args.images / seconds,
                "ms_per_image": 1000 * seconds / args.images,
            }
            rows.append(row)
            if breakdown:
                breakdowns[f"{pipeline} {setting}"] = breakdown
            print(
                f"  {pipeline:<20} {setting:<28} {row['images_per_s']:8.2f} img/s {row['ms_per_image']:8.2f} ms/img",
                flush=True,
            )

        for workers in args.num_workers:
            field = f"ours_w{workers}"
            seconds = min(
                run_ours(bench, dataset, field, threshold, args.batch_size, workers, instrument=False)[0]
                for _ in range(args.repeats)
            )
            add("ours (apply_model)", f"batch={args.batch_size} workers={workers}", seconds, None)
            seconds, breakdown = run_ours(
                bench, dataset, field + "_instr", threshold, args.batch_size, workers, instrument=True
            )
            breakdowns[
                f"ours batch={args.batch_size} workers={workers} (instrumented run: {args.images / seconds:.2f} img/s)"
            ] = breakdown
        for write in ("save", "set_values"):
            for suffix, dtype in ref_dtypes:
                for batch in args.ref_batch_sizes:
                    field = f"ref_{write}{suffix.replace('-', '_')}_b{batch}"
                    runs = [
                        run_reference(bench, dataset, field, threshold, batch, write, dtype)
                        for _ in range(args.repeats)
                    ]
                    seconds, breakdown = min(runs, key=lambda run: run[0])
                    add(f"ref-{write}{suffix}", f"batch={batch}", seconds, breakdown)
                    if (dtype is torch.bfloat16) == (args.device.type == "cuda"):
                        checks.append(
                            {
                                "reference": field,
                                "ours": f"ours_w{args.num_workers[0]}",
                                **check_fields(dataset, f"ours_w{args.num_workers[0]}", field),
                            }
                        )
    finally:
        dataset.delete()
    best_ours = max((r for r in rows if r["pipeline"].startswith("ours")), key=lambda r: r["images_per_s"])
    best_ref = max((r for r in rows if r["pipeline"].startswith("ref")), key=lambda r: r["images_per_s"])
    summary = {
        "best_ours": best_ours,
        "best_reference": best_ref,
        "speedup_vs_best_reference (target >= 1.5)": best_ours["images_per_s"] / best_ref["images_per_s"],
    }
    result = {
        "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()},
        "machine": be.machine_info(args.device),
        "score_threshold": threshold,
        "rows": rows,
        "breakdowns": breakdowns,
        "correctness": checks,
        "summary": summary,
    }
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    plot(
        rows,
        breakdowns,
        os.path.join(args.out, "results.png"),
        f"end to end into FiftyOne: {args.config} on {result['machine'].get('gpu', 'CPU')}",
    )
    lines = ["| pipeline | setting | images/s | ms/image |", "|---|---|---:|---:|"]
    lines += [f"| {r['pipeline']} | {r['setting']} | {r['images_per_s']:.2f} | {r['ms_per_image']:.2f} |" for r in rows]
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    for name, breakdown in breakdowns.items():
        print(f"\n{name}: share of wall time")
        for stage, share in breakdown["share"].items():
            print(f"  {stage:<36} {100 * share:5.1f}%  ({breakdown['stages_s'][stage]:.3f} s)")
        for key in ("decode_in_process_s", "bulk_writes_background_thread_s"):
            if key in breakdown:
                print(f"  ({key}: {breakdown[key]:.3f} s)")
    print(
        "\nsummary:",
        json.dumps(
            {
                k: (v if not isinstance(v, dict) else f"{v['pipeline']} {v['setting']}: {v['images_per_s']:.2f} img/s")
                for k, v in summary.items()
            },
            indent=2,
        ),
    )
    print("\ncorrectness:")
    for check in checks:
        print("  ", check)
    bad = [c for c in checks if not c["ok"]]
    print(
        f"\n{'ALL AGREE' if not bad else f'{len(bad)} DISAGREEMENTS'}; wrote {args.out}/results.json, results.png, results.md"
    )
    return 1 if bad else 0


def plot(rows, breakdowns, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 5))
    left.barh([f"{r['pipeline']} {r['setting']}" for r in rows], [r["images_per_s"] for r in rows])
    left.set_xlabel("images/s (decode + model + post-processing + DB writes)")
    left.invert_yaxis()
    names = list(breakdowns)
    stages = list(dict.fromkeys(stage for b in breakdowns.values() for stage in b["share"]))
    bottom = np.zeros(len(names))
    for stage in stages:
        values = np.array([breakdowns[n]["share"].get(stage, 0.0) for n in names])
        right.bar(range(len(names)), values, bottom=bottom, label=stage)
        bottom += values
    right.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], rotation=30, ha="right", fontsize=7)
    right.set_ylabel("share of wall time")
    right.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
