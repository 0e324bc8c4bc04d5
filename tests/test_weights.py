"""What a user with access to ``facebook/sam3`` runs first, on scikit-image's bundled photo of a cat,
through the public loading path (``sam3_ops.get_engine(...).load(mode, token=...)``,
``sam3_ops.load_model(..., token=...)``).

Every test runs on two checkpoints:

- ``tiny`` (default suite): the tiny random checkpoint (``confident=True``, so a 0.5 threshold keeps
  something), so these tests cannot rot: loading, shapes, types, written labels, one image-encoder
  call per image;
- ``real`` (opt-in, ``-m weights``): the real, gated checkpoint, where the masks also mean something
  (the cat is found, an airplane is not, a box around the cat gives a cat-sized mask):

    HF_HUB_OFFLINE=0 SAM3_HF_TOKEN=hf_... python -m pytest -m weights tests/test_weights.py

(the tests drop ``HF_TOKEN`` from their environment, so the token comes as ``SAM3_HF_TOKEN`` or from
a stored ``hf auth login``; ``SAM3_WEIGHTS`` may name a local copy of the checkpoint instead). The
real one runs on CUDA when there is one (slow on a CPU: about a minute per image).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest

import sam3_ops
from sam3_ops.core.checkpoint import DEFAULT_MODEL, ModelLoadError
from sam3_ops.core.queries import ImagePrompts

from .test_engine import CallCounter


@dataclass(frozen=True)
class Checkpoint:
    path: str
    token: str | None
    real: bool
    device: str


@pytest.fixture(scope="module", params=["tiny", pytest.param("real", marks=pytest.mark.weights)], ids=["tiny", "real"])
def checkpoint(request, tmp_path_factory):
    if request.param == "tiny":
        from sam3_ops.testing import build_tiny_checkpoint

        return Checkpoint(build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), confident=True), None, False, "cpu")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = os.environ.get("SAM3_WEIGHTS", DEFAULT_MODEL)
    return Checkpoint(path, os.environ.get("SAM3_HF_TOKEN"), True, device)


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The pooled engine a user's runs share, its text and box heads loaded with the token."""
    engine = sam3_ops.get_engine(checkpoint.path, device=checkpoint.device)
    try:
        engine.load("text", token=checkpoint.token)
        engine.load("boxes", token=checkpoint.token)
    except ModelLoadError as error:
        if not checkpoint.real:
            raise
        pytest.skip(f"the real weights could not be loaded: {str(error).splitlines()[0]}")
    return engine


@pytest.fixture(scope="module")
def cat():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # 300 x 451, a cat filling most of the picture


def _check_hits(found, image) -> None:
    """The types and shapes :class:`ImageSegmentation` promises."""
    height, width = image.shape[:2]
    assert found.image_size == (height, width)
    assert found.scores.dtype == np.float32 and ((found.scores >= 0) & (found.scores <= 1)).all()
    assert found.boxes_xyxy.shape == (len(found), 4)
    for box, mask in zip(found.boxes_xyxy, found.masks):
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert mask.dtype == bool and mask.shape == (int(y1 - y0), int(x1 - x0))  # covers exactly the box


def test_text_prompt_finds_the_cat(checkpoint, engine, cat):
    (found,) = engine.segment([cat], [ImagePrompts(texts=("cat",))], threshold=0.5)
    assert len(found) >= 1 and set(found.labels) == {"cat"}
    _check_hits(found, cat)
    if checkpoint.real:
        best = int(np.argmax(found.scores))
        assert found.masks[best].sum() >= 0.2 * cat.shape[0] * cat.shape[1]


def test_text_prompt_for_an_absent_thing_finds_little(checkpoint, engine, cat):
    (found,) = engine.segment([cat], [ImagePrompts(texts=("airplane",))], threshold=0.5)
    _check_hits(found, cat)
    if checkpoint.real:
        assert len(found) == 0
    else:
        assert len(found) >= 1  # the random checkpoint finds everything: the checks above ran on hits


def test_tracker_loads_every_weight_and_segments_a_box(checkpoint, engine, cat):
    height, width = cat.shape[:2]
    (found,) = engine.segment([cat], [ImagePrompts(boxes=[[0, 0, width, height]], box_labels=("cat",))], mode="boxes")
    assert found.labels == ["cat"]
    _check_hits(found, cat)
    if checkpoint.real:
        assert 0.2 * height * width <= found.masks[0].sum() <= 0.95 * height * width


def test_segment_writes_the_cat_with_one_encoder_call_per_image(checkpoint, engine, tmp_path):
    """The README's first call, with a token, on a real dataset: labels written at the images' sizes."""
    import fiftyone as fo
    import skimage

    source = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = [shutil.copy(os.path.join(source, name), tmp_path) for name in ("chelsea.png", "coffee.png")]
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=path) for path in paths])
    model = sam3_ops.load_model(
        checkpoint.path, prompts=["cat"], threshold=0.5, device=checkpoint.device, token=checkpoint.token, reuse=True
    )
    assert model.engine is engine  # the pooled engine: loaded once
    counter = CallCounter(engine.detector.vision_encoder)
    try:
        result = sam3_ops.segment(dataset, "sam3", model=model, batch_size=2, num_workers=0)
    finally:
        counter.close()
    try:
        assert result.samples_processed == 2 and result.samples_skipped == 0
        assert sum(counter.batches) == 2  # each image encoded once
        for sample in dataset:
            sample.compute_metadata()
            for detection in sample["sam3"].detections:
                assert detection.label == "cat" and detection.mask.dtype == bool
                x, y, w, h = detection.bounding_box
                assert abs(detection.mask.shape[0] - h * sample.metadata.height) <= 1
                assert abs(detection.mask.shape[1] - w * sample.metadata.width) <= 1
        cat_hits = dataset.first()["sam3"].detections
        assert len(cat_hits) >= 1
        if checkpoint.real:
            assert len(dataset.last()["sam3"].detections) == 0  # no cat in the coffee cup
    finally:
        dataset.delete()
