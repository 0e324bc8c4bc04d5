"""The README's code, run as a new user runs it: from a folder outside the repository, with the
package installed by the README's setup (``.ci/setup``: ``pip install -e .``) and no PYTHONPATH,
offline, on a hub cache in which ``facebook/sam3`` is a tiny checkpoint."""

import os
import re
import shutil
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

from .helpers import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
COMMIT = "0" * 40


def python_blocks() -> list[str]:
    with open(README) as handle:
        return re.findall(r"```python\n(.*?)```", handle.read(), flags=re.S)


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache holding a tiny, confident checkpoint as ``facebook/sam3`` (so the
    README's default thresholds find something)."""
    from sam3_ops.testing import build_tiny_checkpoint

    repo = tmp_path / "hub" / "models--facebook--sam3"
    build_tiny_checkpoint(repo / "snapshots" / COMMIT, confident=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return str(tmp_path / "hub")


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


def test_the_readme_python_runs_as_written_from_anywhere(tmp_path, hub_cache, my_dataset):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "\n\n".join(python_blocks())
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env=_user_env(hub_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

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
