"""Calibration (issue 24): what ``sam3_ops.calibrate`` costs on N labelled images x 12 candidate wordings.

The claim: calibration costs ONE inference pass plus a threshold sweep that takes under 5 % of it.
Measured on a real FiftyOne dataset (a private mongod) of N JPEGs (640 x 480, a few shapes on a
textured background), random weights:

  plain      ``sam3_ops.segment`` of the 12 wordings as text prompts at the score floor (0.05):
             what one inference pass over these images costs, the yardstick
  calibrate  ``sam3_ops.calibrate`` of 4 classes x 3 wordings on ground truth built from the plain
             pass's own hits (so matches exist: the run fails unless every class matched some): its
             ``seconds["inference"]`` (the one segment pass into the scratch field) and
             ``seconds["sweep"]`` (FiftyOne's ``evaluate_detections`` matching + the threshold sweep,
             per class and wording), the whole call's wall time (the run record included)
  reference  the sweep done the obvious way on the plain field, one ``evaluate_detections`` per
             class and wording on a view filtered to that wording (what calibrate did before
             issue 24): its seconds, and a check that its TP / FP at every threshold equal calibrate's
             curves (exit code 1 on a difference)

Ground truth of class k: the plain hits of one of its wordings (the k-th modulo 3, so the right
wording varies by class) scoring at or above that wording's median score, relabelled as the class;
every 4th dropped and every 5th moved to a corner box, so no wording is perfect.

Configurations: ``tiny`` (default) is the test checkpoint with each of its 20 queries given a box of
its own (a 5 x 4 grid, as ``tests/test_calibrate.py``'s fixture: the plain tiny model predicts the
same box for every query, and every hit would match every ground truth); its model is small, yet
its pass costs ~2 s an image for 12 wordings on this CPU. NOT a worst case for a GPU: there real
SAM3 runs in tens of milliseconds an image while the sweep stays on the CPU and grows with the
hits, so its share would be larger than here (not measured: no GPU). ``full`` is SAM3's full-size architecture
(1008 px, 200 queries) with random weights (``sam3_ops.testing.build_fullsize_checkpoint``, 3.4 GB,
built once into ``--checkpoint``): a real model's cost on this CPU (about a minute an image or more:
use ``--images 2``-``20``). Random weights score every query ~0.25, so every query of every wording
passes the floor: 20 (tiny) or 200 (full) hits per image and wording, more than a trained model keeps;
on full, ``max_mask_size`` is 64 (``--max-mask-size``) so that 2,400 masks stay within one sample's
16 MB (both runs alike; box matching reads no mask). The sweep's cost grows with the hits, the
inference pass's mostly with the images: the share depends on both (see ``bench/calibrate.md``).

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_calibrate.py                       # tiny, 200 images
    PYTHONPATH=. .venv/bin/python bench/bench_calibrate.py --config full --images 3 --checkpoint /tmp/fullsize
    PYTHONPATH=. .venv/bin/python bench/bench_calibrate.py --images 20 --profile  # + cProfile of calibrate

Prints a table and writes ``bench/results/calibrate-<config>/results.{json,md}`` (git-ignored); exit
code 1 when calibrate's curves differ from the reference or some class matched nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: the classes and their candidate wordings (12 in all)
CANDIDATES = {
    "vehicle": ["car", "automobile", "red vehicle"],
    "animal": ["dog", "animal", "small pet"],
    "person": ["person", "pedestrian", "human figure"],
    "furniture": ["chair", "furniture", "wooden seat"],
}
SCORE_FLOOR = 0.05
#: ``max_mask_size`` on full: its 2,400 hits an image (200 queries x 12 wordings, random weights) with
#: masks at their box's size could pass MongoDB's 16 MB limit on one sample; box matching reads none
FULL_MASK_SIZE = 64
IOU = 0.5


def make_images(directory: Path, count: int, size=(640, 480), seed: int = 0) -> list[str]:
    """``count`` JPEGs (quality 90) of ``size``: a smooth textured background and 3-6 filled shapes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    paths = []
    for i in range(count):
        base = rng.integers(40, 200, 3)
        ramp = (xx / width)[..., None] * rng.integers(-40, 40, 3) + (yy / height)[..., None] * rng.integers(-40, 40, 3)
        noise = rng.normal(0, 12, (height, width, 3))
        image = Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 7))):
            x0, y0 = rng.integers(0, width - 60), rng.integers(0, height - 60)
            x1, y1 = x0 + rng.integers(40, 260), y0 + rng.integers(40, 200)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        path = directory / f"img{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def grid_checkpoint(path: Path) -> str:
    """The tiny test checkpoint with each of its 20 queries given a box of its own (a 5 x 4 grid,
    no box refinement), as ``tests/test_calibrate.py`` uses it."""
    from sam3_ops.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(path, grid_boxes=True)


