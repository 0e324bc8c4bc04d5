"""The engine on the tiny checkpoint, loaded by the real transformers code: equivalence with the
plain transformers loop, one image-encoder run per image, caches, and loading rules."""

import json
import os
import shutil
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from sam3_ops.core.checkpoint import ModelLoadError, validate_model_path
from sam3_ops.core.engine import Sam3Engine
from sam3_ops.core.queries import ImagePrompts

from .helpers import REPO_ROOT


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Sam3Engine(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (300, 200), (97, 333)]]


class CallCounter:
    """Counts forward calls of a module and the batch sizes it saw."""

    def __init__(self, module):
        self.batches = []
        self.handle = module.register_forward_hook(
            lambda mod, args, kwargs, out: self.batches.append(_batch(args, kwargs)), with_kwargs=True
        )

    def close(self):
        self.handle.remove()


def _batch(args, kwargs):
    first = args[0] if args else next(iter(kwargs.values()))
    return int(first.shape[0])


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def test_text_mode_equals_plain_transformers_loop(engine, images, tiny_checkpoint):
    """processor -> model -> post_process_instance_segmentation, one image and one prompt at a time."""
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(tiny_checkpoint)
    model = Sam3Model.from_pretrained(tiny_checkpoint).eval()
    prompts = ("cat", "dog handle")
    ours = engine.segment(images, [ImagePrompts(texts=prompts)] * len(images), threshold=0.0, mask_threshold=0.5)

    compared = 0
    for image, result in zip(images, ours):
        height, width = image.shape[:2]
        for prompt in prompts:
            inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
            with torch.no_grad():
                outputs = model(**inputs)
            reference = processor.post_process_instance_segmentation(
                outputs, threshold=0.0, mask_threshold=0.5, target_sizes=inputs["original_sizes"].tolist()
            )[0]
            mine = [i for i, label in enumerate(result.labels) if label == prompt]
            assert len(mine) == len(reference["scores"]) > 0
            np.testing.assert_allclose(result.scores[mine], reference["scores"].float().numpy(), atol=0.01)
            for k, i in enumerate(mine):
                ref_box = reference["boxes"][k].numpy()
                x0, y0, x1, y1 = result.boxes_xyxy[i].astype(int)
                clipped = np.clip(ref_box, 0, [width, height, width, height])
                assert np.all(np.abs(result.boxes_xyxy[i] - clipped) <= 1.0)
                ref_mask = reference["masks"][k].numpy().astype(bool)[y0:y1, x0:x1]
                assert result.masks[i].shape == ref_mask.shape
                assert _mask_iou(result.masks[i], ref_mask) >= 0.9
                compared += 1
    assert compared == len(images) * len(prompts) * 20  # every query of the tiny model, kept at threshold 0


def test_image_encoder_runs_once_per_image_whatever_the_prompts(engine, images):
    prompts = ImagePrompts(texts=("a", "b", "c", "d", "e"))
    counter = CallCounter(engine.detector.vision_encoder)
    try:
        results = engine.segment(images, [prompts] * len(images), threshold=0.0)
    finally:
        counter.close()
    assert counter.batches == [len(images)]  # one encoder call, all images in it
    assert all(set(r.labels) == {p.text for p in prompts.texts} for r in results)


def test_text_features_computed_once_per_distinct_prompt(engine, images):
    counter = CallCounter(engine.detector.text_encoder)
    try:
        engine.segment(images[:1], [ImagePrompts(texts=("zebra", "yak"))], threshold=0.5)
        engine.segment(images[1:], [ImagePrompts(texts=("yak", "zebra"))] * 2, threshold=0.5)
    finally:
        counter.close()
    assert counter.batches == [2]


def test_chunked_queries_give_the_same_results(tiny_checkpoint, images):
    prompts = [ImagePrompts(texts=("cat", "dog", "cup"))] * len(images)
    whole = Sam3Engine(tiny_checkpoint, device="cpu").segment(images, prompts, threshold=0.2)
    chunked = Sam3Engine(tiny_checkpoint, device="cpu", max_queries_per_forward=2).segment(
        images, prompts, threshold=0.2
    )
    for a, b in zip(whole, chunked):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))


def test_batch_of_one_equals_batch_of_many(engine, images):
    prompts = ImagePrompts(texts=("cat",))
    together = engine.segment(images, [prompts] * len(images), threshold=0.2)
    alone = [engine.segment([image], [prompts], threshold=0.2)[0] for image in images]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)


