"""Video datasets through the SDK and the App: ``sam3_ops.segment`` and ``apply_model`` on real
FiftyOne video datasets (real mongod, short synthetic ffmpeg videos), the tiny random video
checkpoint loaded through ``from_pretrained``, the operators run as the App runs them (immediate
and through the delegated-operation service). No mocks; one fault injection: a ``KeyboardInterrupt``
(a user's Ctrl-C) raised after a chunk of frames was written, to leave a real half-written video.

What is compared: the frame-level ``Detections`` written against what the core
(``Sam3VideoEngine.track_text`` / ``track_prompts``) gives for the same video and prompts: the
same instances (``index`` = the core's object id), labels, scores, boxes and masks on every frame.

Text runs are the costly part (~0.1 s a frame on a quiet 2-core machine, several times that on a
busy one): text videos are 12 and 4 frames (the tiny checkpoint's instances appear on frames 10-12
of the first: transformers' hotstart holds new objects back; on all 4 of the second), box and
point runs are cheap. The comparison with transformers' own video loop at the checkpoint's default
settings runs on a copy of the checkpoint whose detection thresholds random weights reach; the
truncated video is a real ffmpeg-made file with its tail cut off.
"""

from __future__ import annotations

import logging
import os
import shutil

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionError, Executor, ValidationContext

import sam3_ops
import sam3_ops.app.operators as operators_module
import sam3_ops.sdk.video as sdk_video
from sam3_ops.app.operators import (
    VIDEO_AUTO_REFUSAL,
    SegmentEverything,
    SegmentWithBoxPrompts,
    SegmentWithTextPrompts,
)
from sam3_ops.app.panel import VIDEO_REFUSAL, RefineWithNegativeBoxes
from sam3_ops.core.pool import get_video_engine
from sam3_ops.core.video import VideoPrompt
from sam3_ops.core.video_io import VideoReader
from sam3_ops.sdk.fields import tracks_field
from sam3_ops.sdk.runs import get_run
from sam3_ops.sdk.settings import Sam3Settings, SettingsError
from sam3_ops.testing import build_tiny_video_checkpoint

from .test_video_core import TEXT_THRESHOLD, Agreement, reference_text, synthetic_frames, truncated_video, write_video

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")

PLUGIN = "@sam3-ops/sam3"
TEXT_URI = f"{PLUGIN}/segment_with_text_prompts"
BOX_URI = f"{PLUGIN}/segment_with_box_prompts"
TEXTS = [{"text": "red ball", "label": "ball"}, "green box"]
MAX_OBJECTS = 2  # calibrated: the checkpoint finds 4 objects on the long video, 2 of them dropped
HEIGHT, WIDTH = 96, 128
# pixel boxes around the disc and the green box on frame 5 (t = 4) of the long video; coordinates
# whose relative values are exact binary fractions, so FiftyOne's [x, y, w, h] round-trips exactly
DISC_BOX = (12.0, 36.0, 36.0, 60.0)
GREEN_BOX = (90.0, 6.0, 112.0, 36.0)
SHORT_BOX = (64.0, 0.0, 112.0, 36.0)  # the green box on the short video's first frame


def relative(box):
    x0, y0, x1, y1 = box
    return [x0 / WIDTH, y0 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_video_checkpoint(tmp_path_factory.mktemp("tiny-sam3-video"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The pooled engine ``segment`` runs on (``reuse=True``): the weights load once per module."""
    return get_video_engine(checkpoint, "cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A 12-frame and a 4-frame video of moving shapes (the second: other frames of the same scene)."""
    directory = tmp_path_factory.mktemp("videos")
    frames = synthetic_frames(16, height=HEIGHT, width=WIDTH)
    return write_video(directory / "long.mp4", frames[:12]), write_video(directory / "short.mp4", frames[12:16])


@pytest.fixture(scope="module")
def text_reference(engine, videos):
    """What the core's track_text gives on each video: {path: {frame_number: FrameResult}}."""
    reference = {}
    for path in videos:
        frames = (frame for _, frame in VideoReader(path).frames())
        results = engine.track_text(frames, TEXTS, threshold=TEXT_THRESHOLD, max_objects=MAX_OBJECTS)
        reference[path] = {result.frame_number: result for result in results}
    return reference


@pytest.fixture
def video_dataset(videos):
    """A real FiftyOne video dataset of the two videos; the long one has prompt boxes
    (``frames.boxes``) and keypoints (``frames.kps``) on frame 5, the short one a box on frame 1."""
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=path) for path in videos])
    long, short = dataset.first(), dataset.last()
    long.frames[5]["boxes"] = fo.Detections(
        detections=[
            fo.Detection(label="disc", bounding_box=relative(DISC_BOX), index=7),
            fo.Detection(label="box", bounding_box=relative(GREEN_BOX)),
        ]
    )
    long.frames[3]["kps"] = fo.Keypoints(
        keypoints=[
            fo.Keypoint(
                label="disc", points=[[18 / WIDTH, 48 / HEIGHT], [100 / WIDTH, 72 / HEIGHT]], index=3, sam_labels=[1, 0]
            ),
            fo.Keypoint(label="box", points=[[104 / WIDTH, 21 / HEIGHT]]),
        ]
    )
    long.save()
    short.frames[1]["boxes"] = fo.Detections(detections=[fo.Detection(label="box", bounding_box=relative(SHORT_BOX))])
    short.save()
    yield dataset
    if fo.dataset_exists(dataset.name):
        dataset.delete()