def write_ground_truth(dataset, source: str, gt_field: str) -> dict:
    """``gt_field``: per class, the ``source`` hits of one of its wordings at or above that wording's
    median score, labelled as the class; every 4th dropped, every 5th moved to a corner. Returns
    ``{class: the wording it came from}``."""
    import fiftyone as fo

    origin = {label: words[k % len(words)] for k, (label, words) in enumerate(CANDIDATES.items())}
    scores = dataset.values(f"{source}.detections.confidence", unwind=True)
    labels = dataset.values(f"{source}.detections.label", unwind=True)
    medians = {text: float(np.median([s for s, lab in zip(scores, labels) if lab == text])) for text in origin.values()}
    counter = 0
    values = []
    for detections in dataset.values(f"{source}.detections"):
        truth = []
        for det in detections or []:
            for label, text in origin.items():
                if det.label != text or det.confidence < medians[text]:
                    continue
                counter += 1
                if counter % 4 == 0:
                    continue
                box = [0.97, 0.97, 0.02, 0.02] if counter % 5 == 0 else list(det.bounding_box)
                truth.append(fo.Detection(label=label, bounding_box=box))
        values.append(fo.Detections(detections=truth))
    dataset.set_values(gt_field, values)
    return origin


def reference_sweep(dataset, source: str, gt_field: str) -> tuple[float, dict]:
    """The sweep the obvious way on ``source``: per class and wording, ``evaluate_detections`` on a
    view filtered to the class's ground truth and the wording's hits. Returns ``(seconds,
    {class: {wording: (scores descending, matched)}})``."""
    from fiftyone import ViewField as F

    started = time.perf_counter()
    found = {}
    for label, words in CANDIDATES.items():
        gt_view = dataset.filter_labels(gt_field, F("label") == label, only_matches=False)
        found[label] = {}
        for text in words:
            view = gt_view.filter_labels(source, F("label") == text, only_matches=False)
            results = view.evaluate_detections(source, gt_field=gt_field, iou=IOU, classwise=False, progress=False)
            pairs = sorted(
                (
                    (float(c), g is not None)
                    for g, p, c in zip(results.ytrue_ids, results.ypred_ids, results.confs)
                    if p
                ),
                key=lambda m: -m[0],
            )
            found[label][text] = pairs
    return time.perf_counter() - started, found


def check_against_reference(result, reference: dict, ground_truth: dict) -> list[str]:
    """Differences between calibrate's curves and the reference sweep's (recall and precision at
    every threshold), as messages; empty when they agree."""
    problems = []
    for label, words in reference.items():
        for text, pairs in words.items():
            curve = result.curves[label][text]
            kept = [(s, m) for s, m in pairs if s > SCORE_FLOOR]
            thresholds = sorted({s for s, _ in kept}, reverse=True)
            if curve["thresholds"] != thresholds:
                problems.append(f"{label}/{text}: thresholds differ ({len(curve['thresholds'])} vs {len(thresholds)})")
                continue
            tp = np.cumsum([m for _, m in kept])
            last = np.r_[np.diff([s for s, _ in kept]) != 0, True] if kept else np.zeros(0, bool)
            tp = tp[last] if kept else tp
            n = np.arange(1, len(kept) + 1)[last] if kept else np.zeros(0)
            recall = (tp / ground_truth[label]).tolist() if ground_truth[label] else [0.0] * len(tp)
            precision = (tp / n).tolist() if len(n) else []
            if not np.allclose(curve["recall"], recall) or not np.allclose(curve["precision"], precision):
                problems.append(f"{label}/{text}: precision or recall differ")
    return problems


