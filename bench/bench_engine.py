"""Speed benchmark of ``Sam3Engine`` against the plain transformers loop, on the same model object.

Runs WITHOUT fiftyone (the GPU machine has none). The model has random weights, built in memory
directly on the device (``with torch.device("cuda"): Sam3Model(Sam3Config())``): no checkpoint,
no hub. The engine gets the in-memory objects injected (:func:`build_bench`), so its lazy
``from_pretrained`` loading never runs.

Scenarios (``--scenarios a,b,c,d``), each as images/s, ms/image and peak device memory, ours vs the
reference loop of the transformers docs (processor -> model -> post_process_*):

  a  1 text prompt, batch sizes 1, 4, 8, 16, 32 (reference at each batch size)
  b  K = 1, 2, 4, 8 text prompts per image (the reference repeats each image K times)
  c  box mode, 10 boxes per image (reference: Sam3TrackerModel + Sam3TrackerProcessor.post_process_masks)
  d  the vision encoder's achieved TFLOP/s vs the device's bf16 peak

Random weights score every query alike (~0.25), so nothing would pass a 0.5 threshold and no mask
would ever be post-processed. :func:`calibrate_detector` therefore rescales the detector's
``dot_product_scoring.query_proj`` (logit spread) and opens the presence head, then picks the score
threshold that keeps about ``--dets-per-image`` hits per (image, prompt) on calibration images.
Both sides use that same threshold, so both post-process the same realistic number of masks.

Usage::

    python bench/bench_engine.py --device cpu --config tiny --images 16            # CPU smoke
    python bench/bench_engine.py --device cuda --config full --images 64          # the H200 run

Writes ``results.json`` and ``results.png`` under ``--out`` (default ``bench/results/engine-<config>-<device>``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import sys
import time
from collections import defaultdict

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sam3_ops.core.engine import Sam3Engine, _HitCollector  # noqa: E402
from sam3_ops.core.queries import ImagePrompts  # noqa: E402

PROMPTS = ["cat", "dog", "person", "car", "tree", "bird", "bicycle", "chair"]
#: COCO-like mixed sizes (height, width)
IMAGE_SIZES = [(480, 640), (640, 480), (427, 640), (375, 500), (720, 1280), (1024, 768), (333, 500), (612, 612)]
#: dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


# -- models ---------------------------------------------------------------------------------------


def _small_configs():
    """A mid-size config (336 px, ViT 256 x 4 layers): seconds on a CPU, same structure as full."""
    from transformers import Sam3Config, Sam3TrackerConfig

    image, patch = 336, 14
    grid = image // patch
    backbone = {
        "model_type": "sam3_vit_model",
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": image,
        "patch_size": patch,
        "window_size": 8,
        "global_attn_indexes": [1, 3],
        "pretrain_image_size": image,
    }
    vision = {
        "backbone_config": backbone,
        "fpn_hidden_size": 256,
        "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
    }
    text = {
        "vocab_size": 1000,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 32,
        "projection_dim": 256,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    layer = {"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4, "intermediate_size": 1024}
    detector = Sam3Config(
        vision_config=copy.deepcopy(vision),
        text_config=text,
        geometry_encoder_config=dict(layer),
        detr_encoder_config=dict(layer),
        detr_decoder_config={**layer, "num_queries": 100},
        mask_decoder_config={"hidden_size": 256, "num_attention_heads": 4},
    )
    tracker = Sam3TrackerConfig(
        vision_config=copy.deepcopy(vision),
        prompt_encoder_config={"hidden_size": 256, "image_size": image, "patch_size": patch},
        mask_decoder_config={"hidden_size": 256, "mlp_dim": 1024, "num_attention_heads": 4, "iou_head_hidden_dim": 256},
    )
    return detector, tracker, image


def model_configs(name: str):
    """``(detector_config, tracker_config, image_size)`` for ``tiny``, ``small`` or ``full``."""
    from transformers import Sam3Config, Sam3TrackerConfig

    if name == "tiny":
        from sam3_ops.testing import tiny_config

        video = tiny_config()
        t = video.tracker_config
        tracker = Sam3TrackerConfig(
            vision_config=t.vision_config.to_dict(),
            prompt_encoder_config=t.prompt_encoder_config.to_dict(),
            mask_decoder_config=t.mask_decoder_config.to_dict(),
        )
        return video.detector_config, tracker, 224
    if name == "small":
        return _small_configs()
    if name == "full":
        detector = Sam3Config()
        # the in-memory byte-level tokenizer has <|startoftext|> = 0 and <|endoftext|> = 1 (ids
        # only: the size of every layer, the vocabulary of 49408 included, stays full-size)
        detector.text_config.bos_token_id, detector.text_config.eos_token_id, detector.text_config.pad_token_id = (
            0,
            1,
            1,
        )
        return detector, Sam3TrackerConfig(), 1008
    raise ValueError(f"unknown config {name!r}: tiny, small or full")


def build_processors(image_size: int):
    """``Sam3Processor`` and ``Sam3TrackerProcessor`` in memory (byte-level CLIP tokenizer, ids < 49408)."""
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3TrackerProcessor

    from sam3_ops.testing import tiny_processor

    tokenizer = tiny_processor().tokenizer
    image_processor = Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)
    tracker_processor = Sam3TrackerProcessor(
        image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    )
    return processor, tracker_processor


class Bench:
    """The shared objects: models, processors, and an engine running on exactly those models."""

    def __init__(self, config_name: str, device: torch.device, seed: int = 0, max_queries: int = 32):
        from transformers import Sam3Model, Sam3TrackerModel

        self.config_name, self.device = config_name, device
        detector_config, tracker_config, self.image_size = model_configs(config_name)
        torch.manual_seed(seed)
        with torch.device(device):  # initialise on the device: no 3 GB host copy for the full model
            self.detector = Sam3Model(detector_config).eval()
            self.tracker = Sam3TrackerModel(tracker_config).eval()
        self.processor, self.tracker_processor = build_processors(self.image_size)
        self.engine = make_engine(self.detector, self.tracker, self.processor, device, max_queries)
        self.num_queries = detector_config.detr_decoder_config.num_queries
        self.params = {
            "detector": sum(p.numel() for p in self.detector.parameters()),
            "vision": sum(p.numel() for p in self.detector.vision_encoder.parameters()),
            "text": sum(p.numel() for p in self.detector.text_encoder.parameters()),
            "tracker": sum(p.numel() for p in self.tracker.parameters()),
        }
        self.attn_implementation = self.detector.config._attn_implementation


def make_engine(detector, tracker, processor, device, max_queries=32) -> Sam3Engine:
    """A ``Sam3Engine`` running the given in-memory objects.

    ``"facebook/sam3"`` only passes the engine's path validation (a hub-id pattern check; nothing is
    downloaded): the injected ``_detector`` / ``_tracker`` / ``_processor`` are what its lazy
    properties return, so ``from_pretrained`` is never called.
    """
    engine = Sam3Engine("facebook/sam3", device=device, max_queries_per_forward=max_queries)
    engine._detector, engine._tracker, engine._processor = detector, tracker, processor
    return engine


@torch.inference_mode()
def calibrate_detector(bench: Bench, images, dets_per_image: float) -> float:
    """Makes random weights give a realistic number of hits; returns the score threshold to use."""
    model = bench.detector
    inputs = bench.processor(images=images, text=[PROMPTS[0]] * len(images), return_tensors="pt").to(bench.device)
    logits = model(**inputs).pred_logits.float()
    scoring = model.dot_product_scoring.query_proj
    factor = 2.0 / max(float(logits.std()), 1e-6)  # logit spread ~2 instead of ~0.01
    scoring.weight.mul_(factor)
    scoring.bias.mul_(factor)
    presence = model.detr_decoder.presence_head.layer3
    presence.weight.zero_()
    presence.bias.fill_(8.0)  # presence ~1: the score is the query's own sigmoid
    output = model(**inputs)
    scores = (output.pred_logits.float().sigmoid() * output.presence_logits.float().sigmoid()).flatten()
    keep = min(max(dets_per_image / bench.num_queries, 0.0), 1.0)
    threshold = float(torch.quantile(scores, 1.0 - keep)) if keep > 0 else 1.0
    return min(max(threshold, 1e-4), 1 - 1e-4)


# -- inputs ---------------------------------------------------------------------------------------


def make_images(count: int, seed: int = 0, sizes=IMAGE_SIZES):
    """Smooth random RGB uint8 images of mixed sizes (low-frequency noise, like photos compress)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        low = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(low).resize((width, height), Image.BILINEAR)).astype(np.int16)
        image += rng.integers(-8, 9, image.shape, dtype=np.int16)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def make_boxes(images, per_image: int = 10, seed: int = 0):
    """``per_image`` random pixel xyxy boxes inside each image."""
    rng = np.random.default_rng(seed)
    boxes = []
    for image in images:
        height, width = image.shape[:2]
        x0 = rng.uniform(0, 0.7 * width, per_image)
        y0 = rng.uniform(0, 0.7 * height, per_image)
        w = rng.uniform(0.05, 0.3, per_image) * width
        h = rng.uniform(0.05, 0.3, per_image) * height
        boxes.append(np.stack([x0, y0, np.minimum(x0 + w, width), np.minimum(y0 + h, height)], 1).astype(np.float32))
    return boxes