def written(dataset, field) -> dict:
    """{filepath: {frame_number: the field's value}} over the frames that exist in the database."""
    dataset.reload()
    paths, numbers, values = dataset.values(["filepath", "frames.frame_number", f"frames.{field}"])
    return {path: dict(zip(fns, vals)) for path, fns, vals in zip(paths, numbers, values)}


def assert_matches_core(frames: dict, reference: dict, prompt_ids: dict | None = None) -> int:
    """The written Detections of one video equal the core's FrameResults, frame by frame; returns
    the number of instances compared."""
    assert {fn for fn, value in frames.items() if value is not None} == set(reference)
    compared = 0
    for frame_number, result in reference.items():
        detections = frames[frame_number].detections
        assert [d.index for d in detections] == [int(obj) for obj in result.object_ids], f"frame {frame_number}"
        for d, obj, label, score, box, mask in zip(
            detections, result.object_ids, result.labels, result.scores, result.boxes_xyxy, result.masks
        ):
            assert d.label == label
            assert d.confidence == pytest.approx(float(score), abs=1e-6)
            x0, y0, x1, y1 = box
            assert d.bounding_box == pytest.approx([x0 / WIDTH, y0 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT])
            assert d.mask.dtype == bool and np.array_equal(d.mask, mask)
            if prompt_ids is not None:
                assert d.prompt_id == prompt_ids[obj]
            compared += 1
    return compared


def assert_stable_identities(frames: dict) -> dict:
    """Each index keeps one label on every frame; returns {index: label}."""
    seen = {}
    for value in frames.values():
        if value is None:
            continue
        indexes = [d.index for d in value.detections]
        assert len(set(indexes)) == len(indexes)
        for d in value.detections:
            assert seen.setdefault(d.index, d.label) == d.label
    return seen


# -- text prompts ---------------------------------------------------------------------------------


def test_text_prompts_write_frame_detections_equal_to_the_core(video_dataset, checkpoint, text_reference, caplog):
    """Two prompts in one pass, through ``sam3_ops.segment``: every frame of each video gets a
    ``Detections`` (empty where nothing is tracked), each instance's ``index`` is the core's object
    id, constant across frames, with the prompt's (mapped) label; the object cap is named with the video."""
    with caplog.at_level(logging.WARNING):
        result = sam3_ops.segment(
            video_dataset,
            "sam3",
            model_path=checkpoint,
            prompts=TEXTS,
            threshold=TEXT_THRESHOLD,
            max_objects=MAX_OBJECTS,
            device="cpu",
        )

    frames = written(video_dataset, "sam3")
    long, short = video_dataset.values("filepath")
    # the comparison compared something: 2 instances on frames 10-12 of the long video, on all 4 of the short one
    assert assert_matches_core(frames[long], text_reference[long]) >= 6
    assert assert_matches_core(frames[short], text_reference[short]) >= 8
    assert set(frames[long]) == set(range(1, 13)) and set(frames[short]) == set(range(1, 5))
    labels = assert_stable_identities(frames[long])
    assert set(labels.values()) == {"ball", "green box"}  # both prompts, one pass, the mapped label
    assert video_dataset.values(tracks_field("sam3")) == [len(labels), len(assert_stable_identities(frames[short]))]
    assert (result.samples_processed, result.samples_skipped) == (2, 0)
    assert result.detections == sum(len(v.detections) for f in frames.values() for v in f.values())
    assert video_dataset.get_field("frames.sam3").document_type is fo.Detections
    run = get_run(video_dataset, "sam3")
    assert (run.settings.mode, run.settings.max_objects) == ("text", MAX_OBJECTS)
    assert run.summary["samples_processed"] == 2
    assert [p.text for p in run.settings.prompts] == ["red ball", "green box"]
    capped = [r.getMessage() for r in caplog.records if f"max_objects={MAX_OBJECTS}" in r.getMessage()]
    assert any(message.startswith(f"{long}: ") for message in capped)
    assert all(message.startswith((f"{long}: ", f"{short}: ")) for message in capped)


