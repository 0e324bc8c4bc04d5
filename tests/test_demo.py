"""The main job (``python -m sam3_ops.demo``) as a user runs it: a real process on the test database."""

import os
import subprocess
import sys

from .helpers import REPO_ROOT


def _demo(*args):
    return subprocess.run(
        [sys.executable, "-m", "sam3_ops.demo", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


def test_demo_segments_the_demo_dataset_with_the_tiny_checkpoint():
    import fiftyone as fo

    run = _demo("--tiny", "--dataset", "sam3-demo-test")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Wrote field 'sam3'" in run.stdout and "0 skipped" in run.stdout
    dataset = fo.load_dataset("sam3-demo-test")
    try:
        assert len(dataset) == 5
        for sample in dataset:
            assert {d.label for d in sample.sam3.detections} == {"cat", "cup", "person"}
            assert all(d.mask is not None for d in sample.sam3.detections)
    finally:
        dataset.delete()


def test_demo_without_access_to_facebook_sam3_says_how_to_get_it():
    run = _demo()
    assert run.returncode == 2
    assert "hf auth login" in run.stderr and "local checkpoint directory" in run.stderr
    assert "Traceback" not in run.stderr
