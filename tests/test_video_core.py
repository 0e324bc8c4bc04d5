"""The video core (``sam3_ops.core.video_io``, ``sam3_ops.core.video``) on a tiny random SAM3 video
checkpoint and short synthetic videos written with ffmpeg. No fiftyone.

Parity is against the plain transformers loops, run on the same decoded frames:
``Sam3VideoProcessor.init_video_session(video=...)`` / ``add_text_prompt`` /
``Sam3VideoModel.propagate_in_video_iterator`` / ``postprocess_outputs`` for text, and
``Sam3TrackerVideoProcessor.add_inputs_to_inference_session`` /
``Sam3TrackerVideoModel.propagate_in_video_iterator`` / ``post_process_masks`` for boxes and
points. The videos are longer than the frames the engine keeps (15), so the pruning is exercised.

Random weights score every detection about 0.25; the thresholds below are calibrated on this
checkpoint (seed 0) to give a few objects per prompt, some of them short-lived (so hotstart removal
runs too). The checkpoint differs from :func:`sam3_ops.testing.tiny_config` where transformers'
video memory needs it: the memory attention reads 64-channel memories (hard-coded ``kv_in_dim=64``)
and splits object pointers into 64-channel tokens, which needs a feature width above 64 (128 here);
frames are 112 px to keep it fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

from sam3_ops.core.video import (
    Sam3VideoEngine,
    TextPrompt,
    VideoPrompt,
    normalize_text_prompts,
    session_footprint,
    validate_video_prompts,
)
from sam3_ops.core.video_io import VideoLoadError, VideoReader, probe_video
from sam3_ops.testing import build_tiny_video_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")

TEXTS = ["red ball", "green box"]
TEXT_THRESHOLD = 0.2572  # calibrated: the top detection of each prompt (random weights score ~0.25)


def synthetic_frames(count: int, height: int = 96, width: int = 128, seed: int = 0) -> list[np.ndarray]:
    """Moving shapes: a red disc left to right, a green box right to left, a blue bar falling."""
    rng = np.random.default_rng(seed)
    background = rng.integers(20, 60, (height, width, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        frame = background.copy()
        cx = 12 + (t * 3) % (width - 24)
        frame[(xs - cx) ** 2 + (ys - height // 2) ** 2 < 121] = (220, 40, 40)
        x0 = width - 30 - (t * 2) % (width - 40)
        frame[8:34, x0 : x0 + 22] = (40, 200, 60)
        y0 = (t * 2) % (height - 10)
        frame[y0 : y0 + 8, 10:50] = (50, 60, 230)
        frames.append(frame)
    return frames


def write_video(path, frames: list[np.ndarray], fps: int = 10, codec: list[str] | None = None) -> str:
    """Encodes RGB frames with ffmpeg (H.264 in MP4 by default, lossless-ish so shapes stay crisp)."""
    height, width = frames[0].shape[:2]
    codec = codec or ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-crf", "10", "-g", "8"]
    command = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    command += ["-r", str(fps), "-i", "-", *codec, os.fspath(path)]
    subprocess.run(command, input=b"".join(f.tobytes() for f in frames), check=True)
    return os.fspath(path)


def truncated_video(path, frames: list[np.ndarray], keep: int) -> str:
    """A real ffmpeg-made MP4 (index first, no B-frames) cut in the middle of frame ``keep``'s data:
    its index still declares every frame, ffmpeg decodes the first ``keep`` and exits with 0."""
    full = write_video(
        f"{path}.full.mp4",
        frames,
        codec=["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "8", "-bf", "0", "-movflags", "+faststart"],
    )
    probe = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,size", "-of", "json"]
    described = subprocess.run([*probe, full], capture_output=True, text=True, check=True).stdout
    packet = json.loads(described)["packets"][keep]
    position, size = int(packet["pos"]), int(packet["size"])
    with open(full, "rb") as source, open(path, "wb") as target:
        target.write(source.read()[: position + size // 2])
    os.remove(full)
    return os.fspath(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_video_checkpoint(tmp_path_factory.mktemp("tiny-sam3-video"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    return Sam3VideoEngine(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "shapes.mp4", synthetic_frames(24))


@pytest.fixture(scope="module")
def decoded(video):
    return [frame for _, frame in VideoReader(video).frames()]


# -- the plain transformers loops (the references) ---------------------------------------------


def _processors(checkpoint):
    from transformers import Sam3Processor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    processor = Sam3Processor.from_pretrained(checkpoint)
    image_processor = processor.image_processor
    video_processor = Sam2VideoVideoProcessor(
        size=image_processor.size, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    return image_processor, video_processor, processor.tokenizer


def reference_text(checkpoint, frames, texts, threshold=None, max_objects=None):
    """{frame index: {object id: (score, xyxy inclusive box, full-size mask, prompt text)}}; with
    ``threshold`` and ``max_objects`` ``None``, at the checkpoint's own settings."""
    from transformers import Sam3VideoModel, Sam3VideoProcessor

    image_processor, video_processor, tokenizer = _processors(checkpoint)
    processor = Sam3VideoProcessor(
        image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer
    )
    model = Sam3VideoModel.from_pretrained(checkpoint).eval()
    if threshold is not None:
        model.new_det_thresh = threshold
        model.score_threshold_detection = min(model.score_threshold_detection, threshold)
    if max_objects is not None:
        model.max_num_objects = max_objects
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_text_prompt(session, texts)
    results = {}
    for output in model.propagate_in_video_iterator(session):
        processed = processor.postprocess_outputs(session, output)
        text_of = {obj: text for text, objs in processed["prompt_to_obj_ids"].items() for obj in objs}
        results[output.frame_idx] = {
            int(obj): (float(score), box.tolist(), mask.numpy(), text_of[int(obj)])
            for obj, score, box, mask in zip(
                processed["object_ids"], processed["scores"], processed["boxes"], processed["masks"]
            )
        }
    return results