def batches(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- timing ---------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, dtype):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


REPEATS = 1  # set from --repeats: each measurement is the fastest of this many runs


def measure(device, run, count: int, warmup=None) -> dict:
    """Times ``run()`` (which processes ``count`` images) after ``warmup()``: the fastest of
    ``REPEATS`` runs, and the peak device memory. Out of device memory is a result, not a crash."""
    try:
        if warmup is not None:
            warmup()
        best, output = math.inf, None
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(REPEATS):
            start = time.perf_counter()
            output = run()
            sync(device)
            best = min(best, time.perf_counter() - start)
    except torch.OutOfMemoryError:
        output = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {
            "seconds": math.inf,
            "images_per_s": 0.0,
            "ms_per_image": math.inf,
            "peak_mem_gib": None,
            "oom": True,
            "output": None,
        }
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "seconds": best,
        "images_per_s": count / best,
        "ms_per_image": 1000 * best / count,
        "peak_mem_gib": peak,
        "output": output,
    }


class StageTimer:
    """Wall time per engine stage, by wrapping methods of the bench's own objects (no package edits).

    With CUDA every wrapper synchronises (so the split is real, at a small cost to the total).
    """

    def __init__(self, device):
        self.device, self.totals, self.calls, self._patches = device, defaultdict(float), defaultdict(int), []

    def wrap(self, owner, name, stage, synchronise=True):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if synchronise:
                sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if synchronise:
                    sync(self.device)
                self.totals[stage] += time.perf_counter() - start
                self.calls[stage] += 1

        self._patches.append((owner, name, owner.__dict__.get(name, None)))
        setattr(owner, name, timed)
        return timed

    def restore(self):
        for owner, name, before in reversed(self._patches):
            if before is None:
                delattr(owner, name)
            else:
                setattr(owner, name, before)
        self._patches.clear()