def test_apply_model_on_a_video_dataset_tracks_like_the_core(video_dataset, checkpoint, text_reference):
    """``load_model(..., media_type="video")`` + FiftyOne's ``apply_model``: FiftyOne's video-model
    route (it opens the video, the model decodes it with the core's reader)."""
    model = sam3_ops.load_model(
        checkpoint,
        prompts=TEXTS,
        threshold=TEXT_THRESHOLD,
        max_objects=MAX_OBJECTS,
        device="cpu",
        reuse=True,
        media_type="video",
    )
    assert isinstance(model, sam3_ops.Sam3VideoModel) and model.media_type == "video"
    video_dataset.apply_model(model, label_field="tracked")

    frames = written(video_dataset, "tracked")
    for path, reference in text_reference.items():
        assert assert_matches_core(frames[path], reference) >= 6
    assert model.summary()["samples_processed"] == 2 and model.summary()["samples_skipped"] == 0
    record = sam3_ops.record_run(video_dataset, "tracked", model)
    assert record.settings.prompts == model.settings.prompts and record.settings.mode == "text"


#: calibrated: on the short video, 6 objects tracked, 2 of them started below new_det_thresh
DEFAULT_THRESHOLDS = {"score_threshold_detection": 0.257, "new_det_thresh": 0.258}


@pytest.fixture(scope="module")
def default_checkpoint(tmp_path_factory):
    """The video checkpoint (same weights) with detection thresholds of its own that random weights
    reach (facebook/sam3's are 0.5 and 0.7): a run at the checkpoint's defaults finds objects."""
    return build_tiny_video_checkpoint(tmp_path_factory.mktemp("tiny-sam3-video-defaults"), **DEFAULT_THRESHOLDS)


def test_a_video_run_without_threshold_equals_the_plain_transformers_loop(video_dataset, default_checkpoint):
    """No ``threshold`` given: the checkpoint's own detection thresholds, so ``segment`` writes what
    transformers' plain video loop (Sam3VideoProcessor + Sam3VideoModel, nothing overridden) gives:
    the same instances, ids, scores and boxes on every frame, masks agreeing >= 99 %. The run record
    keeps "not given" (``None``), not a number."""
    short = video_dataset.last()
    texts = ["red ball", "green box"]
    result = sam3_ops.segment(
        video_dataset.select(short.id), "defaults", model_path=default_checkpoint, prompts=texts, device="cpu"
    )

    frames = written(video_dataset, "defaults")[short.filepath]
    decoded = [frame for _, frame in VideoReader(short.filepath).frames()]
    reference = reference_text(default_checkpoint, decoded, texts)  # the checkpoint's settings, untouched
    assert set(frames) == {index + 1 for index in reference}
    agreement, compared = Agreement(), 0
    for index, theirs in reference.items():
        detections = frames[index + 1].detections
        assert [d.index for d in detections] == sorted(theirs), f"frame {index + 1}"
        for d in detections:
            score, box, mask, text = theirs[d.index]
            x0, y0, x1, y1 = (int(v) for v in box)
            assert d.label == text and d.confidence == pytest.approx(score, abs=1e-6)
            box = [x0 / WIDTH, y0 / HEIGHT, (x1 + 1 - x0) / WIDTH, (y1 + 1 - y0) / HEIGHT]
            assert d.bounding_box == pytest.approx(box)
            mine = np.zeros((HEIGHT, WIDTH), bool)
            mine[y0 : y1 + 1, x0 : x1 + 1] = d.mask
            agreement.add(mine, mask)
            compared += 1
    assert compared >= 8 and agreement.value >= 0.99  # the comparison compared something
    assert result.detections == compared
    settings = get_run(video_dataset, "defaults").settings
    assert settings.threshold is None and Sam3Settings.from_dict(settings.to_dict()) == settings

    # transformers starts tracks on the first frame from every detection above
    # score_threshold_detection, even below new_det_thresh; a threshold given holds on what is
    # written: here the checkpoint's own new_det_thresh, and the instances below it are not written
    given_threshold = DEFAULT_THRESHOLDS["new_det_thresh"]
    below = {obj for theirs in reference.values() for obj, (score, *_) in theirs.items() if score < given_threshold}
    assert below
    sam3_ops.segment(
        video_dataset.select(short.id),
        "given",
        model_path=default_checkpoint,
        prompts=texts,
        threshold=given_threshold,
        device="cpu",
    )
    given = [d for value in written(video_dataset, "given")[short.filepath].values() for d in value.detections]
    assert given and all(d.confidence >= given_threshold for d in given) and not {d.index for d in given} & below


