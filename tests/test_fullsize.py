"""Opt-in (``-m fullsize``, minutes on a CPU): SAM3 at transformers' default size (1008 px input,
288 px low-resolution masks, 200 queries, ~860 M parameters) with random weights, through
``sam3_ops.segment`` on real FiftyOne datasets: text, boxes, points and a 4-frame video write labels
of the right types and shapes. The tiny checkpoints cannot show that the full-size shapes run.

    python -m pytest -m fullsize tests/test_fullsize.py

The random checkpoint (3.4 GB of safetensors, ~2 min to build and ~8 GB of memory while building)
is built once per session by ``sam3_ops.testing.build_fullsize_checkpoint``; ``SAM3_FULLSIZE``
may name one built before. ``bench/bench_fullsize.py`` times the same runs.
"""

from __future__ import annotations

import os
import shutil

import fiftyone as fo
import numpy as np
import pytest

import sam3_ops

pytestmark = pytest.mark.fullsize


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    given = os.environ.get("SAM3_FULLSIZE")
    if given:
        return given
    from sam3_ops.testing import build_fullsize_checkpoint

    return build_fullsize_checkpoint(tmp_path_factory.mktemp("sam3-fullsize"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A one-sample dataset of scikit-image's cat (451 x 300) with prompt boxes and points."""
    import skimage

    path = shutil.copy(
        os.path.join(os.path.dirname(skimage.__file__), "data", "chelsea.png"), tmp_path_factory.mktemp("photo")
    )
    dataset = fo.Dataset()
    dataset.add_sample(
        fo.Sample(
            filepath=path,
            ground_truth=fo.Detections(detections=[fo.Detection(label="cat", bounding_box=[0.1, 0.05, 0.6, 0.9])]),
            clicks=fo.Keypoints(
                keypoints=[fo.Keypoint(label="cat", points=[[0.4, 0.5], [0.95, 0.05]], sam_labels=[1, 0])]
            ),
        )
    )
    yield dataset
    dataset.delete()


def _check(detections, width: int, height: int, labels: set[str]) -> None:
    """Labels of the types and shapes the README promises, at the written resolution."""
    assert detections, "nothing was written"
    for detection in detections:
        assert detection.label in labels
        assert 0.0 <= detection.confidence <= 1.0
        x, y, w, h = detection.bounding_box
        assert 0 <= x <= 1 and 0 <= y <= 1 and 0 <= x + w <= 1 + 1e-6 and 0 <= y + h <= 1 + 1e-6
        assert isinstance(detection.mask, np.ndarray) and detection.mask.dtype == bool and detection.mask.ndim == 2
        # the mask covers exactly the box, in pixels of the image
        assert abs(detection.mask.shape[0] - h * height) <= 1 and abs(detection.mask.shape[1] - w * width) <= 1


@pytest.mark.parametrize(
    "settings, labels, expected",
    [
        (dict(prompts=["cat", "ear"], threshold=0.0, max_detections=5), {"cat", "ear"}, None),
        (dict(mode="boxes", prompt_field="ground_truth"), {"cat"}, 1),
        (dict(mode="points", prompt_field="clicks"), {"cat"}, 1),
    ],
    ids=["text", "boxes", "points"],
)
def test_full_size_image_modes_write_labels(checkpoint, photo, settings, labels, expected):
    result = sam3_ops.segment(photo, "full", model_path=checkpoint, device="cpu", num_workers=0, **settings)
    assert result.samples_processed == 1 and result.samples_skipped == 0
    detections = photo.first()["full"].detections
    _check(detections, 451, 300, labels)
    if expected is not None:
        assert len(detections) == expected
    else:
        assert len(detections) <= 5


def test_full_size_video_box_tracking_writes_labels(checkpoint, tmp_path):
    """The tracker's video memory at full size (72 x 72 memory features, 288 px masks) on 4 frames.

    (Text tracking is not here: with random weights nothing reaches the checkpoint's detection
    threshold, and at threshold 0 every one of the 200 queries is a valid detection, for which
    transformers' video NMS asks for 26.5 GB.)"""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    from .test_video_core import synthetic_frames, write_video

    path = write_video(tmp_path / "four.mp4", synthetic_frames(4, height=96, width=128))
    videos = fo.Dataset()
    videos.add_sample(fo.Sample(filepath=path))
    sample = videos.first()
    # the red disc's box on frame 1 (synthetic_frames: a disc moving left to right)
    sample.frames[1]["boxes"] = fo.Detections(
        detections=[fo.Detection(label="disc", bounding_box=[12 / 128, 36 / 96, 24 / 128, 24 / 96])]
    )
    sample.save()
    try:
        result = sam3_ops.segment(
            videos, "full", model_path=checkpoint, device="cpu", mode="boxes", prompt_field="frames.boxes"
        )
        assert result.samples_processed == 1 and result.samples_skipped == 0, result.skipped
        sample = videos.first()
        written = [d for number in range(1, 5) for d in (sample.frames[number]["full"] or fo.Detections()).detections]
        _check(written, 128, 96, {"disc"})
        assert len(written) >= 1 and len(written) <= 4
    finally:
        videos.delete()