def engine_breakdown(bench: Bench, images, prompts, mode, batch, threshold) -> dict:
    """Seconds per stage of ``engine.segment`` over ``images`` (exclusive times, summing to the total)."""
    engine = bench.engine
    timer = StageTimer(bench.device)
    timer.wrap(engine, "preprocess", "preprocess (resize+normalise)")
    timer.wrap(engine, "_vision_features", "_vision_all")
    timer.wrap(engine, "_run_tracker", "heads: tracker prompt+mask decoder")
    timer.wrap(engine, "text_features", "text encoder (cached)")
    timer.wrap(_HitCollector, "add", "post: mask crops (device)")
    timer.wrap(sys.modules["sam3_ops.core.engine"], "_finish", "post: host copy + results")
    timer.wrap(engine, "_segment", "_total")
    try:
        for chunk, chunk_prompts in zip(batches(images, batch), batches(prompts, batch)):
            engine.segment(chunk, chunk_prompts, mode=mode, threshold=threshold)
    finally:
        timer.restore()
    t = dict(timer.totals)
    total = t.pop("_total")
    vision_all = t.pop("_vision_all")
    stages = {"preprocess (resize+normalise)": t.get("preprocess (resize+normalise)", 0.0)}
    stages["vision encoder (+H2D copy)"] = vision_all - stages["preprocess (resize+normalise)"]
    stages["text encoder (cached)"] = t.get("text encoder (cached)", 0.0)
    post_crops = t.get("post: mask crops (device)", 0.0)
    if "heads: tracker prompt+mask decoder" in t:  # box mode: the crops run inside _run_tracker
        stages["heads: tracker prompt+mask decoder"] = t["heads: tracker prompt+mask decoder"] - post_crops
    stages["post: mask crops (device)"] = post_crops
    stages["post: host copy + results"] = t.get("post: host copy + results", 0.0)
    stages["heads/decoder + rest"] = total - sum(stages.values())
    return {"total_s": total, "stages_s": stages, "share": {k: v / total for k, v in stages.items()}}