# -- box and point prompts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "direction, frame_numbers", [("forward", range(5, 13)), ("backward", range(1, 6)), ("both", range(1, 13))]
)
def test_box_prompts_on_one_frame_propagate(video_dataset, checkpoint, engine, direction, frame_numbers):
    """Each prompt box becomes one instance: ``index`` the prompt's (7), or the next free number (8)
    for a box without one; its label; ``prompt_id`` the box's id; propagated per ``direction``."""
    result = sam3_ops.segment(
        video_dataset.limit(1),
        "masks",
        model_path=checkpoint,
        mode="boxes",
        prompt_field="boxes",
        direction=direction,
        device="cpu",
    )

    frames = written(video_dataset, "masks")
    long = video_dataset.first()
    assert {fn for fn, value in frames[long.filepath].items() if value is not None} == set(frame_numbers)
    disc, box = long.frames[5]["boxes"].detections
    reference = engine.track_prompts(
        long.filepath,
        [VideoPrompt(5, 7, "disc", box_xyxy=DISC_BOX), VideoPrompt(5, 8, "box", box_xyxy=GREEN_BOX)],
        direction,
    )
    prompt_ids = {7: disc.id, 8: box.id}
    assert assert_matches_core(frames[long.filepath], {r.frame_number: r for r in reference}, prompt_ids) >= len(
        frame_numbers
    )
    assert assert_stable_identities(frames[long.filepath]) == {7: "disc", 8: "box"}
    assert long[tracks_field("masks")] == 2 and result.samples_processed == 1
    assert get_run(video_dataset, "masks").settings.direction == direction


def test_keypoint_prompts_track_each_keypoint_object(video_dataset, checkpoint, engine):
    """``points`` mode: each Keypoint (its ``sam_labels`` 1/0) is one tracked instance."""
    sam3_ops.segment(video_dataset.limit(1), "pointed", model_path=checkpoint, mode="points", prompt_field="kps")

    frames = written(video_dataset, "pointed")
    long = video_dataset.first()
    disc, box = long.frames[3]["kps"].keypoints
    reference = engine.track_prompts(
        long.filepath,
        [
            VideoPrompt(3, 3, "disc", points=((18.0, 48.0), (100.0, 72.0)), point_labels=(1, 0)),
            VideoPrompt(3, 4, "box", points=((104.0, 21.0),), point_labels=(1,)),
        ],
    )
    reference = {r.frame_number: r for r in reference}
    assert set(reference) == set(range(3, 13))
    assert assert_matches_core(frames[long.filepath], reference, {3: disc.id, 4: box.id}) >= 10
    assert assert_stable_identities(frames[long.filepath]) == {3: "disc", 4: "box"}


def test_apply_model_with_a_frame_level_prompt_field(video_dataset, checkpoint):
    model = sam3_ops.load_model(checkpoint, mode="boxes", device="cpu", reuse=True, media_type="video")
    video_dataset.apply_model(model, label_field="gt_masks", prompt_field="boxes")  # "frames." is optional

    frames = written(video_dataset, "gt_masks")
    long, short = video_dataset.values("filepath")
    assert {fn for fn, v in frames[long].items() if v is not None} == set(range(5, 13))
    assert {fn for fn, v in frames[short].items() if v is not None} == set(range(1, 5))
    assert assert_stable_identities(frames[long]) == {7: "disc", 8: "box"}
    assert assert_stable_identities(frames[short]) == {0: "box"}


