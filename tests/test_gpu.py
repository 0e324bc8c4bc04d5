"""Opt-in (``-m gpu``): the engine's CUDA path on the tiny checkpoint, against the same checkpoint
in plain float32 on the CPU, for every kind of prompt; and the video engine's (text tracking on
frames in memory: the GPU machine has no ffmpeg).

On CUDA the engine runs under bf16 autocast (Ampere and later), resizes and normalises on the device, and
can ``torch.compile`` its encoders; none of that runs on a CPU, where the rest of the suite lives.
These tests need no fiftyone (the GPU machine has none)::

    python -m pytest -m gpu tests/test_gpu.py

``SAM3_TEST_DEVICE=cpu`` runs the same comparisons CPU against CPU: a check of the tests themselves.
"""

import os
from collections import Counter

import numpy as np
import pytest
import torch

from sam3_ops.core.engine import Sam3Engine
from sam3_ops.core.queries import ImagePrompts, ObjectPrompt
from sam3_ops.core.video import Sam3VideoEngine
from sam3_ops.testing import build_tiny_video_checkpoint

from .test_video_core import synthetic_frames

DEVICE = os.environ.get("SAM3_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# every prompt kind the plugin sends: the detector with text, text + negative boxes and exemplar
# boxes (both go through its geometry encoder's roi_align), and the tracker with one mask per box
CASES = {
    "text": ("text", ImagePrompts(texts=("cat", "dog"))),
    "text+negatives": ("text", ImagePrompts(texts=("cat",), negative_boxes=[[70, 20, 100, 80]])),
    "exemplars": ("exemplars", ImagePrompts(boxes=[[10, 10, 60, 50]], negative_boxes=[[70, 20, 100, 80]])),
    "boxes": ("boxes", ImagePrompts(boxes=[[10, 10, 60, 50], [30.5, 20.2, 150, 110]], box_labels=("a", "b"))),
    "points": (
        "points",
        ImagePrompts(
            objects=(
                ObjectPrompt("a", points=np.float32([[40, 30], [90, 60]]), point_labels=np.int64([1, 0])),
                ObjectPrompt("b", points=np.float32([[20, 80]]), point_labels=np.int64([1])),
            )
        ),
    ),
}
THRESHOLD = 0.2  # below every score of the random tiny model (~0.25): the hit counts are comparable


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (300, 200), (97, 333), (480, 640)]]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, images):
    """The float32 CPU results of every case."""
    engine = Sam3Engine(tiny_checkpoint, device="cpu")
    return {
        name: engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD)
        for name, (mode, prompts) in CASES.items()
    }


@pytest.fixture(scope="module")
def device_engine(tiny_checkpoint):
    return Sam3Engine(tiny_checkpoint, device=DEVICE)


def _canvas(segmentation, i):
    """Hit ``i``'s mask pasted into a full-image canvas."""
    height, width = segmentation.image_size
    canvas = np.zeros((height, width), bool)
    x0, y0 = int(segmentation.boxes_xyxy[i][0]), int(segmentation.boxes_xyxy[i][1])
    mask = segmentation.masks[i]
    canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    return canvas


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def assert_close(ours, expected, score_tol=0.03, min_box_iou=0.9, min_mask_agreement=0.9):
    """Same hits per image and label; each expected hit has a partner with a close score, box and mask."""
    assert len(ours) == len(expected)
    for got, want in zip(ours, expected):
        assert got.image_size == want.image_size
        assert Counter(got.labels) == Counter(want.labels)
        assert got.scores.dtype == np.float32 and got.boxes_xyxy.dtype == np.float32
        assert all(isinstance(m, np.ndarray) and m.dtype == bool for m in got.masks)
        unused = set(range(len(got)))
        agreements = []
        for j in range(len(want)):
            candidates = [
                i for i in unused if got.labels[i] == want.labels[j] and got.prompt_index[i] == want.prompt_index[j]
            ]
            i = max(candidates, key=lambda i: _box_iou(got.boxes_xyxy[i], want.boxes_xyxy[j]))
            unused.discard(i)
            assert _box_iou(got.boxes_xyxy[i], want.boxes_xyxy[j]) >= min_box_iou
            assert abs(float(got.scores[i]) - float(want.scores[j])) <= score_tol
            a, b = _canvas(got, i), _canvas(want, j)
            x0, y0 = np.minimum(got.boxes_xyxy[i][:2], want.boxes_xyxy[j][:2]).astype(int)
            x1, y1 = np.maximum(got.boxes_xyxy[i][2:], want.boxes_xyxy[j][2:]).astype(int)
            agreements.append(float((a[y0:y1, x0:x1] == b[y0:y1, x0:x1]).mean()))
        assert np.mean(agreements) >= min_mask_agreement, agreements


