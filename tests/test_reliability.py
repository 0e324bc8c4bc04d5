"""Faults, scale limits and resumable runs: whatever happens, the dataset stays correct and every
problem is named. Real FiftyOne, real processes (killed with SIGKILL), the tiny checkpoint."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import sam3_ops
from sam3_ops.core.engine import Sam3Engine

from .helpers import REPO_ROOT, write_image


@pytest.fixture
def persistent_dataset(dataset):
    """The test dataset, persistent so that other processes can load it by name."""
    dataset.persistent = True
    return dataset


def _run_python(code, *args, timeout=240):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )


def _summaries(samples, field):
    return {s.id: sorted(round(d.confidence, 4) for d in s[field].detections) for s in samples if s[field] is not None}


def test_killed_run_resumes_without_redoing_or_duplicating(persistent_dataset, tiny_checkpoint):
    dataset = persistent_dataset
    killed = _run_python(
        """
        import os, signal, sys
        import fiftyone as fo
        import sam3_ops
        dataset = fo.load_dataset(sys.argv[1])
        model = sam3_ops.load_model(sys.argv[2], prompts=["cat"], threshold=0.2, device="cpu")
        real, calls = model.predict_all, []
        def predict_all(args):
            calls.append(1)
            if len(calls) == 3:  # the third batch: die as a killed process does, no cleanup
                os.kill(os.getpid(), signal.SIGKILL)
            return real(args)
        model.predict_all = predict_all
        dataset.apply_model(model, label_field="sam3", batch_size=2, num_workers=0)
        """,
        dataset.name,
        tiny_checkpoint,
    )
    assert killed.returncode == -signal.SIGKILL
    dataset.reload()
    written_before = {s.id: [d.id for d in s.sam3.detections] for s in dataset.exists("sam3")}
    assert len(written_before) < len(dataset)

    model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.2, device="cpu")
    pending = sam3_ops.without_results(dataset, "sam3")
    assert len(pending) == len(dataset) - len(written_before)
    pending.apply_model(model, label_field="sam3", batch_size=2)
    assert model.summary()["samples_processed"] == len(dataset) - len(written_before)

    dataset.apply_model(model, label_field="fresh", batch_size=2)
    assert _summaries(dataset, "sam3") == _summaries(dataset, "fresh")  # nothing missing, nothing twice
    for sample in dataset.select(list(written_before)):
        assert [d.id for d in sample.sam3.detections] == written_before[sample.id]  # intact, not redone


def test_out_of_memory_halves_and_writes_each_sample_once(dataset, tiny_checkpoint, monkeypatch, caplog):
    model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="expected", batch_size=4)
    real = Sam3Engine._segment
    seen = []

    def out_of_memory_above_one(self, images, *args):
        seen.append(len(images))
        if len(images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return real(self, images, *args)

    monkeypatch.setattr(Sam3Engine, "_segment", out_of_memory_above_one)
    with caplog.at_level(logging.WARNING):
        dataset.apply_model(model, label_field="sam3", batch_size=4)
    assert max(seen) == 4 and seen.count(1) == len(dataset)
    assert _summaries(dataset, "sam3") == _summaries(dataset, "expected")
    assert "Out of device memory" in caplog.text


def test_a_failed_batch_is_retried_sample_by_sample_after_its_memory_is_released(dataset, tiny_checkpoint, monkeypatch):
    model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="expected", batch_size=3)
    real = Sam3Engine.segment
    attempts = []

    def fails_on_batches(self, images, *args, **kwargs):
        activations = torch.empty(1024)  # what a failed forward leaves in its frames
        attempts.append(weakref.ref(activations))
        if len(images) > 1:
            raise RuntimeError("an error of the whole batch (injected)")
        assert all(ref() is None for ref in attempts[:-1])  # a retry inside ``except`` would still hold them
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Sam3Engine, "segment", fails_on_batches)
    dataset.apply_model(model, label_field="sam3", batch_size=3)
    assert len(attempts) == 2 + len(dataset)  # 6 samples: two batches of 3, then each sample alone
    assert _summaries(dataset, "sam3") == _summaries(dataset, "expected")


def test_labels_too_big_for_a_document_go_to_png_files(dataset, tiny_checkpoint, tmp_path, caplog, monkeypatch):
    import sam3_ops.sdk.model

    model = sam3_ops.load_model(
        tiny_checkpoint, prompts=["cat", "dog"], threshold=0.0, device="cpu", mask_dir=str(tmp_path)
    )
    monkeypatch.setattr(sam3_ops.sdk.model, "MAX_LABEL_BYTES", 20_000)  # a stand-in for 16 MB, so the test stays small
    with caplog.at_level(logging.WARNING):
        dataset.apply_model(model, label_field="sam3", batch_size=3)
    assert "too much for one database document" in caplog.text
    on_disk = [d for s in dataset for d in s.sam3.detections if d.mask_path]
    assert on_disk and all(d.mask is None and os.path.dirname(d.mask_path) == str(tmp_path) for d in on_disk)
    mask = np.asarray(Image.open(on_disk[0].mask_path))
    assert mask.ndim == 2 and mask.size > 0
    small = [s for s in dataset if all(d.mask_path is None for d in s.sam3.detections)]
    assert all(d.mask is not None for s in small for d in s.sam3.detections)


def test_stored_size_is_measured_compressed_past_the_raw_limit():
    import fiftyone as fo

    from sam3_ops.sdk.model import stored_mask_bytes

    blank = fo.Detections(detections=[fo.Detection(mask=np.zeros((2000, 2000), bool)) for _ in range(5)])
    assert stored_mask_bytes(blank, limit=10**9) == 5 * 2000 * 2000  # raw, cheap
    assert stored_mask_bytes(blank, limit=1000) < 100_000  # blank masks compress to little


def test_hostile_images_are_handled(dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo

    tiny = write_image(tmp_path / "one_pixel.png", 1, 1)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (10000, 10000), (90, 120, 200)).save(huge)
    gif = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    fake = tmp_path / "text.jpg"
    fake.write_text("not an image, despite the extension")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(tiny, "rb").read()[:20])
    unmounted = "/mnt/no-such-mount/image.jpg"
    paths = [tiny, str(huge), str(gif), str(fake), str(empty), str(truncated), unmounted]
    ids = dataset.add_samples([fo.Sample(filepath=p) for p in paths])

    model = sam3_ops.load_model(tiny_checkpoint, prompts=["sky"], threshold=0.2, device="cpu", max_mask_size=512)
    dataset.select(ids).apply_model(model, label_field="sam3", batch_size=4)
    results = {os.path.basename(dataset[i].filepath): dataset[i].sam3 for i in ids}
    assert results["one_pixel.png"] is not None
    assert all(d.mask.shape == (1, 1) for d in results["one_pixel.png"].detections)
    assert results["huge.png"] is not None and len(results["huge.png"].detections) > 0
    assert max(max(d.mask.shape) for d in results["huge.png"].detections) <= 512  # memory bounded
    assert results["animated.gif"] is not None
    skipped = {os.path.basename(s["filepath"]): s["reason"] for s in model.summary()["skipped"]}
    assert set(skipped) == {"text.jpg", "empty.png", "truncated.png", "image.jpg"}
    assert "cannot decode" in skipped["text.jpg"] and "empty" in skipped["empty.png"]
    assert "not found" in skipped["image.jpg"]
    assert all(results[name] is None for name in skipped)


def test_size_guard_refuses_before_decoding(dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo

    path = write_image(tmp_path / "big.png", 300, 400)
    sample_id = dataset.add_sample(fo.Sample(filepath=path))
    model = sam3_ops.load_model(tiny_checkpoint, prompts=["a"], device="cpu", max_image_pixels=100_000)
    dataset.select(sample_id).apply_model(model, label_field="sam3")
    assert "over the limit" in model.summary()["skipped"][0]["reason"]


def test_long_non_ascii_duplicate_and_many_prompts(dataset, tiny_checkpoint, caplog):
    long_prompt = "a very long description of a small brown dog " * 5  # ~225 characters
    many = [f"thing {i}" for i in range(100)]
    prompts = [long_prompt, "chien café 狗", "cat", "cat ", *many]
    with caplog.at_level(logging.WARNING):
        model = sam3_ops.load_model(tiny_checkpoint, prompts=prompts, threshold=0.2, device="cpu")
        counter = []
        handle = model.engine.detector.vision_encoder.register_forward_hook(lambda *a: counter.append(1))
        try:
            dataset.limit(2).apply_model(model, label_field="sam3", batch_size=2)
        finally:
            handle.remove()
    assert "duplicate prompt 'cat'" in caplog.text
    assert "longer than SAM3's 32 tokens" in caplog.text
    assert counter == [1]  # 103 prompts, 2 images: one encoder call
    labels = {d.label for d in dataset.first().sam3.detections}
    assert " ".join(long_prompt.split()) in labels and "chien café 狗" in labels and "thing 99" in labels
    assert len(model.config.prompts) == 103


def test_two_runs_on_one_dataset_at_once(persistent_dataset, tiny_checkpoint):
    dataset = persistent_dataset
    code = """
        import sys
        import fiftyone as fo
        import sam3_ops
        from sam3_ops.sdk.runs import record_run
        dataset = fo.load_dataset(sys.argv[1])
        model = sam3_ops.load_model(sys.argv[2], prompts=[sys.argv[3]], threshold=0.2, device="cpu")
        dataset.apply_model(model, label_field=sys.argv[3], batch_size=2, num_workers=0)
        record_run(dataset, sys.argv[3], model)  # as the operators do: re-declares a field lost to the other run
    """
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), dataset.name, tiny_checkpoint, field],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for field in ("left", "right")
    ]
    outputs = [run.communicate(timeout=240)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    dataset.reload()
    model = sam3_ops.load_model(tiny_checkpoint, prompts=["left"], threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="check")
    for sample in dataset:
        assert {d.label for d in sample.left.detections} == {"left"}
        assert {d.label for d in sample.right.detections} == {"right"}
    assert _summaries(dataset, "left") == _summaries(dataset, "check")


def test_a_field_declaration_lost_to_a_concurrent_run_is_restored(dataset, tiny_checkpoint):
    import fiftyone.core.odm as foo_odm

    from sam3_ops.sdk.fields import ensure_detections_field
    from sam3_ops.sdk.runs import record_run

    model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="left")
    expected = _summaries(dataset, "left")
    # what a concurrent run with a stale field list does: saves the schema without "left"
    foo_odm.get_db_conn().datasets.update_one({"_id": dataset._doc.id}, {"$pull": {"sample_fields": {"name": "left"}}})
    dataset.reload()
    assert not dataset.has_sample_field("left")
    assert ensure_detections_field(dataset, "left") is True
    assert _summaries(dataset, "left") == expected  # the values were there all along
    assert ensure_detections_field(dataset, "left") is False
    record_run(dataset, "left", model)
    assert dataset.has_sample_field("left")


def test_planted_token_never_appears(dataset, tiny_checkpoint, caplog, capfd):
    token = "hf_PLANTEDtoken0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.2, device="cpu", token=token)
        dataset.limit(2).apply_model(model, label_field="sam3")
        with pytest.raises(sam3_ops.ModelLoadError) as raised:
            sam3_ops.load_model("facebook/sam3", prompts=["cat"], token=token)
        os.environ["HF_TOKEN"] = token
        try:
            with pytest.raises(sam3_ops.ModelLoadError) as from_env:
                sam3_ops.load_model("facebook/sam3", prompts=["cat"])
        finally:
            del os.environ["HF_TOKEN"]
    captured = capfd.readouterr()
    everything = "\n".join(
        [
            caplog.text,
            captured.out,
            captured.err,
            str(raised.value),
            str(from_env.value),
            repr(model),
            str(model.summary()),
        ]
    )
    assert "hf auth login" in everything  # the messages were captured...
    assert token not in everything  # ...and the token is in none of them


def test_a_killed_run_leaves_no_process_behind(persistent_dataset, tiny_checkpoint, tmp_path):
    """SIGKILL of a process running apply_model with loader workers: none of them outlives it
    (they used to stay, blocked, holding their memory, until killed by hand)."""
    import time

    import psutil

    dataset = persistent_dataset
    paths = dataset.values("filepath")
    dataset.add_samples([dataset.first().__class__(filepath=paths[i % len(paths)]) for i in range(200)])
    ready = tmp_path / "workers-started"
    code = """
        import os, sys
        import fiftyone as fo
        import sam3_ops
        dataset = fo.load_dataset(sys.argv[1])
        model = sam3_ops.load_model(sys.argv[2], prompts=["cat"], threshold=0.2, device="cpu")
        real = model.predict_all
        def predict_all(args):
            open(sys.argv[3], "w").close()  # the loader workers are up: batches are arriving
            return real(args)
        model.predict_all = predict_all
        dataset.apply_model(model, label_field="sam3", batch_size=1, num_workers=2)
    """
    run = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), dataset.name, tiny_checkpoint, str(ready)],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = []
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the run did not start"
        workers = psutil.Process(run.pid).children(recursive=True)
        assert len(workers) >= 2, "the run has no loader workers to leave behind"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=10)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"{len(alive)} of {len(workers)} loader workers outlived the killed run"
    finally:  # a failing test must not leave them behind either
        for process in [*workers, psutil.Process(run.pid) if run.poll() is None else None]:
            if process is not None and process.is_running():
                process.kill()
