"""The README's code, run as a new user runs it: from a folder outside the repository, with the
package installed by the README's setup (``.ci/setup``: ``pip install -e .``) and no PYTHONPATH,
offline. The README's Offline block runs first, in an empty folder: it builds the tiny checkpoint
as ``./facebook/sam3`` and the datasets the examples name; every other block then runs as written
from that folder. Nothing here builds data the README does not."""

import os
import re
import shutil
import signal
import subprocess
import sys

import fiftyone as fo
import pytest

from .helpers import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
#: the README section whose code builds what the others use
OFFLINE_SECTION = "Offline: every example of this README on a tiny checkpoint"
#: README sections whose code has a test of its own: the offline setup; videos (need ffmpeg);
#: sharded runs (need workers); the model zoo (needs the source registered)
OWN_TEST_SECTIONS = (OFFLINE_SECTION, "Video", "Scale out", "From the model zoo")
#: the datasets the README's examples name (built by its Offline block)
README_DATASETS = ("my-dataset", "my-videos")


def readme_sections() -> dict[str, str]:
    """The README's ``## `` sections by title (the text before the first one under ``""``)."""
    with open(README) as handle:
        parts = re.split(r"^## (.+)$", handle.read(), flags=re.M)
    return {"": parts[0], **{title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}}