@pytest.mark.parametrize("case", CASES)
def test_device_results_match_float32_cpu(device_engine, reference, images, case):
    mode, prompts = CASES[case]
    results = device_engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD)
    assert sum(len(r) for r in results) > 0
    assert_close(results, reference[case])


@pytest.mark.parametrize("case", CASES)
def test_batch_of_one_matches_the_whole_batch_on_the_device(device_engine, images, case):
    mode, prompts = CASES[case]
    whole = device_engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD)
    single = [device_engine.segment([image], [prompts], mode=mode, threshold=THRESHOLD)[0] for image in images]
    # bf16 kernels may pick other tilings at another batch size: close, not bitwise
    assert_close(single, whole, score_tol=0.02, min_box_iou=0.95, min_mask_agreement=0.95)


def test_image_encoder_runs_in_bf16_where_the_gpu_has_bf16_units(device_engine, images):
    expected_bf16 = DEVICE == "cuda" and torch.cuda.get_device_capability()[0] >= 8
    assert device_engine.bf16 == expected_bf16
    seen = []
    handle = device_engine.detector.vision_encoder.register_forward_hook(
        lambda module, args, output: seen.append(output.last_hidden_state.dtype)
    )
    try:
        device_engine.segment(images[:2], [CASES["text"][1]] * 2, threshold=THRESHOLD)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16 if expected_bf16 else torch.float32]


def test_cached_features_give_the_same_results_on_the_device(tiny_checkpoint, images):
    engine = Sam3Engine(tiny_checkpoint, device=DEVICE, feature_cache_size=8)
    keys = [f"image-{i}" for i in range(len(images))]
    for mode, prompts in CASES.values():
        first = engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD, image_keys=keys)
        again = engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD, image_keys=keys)
        assert_close(again, first, score_tol=1e-3, min_box_iou=0.99, min_mask_agreement=0.99)


def test_compiled_encoders_match_on_the_device(tiny_checkpoint, device_engine, images):
    compiled = Sam3Engine(tiny_checkpoint, device=DEVICE, compile=True)
    for mode, prompts in CASES.values():
        expected = device_engine.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD)
        results = compiled.segment(images, [prompts] * len(images), mode=mode, threshold=THRESHOLD)
        assert_close(results, expected, score_tol=0.02, min_box_iou=0.95, min_mask_agreement=0.95)


# -- the video engine -----------------------------------------------------------------------------------

VIDEO_PROMPTS = ["red ball", "green box"]


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory):
    return build_tiny_video_checkpoint(tmp_path_factory.mktemp("tiny-sam3-video"))


def _track(engine, frames):
    # threshold 0: every query of the random model is an object (max_objects above their number), so
    # no object hangs on a score a hair from the threshold, where bf16 could tip it either way
    return list(engine.track_text(frames, VIDEO_PROMPTS, threshold=0.0, max_objects=100))


def test_video_text_tracking_on_the_device_matches_float32_cpu(video_checkpoint):
    frames = synthetic_frames(6)
    expected = _track(Sam3VideoEngine(video_checkpoint, device="cpu"), frames)
    results = _track(Sam3VideoEngine(video_checkpoint, device=DEVICE), frames)
    assert [r.frame_number for r in results] == [r.frame_number for r in expected]
    agreements = []
    for got, want in zip(results, expected):
        assert sorted(zip(got.object_ids, got.labels)) == sorted(zip(want.object_ids, want.labels))
        np.testing.assert_allclose(
            got.scores[np.argsort(got.object_ids)], want.scores[np.argsort(want.object_ids)], atol=0.03
        )
        for i, obj in enumerate(got.object_ids):
            j = list(want.object_ids).index(obj)
            a = np.zeros(got.image_size, bool)
            b = np.zeros(want.image_size, bool)
            for canvas, result, k in ((a, got, i), (b, want, j)):
                x0, y0 = int(result.boxes_xyxy[k][0]), int(result.boxes_xyxy[k][1])
                mask = result.masks[k]
                canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
            agreements.append(float((a == b).mean()))
    assert agreements and np.mean(agreements) >= 0.95, agreements


def test_video_engine_runs_in_bf16_where_the_gpu_has_bf16_units(video_checkpoint):
    engine = Sam3VideoEngine(video_checkpoint, device=DEVICE)
    expected_bf16 = DEVICE == "cuda" and torch.cuda.get_device_capability()[0] >= 8
    assert engine.bf16 == expected_bf16
    seen = []
    encoder = engine.text_model.detector_model.vision_encoder
    handle = encoder.register_forward_hook(lambda module, args, output: seen.append(output.last_hidden_state.dtype))
    try:
        _track(engine, synthetic_frames(2))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16 if expected_bf16 else torch.float32}