def test_max_objects_caps_prompt_objects_with_a_warning(video_dataset, checkpoint, caplog, tmp_path):
    """Also: ``output_dir`` puts every mask in a PNG file (``mask_path``, FiftyOne's convention)."""
    with caplog.at_level(logging.WARNING, logger="sam3_ops.sdk.video"):
        sam3_ops.segment(
            video_dataset.limit(1),
            "capped",
            model_path=checkpoint,
            mode="boxes",
            prompt_field="boxes",
            max_objects=1,
            output_dir=str(tmp_path),
        )
    frames = written(video_dataset, "capped")
    assert assert_stable_identities(frames[video_dataset.first().filepath]) == {7: "disc"}
    detections = [d for value in frames[video_dataset.first().filepath].values() if value for d in value.detections]
    assert detections and all(d.mask is None and os.path.isfile(d.mask_path) for d in detections)
    (warning,) = [r.getMessage() for r in caplog.records if "max_objects=1" in r.getMessage()]
    assert warning.startswith(video_dataset.first().filepath) and "2 prompt objects" in warning


# -- reliability ----------------------------------------------------------------------------------


def test_corrupt_and_missing_videos_are_skipped_and_reported(video_dataset, checkpoint, tmp_path, caplog):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    missing = str(tmp_path / "missing.mp4")
    video_dataset.add_samples([fo.Sample(filepath=str(garbage)), fo.Sample(filepath=missing)])
    earlier = video_dataset[video_dataset.values("id")[2]]
    earlier.frames[1]["masks"] = fo.Detections(detections=[fo.Detection(label="earlier", bounding_box=[0, 0, 1, 1])])
    earlier.save()

    with caplog.at_level(logging.WARNING, logger="sam3_ops.sdk.video"):
        result = sam3_ops.segment(video_dataset, "masks", model_path=checkpoint, mode="boxes", prompt_field="boxes")

    assert (result.samples_processed, result.samples_skipped) == (2, 2)
    reasons = {entry["filepath"]: entry["reason"] for entry in result.skipped}
    assert set(reasons) == {str(garbage), missing}
    assert "no such file" in reasons[missing] and "cannot read video" in reasons[str(garbage)]
    assert sum("Skipping" in r.getMessage() for r in caplog.records) == 2
    frames = written(video_dataset, "masks")
    assert [d.label for d in frames[str(garbage)][1].detections] == ["earlier"]  # an earlier value stays
    assert video_dataset.values(tracks_field("masks")) == [2, 1, None, None]
    assert get_run(video_dataset, "masks").summary["samples_skipped"] == 2


def test_skip_failures_false_stops_at_a_corrupt_video_and_num_workers_is_refused(video_dataset, checkpoint, tmp_path):
    """The run options mean on videos what they mean on images: ``skip_failures=False`` stops the run
    at the first video that fails (the videos before it are written), and ``num_workers`` (decoding
    processes, which the tracker does not use) is refused by name before anything is written."""
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    video_dataset.add_sample(fo.Sample(filepath=str(garbage)))

    with pytest.raises(SettingsError, match="num_workers"):
        sam3_ops.segment(
            video_dataset, "masks", model_path=checkpoint, mode="boxes", prompt_field="boxes", num_workers=2
        )
    assert not video_dataset.has_frame_field("masks")

    with pytest.raises(Exception, match="cannot read video"):
        sam3_ops.segment(
            video_dataset, "masks", model_path=checkpoint, mode="boxes", prompt_field="boxes", skip_failures=False
        )
    assert video_dataset.values(tracks_field("masks")) == [2, 1, None]  # the videos before it were written


