"""Full-size benchmark: SAM3 at transformers' default size (1008 px input, 288 px low-resolution
masks, 200 queries, ~860 M parameters) with RANDOM weights, through ``sam3_ops.segment`` on a CPU.

What it shows: that the full-size shapes run through the plugin (every mode writes labels), and
what an image costs in time and memory on this machine. Not what the masks are worth (random
weights), and not a GPU's speed (see ``gpu_protocol.py``).

Each mode runs in a fresh subprocess on a one-sample FiftyOne dataset (a private mongod shared by
the runs), so its memory is its own:

- ``text``: two text prompts (threshold 0, at most 5 hits a prompt kept);
- ``boxes``: two prompt boxes;
- ``points``: one prompt Keypoint of two points (one positive, one negative);
- ``video-boxes``: one prompt box on frame 1 tracked through a 4-frame video (the tracker's memory
  at full size);
- ``video-text``: one text prompt tracked through the same video (at most 3 objects). With random
  weights nothing reaches the checkpoint's detection threshold, and at ``threshold=0`` all 200
  queries are valid detections and transformers' video NMS (``nms_masks``: pairwise IoU of
  (200, 200, 288 x 288)) asks for 26.5 GB: ``--video-threshold`` sets the threshold.

Columns: load (s, the weights from safetensors, memory-mapped), per image (s: segment's wall time
divided by the images or frames; and its CPU time, every thread, which depends less on the machine's
load), the RSS once loaded (low: the weights are memory-mapped and paged in by the first forward
pass) and the peak RSS during the run (Linux ``VmHWM``, reset after loading), in MB; the labels
written and their mask shapes.

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_fullsize.py                      # builds the checkpoint
    PYTHONPATH=. .venv/bin/python bench/bench_fullsize.py --checkpoint DIR --images 2 --modes text

The random checkpoint (3.4 GB) is built once into ``--checkpoint`` (default: a temp dir, deleted
after) by ``sam3_ops.testing.build_fullsize_checkpoint``. Results: a table on stdout and JSON in
``bench/results/fullsize/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: the threshold of ``video-text`` (``--video-threshold``)
VIDEO_THRESHOLD = None
MODES = ("text", "boxes", "points", "video-boxes", "video-text")
FRAMES = 4


def _status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Resets ``VmHWM`` to the current RSS (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _images(directory: str, count: int) -> list[str]:
    """``count`` photographs from scikit-image (a FiftyOne dependency), at their own sizes."""
    import skimage

    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    source = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = []
    for name in names[:count]:
        paths.append(shutil.copy(os.path.join(source, name), os.path.join(directory, name)))
    return paths


def _video(directory: str) -> str:
    """A 4-frame 160 x 120 H.264 video of a disc moving on noise (ffmpeg)."""
    import numpy as np

    rng = np.random.default_rng(0)
    height, width = 120, 160
    frames = []
    for t in range(FRAMES):
        frame = rng.integers(20, 60, (height, width, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:height, :width]
        frame[(yy - 60) ** 2 + (xx - 30 - 20 * t) ** 2 < 15**2] = (220, 30, 30)
        frames.append(frame)
    path = os.path.join(directory, "video.mp4")
    command = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{width}x{height}", "-r", "10", "-i", "-", "-pix_fmt", "yuv420p", "-crf", "10", path]
    subprocess.run(command, input=b"".join(f.tobytes() for f in frames), check=True)
    return path


def _settings(mode: str, checkpoint: str) -> dict:
    common = {"model_path": checkpoint, "device": "cpu"}
    return {
        "text": dict(prompts=["cat", "cup"], threshold=0.0, max_detections=10),
        "boxes": dict(mode="boxes", prompt_field="ground_truth"),
        "points": dict(mode="points", prompt_field="clicks"),
        "video-boxes": dict(mode="boxes", prompt_field="frames.boxes"),
        "video-text": dict(prompts=["red disc"], threshold=VIDEO_THRESHOLD, max_objects=3),
    }[mode] | common


def run_one(mode: str, checkpoint: str, images: int, workdir: str) -> dict:
    """One mode, measured in this process (called in a subprocess by :func:`main`)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import fiftyone as fo
    import torch
    import transformers

    import sam3_ops
    from sam3_ops.core.pool import get_video_engine

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dataset = fo.Dataset()
    if mode.startswith("video"):
        dataset.add_sample(fo.Sample(filepath=_video(workdir)))
        sample = dataset.first()
        sample.frames[1]["boxes"] = fo.Detections(
            detections=[fo.Detection(label="disc", bounding_box=[15 / 160, 45 / 120, 30 / 160, 30 / 120])]
        )
        sample.save()
        units = FRAMES
    else:
        dataset.add_samples([fo.Sample(filepath=p) for p in _images(workdir, images)])
        dataset.compute_metadata()
        for sample in dataset:
            sample["ground_truth"] = fo.Detections(
                detections=[
                    fo.Detection(label="left", bounding_box=[0.05, 0.1, 0.4, 0.6]),
                    fo.Detection(label="right", bounding_box=[0.5, 0.2, 0.45, 0.7]),
                ]
            )
            sample["clicks"] = fo.Keypoints(
                keypoints=[fo.Keypoint(label="thing", points=[[0.4, 0.5], [0.9, 0.1]], sam_labels=[1, 0])]
            )
            sample.save()
        units = images
    settings = _settings(mode, checkpoint)
    started = time.perf_counter()
    if mode.startswith("video"):
        get_video_engine(checkpoint, "cpu").load("text" if mode == "video-text" else "prompts")
    else:
        sam3_ops.load_model(**settings, reuse=True)  # the pooled engine segment runs on
    load_s = time.perf_counter() - started
    loaded_mb = _status_mb("VmRSS")
    _reset_peak()
    started, cpu_started = time.perf_counter(), time.process_time()
    workers = {} if mode.startswith("video") else {"num_workers": 0}
    result = sam3_ops.segment(dataset, "sam3", **workers, **settings)
    run_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started  # every thread of this process: less sensitive to load
    peak_mb = _status_mb("VmHWM")
    path = "frames.sam3.detections" if mode.startswith("video") else "sam3.detections"
    values = dataset.values(path)
    detections = [d for v in values for d in (v or [])]
    if mode.startswith("video"):
        detections = [d for frame in detections for d in (frame or [])]
    shapes = sorted({tuple(d.mask.shape) for d in detections if d.mask is not None})
    dataset.delete()
    return {
        "mode": mode,
        "units": units,
        "unit": "frame" if mode.startswith("video") else "image",
        "load_s": round(load_s, 1),
        "run_s": round(run_s, 1),
        "per_unit_s": round(run_s / units, 1),
        "cpu_per_unit_s": round(cpu_s / units, 1),
        "loaded_rss_mb": round(loaded_mb),
        "peak_rss_mb": round(peak_mb),
        "labels": len(detections),
        "masks_bool": all(d.mask is not None and d.mask.dtype == bool for d in detections),
        "mask_shapes": shapes[:6],
        "skipped": result.samples_skipped,
        "skip_reasons": [str(skip)[:400] for skip in result.skipped[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a full-size checkpoint dir (built there if it holds none)")
    parser.add_argument("--images", type=int, default=2, help="images per image mode (1-4)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--video-threshold", type=float, help="video-text's threshold (default: the checkpoint's)")
    parser.add_argument(
        "--run-one", nargs=5, metavar=("MODE", "CHECKPOINT", "IMAGES", "WORKDIR", "THRESHOLD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.run_one:
        global VIDEO_THRESHOLD
        mode, checkpoint, images, workdir, threshold = args.run_one
        VIDEO_THRESHOLD = None if threshold == "default" else float(threshold)
        print(json.dumps(run_one(mode, checkpoint, int(images), workdir)))
        return

    from sam3_ops.testing import PrivateMongo, build_fullsize_checkpoint

    scratch = tempfile.mkdtemp(prefix="sam3-fullsize-")
    checkpoint = args.checkpoint or os.path.join(scratch, "checkpoint")
    build_s = None
    if not os.path.isfile(os.path.join(checkpoint, "model.safetensors")):
        started = time.perf_counter()
        build_fullsize_checkpoint(checkpoint)
        build_s = round(time.perf_counter() - started, 1)
    mongo = PrivateMongo(os.path.join(scratch, "mongo")).start()  # children inherit its URI
    load = os.getloadavg()
    rows = []
    threshold = "default" if args.video_threshold is None else str(args.video_threshold)
    try:
        for mode in args.modes:
            workdir = tempfile.mkdtemp(dir=scratch)
            completed = subprocess.run(
                [sys.executable, __file__, "--run-one", mode, checkpoint, str(args.images), workdir, threshold],
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONPATH=ROOT),
            )
            if completed.returncode != 0:
                print(completed.stderr[-3000:], file=sys.stderr)
                rows.append({"mode": mode, "error": completed.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        mongo.stop()
        if not args.checkpoint:
            shutil.rmtree(scratch, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "checkpoint_build_s": build_s,
    }
    print(f"\nFull-size SAM3, random weights, CPU ({os.cpu_count()} cores, load average {load[0]:.1f} before)")
    print(
        f"{'mode':<11} {'n':>2} {'load s':>7} {'s/unit':>8} {'CPU s/unit':>10} {'RSS loaded MB':>14} {'peak MB':>8} "
        f"{'labels':>7}  masks"
    )
    for row in rows:
        if "error" in row:
            print(f"{row['mode']:<11} failed: {row['error']}")
            continue
        print(
            f"{row['mode']:<11} {row['units']:>2} {row['load_s']:>7} {row['per_unit_s']:>8} "
            f"{row.get('cpu_per_unit_s', '-'):>10} {row['loaded_rss_mb']:>14} "
            f"{row['peak_rss_mb']:>8} {row['labels']:>7}  {row['mask_shapes'][:3]}"
        )
    out_dir = os.path.join(HERE, "results", "fullsize")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(out, "w") as handle:
        json.dump({"machine": machine, "images": args.images, "rows": rows}, handle, indent=1)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
