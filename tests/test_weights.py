"""Opt-in (``-m weights``): the real ``facebook/sam3`` checkpoint (gated: needs access and
``HF_TOKEN`` or a Hugging Face login), on scikit-image's bundled photo of a cat.

    HF_HUB_OFFLINE=0 SAM3_HF_TOKEN=hf_... python -m pytest -m weights tests/test_weights.py

(the tests drop ``HF_TOKEN`` from their environment, so the token comes as ``SAM3_HF_TOKEN`` or from
a stored ``hf auth login``; ``SAM3_WEIGHTS`` may name a local copy of the checkpoint instead).

What the tiny random checkpoint cannot show: both heads load from the real checkpoint with every
weight found (the tracker's keys are remapped: see ``Sam3Engine.tracker``), and the masks mean
something. Runs on CUDA when there is one (slow on a CPU: about a minute per image). Needs no fiftyone.
"""

import os

import numpy as np
import pytest

from sam3_ops.core.checkpoint import DEFAULT_MODEL, ModelLoadError
from sam3_ops.core.engine import Sam3Engine
from sam3_ops.core.queries import ImagePrompts

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def engine():
    engine = Sam3Engine(os.environ.get("SAM3_WEIGHTS", DEFAULT_MODEL), token=os.environ.get("SAM3_HF_TOKEN"))
    try:
        engine.load("text")
    except ModelLoadError as error:
        pytest.skip(f"the real weights could not be loaded: {str(error).splitlines()[0]}")
    return engine


@pytest.fixture(scope="module")
def cat():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # 300 x 451, a cat filling most of the picture


def test_text_prompt_finds_the_cat(engine, cat):
    (found,) = engine.segment([cat], [ImagePrompts(texts=("cat",))], threshold=0.5)
    assert len(found) >= 1
    best = int(np.argmax(found.scores))
    assert found.masks[best].sum() >= 0.2 * cat.shape[0] * cat.shape[1]


def test_text_prompt_for_an_absent_thing_finds_little(engine, cat):
    (found,) = engine.segment([cat], [ImagePrompts(texts=("airplane",))], threshold=0.5)
    assert len(found) == 0


def test_tracker_loads_every_weight_and_segments_a_box(engine, cat):
    engine.load("boxes")  # fails loudly on any weight the checkpoint did not provide
    height, width = cat.shape[:2]
    (found,) = engine.segment([cat], [ImagePrompts(boxes=[[0, 0, width, height]], box_labels=("cat",))], mode="boxes")
    assert found.labels == ["cat"]
    assert 0.2 * height * width <= found.masks[0].sum() <= 0.95 * height * width