def test_feature_cache_skips_the_encoder_for_a_known_image(tiny_checkpoint, images):
    engine = Sam3Engine(tiny_checkpoint, device="cpu", feature_cache_size=2)
    counter = CallCounter(engine.detector.vision_encoder)
    try:
        first = engine.segment(images[:1], [ImagePrompts(texts=("cat",))], threshold=0.2, image_keys=["img0"])
        again = engine.segment(
            images[:1],
            [ImagePrompts(texts=("cat",), negative_boxes=[[0, 0, 30, 30]])],
            threshold=0.2,
            image_keys=["img0"],
        )
        engine.segment(images[:1], [ImagePrompts(texts=("cat",))], threshold=0.2, image_keys=["img0"])
    finally:
        counter.close()
    assert counter.batches == [1]
    assert len(first[0]) > 0 and len(again[0]) > 0


def test_negative_boxes_reach_the_detector_as_label_zero(engine, images):
    seen = {}

    def capture(module, args, kwargs):
        seen["boxes"] = kwargs["input_boxes"].clone()
        seen["labels"] = kwargs["input_boxes_labels"].clone()

    handle = engine.detector.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        engine.segment(images[:1], [ImagePrompts(texts=("handle",), negative_boxes=[[40, 30, 80, 90]])], threshold=0.5)
    finally:
        handle.remove()
    height, width = images[0].shape[:2]
    assert seen["labels"].tolist() == [[0]]
    cx, cy, w, h = seen["boxes"][0, 0].tolist()
    np.testing.assert_allclose(
        [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height],
        [40, 30, 80, 90],
        atol=1e-3,
    )


def test_boxes_mode_one_mask_per_box(engine, images):
    boxes = [[10, 10, 60, 50], [30.5, 20.2, 150, 110]]
    results = engine.segment(
        images[:2],
        [ImagePrompts(boxes=boxes, box_labels=("a", "b")), ImagePrompts(boxes=[[0, 0, 200, 300]], box_labels=("c",))],
        mode="boxes",
    )
    assert [r.labels for r in results] == [["a", "b"], ["c"]]
    assert results[0].prompt_index.tolist() == [0, 1]
    np.testing.assert_array_equal(results[0].boxes_xyxy, [[10, 10, 60, 50], [30, 20, 150, 110]])
    assert [m.shape for m in results[0].masks] == [(40, 50), (90, 120)]
    assert all(0 <= s <= 1 for r in results for s in r.scores)


def test_no_prompts_no_model_call(engine, images):
    counter = CallCounter(engine.detector.vision_encoder)
    try:
        results = engine.segment(images[:2], [ImagePrompts(), ImagePrompts()], mode="exemplars")
    finally:
        counter.close()
    assert counter.batches == [] and [len(r) for r in results] == [0, 0]


def test_out_of_memory_halves_the_batch(tiny_checkpoint, images, monkeypatch):
    engine = Sam3Engine(tiny_checkpoint, device="cpu")
    expected = engine.segment(images, [ImagePrompts(texts=("cat",))] * 3, threshold=0.2)
    real = Sam3Engine._segment
    sizes = []

    def flaky(self, batch_images, *args):
        sizes.append(len(batch_images))
        if len(batch_images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, batch_images, *args)

    monkeypatch.setattr(Sam3Engine, "_segment", flaky)
    results = engine.segment(images, [ImagePrompts(texts=("cat",))] * 3, threshold=0.2)
    assert sizes == [3, 1, 2, 1, 1]
    assert [r.labels for r in results] == [r.labels for r in expected]


def test_attention_runs_through_sdpa(engine):
    for head in (engine.detector, engine.tracker):
        assert {m.config._attn_implementation for m in head.modules() if hasattr(m, "config")} == {"sdpa"}


def test_out_of_memory_retry_runs_after_the_failed_attempt_is_released(tiny_checkpoint, images, monkeypatch):
    engine = Sam3Engine(tiny_checkpoint, device="cpu")
    real = Sam3Engine._segment
    attempts = []

    def flaky(self, batch_images, *args):
        activations = torch.empty(1024)  # what a failed forward leaves in its frames
        attempts.append(weakref.ref(activations))
        if len(batch_images) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        # every earlier attempt's memory is gone by now (a retry inside ``except`` would still hold it)
        assert [ref() is None for ref in attempts[:-1]] == [True] * (len(attempts) - 1)
        return real(self, batch_images, *args)

    monkeypatch.setattr(Sam3Engine, "_segment", flaky)
    results = engine.segment(images, [ImagePrompts(texts=("cat",))] * 3, threshold=0.2)
    assert len(attempts) == 5 and [len(r) > 0 for r in results] == [True] * 3