def reference_prompts(checkpoint, frames, frame_idx, boxes=None, points=None, point_labels=None, reverse=False):
    """{frame index: {object index: full-size mask}} of one plain tracker-video propagation."""
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    image_processor, video_processor, _ = _processors(checkpoint)
    processor = Sam3TrackerVideoProcessor(image_processor=image_processor, video_processor=video_processor)
    model = Sam3TrackerVideoModel.from_pretrained(checkpoint).eval()
    session = processor.init_video_session(video=frames, inference_device="cpu")
    count = len(boxes if boxes is not None else points)
    processor.add_inputs_to_inference_session(
        session,
        frame_idx=frame_idx,
        obj_ids=list(range(count)),
        input_boxes=None if boxes is None else [boxes],
        input_points=None if points is None else [points],
        input_labels=None if point_labels is None else [point_labels],
    )
    height, width = frames[0].shape[:2]
    results = {}
    for output in model.propagate_in_video_iterator(session, start_frame_idx=frame_idx, reverse=reverse):
        masks = processor.post_process_masks([output.pred_masks], original_sizes=[[height, width]])[0][:, 0]
        results[output.frame_idx] = {obj: masks[i].numpy() for i, obj in enumerate(output.object_ids)}
    return results


def paste(result, i) -> np.ndarray:
    """Instance ``i`` of a FrameResult as a full-size mask."""
    full = np.zeros(result.image_size, bool)
    x0, y0, x1, y1 = result.boxes_xyxy[i].astype(int)
    full[y0:y1, x0:x1] = result.masks[i]
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Agreement:
    """Pixel agreement of masks over all instances compared: intersection / union, summed."""

    def __init__(self):
        self.intersection = self.union = 0

    def add(self, mine: np.ndarray, theirs: np.ndarray) -> None:
        self.intersection += int(np.logical_and(mine, theirs).sum())
        self.union += int(np.logical_or(mine, theirs).sum())

    @property
    def value(self) -> float:
        return self.intersection / max(self.union, 1)


# -- video_io -----------------------------------------------------------------------------------


