"""Video benchmark: frames per second and memory against video length, on the tiny random checkpoint
(CPU). What it shows is whether memory stays flat as videos get longer, not SAM3's real speed.

Each (mode, length) runs in a fresh subprocess, so its peak RSS is its own. Modes:

- ``text``: :meth:`Sam3VideoEngine.track_text`, two prompts in one pass;
- ``prompts``: :meth:`Sam3VideoEngine.track_prompts`, two boxes on frame 1, forward;
- ``plain-text`` (short videos only, for contrast): transformers' own loop
  (``init_video_session(video=...)`` + ``propagate_in_video_iterator``), which holds every frame
  and every frame's outputs;
- ``sdk-text`` / ``sdk-prompts``: the same two runs end to end through ``sam3_ops.segment`` on a
  one-video FiftyOne dataset (a private mongod per run): decoding, tracking, conversion to
  ``Detections`` and the database writes of ``frames.sam3`` (in chunks of frames). Their RSS is
  this process's (mongod's is not counted), sampled every 0.1 s by a thread; "@10 %" is the RSS
  after 10 % of the run's time (frames go at a steady rate). The model is loaded before the clock
  starts, as in the other modes.

Besides the peak RSS, the RSS is sampled after 10 % and after 100 % of the frames: flat memory
means the two are equal, whatever the length.

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_video.py                 # 10 s, 60 s, 600 s
    PYTHONPATH=. .venv/bin/python bench/bench_video.py --seconds 10 60 --fps 2 --size 64

Results: a table on stdout and JSON in ``bench/results/video/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_one(mode: str, video: str, checkpoint: str) -> dict:
    """One measurement, in this process (called in a subprocess by :func:`main`)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from sam3_ops.core.video import Sam3VideoEngine, VideoPrompt
    from sam3_ops.core.video_io import VideoReader

    if mode.startswith("sdk-"):
        return _run_sdk(mode, video, checkpoint)
    reader = VideoReader(video)
    total = reader.frame_count
    engine = Sam3VideoEngine(checkpoint, device="cpu").load("prompts" if mode == "prompts" else "text")
    height, width = reader.image_size
    samples = {}
    start = time.perf_counter()
    frames_done = instances = 0
    if mode == "text":
        results = engine.track_text(
            (frame for _, frame in reader.frames()), ["red ball", "green box"], threshold=0.2572, max_objects=4
        )
    elif mode == "prompts":
        boxes = [
            (0.05 * width, 0.3 * height, 0.35 * width, 0.7 * height),
            (0.6 * width, 0.05 * height, 0.9 * width, 0.4 * height),
        ]
        prompts = [VideoPrompt(1, i, f"object {i}", box_xyxy=box) for i, box in enumerate(boxes)]
        results = engine.track_prompts(reader, prompts, "forward")
    else:
        results = _plain_text(engine, [frame for _, frame in reader.frames()])
    for result in results:
        frames_done += 1
        instances += len(result)
        if frames_done == max(1, total // 10):
            samples["rss_at_10pct_mb"] = _rss_mb()
    elapsed = time.perf_counter() - start
    samples["rss_at_end_mb"] = _rss_mb()
    return {
        "mode": mode,
        "frames": frames_done,
        "instances": instances,
        "seconds": round(elapsed, 2),
        "fps": round(frames_done / elapsed, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **{k: round(v, 1) for k, v in samples.items()},
    }


def _run_sdk(mode: str, video: str, checkpoint: str) -> dict:
    """``sam3_ops.segment`` on a one-video dataset, on a private mongod (see the module docstring)."""
    import atexit
    import shutil
    import threading

    from sam3_ops.testing import PrivateMongo

    directory = tempfile.mkdtemp(prefix="bench-video-db-")
    mongo = PrivateMongo(directory).start()  # sets FIFTYONE_DATABASE_URI; before fiftyone is imported

    def stop():  # registered first, so it runs after FiftyOne's own exit cleanup (which needs the database)
        mongo.stop()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    os.environ.update(FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false")
    import fiftyone as fo

    import sam3_ops
    from sam3_ops.core.pool import get_video_engine
    from sam3_ops.core.video_io import probe_video

    info = probe_video(video)
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=video))
    if mode == "sdk-text":
        options = {"prompts": ["red ball", "green box"], "threshold": 0.2572, "max_objects": 4}
    else:
        sample = dataset.first()
        boxes = [(0.05, 0.3, 0.3, 0.4), (0.6, 0.05, 0.3, 0.35)]  # relative x, y, w, h: as the prompts mode
        sample.frames[1]["boxes"] = fo.Detections(
            detections=[fo.Detection(label=f"object {i}", bounding_box=list(box)) for i, box in enumerate(boxes)]
        )
        sample.save()
        options = {"mode": "boxes", "prompt_field": "boxes"}
    get_video_engine(checkpoint, "cpu").load("text" if mode == "sdk-text" else "prompts")
    timeline: list[tuple[float, float]] = []
    done = threading.Event()
    start = time.perf_counter()

    def sample_rss():
        while not done.is_set():
            timeline.append((time.perf_counter() - start, _rss_mb()))
            done.wait(0.1)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    result = sam3_ops.segment(dataset, "sam3", model_path=checkpoint, device="cpu", progress=False, **options)
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    frames_done = dataset.count("frames.sam3")
    assert frames_done == info.frame_count and result.samples_skipped == 0, (frames_done, result)
    at_10pct = next((rss for t, rss in timeline if t >= 0.1 * elapsed), timeline[-1][1])
    row = {
        "mode": mode,
        "frames": frames_done,
        "instances": result.detections,
        "seconds": round(elapsed, 2),
        "fps": round(frames_done / elapsed, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_at_10pct_mb": round(at_10pct, 1),
        "rss_at_end_mb": round(_rss_mb(), 1),
    }
    dataset.delete()
    return row


def _plain_text(engine, frames):
    """transformers' own loop on the same model and prompts (holds the whole video)."""
    from transformers import Sam3VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    image_processor = engine.processor.image_processor
    video_processor = Sam2VideoVideoProcessor(
        size=image_processor.size, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    processor = Sam3VideoProcessor(image_processor, video_processor, engine.processor.tokenizer)
    model = engine.text_model
    model.new_det_thresh, model.score_threshold_detection, model.max_num_objects = 0.2572, 0.2572, 4
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_text_prompt(session, ["red ball", "green box"])
    for output in model.propagate_in_video_iterator(session):
        processed = processor.postprocess_outputs(session, output)
        yield processed["object_ids"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=[10, 60, 600])
    parser.add_argument("--fps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    parser.add_argument(
        "--modes", nargs="+", default=["text", "prompts", "plain-text"], help="also sdk-text, sdk-prompts"
    )
    parser.add_argument("--plain-max-seconds", type=int, default=60, help="longest video for plain-text")
    parser.add_argument("--run-one", nargs=3, metavar=("MODE", "VIDEO", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(*args.run_one)))
        return

    sys.path.insert(0, ROOT)
    from sam3_ops.testing import build_tiny_video_checkpoint
    from tests.test_video_core import synthetic_frames, write_video

    work = tempfile.mkdtemp(prefix="bench-video-")
    checkpoint = build_tiny_video_checkpoint(os.path.join(work, "checkpoint"))
    rows = []
    for seconds in args.seconds:
        frames = synthetic_frames(seconds * args.fps, height=args.size, width=args.size)
        video = write_video(os.path.join(work, f"{seconds}s.mp4"), frames, fps=args.fps)
        del frames
        for mode in args.modes:
            if mode == "plain-text" and seconds > args.plain_max_seconds:
                continue
            command = [sys.executable, os.path.abspath(__file__), "--run-one", mode, video, checkpoint]
            env = {**os.environ, "PYTHONPATH": ROOT}
            completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            row = json.loads(completed.stdout.strip().splitlines()[-1])
            row["video_seconds"] = seconds
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (
        f"{'mode':<11} {'video':>6} {'frames':>6} {'fps':>6} {'peak RSS MB':>11} {'RSS@10% MB':>10} {'RSS@end MB':>10}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['mode']:<11} {row['video_seconds']:>5}s {row['frames']:>6} {row['fps']:>6} "
            f"{row['peak_rss_mb']:>11} {row.get('rss_at_10pct_mb', '-'):>10} {row['rss_at_end_mb']:>10}"
        )
    out_dir = os.path.join(HERE, "results", "video")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, time.strftime("%Y%m%d-%H%M%S") + ".json")
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    with open(out, "w") as handle:
        json.dump({"machine": machine, "fps": args.fps, "size": args.size, "rows": rows}, handle, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
