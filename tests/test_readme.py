"""The README's code, run as a new user runs it: from a folder outside the repository, with the
package installed by the README's setup (``.ci/setup``: ``pip install -e .``) and no PYTHONPATH,
offline, on a hub cache in which ``facebook/sam3`` is a tiny checkpoint."""

import os
import re
import shutil
import signal
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

from .helpers import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
COMMIT = "0" * 40
#: README sections whose code needs data of its own (videos; workers): each has its own test
OWN_TEST_SECTIONS = ("Video", "Scale out")


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


def _hub_cache(root, build) -> str:
    """A Hugging Face cache under ``root`` in which ``build(path)`` wrote ``facebook/sam3``."""
    repo = root / "hub" / "models--facebook--sam3"
    build(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return str(root / "hub")


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache holding a tiny, confident checkpoint as ``facebook/sam3`` (so the
    README's default thresholds find something)."""
    from sam3_ops.testing import build_tiny_checkpoint

    return _hub_cache(tmp_path, lambda path: build_tiny_checkpoint(path, confident=True))


@pytest.fixture
def my_dataset(image_paths):
    """``my-dataset`` with the fields the README's examples use."""
    rng = np.random.default_rng(0)
    dataset = fo.Dataset("my-dataset", persistent=True, overwrite=True)

    def boxes(n, label, **attributes):
        return fo.Detections(
            detections=[
                fo.Detection(
                    label=label, bounding_box=[*rng.uniform(0.05, 0.4, 2), *rng.uniform(0.2, 0.5, 2)], **attributes
                )
                for _ in range(n)
            ]
        )

    samples = []
    for path in image_paths[:4]:
        examples = boxes(2, "cat")
        examples.detections[1]["negative"] = True
        samples.append(
            fo.Sample(
                filepath=path,
                ground_truth=fo.Detections(detections=boxes(1, "cat").detections + boxes(1, "dog").detections),
                not_handles=boxes(1, "oven"),
                examples=examples,
                clicks=fo.Keypoints(
                    keypoints=[fo.Keypoint(label="cat", points=[[0.3, 0.3], [0.6, 0.6]], sam_labels=[1, 0])]
                ),
            )
        )
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


def _user_env(hub_cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    return env | {"HF_HUB_CACHE": hub_cache, "HF_HUB_OFFLINE": "1"}


def test_the_readme_has_the_examples_a_user_needs():
    code = "\n".join(python_blocks())
    for call in ("sam3_ops.segment(", "sam3_ops.load_model(", "review_annotations(", "build_tiny_checkpoint("):
        assert call in code


def _run_as_a_user(code: str, tmp_path, env: dict, timeout: float = 600) -> str:
    """Runs ``code`` with the user's interpreter from a folder outside the repository; its stdout."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run.stdout


def test_the_readme_python_runs_as_written_from_anywhere(tmp_path, hub_cache, my_dataset):
    _run_as_a_user("\n\n".join(python_blocks()), tmp_path, _user_env(hub_cache))

    dataset = fo.load_dataset("my-dataset")
    dataset.reload()
    from sam3_ops.sdk.runs import get_run

    assert get_run(dataset, "sam3").settings.labels == ["cat", "dog"]
    assert dataset.count("sam3.detections") > 0 and dataset.count("gt_masks.detections") > 0
    assert dataset.has_evaluation("sam3_review") and "sam3_needs_review" in dataset.list_saved_views()
    assert dataset.count("ground_truth.detections.sam3_source_id") > 0  # accepted detections arrived
    assert dataset.get_field("ground_truth_backup") is not None  # the accept's own backup


def test_the_tiny_checkpoint_command_runs_from_anywhere(tmp_path, hub_cache):
    target = tmp_path / "sam3-tiny"
    run = subprocess.run(
        [sys.executable, "-m", "sam3_ops.testing", str(target)],
        cwd=tmp_path,
        env=_user_env(hub_cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isfile(target / "model.safetensors") and os.path.isfile(target / "config.json")
    shutil.rmtree(target)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
def test_the_readme_video_code_runs_as_written(tmp_path):
    """The Video section's code on ``my-videos`` (two short videos with a box on frame 2), with the tiny
    video checkpoint as ``facebook/sam3``."""
    from sam3_ops.sdk.runs import get_run
    from sam3_ops.testing import build_tiny_video_checkpoint

    from .test_video_core import synthetic_frames, write_video

    hub = _hub_cache(tmp_path, build_tiny_video_checkpoint)
    frames = synthetic_frames(8)
    paths = [write_video(tmp_path / "a.mp4", frames[:5]), write_video(tmp_path / "b.mp4", frames[5:])]
    videos = fo.Dataset("my-videos", persistent=True, overwrite=True)
    try:
        videos.add_samples([fo.Sample(filepath=path) for path in paths])
        for sample in videos:
            box = fo.Detection(label="player", bounding_box=[0.05, 0.3, 0.25, 0.35])
            sample.frames[2]["players"] = fo.Detections(detections=[box])
            sample.save()

        _run_as_a_user("\n\n".join(python_blocks("Video")), tmp_path, _user_env(hub))

        videos.reload()
        assert get_run(videos, "tracks").settings.labels == ["person", "car"]
        assert videos.count("tracks_tracks") == 2 and videos.count("player_masks_tracks") == 2  # both done
        masks = videos.values("frames.player_masks")
        # the one box, tracked forward and backward from frame 2: one detection on every frame, index 0
        assert [len(frames) for frames in masks] == [5, 3]
        for frame in (frame for frames in masks for frame in frames):
            assert [(d.label, d.index) for d in frame.detections] == [("player", 0)]
        assert videos.has_frame_field("people")
    finally:
        videos.delete()


def test_the_readme_scale_out_code_runs_as_written(tmp_path, hub_cache, my_dataset):
    """The Scale out section as a user runs it: the launcher's workers (one CPU worker here, no GPU)
    started with the plugin installed, then the section's Python, which waits for the shards."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from sam3_ops.sdk.runs import get_run

    commands = re.findall(r"```bash\n(.*?)```", readme_sections()["Scale out"], flags=re.S)
    assert "python -m sam3_ops.sdk.workers" in "".join(commands)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    os.symlink(REPO_ROOT, plugins / "sam3")
    env = _user_env(hub_cache) | {"FIFTYONE_PLUGINS_DIR": str(plugins), "SAM3_OPS_HEARTBEAT_S": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sam3_ops.sdk.workers", "--cpu", "1", "--threads", "1", "--no-monitor"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        out = _run_as_a_user("\n\n".join(python_blocks("Scale out")), tmp_path, env, timeout=300)
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        DelegatedOperationService().delete_for_dataset(my_dataset._doc.id)

    my_dataset.reload()
    assert my_dataset.count("sam3_all") == len(my_dataset)  # every sample written, by the worker
    summary = get_run(my_dataset, "sam3_all").summary
    assert summary["samples_processed"] == len(my_dataset) and summary["shards"] == 4
    assert f"True {len(my_dataset)}" in out  # status.finalized, status.samples_written