def test_probe_and_sequential_read_match_the_written_frames(tmp_path):
    frames = synthetic_frames(12, height=48, width=64)
    path = write_video(tmp_path / "v.mp4", frames, fps=5)
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height, info.fps) == (12, 64, 48, 5.0)
    read = list(VideoReader(path).frames())
    assert [index for index, _ in read] == list(range(12))
    assert all(frame.dtype == np.uint8 and frame.shape == (48, 64, 3) for _, frame in read)
    # lossy codec: close to what was written, and each frame closest to its own original
    for index, frame in read:
        errors = [np.abs(frame.astype(int) - original.astype(int)).mean() for original in frames]
        assert int(np.argmin(errors)) == index and errors[index] < 6


@pytest.mark.parametrize(
    "name, codec",
    [
        ("mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "7", "-bf", "2"]),
        ("ts", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "7", "-output_ts_offset", "1.4"]),
        ("mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "9"]),
    ],
)
def test_reads_from_any_frame_and_backwards_exactly(tmp_path, name, codec):
    """Seeks land exactly (checked against a sequential decode), including MPEG-TS, whose seeks
    land late and are retried from further back."""
    path = write_video(tmp_path / f"v.{name}", synthetic_frames(30, height=48, width=64), fps=10, codec=codec)
    reader = VideoReader(path)
    sequential = [frame for _, frame in reader.frames()]
    assert len(sequential) == reader.frame_count == 30
    for start in (1, 6, 7, 13, 21, 29):
        window = list(reader.frames(start, start + 4))
        assert [index for index, _ in window] == list(range(start, min(start + 4, 30)))
        assert all(np.array_equal(frame, sequential[index]) for index, frame in window)
    backwards = list(reader.frames_reversed(27, 2, chunk_frames=5))
    assert [index for index, _ in backwards] == list(range(27, 1, -1))
    assert all(np.array_equal(frame, sequential[index]) for index, frame in backwards)


def test_unreadable_videos_raise_video_load_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    no_frames = tmp_path / "no-frames.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc", "-t", "0.5", "-c:a", "aac", str(no_frames)],
        check=True,
    )
    for path, reason in [
        (tmp_path / "missing.mp4", "no such file"),
        (empty, "empty"),
        (garbage, "cannot read video"),
        (no_frames, "no video stream"),
    ]:
        with pytest.raises(VideoLoadError, match=reason):
            VideoReader(path)
    truncated = tmp_path / "truncated.mp4"
    good = write_video(tmp_path / "good.mp4", synthetic_frames(20, height=48, width=64))
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: unreadable
    with pytest.raises(VideoLoadError):
        list(VideoReader(truncated).frames())


def test_a_truncated_video_raises_after_its_last_decodable_frame(tmp_path):
    """ffmpeg decodes 4 of the 20 frames a cut file declares and exits with 0: the read yields the
    4 frames, then raises (never a short video taken for a whole one); reads that stop before the
    cut are fine."""
    path = truncated_video(tmp_path / "cut.mp4", synthetic_frames(20, height=48, width=64), keep=4)
    reader = VideoReader(path)
    assert reader.frame_count == 20
    seen = []
    with pytest.raises(VideoLoadError, match="declares 20 frames, but decoding stopped after 4"):
        for index, _ in reader.frames():
            seen.append(index)
    assert seen == [0, 1, 2, 3]
    assert [index for index, _ in reader.frames(1, 3)] == [1, 2]
    with pytest.raises(VideoLoadError, match="truncated"):
        list(reader.frames(2, 10))


# -- text prompts -------------------------------------------------------------------------------

TEXT_FRAMES = 16  # more than the 15 frames of outputs the engine keeps
TEXT_MAX_OBJECTS = 2


