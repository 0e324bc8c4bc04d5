"""The host side of the pipeline measured alone: everything ``apply_model`` does around the model.

A GPU does SAM3's part in ~15-20 ms per image; the host must keep up: decode the images (FiftyOne's
data-loader workers running ``sam3_ops.sdk.model.Sam3GetItem``), turn the engine's hits into
``fo.Detections`` (``sam3_ops.sdk.convert.to_detections``), serialise them (FiftyOne compresses each
mask with ``np.save`` + ``zlib``) and write them (``SaveContext``'s bulk writes). Target: one CPU core
sustains >= 15 images/s, so 16 cores stay >= 4x ahead of one GPU.

How: the real ``dataset.apply_model(Sam3Model(...))`` runs, with every host stage the package's and
FiftyOne's own code, on an engine whose ``segment`` is replaced by a replay (:class:`ReplayEngine`, a
bench-only stand-in): it returns pre-made ``ImageSegmentation`` objects, as ``sam3_ops.core.engine``
returns them, for the images it is handed, and runs no model.

The replayed hits are SYNTHESISED (no real SAM3 weights can be fetched here, so nothing was recorded
from a real run): per image 6-14 hits (10 on average), box areas log-uniform between 0.2% and 40% of the
image with aspect ratios between 1:2 and 2:1 (COCO-like: many small objects, a few large), each mask a
filled ellipse, polygon or smooth blob drawn at SAM3's mask resolution (288 px for the whole image) and
upsampled bilinearly to its box, then thresholded, as SAM3's masks are made: solid regions with smooth
edges that compress like real masks (the JSON records their compressed size), not noise. Images: the
photos shipped with scikit-image, resized to COCO-like mixed sizes and saved as JPEG (quality 90).

Reported per setting (loader workers, batch size): images/s of wall time, and images per CPU-second:
the process's CPU time (every thread of it: FiftyOne's background writer included) plus its loader
workers' (``RUSAGE_CHILDREN``, after they are joined), and separately the database server's (its
``/proc`` times). One thread for torch (``torch.set_num_threads(1)``), 1 worker: per core figures.
A stage split (timing wrappers, no package code edited) and a cProfile of the main thread follow.

The database is ``bench_e2e``'s private mongod (started in a temporary directory when that module is
imported, removed at exit); the dataset is non-persistent and deleted.

Usage::

    python bench/bench_host.py                       # 256 images, batch 16, workers 0 and 1, 3 repeats
    python bench/bench_host.py --images 64 --repeats 1 --no-profile

Writes ``results.json`` and ``results.md`` under ``--out`` (default ``bench/results/host``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import bench_e2e as e2e  # noqa: E402  (starts the private mongod; puts the repo root on sys.path)
import fiftyone as fo  # noqa: E402
import fiftyone.core.collections as foc  # noqa: E402
import fiftyone.core.utils as fou  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import sam3_ops.sdk.model as model_module  # noqa: E402
from sam3_ops.core.engine import ImageSegmentation, Sam3Engine  # noqa: E402
from sam3_ops.sdk.model import Sam3GetItem, Sam3Model  # noqa: E402
from sam3_ops.sdk.settings import Sam3Settings  # noqa: E402

be = e2e.be
PROMPTS = ("person", "car", "dog")
#: SAM3 predicts masks at this resolution for the whole (square-resized) image
MASK_GRID = 288
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
TARGET_PER_CORE = 15.0


# -- inputs ---------------------------------------------------------------------------------------


def write_photos(directory: str, count: int) -> list[str]:
    """``count`` JPEGs (quality 90) of scikit-image's photos at COCO-like mixed sizes."""
    import skimage.data

    photos = [np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")) for n in SKIMAGE_PHOTOS]
    paths = []
    for i in range(count):
        height, width = be.IMAGE_SIZES[i % len(be.IMAGE_SIZES)]
        image = Image.fromarray(photos[i % len(photos)]).resize((width, height), Image.BILINEAR)
        path = os.path.join(directory, f"img{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def _shape_mask(rng, height: int, width: int, image_side: int) -> np.ndarray:
    """A ``height x width`` bool mask as SAM3 makes one: a shape drawn at its 288-px resolution,
    upsampled bilinearly to the box and thresholded at 0.5."""
    scale = MASK_GRID / image_side
    low_h, low_w = max(2, round(height * scale)), max(2, round(width * scale))
    kind = rng.integers(3)
    if kind == 2:  # a smooth blob: coarse noise, upsampled, thresholded around its centre
        coarse = rng.random((3 + rng.integers(3), 3 + rng.integers(3))).astype(np.float32)
        yy, xx = np.mgrid[0 : coarse.shape[0], 0 : coarse.shape[1]]
        centre = np.exp(-(((yy - yy.mean()) / coarse.shape[0]) ** 2 + ((xx - xx.mean()) / coarse.shape[1]) ** 2) * 6)
        field = Image.fromarray(coarse * 0.6 + centre.astype(np.float32) * 0.8, mode="F")
        low = np.asarray(field.resize((low_w, low_h), Image.BICUBIC), np.float32) > 0.7
    else:
        canvas = Image.new("L", (low_w, low_h), 0)
        draw = ImageDraw.Draw(canvas)
        if kind == 0:  # an ellipse filling most of the box
            draw.ellipse([0, 0, low_w - 1, low_h - 1], fill=255)
        else:  # a polygon: 5-12 vertices around the centre at random radii
            n = int(rng.integers(5, 13))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.55, 1.0, n)
            points = [
                ((0.5 + 0.5 * r * np.cos(a)) * (low_w - 1), (0.5 + 0.5 * r * np.sin(a)) * (low_h - 1))
                for a, r in zip(angles, radii)
            ]
            draw.polygon(points, fill=255)
        low = np.asarray(canvas) > 127
    probability = Image.fromarray(low.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(probability) > 0.5


def synthesise(image_size: tuple[int, int], rng) -> ImageSegmentation:
    """One image's hits, as ``Sam3Engine.segment`` returns them (text mode): 6-14 of them."""
    height, width = image_size
    count = int(rng.integers(6, 15))
    labels, boxes, masks = [], [], []
    for _ in range(count):
        area = np.exp(rng.uniform(np.log(0.002), np.log(0.4))) * height * width
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        w = int(np.clip(round(np.sqrt(area * aspect)), 4, width))
        h = int(np.clip(round(np.sqrt(area / aspect)), 4, height))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        mask = _shape_mask(rng, h, w, max(height, width))
        # the engine tightens each box to its mask: keep the shape's own bounds
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            continue
        mask = np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        x0, y0 = x0 + int(cols[0]), y0 + int(rows[0])
        boxes.append([x0, y0, x0 + mask.shape[1], y0 + mask.shape[0]])
        masks.append(mask)
        labels.append(PROMPTS[int(rng.integers(len(PROMPTS)))])
    scores = np.sort(rng.uniform(0.5, 0.99, len(masks)).astype(np.float32))[::-1].copy()
    return ImageSegmentation(
        image_size=(height, width),
        labels=labels,
        prompt_index=np.full(len(masks), -1, np.int64),
        scores=scores,
        boxes_xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
        masks=masks,
        mask_rank=np.full(len(masks), -1, np.int64),
    )


def mask_statistics(outputs) -> dict:
    """How the synthesised masks look to FiftyOne: size, fill, and bytes as it stores them."""
    masks = [m for s in outputs for m in s.masks]
    raw = np.array([m.size for m in masks], float)
    stored = np.array([len(fou.serialize_numpy_array(m)) for m in masks[:400]], float)
    noise = np.random.default_rng(0).random(masks[0].shape) > 0.5
    return {
        "hits_per_image": len(masks) / len(outputs),
        "mask_pixels_mean": float(raw.mean()),
        "mask_pixels_median": float(np.median(raw)),
        "box_share_of_image_median": float(
            np.median([m.size / (s.image_size[0] * s.image_size[1]) for s in outputs for m in s.masks])
        ),
        "fill_mean": float(np.mean([m.mean() for m in masks])),
        "stored_bytes_per_mask_mean": float(stored.mean()),
        "stored_over_raw": float(stored.sum() / raw[: len(stored)].sum()),
        "random_noise_stored_over_raw": len(fou.serialize_numpy_array(noise)) / noise.size,
    }


class ReplayEngine(Sam3Engine):
    """Bench-only stand-in for the engine: ``segment`` returns the pre-made hits of the next images
    (in the dataset's order, which FiftyOne's loader keeps) and runs no model. Everything else of the
    engine is the real class (no weights are ever loaded: nothing asks for them)."""

    def __init__(self, outputs: list[ImageSegmentation]):
        super().__init__("facebook/sam3", device="cpu")
        self.outputs = outputs
        self.position = 0

    def segment(self, images, prompts=None, options=None, image_keys=None, keep_logits=False, **overrides):
        results = []
        for image in images:
            output = self.outputs[self.position % len(self.outputs)]
            self.position += 1
            if tuple(image.shape[:2]) != output.image_size:
                raise RuntimeError(f"replay out of step: image {image.shape[:2]} vs recorded {output.image_size}")
            results.append(output)
        return results


@contextlib.contextmanager
def shared_memory_transfer():
    """Bench-only experiment (``--transfer shared``): the loader workers hand each decoded image over as a
    torch tensor, which torch's DataLoader passes through shared memory, instead of a numpy array pickled
    through a pipe (which the main process reads and copies); ``predict_all`` turns it back into the
    numpy array the engine takes, without a copy. What a change to ``Sam3GetItem`` would do."""
    original_call, original_predict = Sam3GetItem.__call__, Sam3Model.predict_all

    def call(self, d):
        item = original_call(self, d)
        if isinstance(item.image, np.ndarray):
            item.image = torch.from_numpy(item.image)
        return item

    def predict_all(self, args):
        for arg in args:
            if isinstance(getattr(arg, "image", None), torch.Tensor):
                arg.image = arg.image.numpy()
        return original_predict(self, args)

    Sam3GetItem.__call__, Sam3Model.predict_all = call, predict_all
    try:
        yield
    finally:
        Sam3GetItem.__call__, Sam3Model.predict_all = original_call, original_predict


# -- measuring ------------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pid_cpu(pid: int) -> float:
    """CPU seconds of another process (the database server), from ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run(dataset, outputs, batch_size: int, workers: int, instrument=False, profile=False, transfer="numpy") -> dict:
    """One ``apply_model`` over the dataset with the replaying engine; wall and CPU seconds."""
    settings = Sam3Settings(model_path="facebook/sam3", mode="text", prompts=PROMPTS, threshold=0.5)
    engine = ReplayEngine(outputs)
    model = Sam3Model(settings, engine=engine)
    field = "host"
    timers = None
    if instrument:
        timers = e2e.Timers(torch.device("cpu"))
        timers.wrap_loader("loader wait (decode + prompts)")
        timers.wrap(model_module, "load_image", "decode (in this process: part of the loader wait)", synchronise=False)
        timers.wrap(engine, "segment", "engine stand-in (replay)", synchronise=False)
        timers.wrap(model_module, "to_detections", "to_detections", synchronise=False)
        timers.wrap(Sam3Model, "_fit_in_document", "document size check", synchronise=False)
        timers.wrap(fo.Sample, "add_labels", "add_labels", synchronise=False)
        timers.wrap(foc.SaveContext, "save", "SaveContext.save (serialise)", synchronise=False)
        timers.wrap(foc.SaveContext, "__exit__", "final flush", synchronise=False)
        timers.wrap(foc.SaveContext, "_do_save_batch", "bulk writes (background thread)", synchronise=False)
    profiler = cProfile.Profile() if profile else None
    mongo = e2e._MONGO.process.pid
    cpu0, children0, db0 = time.process_time(), _children_cpu(), _pid_cpu(mongo)
    start = time.perf_counter()
    try:
        if profiler:
            profiler.enable()
        with shared_memory_transfer() if transfer == "shared" else contextlib.nullcontext():
            dataset.apply_model(model, label_field=field, batch_size=batch_size, num_workers=workers, progress=False)
    finally:
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - start
        cpu, children, db = time.process_time() - cpu0, _children_cpu() - children0, _pid_cpu(mongo) - db0
        if timers is not None:
            timers.restore()
    if model.failures:
        raise RuntimeError(f"{len(model.failures)} samples failed: {model.failures[:3]}")
    written = dataset.count(f"{field}.detections")
    expected = sum(len(outputs[i % len(outputs)]) for i in range(len(dataset)))
    if written != expected:
        raise RuntimeError(f"wrote {written} detections, expected {expected}")
    dataset._dataset.delete_sample_field(field)  # the next run writes into a fresh field, as the first did
    images = len(dataset)
    result = {
        "workers": workers,
        "transfer": transfer if workers else "-",
        "batch_size": batch_size,
        "images": images,
        "detections": written,
        "wall_s": wall,
        "cpu_main_s": cpu,
        "cpu_workers_s": children,
        "cpu_database_s": db,
        "images_per_s_wall": images / wall,
        "images_per_cpu_s": images / (cpu + children),
        "images_per_main_cpu_s": images / cpu,
        "images_per_cpu_s_with_database": images / (cpu + children + db),
        "loadavg": list(os.getloadavg()),
    }
    if timers is not None:
        stages = dict(timers.totals)
        result["stages_s"] = stages
        result["stages_share_of_wall"] = {k: v / wall for k, v in stages.items()}
    if profiler is not None:
        result["profile"] = _profile_table(profiler)
    return result


def _profile_table(profiler, limit: int = 30) -> list[dict]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
        short = filename.split("site-packages/")[-1].replace(e2e.be.REPO_ROOT + "/", "")
        rows.append({"function": f"{short}:{line}({name})", "calls": calls, "tottime_s": tottime, "cumtime_s": cumtime})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:limit]


# -- output ---------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    info, masks = result["machine"], result["masks"]
    lines = [
        "# Host side alone (no model): decode, conversion, serialisation, database writes",
        "",
        f"`{result['command']}` on {info['cpu_count']}-core CPU ({info['platform']}), Python {info['python']}, "
        f"fiftyone {info['fiftyone']}, torch threads 1; load average {', '.join(f'{v:.2f}' for v in result['loadavg_start'])} "
        "at the start (per run below). Engine outputs replayed by a bench-only stand-in (`ReplayEngine`), synthesised: "
        f"{masks['hits_per_image']:.1f} hits per image, median box {100 * masks['box_share_of_image_median']:.1f}% of "
        f"the image, mean mask {masks['mask_pixels_mean']:.0f} px, stored by FiftyOne at "
        f"{100 * masks['stored_over_raw']:.1f}% of the raw size (random noise: "
        f"{100 * masks['random_noise_stored_over_raw']:.1f}%).",
        "",
        "| workers | image transfer | batch | images/s (wall) | img per CPU-s: plugin process + workers (all repeats) "
        "| incl. database server | main process alone: the serial part (all repeats) | CPU s: main / workers / mongod "
        "| load avg |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in result["rows"]:
        spread = [r["images_per_cpu_s"] for r in row.get("repeats", [])]
        spread = f" ({min(spread):.0f}-{max(spread):.0f})" if len(spread) > 1 else ""
        main = [r["images_per_main_cpu_s"] for r in row.get("repeats", [])]
        main = f" ({min(main):.0f}-{max(main):.0f})" if len(main) > 1 else ""
        lines.append(
            f"| {row['workers']} | {row['transfer']} | {row['batch_size']} | {row['images_per_s_wall']:.1f} "
            f"| **{row['images_per_cpu_s']:.1f}**{spread} "
            f"| {row['images_per_cpu_s_with_database']:.1f} | {row['images_per_main_cpu_s']:.1f}{main} "
            f"| {row['cpu_main_s']:.2f} / {row['cpu_workers_s']:.2f} / "
            f"{row['cpu_database_s']:.2f} | {row['loadavg'][0]:.2f} |"
        )
    lines += ["", f"Target: >= {TARGET_PER_CORE:g} images per CPU-second. Best: {result['summary']}", ""]
    for split in result.get("breakdowns", []):
        lines += [
            f"Where the main thread's time goes (workers {split['workers']}, instrumented run, {split['wall_s']:.2f} s "
            "wall; the background writer overlaps):",
            "",
            "| stage | seconds | share of wall |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {k} | {v:.3f} | {100 * split['stages_share_of_wall'][k]:.1f}% |"
            for k, v in sorted(split["stages_s"].items(), key=lambda kv: -kv[1])
        ]
        lines.append("")
    for profile in result.get("profiles", []):
        lines += [
            f"cProfile of the main thread (workers {profile['workers']}), top functions by own time:",
            "",
            "| function | calls | own s | cumulative s |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{r['function']}` | {r['calls']} | {r['tottime_s']:.3f} | {r['cumtime_s']:.3f} |"
            for r in profile["rows"][:20]
        ]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", default="0,1", help="loader workers to try, comma-separated")
    parser.add_argument(
        "--transfer", default="numpy", help="with workers: numpy (the package's way) and/or shared (an experiment)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the one with least CPU is kept")
    parser.add_argument("--no-profile", action="store_true", help="skip the instrumented and cProfile runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(be.REPO_ROOT, "bench", "results", "host"))
    args = parser.parse_args(argv)
    args.num_workers = [int(v) for v in args.num_workers.split(",")]
    args.transfer = [v.strip() for v in args.transfer.split(",") if v.strip()]
    if set(args.transfer) - {"numpy", "shared"}:
        parser.error("--transfer takes numpy and/or shared")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    image_dir = os.path.join(e2e._TMP, "host-images")
    os.makedirs(image_dir, exist_ok=True)
    paths = write_photos(image_dir, args.images)
    rng = np.random.default_rng(args.seed)
    outputs = []
    for path in paths:
        with Image.open(path) as image:
            outputs.append(synthesise((image.height, image.width), rng))
    masks = mask_statistics(outputs)
    print("synthesised hits:", json.dumps(masks, indent=1), flush=True)
    dataset = fo.Dataset()  # non-persistent, deleted below
    rows = []
    result = {
        "command": " ".join(["python bench/bench_host.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "fiftyone": fo.__version__,
            "torch": torch.__version__,
        },
        "loadavg_start": list(os.getloadavg()),
        "masks": masks,
        "rows": rows,
    }
    try:
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])
        run(dataset.limit(min(16, len(paths))), outputs, args.batch_size, 0)  # warm-up: imports, field schema
        settings = [(w, t) for w in args.num_workers for t in (args.transfer if w else ["numpy"])]
        runs = {setting: [] for setting in settings}
        for _ in range(args.repeats):  # round robin: a spell of load hits every setting alike
            for workers, transfer in settings:
                done = run(dataset, outputs, args.batch_size, workers, transfer=transfer)
                runs[workers, transfer].append(done)
                print(
                    f"  workers={workers} ({transfer}) batch={args.batch_size}: {done['images_per_s_wall']:6.1f} "
                    f"img/s wall, {done['images_per_cpu_s']:6.1f} img per CPU-s "
                    f"({done['images_per_cpu_s_with_database']:.1f} with mongod, main process alone "
                    f"{done['images_per_main_cpu_s']:.1f}), load {done['loadavg'][0]:.2f}",
                    flush=True,
                )
        for setting in settings:  # per setting the run with the least CPU: the least disturbed
            best = max(runs[setting], key=lambda r: r["images_per_cpu_s"])
            best["repeats"] = [
                {k: r[k] for k in ("images_per_s_wall", "images_per_cpu_s", "images_per_main_cpu_s")}
                for r in runs[setting]
            ]
            rows.append(best)
        if not args.no_profile:
            result["breakdowns"], result["profiles"] = [], []
            for workers in args.num_workers:
                split = run(dataset, outputs, args.batch_size, workers, instrument=True)
                result["breakdowns"].append(
                    {k: split[k] for k in ("workers", "wall_s", "stages_s", "stages_share_of_wall")}
                )
                profiled = run(dataset, outputs, args.batch_size, workers, profile=True)
                result["profiles"].append(
                    {"workers": workers, "wall_s": profiled["wall_s"], "rows": profiled["profile"]}
                )
    finally:
        dataset.delete()
    best = max(rows, key=lambda r: r["images_per_cpu_s"])
    result["summary"] = (
        f"{best['images_per_cpu_s']:.1f} images per CPU-second with {best['workers']} worker(s) "
        f"({best['images_per_cpu_s_with_database']:.1f} counting the database server's CPU too): "
        + ("meets" if best["images_per_cpu_s"] >= TARGET_PER_CORE else "below")
        + f" the {TARGET_PER_CORE:g} img/s per core target"
    )
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    text = markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
