"""Shared fixtures: a tiny SAM3 checkpoint built with the real transformers code, real image
files, and real FiftyOne datasets on an embedded MongoDB in a temporary directory."""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sam3_ops.testing import PrivateMongo  # noqa: E402  (imports neither fiftyone nor torch)

# Before fiftyone is imported: no hub, no telemetry, and a database server of this session's own
# (FiftyOne's embedded service is shared machine-wide: see PrivateMongo).
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # HF_HUB_OFFLINE=0 for the opt-in `weights` tests
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ.pop("HF_TOKEN", None)
# Once per process: should this file ever be imported a second time (as a module, under another
# name), it must not start a second server and repoint FIFTYONE_DATABASE_URI under running tests.
# Without fiftyone (the GPU machine has none) no server is needed: the engine and GPU tests run.
if importlib.util.find_spec("fiftyone") is None:
    _SESSION_DIR, _MONGO = None, None
elif os.environ.get("SAM3_OPS_TEST_SESSION_PID") != str(os.getpid()):
    os.environ["SAM3_OPS_TEST_SESSION_PID"] = str(os.getpid())
    _SESSION_DIR = tempfile.mkdtemp(prefix="sam3ops-tests-")
    _MONGO = PrivateMongo(_SESSION_DIR).start()
else:
    _SESSION_DIR, _MONGO = None, None

import pytest  # noqa: E402

from tests.helpers import IMAGE_SIZES, add_ground_truth, write_image  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random SAM3 checkpoint in facebook/sam3's sam3_video layout."""
    from sam3_ops.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3"))


@pytest.fixture(scope="session")
def image_paths(tmp_path_factory):
    """Real PNG files of several sizes."""
    directory = tmp_path_factory.mktemp("images")
    return [write_image(directory / f"img{i}.png", h, w, seed=i) for i, (h, w) in enumerate(IMAGE_SIZES)]


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


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    """A FiftyOne plugins directory holding the repository, as a user would install it (a link)."""
    import fiftyone as fo

    from tests.helpers import REPO_ROOT

    directory = tmp_path_factory.mktemp("plugins")
    os.symlink(REPO_ROOT, directory / "sam3")
    previous = fo.config.plugins_dir
    fo.config.plugins_dir = str(directory)
    yield directory
    fo.config.plugins_dir = previous


def _stop_database():
    if _MONGO is not None:
        _MONGO.stop()
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


# atexit runs handlers last-in first-out: registered before fiftyone is imported, this runs after
# FiftyOne's own exit cleanup, which needs the database (stopping it first costs a 30 s timeout)
atexit.register(_stop_database)