def test_text_parity_with_the_plain_transformers_loop(engine, checkpoint, decoded):
    """Two prompts in one pass: the same instances, ids, scores and boxes on every frame as
    transformers' propagate_in_video_iterator + postprocess_outputs, masks agreeing >= 99 %."""
    frames = decoded[:TEXT_FRAMES]
    mine = list(engine.track_text(frames, TEXTS, threshold=TEXT_THRESHOLD, max_objects=TEXT_MAX_OBJECTS))
    assert [r.frame_number for r in mine] == list(range(1, TEXT_FRAMES + 1))

    reference = reference_text(checkpoint, frames, TEXTS, TEXT_THRESHOLD, TEXT_MAX_OBJECTS)
    agreement, instances, labels = Agreement(), 0, set()
    for result in mine:
        theirs = reference[result.frame_number - 1]
        assert result.object_ids == sorted(theirs), f"frame {result.frame_number}"
        for i, obj in enumerate(result.object_ids):
            score, box, mask, text = theirs[obj]
            assert result.scores[i] == pytest.approx(score, abs=1e-6)
            assert result.labels[i] == text
            assert result.boxes_xyxy[i].tolist() == [box[0], box[1], box[2] + 1, box[3] + 1]
            assert result.masks[i].shape == (box[3] - box[1] + 1, box[2] - box[0] + 1)
            agreement.add(paste(result, i), mask)
            instances += 1
            labels.add(text)
    assert instances >= 6 and labels == set(TEXTS)  # the comparison compared something
    assert agreement.value >= 0.99


def test_text_ids_labels_and_scores_are_constant_per_instance(engine, decoded):
    seen = {}
    for result in engine.track_text(decoded[:8], TEXTS, threshold=TEXT_THRESHOLD, max_objects=TEXT_MAX_OBJECTS):
        assert len(set(result.object_ids)) == len(result.object_ids)
        for obj, label, score in zip(result.object_ids, result.labels, result.scores):
            assert seen.setdefault(obj, (label, float(score))) == (label, float(score))
    assert len(seen) >= 2


def test_text_prompt_labels_and_thresholds(engine, decoded):
    """Each prompt's own threshold and label: 'green box' at a threshold above its best score
    (0.2575 on this checkpoint) is tracked but never reported; 'red ball' keeps its instances."""
    prompts = [{"text": "red ball", "label": "ball"}, TextPrompt("green box", label="box", threshold=0.258)]
    results = list(engine.track_text(decoded[:6], prompts, threshold=TEXT_THRESHOLD, max_objects=TEXT_MAX_OBJECTS))
    labels = [label for result in results for label in result.labels]
    assert labels and set(labels) == {"ball"}
    assert all(score >= TEXT_THRESHOLD for result in results for score in result.scores)


def test_max_objects_caps_tracking_and_warns(engine, decoded, caplog):
    with caplog.at_level(logging.WARNING, logger="sam3_ops.core.video"):
        results = list(engine.track_text(decoded[:6], TEXTS, threshold=TEXT_THRESHOLD, max_objects=1))
    assert all(len(result) <= 1 for result in results)
    assert any("max_objects=1" in record.getMessage() for record in caplog.records)


