"""Shared fixtures: a tiny SAM3 checkpoint built with the real transformers code, real image
files, and real FiftyOne datasets on an embedded MongoDB in a temporary directory."""

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sam3_ops.testing import PrivateMongo  # noqa: E402  (imports neither fiftyone nor torch)

# Before fiftyone is imported: no hub, no telemetry, and a database server of this session's own
# (FiftyOne's embedded service is shared machine-wide: see PrivateMongo).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.pop("HF_TOKEN", None)
_SESSION_DIR = tempfile.mkdtemp(prefix="sam3ops-tests-")
_MONGO = PrivateMongo(_SESSION_DIR).start()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZES = [(120, 160), (300, 200), (224, 224), (97, 333), (180, 240), (64, 64)]  # (height, width)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random SAM3 checkpoint in facebook/sam3's sam3_video layout."""
    from sam3_ops.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3"))


def write_image(path, height, width, seed=0, mode="RGB"):
    """Writes a random image of ``height x width``; returns its path."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return str(path)


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory):
    """Real PNG files of several sizes."""
    directory = tmp_path_factory.mktemp("images")
    return [write_image(directory / f"img{i}.png", h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]


def add_ground_truth(dataset, seed=0):
    """Gives each sample 1-3 ground-truth boxes with labels, attributes and a negative box."""
    import fiftyone as fo

    rng = np.random.default_rng(seed)
    for sample in dataset:
        detections = []
        for j in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0.05, 0.5, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            detections.append(fo.Detection(label=["cat", "dog"][j % 2], bounding_box=[x, y, w, h], annotator="ann"))
        sample["ground_truth"] = fo.Detections(detections=detections)
        sample["not_wanted"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0.6, 0.6, 0.2, 0.2])])
        sample.save()
    return dataset


@pytest.fixture
def dataset(image_paths):
    """A real FiftyOne dataset of the test images with a ``ground_truth`` Detections field."""
    import fiftyone as fo

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in image_paths])
    add_ground_truth(ds)
    yield ds
    if fo.dataset_exists(ds.name):
        ds.delete()


def pytest_unconfigure(config):
    _MONGO.stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