def test_cached_features_do_not_keep_the_whole_batch_alive(tiny_checkpoint, images):
    engine = Sam3Engine(tiny_checkpoint, device="cpu", feature_cache_size=1)
    engine.segment(images, [ImagePrompts(texts=("cat",))] * 3, threshold=0.2, image_keys=["a", "b", "c"])
    (cached,) = engine._feature_cache.values()
    hidden, position = cached
    for tensor in hidden + position:
        # a slice of the batch would share its storage: 3 images' worth
        assert tensor.shape[0] == 1 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    (text, _) = engine._text_cache["cat"]
    assert text.untyped_storage().nbytes() == text.numel() * text.element_size()


def test_preprocessing_in_runs_gives_the_same_batch(tiny_checkpoint, images):
    engine = Sam3Engine(tiny_checkpoint, device="cpu")
    whole = engine.preprocess(images)
    engine.preprocess_pixel_budget = 1  # one image a run
    calls = []
    processor = engine.processor.image_processor
    original = type(processor).__call__

    def counting(self, *args, **kwargs):
        calls.append(len(kwargs["images"]))
        return original(self, *args, **kwargs)

    type(processor).__call__ = counting
    try:
        runs = engine.preprocess(images)
    finally:
        type(processor).__call__ = original
    assert calls == [1, 1, 1]
    torch.testing.assert_close(runs, whole, rtol=0, atol=0)


# -- loading ------------------------------------------------------------------------------------


def test_tracker_weights_all_come_from_the_checkpoint(engine, tiny_checkpoint):
    from safetensors import safe_open

    tracker = engine.tracker
    with safe_open(os.path.join(tiny_checkpoint, "model.safetensors"), "pt") as handle:
        pairs = {
            "mask_decoder.conv_s0.weight": "tracker_model.mask_decoder.conv_s0.weight",
            "prompt_encoder.point_embed.weight": "tracker_model.prompt_encoder.point_embed.weight",
            "vision_encoder.neck.fpn_layers.0.proj1.weight": "tracker_neck.fpn_layers.0.proj1.weight",
            "vision_encoder.backbone.embeddings.patch_embeddings.projection.weight": (
                "detector_model.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight"
            ),
        }
        state = tracker.state_dict()
        for ours, stored in pairs.items():
            torch.testing.assert_close(state[ours], handle.get_tensor(stored))


@pytest.mark.parametrize("mode", ["text", "exemplars", "boxes"])
def test_every_checkpoint_layout_loads_in_every_mode(tiny_checkpoint, tmp_path_factory, images, mode):
    """What transformers' own Sam3VideoModel.save_pretrained writes (a fine-tuned SAM3, say) loads in
    every mode, with every weight, and gives what the hub's layout of the same weights gives."""
    from safetensors import safe_open

    from sam3_ops.testing import build_tiny_checkpoint

    saved = build_tiny_checkpoint(tmp_path_factory.mktemp("saved-layout"), layout="save_pretrained")
    with safe_open(os.path.join(saved, "model.safetensors"), "pt") as handle:
        assert any(key.startswith("tracker_model.tracker_model.") for key in handle.keys())  # the other layout
    height, width = images[0].shape[:2]
    prompts = [ImagePrompts(texts=("cat",) if mode != "boxes" else (), boxes=[[10, 10, width / 2, height / 2]])]
    hub = Sam3Engine(tiny_checkpoint, device="cpu").segment(images[:1], prompts, mode=mode, threshold=0.0)[0]
    ours = Sam3Engine(saved, device="cpu").segment(images[:1], prompts, mode=mode, threshold=0.0)[0]
    assert len(hub) > 0 and ours.labels == hub.labels
    np.testing.assert_array_equal(ours.scores, hub.scores)
    assert all(np.array_equal(a, b) for a, b in zip(ours.masks, hub.masks))