def test_text_prompts_are_validated_before_any_frame_is_read(engine):
    def no_frames():
        raise AssertionError("read a frame")
        yield

    for prompts, message in [
        ([], "at least one"),
        (["cat", "cat"], "distinct"),
        ([{"txt": "cat"}], "needs 'text'"),
        ([TextPrompt("cat", threshold=2.0)], r"\[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.track_text(no_frames(), prompts)
    with pytest.raises(ValueError, match="max_objects"):
        engine.track_text(no_frames(), ["cat"], max_objects=0)
    assert [p.label for p in normalize_text_prompts(["cat", {"text": "dog", "label": "pet"}])] == [None, "pet"]


# -- box and point prompts ----------------------------------------------------------------------

BOXES = [[8.0, 30.0, 40.0, 66.0], [80.0, 6.0, 110.0, 36.0]]  # around the disc and the box, frame 1


def _compare_prompts(mine, reference, labels) -> tuple[int, float]:
    """Asserts same instances per frame (non-empty reference masks) and returns (count, agreement)."""
    agreement, count = Agreement(), 0
    for result in mine:
        theirs = {obj: mask for obj, mask in reference[result.frame_number - 1].items() if mask.any()}
        assert sorted(result.object_ids) == sorted(theirs), f"frame {result.frame_number}"
        for i, obj in enumerate(result.object_ids):
            assert result.labels[i] == labels[obj]
            agreement.add(paste(result, i), theirs[obj])
            count += 1
    return count, agreement.value


@pytest.mark.parametrize("direction, frame", [("forward", 3), ("backward", 19)])
def test_box_prompts_parity_with_the_plain_tracker_loop(engine, checkpoint, video, decoded, direction, frame):
    """A pass longer than the 15 frames kept: same instances and masks as the plain loop."""
    labels = {0: "disc", 1: "box"}
    prompts = [VideoPrompt(frame + 1, i, labels[i], box_xyxy=tuple(box)) for i, box in enumerate(BOXES)]
    mine = list(engine.track_prompts(video, prompts, direction))
    expected = range(frame, 24) if direction == "forward" else range(frame, -1, -1)
    assert [r.frame_number - 1 for r in mine] == list(expected)
    reference = reference_prompts(checkpoint, decoded, frame, boxes=BOXES, reverse=direction == "backward")
    count, agreement = _compare_prompts(mine, reference, labels)
    assert count >= len(expected) and agreement >= 0.99


def test_point_prompts_both_directions_match_two_plain_passes(engine, checkpoint, video, decoded):
    """``both`` = an independent forward pass and backward pass from the prompt frame; every frame
    once, in that order."""
    frame, points, point_labels = 10, [[[40.0, 48.0], [100.0, 80.0]], [[90.0, 20.0], [20.0, 20.0]]], [[1, 0], [1, 1]]
    labels = {"a": "disc", "b": "box"}
    prompts = [
        VideoPrompt(frame + 1, key, labels[key], points=tuple(map(tuple, p)), point_labels=tuple(lab))
        for key, p, lab in zip("ab", points, point_labels)
    ]
    mine = list(engine.track_prompts(video, prompts, "both"))
    assert [r.frame_number - 1 for r in mine] == [*range(frame, 24), *range(frame - 1, -1, -1)]
    forward = reference_prompts(checkpoint, decoded, frame, points=points, point_labels=point_labels)
    backward = reference_prompts(checkpoint, decoded, frame, points=points, point_labels=point_labels, reverse=True)
    reference = {**backward, **forward}
    reference = {f: {"ab"[obj]: mask for obj, mask in per.items()} for f, per in reference.items()}
    count, agreement = _compare_prompts(mine, reference, labels)
    assert count >= 24 and agreement >= 0.99


def test_reprompted_object_and_session_memory_stay_bounded(engine, checkpoint, video, decoded, monkeypatch):
    """One object prompted on 6 frames (more conditioning frames than the 4 the model selects) and
    one on a later frame: parity with a plain manual loop, while the session keeps a bounded number
    of outputs and prunes the memory of conditioning frames that can no longer be selected."""
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    import sam3_ops.core.video as video_module

    footprints = []
    prune = video_module.prune_session

    def recording_prune(session, frame_idx, reverse, model):
        prune(session, frame_idx, reverse, model)
        footprints.append(session_footprint(session))

    monkeypatch.setattr(video_module, "prune_session", recording_prune)
    disc_frames = [0, 2, 4, 6, 8, 10]
    disc_boxes = {f: [8.0 + 3 * f, 30.0, 40.0 + 3 * f, 66.0] for f in disc_frames}
    prompts = [VideoPrompt(f + 1, "disc", "disc", box_xyxy=tuple(disc_boxes[f])) for f in disc_frames]
    prompts.append(VideoPrompt(6, "box", "box", box_xyxy=tuple(BOXES[1])))
    mine = list(engine.track_prompts(video, prompts, "forward"))

    image_processor, video_processor, _ = _processors(checkpoint)
    processor = Sam3TrackerVideoProcessor(image_processor=image_processor, video_processor=video_processor)
    model = Sam3TrackerVideoModel.from_pretrained(checkpoint).eval()
    session = processor.init_video_session(video=decoded, inference_device="cpu")
    reference = {}
    for f in range(24):
        ids, boxes = ([0], [disc_boxes[f]]) if f in disc_boxes else ([], [])
        if f == 5:
            ids, boxes = [*ids, 1], [*boxes, BOXES[1]]
        if ids:
            processor.add_inputs_to_inference_session(session, frame_idx=f, obj_ids=ids, input_boxes=[boxes])
        output = model(inference_session=session, frame_idx=f)
        masks = processor.post_process_masks([output.pred_masks], original_sizes=[[96, 128]])[0][:, 0]
        reference[f] = {["disc", "box"][obj]: masks[i].numpy() for i, obj in enumerate(output.object_ids)}
    count, agreement = _compare_prompts(mine, reference, {"disc": "disc", "box": "box"})
    assert count >= 24 and agreement >= 0.99

    plain = sum(len(kind) for per_obj in session.output_dict_per_obj.values() for kind in per_obj.values())
    assert plain == 24 + 19  # transformers keeps every frame's outputs, for each object
    assert len(footprints) == 24
    assert max(fp["frames"] for fp in footprints) == 0
    assert max(fp["per_frame_entries"] for fp in footprints) == 0
    # at most 15 non-conditioning outputs per object, + 6 conditioning entries (pointers) for the disc, 1 for the box
    assert max(fp["outputs"] for fp in footprints) <= 2 * 15 + 6 + 1
    # the window: outputs of the last 15 frames; frames before it are gone
    per_output = [fp["tensor_bytes"] / fp["outputs"] for fp in footprints]
    assert max(per_output[15:]) <= 1.05 * per_output[14]  # no stored output keeps its masks
    assert footprints[-1]["memory_frames"] < footprints[-1]["outputs"]  # stale conditioning memory pruned


def test_box_prompts_are_validated(engine, video):
    box = (1.0, 1.0, 20.0, 20.0)
    for prompts, message in [
        ([], "at least one"),
        ([VideoPrompt(0, 1, "a", box_xyxy=box)], "from 1 to 24"),
        ([VideoPrompt(25, 1, "a", box_xyxy=box)], "from 1 to 24"),
        ([VideoPrompt(1, 1, "a")], "needs a box or points"),
        ([VideoPrompt(1, 1, "a", box_xyxy=(5.0, 5.0, 2.0, 9.0))], "x1 > x0"),
        ([VideoPrompt(1, 1, "a", points=((1.0, 2.0),), point_labels=(2,))], "each 1"),
        ([VideoPrompt(1, 1, "a", box_xyxy=box), VideoPrompt(2, 1, "b", box_xyxy=box)], "labelled"),
        ([VideoPrompt(1, 1, "a", box_xyxy=box), VideoPrompt(1, 1, "a", box_xyxy=box)], "two prompts"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_video_prompts(prompts, 24)
    with pytest.raises(ValueError, match="direction"):
        engine.track_prompts(video, [VideoPrompt(1, 1, "a", box_xyxy=box)], "sideways")
    with pytest.raises(VideoLoadError):
        engine.track_prompts(
            os.path.join(os.path.dirname(video), "missing.mp4"), [VideoPrompt(1, 1, "a", box_xyxy=box)]
        )


def test_an_intact_video_that_decodes_fewer_frames_than_it_declares_is_read_whole(tmp_path):
    """A clip cut without re-encoding (``ffmpeg -ss 1.5 -c copy``) keeps the packets before its first
    keyframe and an edit list that hides them: the container declares more frames than ffmpeg
    outputs, yet every packet is there. Such a file is complete, not truncated: read to its end."""
    codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10"]  # keyframes every 10 frames, B-frames
    full = write_video(tmp_path / "full.mp4", synthetic_frames(40, height=48, width=64), codec=codec)
    cut = os.fspath(tmp_path / "cut.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1.5", "-i", full, "-c", "copy", cut], check=True)
    reader = VideoReader(cut)
    indices = [index for index, _ in reader.frames()]
    assert 0 < len(indices) < reader.frame_count  # the case: fewer frames out than declared
    assert indices == list(range(len(indices)))
