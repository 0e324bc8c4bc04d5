"""Per-prompt control, de-duplication across prompts, limits per image and "segment everything"
(issue 14): hand-built NMS cases with exact survivors, a brute-force reference, and the engine's
filters checked against the same rules applied to its unfiltered hits."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sam3_ops.core.engine import Sam3Engine
from sam3_ops.core.nms import mask_nms, mask_overlaps
from sam3_ops.core.queries import ImagePrompts, TextPrompt

from .helpers import REPO_ROOT


def _masks(*rectangles, size=(20, 20)):
    """Boolean masks, one per ``(x0, y0, x1, y1)`` rectangle."""
    masks = torch.zeros(len(rectangles), *size, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(rectangles):
        masks[k, y0:y1, x0:x1] = True
    return masks


def _survivors(masks, scores, **options):
    return mask_nms(masks, torch.tensor(scores), **options).tolist()


# -- hand-built cases ------------------------------------------------------------------------------


def test_two_identical_masks_from_two_prompts_keep_the_higher_score():
    masks = _masks((2, 2, 10, 10), (2, 2, 10, 10))
    assert _survivors(masks, [0.8, 0.9], iou=0.5) == [1]
    assert _survivors(masks, [0.8, 0.9], iou=0.5, labels=["helmet", "no helmet"]) == [0, 1]  # per label
    assert _survivors(masks, [0.8, 0.9], iou=0.5, labels=["worker", "worker"]) == [1]


def test_nested_masks_are_kept_unless_the_containment_rule_asks():
    big, small = (0, 0, 20, 20), (5, 5, 9, 9)  # IoU 16 / 400
    masks = _masks(big, small)
    assert _survivors(masks, [0.9, 0.8], iou=0.5) == [0, 1]
    assert _survivors(masks, [0.9, 0.8], iou=0.5, containment=0.9) == [0]
    # the big one scores lower: it does not lie inside the small one, so both stay
    assert _survivors(masks, [0.7, 0.8], iou=0.5, containment=0.9) == [0, 1]


def test_disjoint_masks_all_survive():
    masks = _masks((0, 0, 5, 5), (10, 10, 15, 15), (0, 10, 5, 15))
    assert _survivors(masks, [0.5, 0.9, 0.7], iou=0.1, containment=0.1) == [0, 1, 2]


def test_ties_keep_the_earlier_hit():
    masks = _masks((2, 2, 10, 10), (2, 2, 10, 10), (2, 2, 10, 10))
    assert _survivors(masks, [0.5, 0.5, 0.5], iou=0.5) == [0]


def test_a_suppressed_hit_suppresses_nothing():
    """A(0.9) overlaps B(0.8), B overlaps C(0.7), A and C do not touch: greedy keeps A and C."""
    masks = _masks((0, 0, 10, 10), (4, 0, 14, 10), (9, 0, 19, 10))
    assert _survivors(masks, [0.9, 0.8, 0.7], iou=0.3) == [0, 2]


def test_the_threshold_is_strict():
    masks = _masks((0, 0, 10, 10), (0, 0, 10, 5))  # IoU exactly 0.5
    assert _survivors(masks, [0.9, 0.8], iou=0.5) == [0, 1]
    assert _survivors(masks, [0.9, 0.8], iou=0.49) == [0]


# -- against a brute-force reference ---------------------------------------------------------------


def _reference_nms(masks, scores, iou, containment, labels):
    """Greedy NMS spelled out pair by pair."""
    masks = masks.numpy().reshape(len(masks), -1)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for j in order:
        dropped = False
        for i in kept:
            if labels is not None and labels[i] != labels[j]:
                continue
            inter = np.logical_and(masks[i], masks[j]).sum()
            union = np.logical_or(masks[i], masks[j]).sum()
            if iou is not None and inter > iou * max(union, 1):
                dropped = True
            if containment is not None and inter > containment * max(masks[j].sum(), 1):
                dropped = True
        if not dropped:
            kept.append(j)
    return sorted(kept)


def _random_blobs(rng, n, size=24):
    """``n`` random rectangles and ellipses, many overlapping, a few empty."""
    masks = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cx, cy, rx, ry = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, 8), rng.uniform(0, 8)
        if rng.random() < 0.5:
            masks[k] = ((xx - cx) / max(rx, 0.1)) ** 2 + ((yy - cy) / max(ry, 0.1)) ** 2 <= 1
        else:
            masks[k] = (abs(xx - cx) <= rx) & (abs(yy - cy) <= ry)
    return torch.from_numpy(masks)


def _boxes(masks):
    boxes = []
    for mask in masks.numpy():
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0])
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_the_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    masks = _random_blobs(rng, 60)
    scores = rng.choice([0.3, 0.5, 0.7, 0.9], 60).tolist()  # many ties
    labels = rng.choice(["a", "b", "c"], 60).tolist()
    for iou, containment, per_label in [(0.5, None, False), (0.3, 0.8, False), (0.5, 0.6, True), (None, 0.9, False)]:
        chosen = labels if per_label else None
        expected = _reference_nms(masks, scores, iou, containment, chosen)
        assert _survivors(masks, scores, iou=iou, containment=containment, labels=chosen) == expected
        with_boxes = mask_nms(masks, torch.tensor(scores), iou, containment, chosen, _boxes(masks)).tolist()
        assert with_boxes == expected  # the box pre-filter changes nothing


def test_blocked_intersections_equal_one_product():
    masks = _random_blobs(np.random.default_rng(9), 11)
    flat = masks.flatten(1).float()
    intersections, areas = mask_overlaps(masks, block=3)
    assert torch.equal(intersections, flat @ flat.T) and torch.equal(areas, flat.sum(1))


# -- in the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Sam3Engine(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (200, 150)]]


def _hits(segmentation):
    """(label, score) of each hit, and its mask as a full-image canvas."""
    return [(label, round(float(score), 6)) for label, score in zip(segmentation.labels, segmentation.scores)]


def test_per_prompt_thresholds_and_labels_equal_each_prompt_alone(engine, images):
    prompts = (TextPrompt("cat", label="feline", threshold=0.2), TextPrompt("dog", threshold=0.3), TextPrompt("cup"))
    together = engine.segment(images, [ImagePrompts(texts=prompts)] * 2, threshold=0.25)
    for i, result in enumerate(together):
        expected = []
        for prompt, threshold in zip(prompts, (0.2, 0.3, 0.25)):
            alone = engine.segment(images[i : i + 1], [ImagePrompts(texts=(prompt.text,))], threshold=threshold)[0]
            expected += [(prompt.name, score) for _, score in _hits(alone)]
        assert _hits(result) == expected
        assert {"feline", "dog", "cup"} >= set(result.labels) and "cat" not in result.labels


def _low_res(segmentation):
    return torch.stack([logits.float() > 0 for logits in segmentation.low_res_logits])


@pytest.mark.parametrize(
    "options",
    [
        {"nms_iou": 0.3},
        {"nms_iou": 0.3, "nms_per_label": True},
        {"nms_containment": 0.5},
        {"max_detections": 4},
        {"min_area": 0.6},
        {"nms_iou": 0.3, "min_area": 0.5, "max_detections": 3},
    ],
)
def test_engine_filters_equal_the_rules_on_its_unfiltered_hits(engine, images, options):
    """The engine's survivors are exactly what min_area, then NMS, then max_detections leave of
    its unfiltered hits (computed here from their low-resolution masks)."""
    prompts = [ImagePrompts(texts=("cat", "dog", "cup"))] * 2
    unfiltered = engine.segment(images, prompts, threshold=0.2, keep_logits=True)
    filtered = engine.segment(images, prompts, threshold=0.2, **options)
    changed = False
    for everything, result in zip(unfiltered, filtered):
        masks = _low_res(everything)
        index = torch.arange(len(everything))
        if options.get("min_area"):
            index = index[masks.flatten(1).sum(1) >= options["min_area"] * masks[0].numel()]
        if "nms_iou" in options or "nms_containment" in options:
            labels = [everything.labels[i] for i in index] if options.get("nms_per_label") else None
            survivors = mask_nms(
                masks[index],
                torch.from_numpy(everything.scores)[index],
                options.get("nms_iou"),
                options.get("nms_containment"),
                labels,
            )
            index = index[survivors]
        if options.get("max_detections") and len(index) > options["max_detections"]:
            top = torch.sort(torch.from_numpy(everything.scores)[index], descending=True, stable=True).indices
            index = torch.sort(index[top[: options["max_detections"]]]).values
        expected = [_hits(everything)[i] for i in index.tolist()]
        assert _hits(result) == expected
        changed |= len(expected) < len(everything)
    assert changed  # the case removed something: it tested the filter


def test_auto_mode_segments_everything_without_duplicates(engine, images):
    results = engine.segment(
        images,
        None,
        mode="auto",
        points_per_side=6,
        pred_iou_threshold=0.0,
        stability_threshold=0.0,
        nms_iou=0.5,
        auto_label="thing",
        keep_logits=True,
    )
    for result in results:
        assert 1 < len(result) < 3 * 36
        assert set(result.labels) == {"thing"} and (result.prompt_index == -1).all()
        intersections, areas = mask_overlaps(_low_res(result))
        iou = intersections / (areas[:, None] + areas[None, :] - intersections).clamp(min=1)
        iou.fill_diagonal_(0)
        assert iou.max() <= 0.5  # no two survivors overlap above nms_iou
    # confidence = predicted IoU, filtered by pred_iou_threshold; the tiny model's masks all lie
    # within one logit of the mask threshold: stability 0, so any stability threshold drops them
    strict = engine.segment(
        images, None, mode="auto", points_per_side=6, pred_iou_threshold=0.5, stability_threshold=0, nms_iou=0.5
    )
    assert all((r.scores >= 0.5).all() for r in strict) and sum(map(len, strict)) < sum(map(len, results))
    stable = engine.segment(images, None, mode="auto", points_per_side=6, pred_iou_threshold=0, stability_threshold=0.1)
    assert [len(r) for r in stable] == [0, 0]


def test_auto_mode_memory_is_bounded_on_a_12_megapixel_image(tiny_checkpoint):
    """A 4000 x 3000 image, 16 x 16 points (768 candidate masks): no full-resolution mask per
    candidate (that would be 9 GB); the peak stays within a few hundred MB of the image's own."""
    script = textwrap.dedent(
        f"""
        import resource, numpy as np, torch
        torch.set_num_threads(1)
        from sam3_ops.core.engine import Sam3Engine
        engine = Sam3Engine({str(tiny_checkpoint)!r}, device="cpu").load("auto")
        small = np.zeros((300, 400, 3), np.uint8)
        engine.segment([small], None, mode="auto", points_per_side=4, pred_iou_threshold=0, stability_threshold=0)
        image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (result,) = engine.segment([image], None, mode="auto", points_per_side=16, pred_iou_threshold=0,
                                   stability_threshold=0, max_detections=20)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(result), (after - before) // 1024)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    hits, grown_mb = map(int, run.stdout.split()[-2:])
    assert 0 < hits <= 20
    assert grown_mb < 800, f"peak memory grew by {grown_mb} MB"