def test_an_interrupted_run_resumes_per_video(video_dataset, checkpoint, engine, monkeypatch):
    """Interrupted after 2 of the short video's 4 frames were written: the long video is done (its
    marker), the short one half-written and not done; resuming redoes only the short one, cleanly."""
    long_id, short_id = video_dataset.values("id")
    monkeypatch.setattr(sdk_video, "FRAMES_PER_WRITE", 2)
    flush = sdk_video._FrameWriter.flush

    def flush_then_interrupt(writer):
        wrote = writer.pending
        flush(writer)
        if writer.sample_id == short_id and wrote:
            raise KeyboardInterrupt  # the user's Ctrl-C, after a chunk reached the database

    options = {"model_path": checkpoint, "mode": "boxes", "prompt_field": "boxes", "device": "cpu"}
    with monkeypatch.context() as patch:
        patch.setattr(sdk_video._FrameWriter, "flush", flush_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            sam3_ops.segment(video_dataset, "masks", **options)

    frames = written(video_dataset, "masks")
    long, short = video_dataset.values("filepath")
    assert [fn for fn, v in frames[short].items() if v is not None] == [1, 2]  # half-written
    assert video_dataset.values(tracks_field("masks")) == [2, None]
    assert sam3_ops.without_results(video_dataset, "masks").values("id") == [short_id]
    kept = {fn: [d.id for d in v.detections] for fn, v in frames[long].items() if v is not None}

    result = sam3_ops.segment(video_dataset, "masks", only_missing=True, **options)

    frames = written(video_dataset, "masks")
    assert {fn: [d.id for d in v.detections] for fn, v in frames[long].items() if v is not None} == kept  # not redone
    reference = engine.track_prompts(short, [VideoPrompt(1, 0, "box", box_xyxy=SHORT_BOX)])
    assert assert_matches_core(frames[short], {r.frame_number: r for r in reference}) >= 4
    assert video_dataset.values(tracks_field("masks")) == [2, 1]
    assert result.samples_processed == 1 and len(sam3_ops.without_results(video_dataset, "masks")) == 0

    # running again without only_missing replaces a video's frames: nothing is duplicated
    before = written(video_dataset, "masks")[short]
    sam3_ops.segment(video_dataset.select(short_id), "masks", **options)
    after = written(video_dataset, "masks")[short]
    assert [len(v.detections) for v in after.values()] == [len(v.detections) for v in before.values()]
    assert not {d.id for v in after.values() for d in v.detections} & {
        d.id for v in before.values() for d in v.detections
    }


def test_a_video_that_fails_half_way_is_cleared_and_reported(video_dataset, checkpoint, monkeypatch):
    """A failure after some frames were written (here an injected error on the second write; in
    practice a decoding error): the video's frames are cleared, it is not marked done, it is
    reported, and the next video is written."""
    long_id, short_id = video_dataset.values("id")
    monkeypatch.setattr(sdk_video, "FRAMES_PER_WRITE", 2)
    flush = sdk_video._FrameWriter.flush
    writes = []

    def failing_flush(writer):
        if writer.sample_id == long_id and writer.pending:
            writes.append(writer.pending)
            if len(writes) == 2:
                raise RuntimeError("disk full")
        flush(writer)

    monkeypatch.setattr(sdk_video._FrameWriter, "flush", failing_flush)
    result = sam3_ops.segment(video_dataset, "masks", model_path=checkpoint, mode="boxes", prompt_field="boxes")

    frames = written(video_dataset, "masks")
    long, short = video_dataset.values("filepath")
    assert not any(value is not None for value in frames[long].values())  # its first chunk was cleared again
    assert {fn for fn, v in frames[short].items() if v is not None} == {1, 2, 3, 4}
    assert video_dataset.values(tracks_field("masks")) == [None, 1]
    assert result.skipped == [{"filepath": long, "reason": "RuntimeError: disk full"}]


def test_a_truncated_video_is_reported_and_not_kept(video_dataset, checkpoint, tmp_path):
    """A video cut short (ffmpeg decodes 4 of the 20 frames it declares and exits with 0): listed as
    skipped with the reason, its frames cleared, no done-marker; the other video is written. Through
    ``apply_model`` the same video is reported in ``model.summary()`` and nothing is written."""
    cut = truncated_video(tmp_path / "cut.mp4", synthetic_frames(20, height=HEIGHT, width=WIDTH), keep=4)
    sample = fo.Sample(filepath=cut)
    sample.frames[1]["boxes"] = fo.Detections(detections=[fo.Detection(label="box", bounding_box=relative(DISC_BOX))])
    video_dataset.add_sample(sample)
    runs = video_dataset.skip(1)  # the short video and the cut one
    options = {"model_path": checkpoint, "mode": "boxes", "prompt_field": "boxes", "device": "cpu"}

    result = sam3_ops.segment(runs, "masks", **options)

    assert (result.samples_processed, result.samples_skipped) == (1, 1)
    (skipped,) = result.skipped
    assert skipped["filepath"] == cut and "declares 20 frames, but decoding stopped after 4" in skipped["reason"]
    frames = written(video_dataset, "masks")
    assert not any(value is not None for value in frames[cut].values())  # nothing of it kept
    assert {fn for fn, value in frames[video_dataset.values("filepath")[1]].items() if value is not None} == {
        1,
        2,
        3,
        4,
    }
    assert video_dataset.values(tracks_field("masks")) == [None, 1, None]
    assert get_run(video_dataset, "masks").summary["samples_skipped"] == 1

    model = sam3_ops.load_model(checkpoint, mode="boxes", device="cpu", reuse=True, media_type="video")
    video_dataset.select(sample.id).apply_model(model, label_field="applied", prompt_field="boxes")
    assert model.summary()["samples_processed"] == 0
    assert [entry["filepath"] for entry in model.summary()["skipped"]] == [cut]
    assert "truncated" in model.summary()["skipped"][0]["reason"]
    assert not video_dataset.has_frame_field("applied")  # FiftyOne got no labels: nothing written


def test_video_settings_and_fields_are_checked_before_anything_runs(video_dataset, checkpoint):
    base = {"model_path": checkpoint, "device": "cpu"}
    for options, message in [
        ({"mode": "exemplars", "prompt_field": "boxes"}, "does not run on videos"),
        ({"mode": "boxes"}, "frame-level Detections field"),
        ({"mode": "boxes", "prompt_field": "kps"}, "holds Keypoints values.*'frames.boxes'"),
        ({"mode": "points", "prompt_field": "nothing"}, "does not exist.*'frames.kps'"),
        ({"prompts": ["cat"], "nms_iou": 0.5}, "images only"),
        ({"prompts": ["cat"], "max_detections": 5}, "images only; .*max_objects caps the objects tracked"),
    ]:
        with pytest.raises(ValueError, match=message):
            sam3_ops.segment(video_dataset, "out", **base, **options)
    with pytest.raises(ValueError, match="this run's prompts"):
        sam3_ops.segment(video_dataset, "boxes", mode="boxes", prompt_field="boxes", **base)
    with pytest.raises(ValueError, match="clip"):
        sam3_ops.segment(video_dataset.to_clips([[(1, 3)], [(1, 2)]]), "out", prompts=["cat"], **base)
    with pytest.raises(SettingsError, match="does not run on videos") as error:
        sam3_ops.load_model(checkpoint, mode="auto", media_type="video")
    assert error.value.field == "mode"
    with pytest.raises(ValueError, match="media_type"):
        sam3_ops.load_model(checkpoint, prompts=["cat"], media_type="audio")
    assert video_dataset.get_field("frames.out") is None


# -- the App ----------------------------------------------------------------------------------------


def triggered(result, operator_name):
    return [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == operator_name]


def test_text_operator_tracks_the_target_videos_immediately(plugins_dir, video_dataset, checkpoint):
    short = video_dataset.last()
    params = {
        "prompts": ["red ball", "green box"],
        "threshold": TEXT_THRESHOLD,
        "max_objects": 3,
        "label_field": "sam3",
        "model_path": str(checkpoint),
        "device": "cpu",
        "view_target": "CURRENT_VIEW",
    }
    result = foo.execute_operator(
        TEXT_URI, {"dataset": video_dataset, "view": video_dataset.select(short.id), "params": params}
    )

    frames = written(video_dataset, "sam3")
    assert set(frames[short.filepath]) == set(range(1, 5))
    assert all(value is not None for value in frames[short.filepath].values())
    assert not any(value is not None for value in frames[video_dataset.first().filepath].values())
    assert video_dataset.values(tracks_field("sam3")) == [None, len(assert_stable_identities(frames[short.filepath]))]
    (summary,) = [p["results"] for p in triggered(result, "show_output")]
    assert (summary["samples_processed"], summary["samples_skipped"]) == (1, 0)
    progress = [p for p in triggered(result, "set_progress")]
    assert progress[-1]["progress"] == 1.0 and "video" in progress[-1]["label"]
    assert triggered(result, "reload_dataset") == [{}]
    assert get_run(video_dataset, "sam3").settings.max_objects == 3


def test_box_operator_runs_delegated_on_a_video_dataset(plugins_dir, video_dataset, checkpoint):
    params = {
        "prompt_field": "boxes",  # the dropdown's value (shown as frames.boxes)
        "mode": "boxes",
        "direction": "both",
        "label_field": "tracked",
        "model_path": str(checkpoint),
        "device": "cpu",
    }
    queued = foo.execute_operator(BOX_URI, {"dataset": video_dataset, "params": params, "request_delegation": True})
    assert queued.delegated
    service = DelegatedOperationService()
    try:
        (result,) = service.execute_queued_operations(operator=BOX_URI, dataset_name=video_dataset.name)
        assert result.error is None, result.error
        assert (result.result["samples_processed"], result.result["samples_skipped"]) == (2, 0)
        doc = service.get(queued.result["id"])
        assert doc.run_state == "completed" and doc.status.progress == 1.0
    finally:
        service.delete_for_dataset(video_dataset._doc.id)
    frames = written(video_dataset, "tracked")
    long, short = video_dataset.values("filepath")
    assert {fn for fn, v in frames[long].items() if v is not None} == set(range(1, 13))
    assert assert_stable_identities(frames[long]) == {7: "disc", 8: "box"}
    assert video_dataset.values(tracks_field("tracked")) == [2, 1]
    settings = get_run(video_dataset, "tracked").settings
    assert (settings.mode, settings.prompt_field, settings.direction) == ("boxes", "boxes", "both")


def resolve_form(operator, dataset, params):
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": dict(params)})
    form = operator.resolve_input(ctx)
    return form.type.properties, ValidationContext(ctx, form, operator)


def test_forms_offer_frame_fields_on_a_video_dataset(video_dataset, checkpoint):
    base = {"model_path": str(checkpoint), "device": "cpu", "label_field": "masks"}
    properties, validation = resolve_form(
        SegmentWithBoxPrompts(), video_dataset, {**base, "mode": "boxes", "prompt_field": "boxes"}
    )
    assert not validation.invalid, [e.to_json() for e in validation.errors]
    assert properties["prompt_field"].type.values == ["boxes"]  # shown as frames.boxes
    assert "frames.boxes" in repr(properties["prompt_field"].view.to_json())
    assert properties["mode"].type.values == ["boxes", "points"]  # no exemplars on videos
    assert {"direction", "max_objects"} <= set(properties)
    properties, _ = resolve_form(SegmentWithBoxPrompts(), video_dataset, {**base, "mode": "points"})
    assert properties["prompt_field"].type.values == ["kps"]
    properties, validation = resolve_form(
        SegmentWithBoxPrompts(),
        video_dataset,
        {**base, "mode": "boxes", "prompt_field": "boxes", "label_field": "boxes"},
    )
    assert properties["label_field"].invalid and "prompts" in properties["label_field"].error_message

    video_dataset.add_frame_field("sam3", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    text = {**base, "prompts": ["cat"], "label_field": "sam3"}
    properties, validation = resolve_form(SegmentWithTextPrompts(), video_dataset, text)
    assert "max_objects" in properties and "nms_iou" not in properties  # image-only options hidden
    assert properties["label_field"].invalid and "already exists" in properties["label_field"].error_message
    properties, validation = resolve_form(SegmentWithTextPrompts(), video_dataset, {**text, "only_missing": True})
    assert not validation.invalid, [e.to_json() for e in validation.errors]


def test_segment_everything_and_shards_refuse_videos_before_anything_runs(plugins_dir, video_dataset, checkpoint):
    params = {"model_path": str(checkpoint), "device": "cpu", "label_field": "everything"}
    properties, validation = resolve_form(SegmentEverything(), video_dataset, params)
    assert validation.invalid and VIDEO_AUTO_REFUSAL in properties["label_field"].error_message
    assert "nms_iou" not in properties  # no image-only options offered
    with pytest.raises(ExecutionError, match="Segment everything runs on images"):  # FiftyOne validates the form
        foo.execute_operator(f"{PLUGIN}/segment_everything", {"dataset": video_dataset, "params": params})
    assert not video_dataset.has_frame_field("everything")

    class EnterpriseContext(ExecutionContext):  # FiftyOne Enterprise splits a distributed operator's run
        num_distributed_tasks = 3

    def shards(dataset, form_shards=None):
        request = {"dataset_name": dataset.name, "params": {"shards": form_shards}}
        return operators_module._shards(EnterpriseContext(request_params=request))

    assert shards(video_dataset) == shards(video_dataset, 4) == 1  # videos: one run, never shards
    images = fo.Dataset()
    try:
        assert shards(images) == 3
    finally:
        images.delete()


def test_the_refinement_panel_refuses_video_datasets(video_dataset):
    params = {"panel_id": "panel-1", "panel_state": {}, "state": {}, "__method__": "on_load", "event_args": {}}
    ctx = foo.ExecutionContext(
        request_params={"dataset_name": video_dataset.name, "params": params}, executor=Executor()
    )
    RefineWithNegativeBoxes().execute(ctx)
    (output,) = [r.params["output"] for r in ctx.executor._requests if r.operator_uri == "show_panel_output"][-1:]
    assert VIDEO_REFUSAL in repr(output) and "actions" not in output["type"]["properties"]  # no buttons