# -- the two pipelines ----------------------------------------------------------------------------


def ours_text(bench: Bench, images, texts, batch, threshold, mask_threshold=0.5):
    prompts = [ImagePrompts(texts=tuple(texts))] * len(images)
    out = []
    for chunk, chunk_prompts in zip(batches(images, batch), batches(prompts, batch)):
        out += bench.engine.segment(
            chunk, chunk_prompts, mode="text", threshold=threshold, mask_threshold=mask_threshold
        )
    return out


def reference_text(bench: Bench, images, texts, batch, threshold, mask_threshold=0.5, dtype=None):
    """The transformers docs loop: processor -> model -> post_process_instance_segmentation.

    ``batch`` images per forward; with K prompts each image is repeated K times (the processor
    needs as many images as texts). Results are brought to the host, as a user's code must.
    """
    model, processor, device = bench.detector, bench.processor, bench.device
    out = []
    for chunk in batches(images, batch):
        pair_images = [image for image in chunk for _ in texts]
        pair_texts = [text for _ in chunk for text in texts]
        inputs = processor(images=pair_images, text=pair_texts, return_tensors="pt").to(device)
        with torch.inference_mode(), autocast(device, dtype):
            outputs = model(**inputs)
            results = processor.post_process_instance_segmentation(
                outputs,
                threshold=threshold,
                mask_threshold=mask_threshold,
                target_sizes=inputs["original_sizes"].tolist(),
            )
        for result in results:
            out.append(
                {
                    "scores": result["scores"].float().cpu().numpy(),
                    "boxes": result["boxes"].float().cpu().numpy(),
                    "masks": result["masks"].bool().cpu().numpy(),
                }
            )
    return out


def ours_boxes(bench: Bench, images, boxes, batch):
    prompts = [ImagePrompts(boxes=b) for b in boxes]
    out = []
    for chunk, chunk_prompts in zip(batches(images, batch), batches(prompts, batch)):
        out += bench.engine.segment(chunk, chunk_prompts, mode="boxes")
    return out


def reference_boxes(bench: Bench, images, boxes, batch, dtype=None):
    """The tracker docs loop: Sam3TrackerProcessor -> Sam3TrackerModel -> post_process_masks."""
    model, processor, device = bench.tracker, bench.tracker_processor, bench.device
    out = []
    for chunk, chunk_boxes in zip(batches(images, batch), batches(boxes, batch)):
        inputs = processor(images=chunk, input_boxes=[b.tolist() for b in chunk_boxes], return_tensors="pt").to(device)
        with torch.inference_mode(), autocast(device, dtype):
            outputs = model(**inputs, multimask_output=False)
        masks = processor.post_process_masks(outputs.pred_masks.cpu(), inputs["original_sizes"].cpu())
        scores = outputs.iou_scores[:, :, 0].float().cpu().numpy()
        for j in range(len(chunk)):
            out.append({"scores": scores[j], "masks": masks[j][:, 0].numpy()})
    return out


# -- correctness ----------------------------------------------------------------------------------


def compare(ours, reference, per_image_pairs=1) -> dict:
    """Ours vs the reference: hit counts, score differences and in-box mask agreement.

    ``reference`` has one entry per (image, prompt) pair in prompt order; ``ours`` one per image
    (hits in prompt order, then query order, as the reference).
    """
    if ours is None or reference is None:
        return {"skipped": "out of device memory", "ok": True}
    count_mismatch, max_score_diff, agree, total = 0, 0.0, 0, 0
    for i, segmentation in enumerate(ours):
        refs = reference[i * per_image_pairs : (i + 1) * per_image_pairs]
        ref_scores = np.concatenate([r["scores"] for r in refs]) if refs else np.zeros(0)
        ref_masks = [m for r in refs for m in r["masks"]]
        if len(ref_scores) != len(segmentation):
            count_mismatch += 1
            continue
        if len(ref_scores):
            max_score_diff = max(max_score_diff, float(np.abs(ref_scores - segmentation.scores).max()))
        for crop, mask, ref_mask in zip(segmentation.boxes_xyxy.astype(int), segmentation.masks, ref_masks):
            x0, y0, x1, y1 = crop
            agree += int((ref_mask[y0:y1, x0:x1] == mask).sum())
            total += mask.size
    hits = int(sum(len(s) for s in ours))
    return {
        "images": len(ours),
        "hits_ours": hits,
        "hits_reference": int(sum(len(r["scores"]) for r in reference)),
        "images_with_count_mismatch": count_mismatch,
        "max_score_diff": max_score_diff,
        "mask_pixel_agreement_in_box": (agree / total) if total else None,
        "ok": count_mismatch == 0 and max_score_diff <= 0.01 and (not total or agree / total >= 0.99),
    }