def test_one_engine_serves_two_threads_with_their_own_options(tiny_checkpoint, images):
    """Two callers on one engine at once, each with its own mode and mask size; the heads load
    lazily, under the lock, while both run. Each gets what it gets alone."""
    import threading

    height, width = images[0].shape[:2]
    box_prompts = [ImagePrompts(boxes=[[5, 5, width - 5, height - 5]])] * len(images)
    text_prompts = [ImagePrompts(texts=("cat", "dog"))] * len(images)
    calls = {
        "text": lambda engine: engine.segment(images, text_prompts, threshold=0.0, max_mask_size=8),
        "boxes": lambda engine: engine.segment(images, box_prompts, mode="boxes", max_mask_size=None),
    }
    expected = {name: call(Sam3Engine(tiny_checkpoint, device="cpu")) for name, call in calls.items()}

    shared = Sam3Engine(tiny_checkpoint, device="cpu", feature_cache_size=4)  # nothing loaded yet
    results, errors, start = {}, [], threading.Barrier(len(calls))

    def run(name):
        try:
            start.wait()
            for _ in range(3):
                results[name] = calls[name](shared)
        except Exception as error:  # reported below, with the thread's name
            errors.append(f"{name}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for name, expect in expected.items():
        for got, want in zip(results[name], expect):
            assert got.labels == want.labels
            np.testing.assert_array_equal(got.scores, want.scores)
            assert all(np.array_equal(a, b) for a, b in zip(got.masks, want.masks))
    assert max(max(m.shape) for r in results["text"] for m in r.masks) <= 8
    assert max(max(m.shape) for r in results["boxes"] for m in r.masks) > 8


def _copy_without(tiny_checkpoint, tmp_path, drop_prefix):
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    with safe_open(os.path.join(tiny_checkpoint, "model.safetensors"), "pt") as handle:
        kept = {k: handle.get_tensor(k) for k in handle.keys() if not k.startswith(drop_prefix)}
    save_file(kept, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


@pytest.mark.parametrize(
    "drop, head",
    [("tracker_model.mask_decoder.iou_prediction_head", "tracker"), ("detector_model.mask_decoder", "detector")],
)
def test_missing_weights_fail_loudly(tiny_checkpoint, tmp_path, drop, head):
    engine = Sam3Engine(_copy_without(tiny_checkpoint, tmp_path, drop), device="cpu")
    with pytest.raises(ModelLoadError, match=f"{head} head is incomplete"):
        getattr(engine, head)


def test_pickle_checkpoints_are_refused(tiny_checkpoint, tmp_path):
    target = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, target)
    from safetensors.torch import load_file

    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    os.remove(target / "model.safetensors")
    with pytest.raises(ModelLoadError):
        _ = Sam3Engine(str(target), device="cpu").detector


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "empty"),
        ("/no/such/dir", "does not exist"),
        ("./relative/missing", "does not exist"),
        ("https://example.com/sam3", "refusing remote URL"),
        ("../sam3", "'..'"),
    ],
)
def test_bad_model_paths(path, message):
    with pytest.raises(ModelLoadError, match=message):
        validate_model_path(path)


def test_directory_that_is_not_sam3(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a SAM3 checkpoint"):
        validate_model_path(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no readable config.json"):
        validate_model_path(str(empty))


def test_hub_ids_pass_validation_without_network():
    assert validate_model_path("facebook/sam3") == "facebook/sam3"


def test_unreachable_hub_model_says_how_to_log_in():
    engine = Sam3Engine("facebook/sam3", device="cpu")
    with pytest.raises(ModelLoadError) as raised:
        engine.load("text", token="hf_PLANTED_SECRET_TOKEN_123")
    message = str(raised.value)
    assert "hf auth login" in message and "HF_TOKEN" in message and "local" in message
    assert "hf_PLANTED_SECRET_TOKEN_123" not in message + repr(engine)
    # used to load, never kept: nowhere in the engine's state
    assert "hf_PLANTED_SECRET_TOKEN_123" not in repr(vars(engine))


def test_core_does_not_import_fiftyone():
    modules = ", ".join(
        f"sam3_ops.core.{name}" for name in ("checkpoint", "engine", "images", "masks", "pool", "queries")
    )
    code = f"import sys, {modules}; print('fiftyone' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_encoder_gives_the_same_results(tiny_checkpoint, images):
    prompts = [ImagePrompts(texts=("cat",))]
    eager = Sam3Engine(tiny_checkpoint, device="cpu").segment(images[:1], prompts, threshold=0.2)[0]
    engine = Sam3Engine(tiny_checkpoint, device="cpu", compile=True)
    compiled = engine.segment(images[:1], prompts, threshold=0.2)[0]
    assert type(engine.detector.vision_encoder).__name__ == "OptimizedModule"
    assert compiled.labels == eager.labels
    np.testing.assert_allclose(compiled.scores, eager.scores, atol=1e-4)
