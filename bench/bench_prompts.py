"""Interactive and automatic prompts: what a click, "segment everything" and de-duplication cost.

Three measurements, each against the obvious alternative, on the same model objects and images
(random weights, built in memory as in ``bench_engine.py``; torch + transformers only, no fiftyone):

  refine  one refinement iteration (a click on a known mask: cached image features, the previous
          mask's low-resolution logits as ``input_masks``: prompt encoder + mask decoder only)
          vs a full re-run of the same image (image encoder + decoder)
  auto    ``mode="auto"`` (a grid of points_per_side^2 single-point prompts, batched, filtered,
          de-duplicated) per image vs the per-point loop (the image embedded once, then one
          ``Sam3TrackerModel`` call per point and ``post_process_masks`` of its three masks, as a
          notebook would write it; no filtering, no de-duplication)
  nms     ``mask_nms`` on 200 low-resolution hits at the model's mask size (IoU 0.5, containment 0.9)
  written the exact check on the written masks (issue 22) next to the low-resolution prune, inside
          real ``segment`` calls: text prompts (3 prompts, every query kept, ``nms_iou=0.5``) and
          auto mode (``nms_iou=0.7``, the auto default), each on an image of the bench's size and
          on a 64 x 900 strip: milliseconds spent in each pass (timers around the engine's own
          functions), how many hits each pass sees and keeps, and the whole call with and without
          the rules

Usage::

    python bench/bench_prompts.py --device cpu --config tiny
    python bench/bench_prompts.py --device cuda --config full      # on a GPU

Prints a table and writes ``bench/results/prompts-<config>-<device>/results.{json,md}``.
Peak memory is the CUDA allocator's peak on a GPU; on a CPU it is not measured here (the
bounded-memory check of the auto mode is ``tests/test_dedup.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import Bench, machine_info, make_images, sync  # noqa: E402

import sam3_ops.core.engine as engine_module  # noqa: E402
from sam3_ops.core.nms import mask_nms  # noqa: E402
from sam3_ops.core.queries import ImagePrompts, ObjectPrompt, grid_points  # noqa: E402


def timed(device, run, repeats: int) -> tuple[float, float | None]:
    """The fastest of ``repeats`` runs (seconds) and the CUDA peak memory (GiB) or ``None``."""
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return best, peak


def bench_refine(bench: Bench, image, repeats: int) -> list[dict]:
    engine = bench.engine
    engine.feature_cache_size, engine.mask_cache_size = 4, 16
    height, width = image.shape[:2]
    first_click = ObjectPrompt("object", [[width * 0.4, height * 0.4]], [1])
    first = engine.segment(
        [image], [ImagePrompts(objects=(first_click,))], mode="points", image_keys=["img"], keep_logits=True
    )[0]
    engine.remember_masks({("img", "det"): first.low_res_logits[0]})
    click = ObjectPrompt(
        "object", [[width * 0.4, height * 0.4], [width * 0.8, height * 0.2]], [1, 0], mask_key=("img", "det")
    )

    def rerun():
        engine.clear_cache()  # nothing cached: the image encoder runs again
        engine.segment([image], [ImagePrompts(objects=(click,))], mode="points")

    def iteration():
        engine.segment([image], [ImagePrompts(objects=(click,))], mode="points", image_keys=["img"])

    rows = []
    seconds, peak = timed(bench.device, rerun, repeats)
    rows.append({"scenario": "refine", "pipeline": "full re-run", "ms": 1000 * seconds, "peak_gib": peak})
    engine.segment([image], [ImagePrompts(objects=(first_click,))], mode="points", image_keys=["img"])  # re-cache
    engine.remember_masks({("img", "det"): first.low_res_logits[0]})
    seconds, peak = timed(bench.device, iteration, repeats)
    rows.append({"scenario": "refine", "pipeline": "one refinement iteration", "ms": 1000 * seconds, "peak_gib": peak})
    return rows


def bench_auto(bench: Bench, image, points_per_side: int, repeats: int) -> list[dict]:
    engine, tracker, device = bench.engine, bench.tracker, bench.device
    engine.clear_cache()
    options = {
        "mode": "auto",
        "points_per_side": points_per_side,
        "pred_iou_threshold": 0.0,
        "stability_threshold": 0.0,
    }
    hits = []

    def ours():
        hits[:] = [len(engine.segment([image], None, **options)[0])]

    height, width = image.shape[:2]
    points = grid_points(points_per_side, width, height)
    size = tracker.prompt_encoder.input_image_size
    scale = np.array([size / width, size / height], np.float32)

    @torch.inference_mode()
    def loop():
        pixel_values = engine.preprocess([image]).to(device)
        embeddings = tracker.get_image_embeddings(pixel_values)
        masks = []
        for point in points:
            out = tracker(
                image_embeddings=embeddings,
                input_points=torch.from_numpy(point * scale)[None, None, None].to(device),
                input_labels=torch.ones(1, 1, 1, dtype=torch.long, device=device),
                multimask_output=True,
            )
            # three masks per point at the image's size, as the docs' post-processing gives them
            masks.append(bench.tracker_processor.post_process_masks(out.pred_masks.cpu(), [[height, width]])[0])
        return masks

    rows = []
    seconds, peak = timed(device, ours, repeats)
    label = f"{points_per_side}x{points_per_side} points"
    rows.append(
        {
            "scenario": "auto",
            "pipeline": "ours (batched grid, filter, NMS)",
            "setting": label,
            "ms": 1000 * seconds,
            "peak_gib": peak,
            "hits": hits[0],
        }
    )
    seconds, peak = timed(device, loop, repeats)
    rows.append(
        {
            "scenario": "auto",
            "pipeline": "per-point loop + post_process_masks",
            "setting": label,
            "ms": 1000 * seconds,
            "peak_gib": peak,
        }
    )
    return rows


def bench_nms(device, mask_size: int, count: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:mask_size, :mask_size]
    masks = np.zeros((count, mask_size, mask_size), bool)
    for k in range(count):  # ellipses, many overlapping: like real hits on a crowded image
        cx, cy = rng.uniform(0, mask_size, 2)
        rx, ry = rng.uniform(mask_size / 40, mask_size / 5, 2)
        masks[k] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    masks = torch.from_numpy(masks).to(device)
    scores = torch.from_numpy(rng.uniform(0, 1, count).astype(np.float32)).to(device)
    boxes = torch.from_numpy(
        np.stack([masks.cpu().numpy().any(1).argmax(1), masks.cpu().numpy().any(2).argmax(1)], 1).repeat(2, 1)
    ).float()
    kept = []

    def run():
        kept[:] = [len(mask_nms(masks, scores, 0.5, 0.9, None, boxes.to(device)))]

    seconds, peak = timed(device, run, repeats)
    return [
        {
            "scenario": "nms",
            "pipeline": "mask_nms",
            "setting": f"{count} hits at {mask_size}x{mask_size}",
            "ms": 1000 * seconds,
            "peak_gib": peak,
            "hits": kept[0],
        }
    ]


class _Timer:
    """Wraps one of the engine module's functions: total seconds spent in it, calls, and the
    number of hits it was given (``len`` of argument ``count_arg``) and returned."""

    def __init__(self, name: str, device, count_arg: int):
        self.name, self.device, self.count_arg = name, device, count_arg
        self.function = getattr(engine_module, name)
        self.reset()

    def reset(self):
        self.seconds, self.calls, self.given, self.returned = 0.0, 0, 0, 0

    def __call__(self, *args, **kwargs):
        sync(self.device)
        start = time.perf_counter()
        result = self.function(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.given += len(args[self.count_arg])
        self.returned += len(result)
        return result


def bench_written(bench: Bench, images: dict, repeats: int) -> list[dict]:
    """The exact check on written masks next to the low-resolution prune, in real segment calls."""
    engine, device = bench.engine, bench.device
    prune = _Timer("mask_nms", device, 1)  # low-res NMS: (masks, scores, ...)
    areas = _Timer("written_areas", device, 1)  # exact: areas of the written candidates
    exact = _Timer("written_nms", device, 1)  # exact: NMS on the written masks
    timers = (prune, areas, exact)
    cases = {  # name: (prompts, options, rules)
        "text, 3 prompts, every query": (
            [ImagePrompts(texts=("cat", "dog", "cup"))],
            {"threshold": 0.0},
            {"nms_iou": 0.5},
        ),
        "auto, 16x16 points": (
            None,
            {"mode": "auto", "points_per_side": 16, "pred_iou_threshold": 0.0, "stability_threshold": 0.0},
            {"nms_iou": 0.7},
        ),
    }
    rows = []
    for image_name, image in images.items():
        for case, (prompts, options, rules) in cases.items():

            def plain(image=image, prompts=prompts, options=options):
                return engine.segment([image], prompts, **options)

            def with_rules(image=image, prompts=prompts, options=options, rules=rules):
                return engine.segment([image], prompts, **options, **rules)

            seconds_plain, _ = timed(device, plain, repeats)
            candidates = len(plain()[0])
            # the passes' timers and the whole call from the same calls: the fastest of `repeats`
            seconds_rules, spent, kept = float("inf"), None, 0
            try:
                for timer in timers:
                    setattr(engine_module, timer.name, timer)
                with_rules()  # warm-up
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                for _ in range(repeats):
                    for timer in timers:
                        timer.reset()
                    sync(device)
                    start = time.perf_counter()
                    kept = len(with_rules()[0])
                    sync(device)
                    seconds = time.perf_counter() - start
                    if seconds < seconds_rules:
                        seconds_rules = seconds
                        spent = {t.name: (t.seconds, t.given, t.returned) for t in timers}
            finally:
                for timer in timers:
                    setattr(engine_module, timer.name, timer.function)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            setting = f"{case}, {rules}, {image_name}"
            rows += [
                {
                    "scenario": "written",
                    "pipeline": "segment, no rules",
                    "setting": setting,
                    "ms": 1000 * seconds_plain,
                    "peak_gib": None,
                    "hits": candidates,
                },
                {
                    "scenario": "written",
                    "pipeline": "segment, rules (both passes)",
                    "setting": setting,
                    "ms": 1000 * seconds_rules,
                    "peak_gib": peak,
                    "hits": kept,
                },
                {
                    "scenario": "written",
                    "pipeline": "low-res prune (mask_nms)",
                    "setting": setting,
                    "ms": 1000 * spent["mask_nms"][0],
                    "peak_gib": None,
                    "hits": f"{spent['mask_nms'][1]} -> {spent['mask_nms'][2]}",
                },
                {
                    "scenario": "written",
                    "pipeline": "exact check (written_areas + written_nms)",
                    "setting": setting,
                    "ms": 1000 * (spent["written_areas"][0] + spent["written_nms"][0]),
                    "peak_gib": None,
                    "hits": f"{spent['written_nms'][1]} -> {kept}",
                },
            ]
    return rows


def markdown(rows) -> str:
    lines = ["| scenario | pipeline | setting | ms | peak GiB | hits |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "n/a (CPU)"
        lines.append(
            f"| {r['scenario']} | {r['pipeline']} | {r.get('setting', '')} | {r['ms']:.1f} | {peak} | {r.get('hits', '')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="tiny", choices=("tiny", "small", "full"))
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--only", default=None, choices=("refine", "auto", "nms", "written"), help="run one scenario (default: all)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    bench = Bench(args.config, device)
    (image,) = make_images(1, sizes=[(480, 640)])
    probe = ImagePrompts(objects=(ObjectPrompt("object", [[10, 10]], [1]),))
    mask_size = bench.engine.segment([image], [probe], mode="points", keep_logits=True)[0].low_res_logits[0].shape[-1]
    rows = []
    if args.only in (None, "refine"):
        rows += bench_refine(bench, image, args.repeats)
    if args.only in (None, "auto"):
        rows += bench_auto(bench, image, args.points_per_side, args.repeats)
    if args.only in (None, "nms"):
        rows += bench_nms(device, mask_size, 200, args.repeats)
    if args.only in (None, "written"):
        (strip,) = make_images(1, seed=1, sizes=[(64, 900)])
        rows += bench_written(bench, {"640x480": image, "64x900": strip}, args.repeats)
    table = markdown(rows)
    print(table)
    suffix = f"-{args.only}" if args.only else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"prompts-{args.config}-{device.type}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"config": args.config, "device": str(device), "machine": machine_info(device), "load": os.getloadavg()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "results.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