def _cpu_timers() -> dict:
    """CPU seconds of this process (every thread; not the database server's) spent in calibrate's
    inference pass (its ``segment``) and in its matching (``_match_candidates``, the bulk of the
    sweep), by wrappers the bench installs on the calibrate module (no package code edited)."""
    import sam3_ops.curation.calibrate as module

    spent = {"segment": 0.0, "_match_candidates": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - started

        return wrapper

    for name in spent:
        setattr(module, name, timed(name, getattr(module, name)))
    return spent


def run(
    config: str, images: int, checkpoint: str | None, profile: bool, workdir: Path, threads: int, max_mask_size
) -> dict:
    """The measurements, in this process (the database server already started)."""
    import fiftyone as fo
    import torch
    import transformers

    import sam3_ops

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    image_dir = workdir / "images"
    image_dir.mkdir()
    paths = make_images(image_dir, images)
    if config == "tiny":
        checkpoint = grid_checkpoint(workdir / "tiny")
    elif not os.path.isfile(os.path.join(checkpoint, "model.safetensors")):
        from sam3_ops.testing import build_fullsize_checkpoint

        build_fullsize_checkpoint(checkpoint)
    settings = {"model_path": checkpoint, "device": "cpu"}
    if max_mask_size is not None:
        settings["max_mask_size"] = max_mask_size
    texts = [text for words in CANDIDATES.values() for text in words]
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    dataset.compute_metadata()
    options = dict(threshold=SCORE_FLOOR, record=False, num_workers=0, progress=False, **settings)

    # warm-up: the model loaded into the pool both runs share; on tiny also a first image (on full an
    # image costs minutes: its first image pays for paging in the memory-mapped weights, a few seconds)
    sam3_ops.load_model(**settings, prompts=texts, reuse=True)
    if config == "tiny":
        sam3_ops.segment(dataset.limit(1), "warm", prompts=texts, **options)
        dataset.delete_sample_field("warm")

    started, cpu = time.perf_counter(), time.process_time()
    plain = sam3_ops.segment(dataset, "plain", prompts=texts, **options)
    plain_s, plain_cpu = time.perf_counter() - started, time.process_time() - cpu
    origin = write_ground_truth(dataset, "plain", "gt")
    ground_truth = {label: dataset.count_values("gt.detections.label").get(label, 0) for label in CANDIDATES}

    profiler = cProfile.Profile() if profile else None
    cpu_seconds = _cpu_timers()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = sam3_ops.calibrate(
        dataset,
        "gt",
        candidates=CANDIDATES,
        score_floor=SCORE_FLOOR,
        iou=IOU,
        num_workers=0,
        progress=False,
        **settings,
    )
    if profiler:
        profiler.disable()
    calibrate_s = time.perf_counter() - started

    cpu = time.process_time()
    reference_s, reference = reference_sweep(dataset, "plain", "gt")
    reference_cpu = time.process_time() - cpu
    problems = check_against_reference(result, reference, ground_truth)
    rows = [
        {k: row[k] for k in ("label", "text", "threshold", "precision", "recall", "f1", "tp", "fp", "fn", "flag")}
        | {"ground_truth": row["ground_truth"], "from": origin[row["label"]]}
        for row in result.table
    ]
    unmatched = [row["label"] for row in rows if not row["tp"]]
    if unmatched:
        problems.append(f"no match found for {unmatched}: the benchmark compared nothing")
    inference, sweep = result.seconds["inference"], result.seconds["sweep"]
    out = {
        "config": config,
        "images": images,
        "wordings": len(texts),
        "classes": len(CANDIDATES),
        "hits": plain.detections,
        "ground_truth": sum(ground_truth.values()),
        "plain_s": round(plain_s, 3),
        "inference_s": inference,
        "sweep_s": sweep,
        "sweep_pct": round(100 * sweep / inference, 2),
        "calibrate_s": round(calibrate_s, 3),
        "inference_vs_plain": round(inference / plain_s, 3),
        "reference_sweep_s": round(reference_s, 3),
        "cpu_s": {
            "plain": round(plain_cpu, 3),
            "inference": round(cpu_seconds["segment"], 3),
            "sweep_matching": round(cpu_seconds["_match_candidates"], 3),
            "reference_sweep": round(reference_cpu, 3),
        },
        "per_image_ms": {
            "plain": round(1000 * plain_s / images, 2),
            "inference": round(1000 * inference / images, 2),
            "sweep": round(1000 * sweep / images, 2),
            "reference_sweep": round(1000 * reference_s / images, 2),
        },
        "classes_table": rows,
        "problems": problems,
    }
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(45)
        out["profile"] = text.getvalue()
    dataset.delete()
    return out


def markdown(out: dict) -> str:
    per, cpu = out["per_image_ms"], out["cpu_s"]
    load = (out["machine"]["load_avg_before"][0], out["machine"]["load_avg_after"][0])
    lines = [
        f"{out['images']} images x {out['wordings']} wordings ({out['classes']} classes), config {out['config']}, "
        f"{out['hits']} hits at the floor, {out['ground_truth']} ground-truth objects",
        "",
        "| what | seconds | ms per image |",
        "|---|---:|---:|",
        f"| plain `segment` of the 12 wordings (one inference pass) | {out['plain_s']:.2f} | {per['plain']:.1f} |",
        f"| calibrate: inference pass | {out['inference_s']:.2f} | {per['inference']:.1f} |",
        f"| calibrate: sweep (matching + sweep) | {out['sweep_s']:.2f} | {per['sweep']:.1f} |",
        f"| calibrate: whole call (run record included) | {out['calibrate_s']:.2f} | |",
        f"| reference sweep (one evaluate_detections per class and wording) | {out['reference_sweep_s']:.2f} "
        f"| {per['reference_sweep']:.1f} |",
        "",
        f"CPU seconds (this process, every thread; the database server not counted): plain {cpu['plain']:.2f}, "
        f"inference {cpu['inference']:.2f}, matching {cpu['sweep_matching']:.2f} "
        f"({100 * cpu['sweep_matching'] / cpu['inference']:.1f} % of the inference), "
        f"reference sweep {cpu['reference_sweep']:.2f}; load average {load[0]:.1f} before, {load[1]:.1f} after",
        "",
        f"**sweep = {out['sweep_pct']:.1f} % of the inference pass**; calibrate's inference pass = "
        f"{out['inference_vs_plain']:.2f} x a plain segment of the same prompts",
        "",
        "| class | wording chosen | GT from | threshold | P | R | F1 | TP | FP | FN | GT |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["classes_table"]:
        lines.append(
            f"| {r['label']} | {r['text']} | {r['from']} | {r['threshold']:.4f} | {r['precision']:.3f} "
            f"| {r['recall']:.3f} | {r['f1']:.3f} | {r['tp']} | {r['fp']} | {r['fn']} | {r['ground_truth']} |"
        )
    if out["problems"]:
        lines += ["", "PROBLEMS: " + "; ".join(out["problems"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--checkpoint", help="full: a full-size checkpoint dir (built there if it holds none)")
    parser.add_argument("--profile", action="store_true", help="cProfile the calibrate call (top 45, cumulative)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    parser.add_argument(
        "--max-mask-size", type=int, help=f"the setting, for both runs (default: {FULL_MASK_SIZE} on full, else unset)"
    )
    parser.add_argument("--out", help="results directory (default bench/results/calibrate-<config>)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    from sam3_ops.testing import PrivateMongo

    scratch = Path(tempfile.mkdtemp(prefix="sam3-calibrate-bench-"))
    checkpoint = args.checkpoint or str(scratch / "fullsize")
    mongo = PrivateMongo(scratch / "mongo").start()  # before fiftyone is imported
    load = os.getloadavg()
    try:
        mask_size = args.max_mask_size if args.max_mask_size is not None else FULL_MASK_SIZE * (args.config == "full")
        out = run(args.config, args.images, checkpoint, args.profile, scratch, max(1, args.threads), mask_size or None)
    finally:
        mongo.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    import torch
    import transformers

    out["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": max(1, args.threads),
        "max_mask_size": mask_size or None,
        "platform": platform.platform(),
        "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    table = markdown(out)
    print(table)
    if "profile" in out:
        print(out["profile"])
    target = Path(args.out or ROOT / "bench" / "results" / f"calibrate-{args.config}")
    target.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_text(json.dumps(out, indent=1))
    (target / "results.md").write_text(table + "\n")
    print(f"results: {target}")
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