def python_blocks(section: str | None = None) -> list[str]:
    """The README's Python code blocks: of one section, or (``None``) of every section but
    :data:`OWN_TEST_SECTIONS`."""
    sections = readme_sections()
    if section is not None:
        texts = [sections[section]]
    else:
        texts = [body for title, body in sections.items() if title not in OWN_TEST_SECTIONS]
    return [block for text in texts for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def _user_env() -> dict:
    """A user's environment: no PYTHONPATH (the installed package), no token, the hub never asked."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    return env | {"HF_HUB_OFFLINE": "1"}


def _run_as_a_user(code: str, folder, env: dict | None = None, timeout: float = 600) -> str:
    """Runs ``code`` with the user's interpreter from ``folder`` (outside the repository); its stdout."""
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=env or _user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run.stdout


@pytest.fixture(scope="module")
def offline_folder(tmp_path_factory):
    """An empty folder in which the README's Offline block has run, as written."""
    folder = tmp_path_factory.mktemp("offline")
    (block,) = python_blocks(OFFLINE_SECTION)
    _run_as_a_user(block, folder, timeout=300)
    yield folder
    for name in README_DATASETS:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_the_offline_block_builds_what_the_examples_name(offline_folder):
    assert os.path.isfile(offline_folder / "facebook" / "sam3" / "model.safetensors")
    dataset, videos = fo.load_dataset("my-dataset"), fo.load_dataset("my-videos")
    for field in ("ground_truth", "examples", "not_handles"):
        assert dataset.count(f"{field}.detections") >= len(dataset) > 0
    assert dataset.count("clicks.keypoints") == len(dataset)
    assert videos.media_type == "video" and len(videos) == 2
    assert videos.count("frames.players.detections") == 2


def test_the_readme_has_the_examples_a_user_needs():
    code = "\n".join(python_blocks())
    for call in ("sam3_ops.segment(", "sam3_ops.load_model(", "review_annotations("):
        assert call in code
    assert "build_tiny_checkpoint(" in "".join(python_blocks(OFFLINE_SECTION))
    # every example block loads the data it uses (none relies on another block's variables)
    for block in python_blocks() + python_blocks("Video") + python_blocks("Scale out"):
        assert "fo.load_dataset(" in block, block[:200]


def test_the_readme_python_runs_as_written_offline(offline_folder):
    _run_as_a_user("\n\n".join(python_blocks()), offline_folder)

    from sam3_ops.sdk.runs import get_run

    dataset = fo.load_dataset("my-dataset")
    dataset.reload()
    assert get_run(dataset, "sam3").settings.labels == ["cat", "dog"]
    assert get_run(dataset, "sam3").settings.model_path == "facebook/sam3"  # the README's name: the folder
    assert dataset.count("sam3.detections") > 0 and dataset.count("gt_masks.detections") > 0
    assert dataset.count("clicked.detections") == dataset.count("clicks.keypoints")  # one mask per keypoint
    assert dataset.has_evaluation("sam3_review") and "sam3_needs_review" in dataset.list_saved_views()
    assert dataset.count("ground_truth.detections.sam3_source_id") > 0  # accepted detections arrived
    assert dataset.get_field("ground_truth_backup") is not None  # the accept's own backup


def test_the_tiny_checkpoint_command_runs_from_anywhere(tmp_path):
    target = tmp_path / "sam3-tiny"
    run = subprocess.run(
        [sys.executable, "-m", "sam3_ops.testing", str(target)],
        cwd=tmp_path,
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isfile(target / "model.safetensors") and os.path.isfile(target / "config.json")
    shutil.rmtree(target)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
def test_the_readme_video_code_runs_as_written(offline_folder):
    """The Video section's code on the Offline block's ``my-videos`` (two 3-frame videos, a box on frame 2)."""
    from sam3_ops.sdk.runs import get_run

    _run_as_a_user("\n\n".join(python_blocks("Video")), offline_folder)

    videos = fo.load_dataset("my-videos")
    videos.reload()
    assert get_run(videos, "tracks").settings.labels == ["person", "car"]
    assert videos.count("tracks_tracks") == 2 and videos.count("player_masks_tracks") == 2  # both done
    masks = videos.values("frames.player_masks")
    # the one box, tracked forward and backward from frame 2: one detection on every frame, index 0
    assert [len(frames) for frames in masks] == [3, 3]
    for frame in (frame for frames in masks for frame in frames):
        assert [(d.label, d.index) for d in frame.detections] == [("player", 0)]
    assert videos.has_frame_field("people")


def test_the_readme_scale_out_code_runs_as_written(offline_folder):
    """The Scale out section as a user runs it: the launcher's CPU worker (the README's command for a
    machine without a GPU) started from the Offline folder, then the section's Python, which waits
    for the shards."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from sam3_ops.sdk.runs import get_run

    commands = "".join(re.findall(r"```bash\n(.*?)```", readme_sections()["Scale out"], flags=re.S))
    assert "python -m sam3_ops.sdk.workers --cpu 1\n" in commands
    plugins = offline_folder / "plugins"
    plugins.mkdir(exist_ok=True)
    if not (plugins / "sam3").exists():
        os.symlink(REPO_ROOT, plugins / "sam3")
    env = _user_env() | {"FIFTYONE_PLUGINS_DIR": str(plugins), "SAM3_OPS_HEARTBEAT_S": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sam3_ops.sdk.workers", "--cpu", "1", "--threads", "1", "--no-monitor"],
        cwd=offline_folder,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    dataset = fo.load_dataset("my-dataset")
    try:
        out = _run_as_a_user("\n\n".join(python_blocks("Scale out")), offline_folder, env, timeout=300)
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        DelegatedOperationService().delete_for_dataset(dataset._doc.id)

    dataset.reload()
    assert dataset.count("sam3_all") == len(dataset)  # every sample written, by the worker
    summary = get_run(dataset, "sam3_all").summary
    assert summary["samples_processed"] == len(dataset) and summary["shards"] == 4
    assert f"True {len(dataset)}" in out  # status.finalized, status.samples_written


@pytest.mark.parametrize(
    "command, usage",
    [
        (["sam3-ops-workers"], "usage: sam3-ops-workers "),
        (["-m", "sam3_ops.sdk.workers"], "usage: python -m sam3_ops.sdk.workers "),
        (["sam3-ops-demo"], "usage: sam3-ops-demo "),
        (["-m", "sam3_ops.demo"], "usage: python -m sam3_ops.demo "),
    ],
)
def test_each_entry_point_names_itself_in_its_help(command, usage):
    """The console script installed by ``pip install`` and ``python -m`` each show their own usage."""
    if command[0] == "-m":
        argv = [sys.executable, *command]
    else:
        argv = [os.path.join(os.path.dirname(sys.executable), command[0])]
        if not os.path.isfile(argv[0]):
            pytest.skip(f"{command[0]} is not installed in this environment (pip install -e .)")
    run = subprocess.run([*argv, "--help"], env=_user_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(usage), run.stdout[:200]


def test_every_screenshot_the_readme_shows_is_taken_by_an_e2e_test():
    """The README shows only screenshots that tests/test_e2e.py writes (so each is regenerated by
    the run that checks what it shows), and docs/screenshots holds nothing else."""
    with open(README) as handle:
        shown = set(re.findall(r"\(docs/screenshots/([\w.-]+\.png)\)", handle.read()))
    with open(os.path.join(REPO_ROOT, "tests", "test_e2e.py")) as handle:
        taken = set(re.findall(r'screenshots, "([\w.-]+\.png)"', handle.read()))
    assert shown, "the README shows screenshots"
    assert shown == taken, f"shown but not taken: {shown - taken}; taken but not shown: {taken - shown}"
    assert set(os.listdir(os.path.join(REPO_ROOT, "docs", "screenshots"))) == shown


def test_the_readme_zoo_code_runs_as_written(offline_folder, tmp_path):
    """The zoo section as a user runs it once the source is registered and downloaded: the checkout
    registered (served as an archive) into a zoo directory of its own, the Offline block's
    ./facebook/sam3 as the download."""
    from .test_zoo import IMAGE_MODEL, VIDEO_MODEL, register_checkout

    zoo = tmp_path / "zoo"
    register_checkout(zoo, offline_folder / "facebook" / "sam3")
    env = _user_env() | {"FIFTYONE_MODEL_ZOO_DIR": str(zoo)}
    output = _run_as_a_user("\n\n".join(python_blocks("From the model zoo")), offline_folder, env)
    assert IMAGE_MODEL in output and VIDEO_MODEL in output  # the listing it prints
    dataset = fo.load_dataset("my-dataset")
    dataset.reload()
    assert dataset.count("sam3_zoo.detections") > 0
    assert dataset.count("gt_zoo_masks.detections") == dataset.count("ground_truth.detections") > 0  # one per box