# -- scenarios ------------------------------------------------------------------------------------


def _row(scenario, pipeline, setting, stats, **extra):
    row = {"scenario": scenario, "pipeline": pipeline, "setting": setting}
    row.update({k: v for k, v in stats.items() if k != "output"})
    row.update(extra)
    return row


def same_precision_as_ours(device, dtype) -> bool:
    """Whether a reference variant runs at the engine's precision (bf16 autocast on CUDA, fp32 elsewhere)."""
    return dtype is (torch.bfloat16 if device.type == "cuda" else None)


def reference_variants(device):
    """The reference's precisions: fp32 as in the docs, plus bf16 autocast on CUDA (its best case)."""
    return [("ref-fp32", None), ("ref-bf16", torch.bfloat16)] if device.type == "cuda" else [("ref-fp32", None)]


def scenario_a(bench, images, args, threshold, report):
    rows, checks = [], []
    for batch in args.batch_sizes:
        stats = measure(
            bench.device,
            lambda b=batch: ours_text(bench, images, PROMPTS[:1], b, threshold),
            len(images),
            warmup=lambda b=batch: ours_text(bench, images[:b], PROMPTS[:1], b, threshold),
        )
        rows.append(_row("a", "ours", f"batch={batch}", stats, batch=batch))
        ours_out = stats["output"]
        for name, dtype in reference_variants(bench.device):
            stats = measure(
                bench.device,
                lambda b=batch, d=dtype: reference_text(bench, images, PROMPTS[:1], b, threshold, dtype=d),
                len(images),
                warmup=lambda b=batch, d=dtype: reference_text(bench, images[:b], PROMPTS[:1], b, threshold, dtype=d),
            )
            rows.append(_row("a", name, f"batch={batch}", stats, batch=batch))
            if same_precision_as_ours(bench.device, dtype):
                checks.append({"scenario": "a", "batch": batch, "vs": name, **compare(ours_out, stats["output"])})
        report(rows[-1 - len(reference_variants(bench.device)) :])
    return rows, checks


def scenario_b(bench, images, args, threshold, report):
    rows, checks = [], []
    batch = args.prompt_batch
    for k in args.prompt_counts:
        texts = PROMPTS[:k]
        stats = measure(
            bench.device,
            lambda t=texts: ours_text(bench, images, t, batch, threshold),
            len(images),
            warmup=lambda t=texts: ours_text(bench, images[:batch], t, batch, threshold),
        )
        rows.append(_row("b", "ours", f"K={k}", stats, prompts=k, batch=batch))
        ours_out = stats["output"]
        for name, dtype in reference_variants(bench.device):
            stats = measure(
                bench.device,
                lambda t=texts, d=dtype: reference_text(bench, images, t, batch, threshold, dtype=d),
                len(images),
                warmup=lambda t=texts, d=dtype: reference_text(bench, images[:batch], t, batch, threshold, dtype=d),
            )
            rows.append(_row("b", name, f"K={k}", stats, prompts=k, batch=batch))
            if same_precision_as_ours(bench.device, dtype):
                checks.append(
                    {"scenario": "b", "prompts": k, "vs": name, **compare(ours_out, stats["output"], per_image_pairs=k)}
                )
        report(rows[-1 - len(reference_variants(bench.device)) :])
    return rows, checks


def scenario_c(bench, images, args, report):
    rows, checks = [], []
    boxes = make_boxes(images, args.boxes_per_image)
    batch = args.box_batch
    stats = measure(
        bench.device,
        lambda: ours_boxes(bench, images, boxes, batch),
        len(images),
        warmup=lambda: ours_boxes(bench, images[:batch], boxes[:batch], batch),
    )
    rows.append(_row("c", "ours", f"{args.boxes_per_image} boxes", stats, batch=batch))
    ours_out = stats["output"]
    for name, dtype in reference_variants(bench.device):
        stats = measure(
            bench.device,
            lambda d=dtype: reference_boxes(bench, images, boxes, batch, dtype=d),
            len(images),
            warmup=lambda d=dtype: reference_boxes(bench, images[:batch], boxes[:batch], batch, dtype=d),
        )
        rows.append(_row("c", name, f"{args.boxes_per_image} boxes", stats, batch=batch))
        if same_precision_as_ours(bench.device, dtype):
            checks.append({"scenario": "c", "vs": name, **compare(ours_out, stats["output"])})
    report(rows)
    return rows, checks


def vision_flops_per_image(bench: Bench) -> dict:
    """FLOPs of ``get_vision_features`` for one image: counted by FlopCounterMode, and analytically for the ViT."""
    from torch.utils.flop_counter import FlopCounterMode

    pixel_values = torch.zeros(1, 3, bench.image_size, bench.image_size, device=bench.device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        bench.detector.get_vision_features(pixel_values=pixel_values)
    config = bench.detector.config.vision_config.backbone_config
    d, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    grid = config.image_size // config.patch_size
    tokens, window = grid * grid, config.window_size
    windows = math.ceil(grid / window) ** 2
    linear = 2 * tokens * (4 * d * d + 2 * d * inner)  # qkv + proj + MLP, 2 FLOPs per MAC
    attention_global = 2 * 2 * tokens * tokens * d
    attention_window = 2 * 2 * windows * (window * window) ** 2 * d
    n_global = len(config.global_attn_indexes)
    analytic = layers * linear + n_global * attention_global + (layers - n_global) * attention_window
    analytic += 2 * tokens * 3 * config.patch_size**2 * d  # patch embedding
    return {"flop_counter": int(counter.get_total_flops()), "analytic_vit_backbone": int(analytic)}


def scenario_d(bench, args, report):
    flops = vision_flops_per_image(bench)
    per_image = max(flops["flop_counter"], flops["analytic_vit_backbone"])
    peak = args.peak_tflops
    if peak is None and bench.device.type == "cuda":
        name = torch.cuda.get_device_name(bench.device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows = []
    variants = [("bf16 autocast", torch.bfloat16), ("fp32", None)] if bench.device.type == "cuda" else [("fp32", None)]
    for batch in args.encoder_batches:
        pixel_values = torch.randn(batch, 3, bench.image_size, bench.image_size, device=bench.device)
        for label, dtype in variants:

            def run(dtype=dtype, pixel_values=pixel_values):
                with torch.inference_mode(), autocast(bench.device, dtype):
                    for _ in range(args.encoder_iters):
                        bench.detector.get_vision_features(pixel_values=pixel_values)

            stats = measure(bench.device, run, batch * args.encoder_iters, warmup=run)
            achieved = per_image * stats["images_per_s"] / 1e12
            rows.append(
                _row(
                    "d",
                    "vision encoder",
                    f"{label} batch={batch}",
                    stats,
                    batch=batch,
                    tflops=achieved,
                    peak_tflops=peak,
                    share_of_peak=(achieved / peak) if peak else None,
                )
            )
        report(rows[-len(variants) :])
    return rows, {"flops_per_image": flops, "peak_bf16_tflops_used": peak}


# -- output ---------------------------------------------------------------------------------------


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def print_rows(rows):
    for row in rows:
        extra = ""
        if "tflops" in row:
            extra = f"  {row['tflops']:.3f} TFLOP/s" + (
                f" = {100 * row['share_of_peak']:.1f}% of {row['peak_tflops']:.0f}" if row["share_of_peak"] else ""
            )
        print(
            f"  ({row['scenario']}) {row['pipeline']:<15} {row['setting']:<22} {row['images_per_s']:9.2f} img/s "
            f"{row['ms_per_image']:9.2f} ms/img  peak {_fmt(row['peak_mem_gib'], 2):>6} GiB{extra}",
            flush=True,
        )


def markdown_table(rows) -> str:
    lines = [
        "| scenario | pipeline | setting | images/s | ms/image | peak GiB | TFLOP/s (% peak) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        tf = ""
        if "tflops" in row:
            tf = f"{row['tflops']:.3f}" + (f" ({100 * row['share_of_peak']:.1f}%)" if row["share_of_peak"] else "")
        lines.append(
            f"| {row['scenario']} | {row['pipeline']} | {row['setting']} | {row['images_per_s']:.2f} | {row['ms_per_image']:.2f} | {_fmt(row['peak_mem_gib'], 2)} | {tf} |"
        )
    return "\n".join(lines)


def speedups(rows) -> dict:
    """Headline ratios: ours vs the reference's best, and ours' K=4 vs K=1 cost."""
    out = {}
    for scenario in ("a", "b", "c"):
        ours = [r for r in rows if r["scenario"] == scenario and r["pipeline"] == "ours"]
        refs = [r for r in rows if r["scenario"] == scenario and r["pipeline"].startswith("ref")]
        if ours and refs:
            if scenario == "b":
                for o in ours:
                    best = max((r for r in refs if r["prompts"] == o["prompts"]), key=lambda r: r["images_per_s"])
                    out[f"b: K={o['prompts']} ours / best ref"] = o["images_per_s"] / max(best["images_per_s"], 1e-9)
            else:
                best_ours = max(ours, key=lambda r: r["images_per_s"])
                best_ref = max(refs, key=lambda r: r["images_per_s"])
                out[f"{scenario}: best ours / best ref"] = best_ours["images_per_s"] / max(
                    best_ref["images_per_s"], 1e-9
                )
    k = {r["prompts"]: r for r in rows if r["scenario"] == "b" and r["pipeline"] == "ours"}
    if 1 in k and 4 in k:
        out["b: ours cost K=4 / K=1 (target <= 1.4)"] = k[4]["ms_per_image"] / k[1]["ms_per_image"]
    shares = [r["share_of_peak"] for r in rows if r["scenario"] == "d" and r.get("share_of_peak")]
    if shares:
        out["d: vision encoder, best share of the bf16 peak (target >= 0.40)"] = max(shares)
    return out


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for axis, scenario, key, xlabel in (
        (axes[0], "a", "batch", "batch size (1 text prompt)"),
        (axes[1], "b", "prompts", "text prompts per image"),
    ):
        for pipeline in sorted({r["pipeline"] for r in rows if r["scenario"] == scenario}):
            points = sorted(
                (r[key], r["images_per_s"]) for r in rows if r["scenario"] == scenario and r["pipeline"] == pipeline
            )
            if points:
                axis.plot(*zip(*points), marker="o", label=pipeline)
        axis.set_xscale("log", base=2)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("images/s")
        axis.set_title(f"({scenario})")
        axis.legend()
    for axis, scenario, title_text in ((axes[2], "c", "(c) box mode"), (axes[3], "d", "(d) vision encoder")):
        chosen = [r for r in rows if r["scenario"] == scenario]
        values = [r["tflops"] if scenario == "d" else r["images_per_s"] for r in chosen]
        axis.bar(range(len(chosen)), values)
        axis.set_xticks(
            range(len(chosen)),
            [f"{r['pipeline']}\n{r['setting']}" if scenario == "c" else r["setting"] for r in chosen],
            fontsize=7,
            rotation=20,
        )
        axis.set_ylabel("TFLOP/s" if scenario == "d" else "images/s")
        axis.set_title(title_text)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info(device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    import transformers

    info["transformers"] = transformers.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_mem_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--config", choices=("tiny", "small", "full"), default=None, help="default: full on cuda, tiny on cpu"
    )
    parser.add_argument(
        "--images", type=int, default=None, help="images per measurement (default 64 on cuda, 16 on cpu)"
    )
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--prompt-counts", default="1,2,4,8")
    parser.add_argument("--prompt-batch", type=int, default=8, help="images per batch in (b)")
    parser.add_argument("--boxes-per-image", type=int, default=10)
    parser.add_argument("--box-batch", type=int, default=8, help="images per batch in (c)")
    parser.add_argument("--encoder-batches", default=None, help="(d) batch sizes (default 1,8,32 on cuda, 1,4 on cpu)")
    parser.add_argument(
        "--encoder-iters", type=int, default=None, help="(d) forwards per measurement (default 10 cuda, 2 cpu)"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device bf16 dense peak (default: from the GPU name, H200 = 989)",
    )
    parser.add_argument(
        "--dets-per-image", type=float, default=8.0, help="hits per (image, prompt) the threshold is set for"
    )
    parser.add_argument("--max-queries", type=int, default=32, help="the engine's max_queries_per_forward")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per measurement, fastest kept (default 1 cuda, 3 cpu)"
    )
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    args.config = args.config or ("full" if cuda else "tiny")
    args.images = args.images or (64 if cuda else 16)
    args.repeats = args.repeats or (1 if cuda else 3)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    args.prompt_counts = [int(v) for v in args.prompt_counts.split(",")]
    args.encoder_batches = [int(v) for v in (args.encoder_batches or ("1,8,32" if cuda else "1,4")).split(",")]
    args.encoder_iters = args.encoder_iters or (10 if cuda else 2)
    args.out = args.out or os.path.join(REPO_ROOT, "bench", "results", f"engine-{args.config}-{args.device.type}")
    return args


def main(argv=None):
    global REPEATS
    args = parse_args(argv)
    REPEATS = max(1, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    bench = Bench(args.config, args.device, max_queries=args.max_queries)
    print(
        f"config={args.config} device={args.device} params={bench.params} attn={bench.attn_implementation}", flush=True
    )
    images = make_images(args.images)
    threshold = (
        calibrate_detector(bench, make_images(4, seed=99), args.dets_per_image)
        if {"a", "b"} & set(args.scenarios)
        else 0.5
    )
    print(
        f"score threshold (calibrated for ~{args.dets_per_image:g} hits per image and prompt): {threshold:.4f}",
        flush=True,
    )
    rows, checks, extra = [], [], {"breakdown_ours": {}}
    if "a" in args.scenarios:
        r, c = scenario_a(bench, images, args, threshold, print_rows)
        rows += r
        checks += c
        best = max((row for row in r if row["pipeline"] == "ours"), key=lambda row: row["images_per_s"])
        prompts = [ImagePrompts(texts=(PROMPTS[0],))] * len(images)
        extra["breakdown_ours"][f"a: 1 prompt, batch {best['batch']}"] = engine_breakdown(
            bench, images, prompts, "text", best["batch"], threshold
        )
    if "b" in args.scenarios:
        r, c = scenario_b(bench, images, args, threshold, print_rows)
        rows += r
        checks += c
        k = max(args.prompt_counts)
        prompts = [ImagePrompts(texts=tuple(PROMPTS[:k]))] * len(images)
        extra["breakdown_ours"][f"b: K={k}, batch {args.prompt_batch}"] = engine_breakdown(
            bench, images, prompts, "text", args.prompt_batch, threshold
        )
    if "c" in args.scenarios:
        r, c = scenario_c(bench, images, args, print_rows)
        rows += r
        checks += c
        prompts = [ImagePrompts(boxes=b) for b in make_boxes(images, args.boxes_per_image)]
        key = f"c: {args.boxes_per_image} boxes, batch {args.box_batch}"
        extra["breakdown_ours"][key] = engine_breakdown(bench, images, prompts, "boxes", args.box_batch, threshold)
    if "d" in args.scenarios:
        r, info = scenario_d(bench, args, print_rows)
        rows += r
        extra["d"] = info
    ratios = speedups(rows)
    result = {
        "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()},
        "machine": machine_info(args.device),
        "params": bench.params,
        "attn_implementation": bench.attn_implementation,
        "score_threshold": threshold,
        "rows": rows,
        "correctness": checks,
        "speedups": ratios,
        "wall_s": time.perf_counter() - started,
        **extra,
    }
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    plot(
        rows,
        os.path.join(args.out, "results.png"),
        f"SAM3 engine vs transformers loop: {args.config} config on {machine_info(args.device).get('gpu', 'CPU')}",
    )
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(markdown_table(rows) + "\n")
    print("\n" + markdown_table(rows))
    print("\nspeedups:", json.dumps(ratios, indent=2))
    for name, b in extra["breakdown_ours"].items():
        print(f"\nours, {name}: time per stage (synchronised wrappers; total {b['total_s']:.3f} s)")
        for stage, share in b["share"].items():
            print(f"  {stage:<32} {100 * share:5.1f}%  ({b['stages_s'][stage]:.3f} s)")
    if "d" in extra:
        print("\nvision encoder FLOPs/image:", extra["d"])
    print("\ncorrectness (ours vs reference at the same precision):")
    for check in checks:
        print("  ", {k: v for k, v in check.items()})
    bad = [c for c in checks if not c["ok"]]
    print(
        f"\n{'ALL AGREE' if not bad else f'{len(bad)} DISAGREEMENTS'}; wrote {args.out}/results.json, results.png, results.md ({time.perf_counter() - started:.0f} s)"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
