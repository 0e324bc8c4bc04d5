"""De-duplication of an image's hits by their masks (non-maximum suppression), on the device.

Two hits whose masks overlap with IoU above ``iou`` are one object: the lower-scoring one is
dropped. Optionally only hits with the same label compete (``per_label``), and a hit whose mask
lies inside a higher-scoring one by more than ``containment`` of its own area is dropped too (a
part found by a second prompt: "wheel" inside "car" is not a duplicate, so this is off unless
asked for). The rule (:func:`suppression`) and the greedy pass (:func:`greedy`) are written once
and serve both stages:

1. :func:`mask_nms` prunes on the low-resolution masks the model predicts (288 x 288 for the
   full-size model), before anything is upsampled, so a dropped hit costs nothing more.
   Intersections come from matrix products over the flattened masks, in blocks that bound memory
   (never a Python loop over pairs); only hits whose boxes overlap another's (torchvision's box
   IoU) take part.
2. :func:`written_nms` checks the few survivors exactly, on the masks as written (each covering its
   box, counted in image pixels: :mod:`sam3_ops.core.masks`), so the rule holds on what the user
   gets. Only hits in a pair that could break the rule at all (boxes that overlap, and an upper
   bound from their areas and that overlap) are pasted into the image's frame, in bands of rows
   that bound memory, and counted with the same blocked matrix products.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from .masks import written_window

#: masks per block of the intersection matrix: float32 copies of at most two blocks exist at once
#: (2 x 256 masks x 288 x 288 = 170 MB at full size), whatever the number of masks
BLOCK = 256


def mask_overlaps(masks: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise intersections ``(n, n)`` and areas ``(n,)`` of ``n`` boolean masks ``(n, h, w)``, in
    pixels: matrix products of float32 blocks (exact counts), ``block`` masks at a time."""
    flat = masks.flatten(1)
    n = len(flat)
    intersections = torch.empty(n, n, device=masks.device)
    with torch.autocast(device_type=masks.device.type, enabled=False):
        for i in range(0, n, block):
            rows = flat[i : i + block].float()
            for j in range(i, n, block):
                columns = rows if j == i else flat[j : j + block].float()
                product = rows @ columns.T
                intersections[i : i + block, j : j + block] = product
                intersections[j : j + block, i : i + block] = product.T
    return intersections, flat.sum(1).float()


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    iou: float | None,
    containment: float | None = None,
    labels: list | None = None,
    boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The indices of the hits that survive, in the order given.

    Args:
        masks: ``(n, h, w)`` boolean low-resolution masks, on one image's grid
        scores: ``(n,)`` their scores
        iou (None): drop a hit whose mask IoU with a kept, higher-scoring one exceeds this
        containment (None): drop a hit lying inside a kept, higher-scoring one by more than this
            fraction of its own area
        labels (None): with labels, only hits of the same label compete
        boxes (None): ``(n, 4)`` xyxy boxes on any common scale, to skip pairs that cannot overlap

    Ties in score keep the earlier hit.
    """
    n = len(scores)
    if n <= 1 or (iou is None and containment is None):
        return torch.arange(n, device=scores.device)
    candidates = torch.ones(n, n, dtype=torch.bool, device=scores.device)
    if boxes is not None:
        candidates = box_iou(boxes.float(), boxes.float()) > 0
    if labels is not None:
        codes = {label: code for code, label in enumerate(dict.fromkeys(labels))}
        label_ids = torch.tensor([codes[label] for label in labels], device=scores.device)
        candidates &= label_ids[:, None] == label_ids[None, :]
    candidates.fill_diagonal_(False)
    suppress = torch.zeros(n, n, dtype=torch.bool, device=scores.device)
    rows = candidates.any(1)
    if rows.any():
        involved = torch.nonzero(rows).flatten()
        intersections, areas = mask_overlaps(masks[involved])
        pair = candidates[involved][:, involved]
        local = suppression(intersections, areas[:, None], areas[None, :], iou, containment)
        suppress[involved[:, None], involved[None, :]] = local & pair
    # highest score first; a stable sort keeps the earlier of two equal scores first
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    removed = greedy(suppress.cpu(), order)
    return torch.nonzero(~removed).flatten().to(scores.device)


def suppression(
    intersections: torch.Tensor,
    areas_above: torch.Tensor,
    areas_below: torch.Tensor,
    iou: float | None,
    containment: float | None,
) -> torch.Tensor:
    """The rule, elementwise: does a hit of area ``areas_above`` suppress one of area
    ``areas_below`` (ranked below it) with which it shares ``intersections`` pixels?

    IoU above ``iou``: ``intersection > iou * union``; lying inside by more than ``containment``:
    ``intersection > containment * area below`` (an empty union or area counts as 1 pixel, so
    empty masks suppress nothing). Strict: an IoU of exactly ``iou`` is kept.
    """
    suppress = torch.zeros(intersections.shape, dtype=torch.bool, device=intersections.device)
    if iou is not None:
        union = areas_above + areas_below - intersections
        suppress |= intersections > iou * union.clamp(min=1)
    if containment is not None:
        suppress |= intersections > containment * areas_below.clamp(min=1)
    return suppress


def greedy(suppress: torch.Tensor, order: list[int]) -> torch.Tensor:
    """The greedy pass, as box NMS does it: walking ``order`` (highest score first), each hit not yet
    removed removes the later hits it suppresses (``suppress[i, j]``, on the CPU). Returns the
    removed ``(n,)``."""
    n = len(suppress)
    removed = torch.zeros(n, dtype=torch.bool)
    pending = torch.ones(n, dtype=torch.bool)  # not yet decided: only these can still be suppressed
    for i in order:
        pending[i] = False
        if not removed[i]:
            removed |= suppress[i] & pending
    return removed


def written_overlaps(crops: np.ndarray, masks: list[torch.Tensor], budget: int = 2**24) -> np.ndarray:
    """Pairwise intersections ``(n, n)`` int64 of ``n`` written masks, in image pixels (the diagonal:
    their areas), exact.

    The masks are pasted into the image's frame (:func:`~sam3_ops.core.masks.written_window`), over
    the columns their crops span, a band of rows at a time: a band holds at most ``budget`` pixels
    of all masks together (so float32 counts stay exact, and memory bounded whatever the image), and
    only the masks that reach it; :func:`mask_overlaps` counts each band.
    """
    n = len(masks)
    result = np.zeros((n, n), np.int64)
    if not n:
        return result
    crops = np.asarray(crops, np.int64).reshape(-1, 4)
    left, right = int(crops[:, 0].min()), int(crops[:, 2].max())
    top, bottom = int(crops[:, 1].min()), int(crops[:, 3].max())
    band = max(1, budget // (n * (right - left)))
    device = masks[0].device
    for start in range(top, bottom, band):
        stop = min(start + band, bottom)
        active = np.flatnonzero((crops[:, 1] < stop) & (crops[:, 3] > start))
        if not len(active):
            continue
        canvas = torch.zeros(len(active), stop - start, right - left, dtype=torch.bool, device=device)
        for k, i in enumerate(active.tolist()):
            x0, y0, x1, y1 = crops[i].tolist()
            y_top, y_bottom = max(y0, start), min(y1, stop)
            window = written_window(masks[i], (x0, y0, x1, y1), y_top, y_bottom, x0, x1)
            canvas[k, y_top - start : y_bottom - start, x0 - left : x1 - left] = window
        intersections, _ = mask_overlaps(canvas)
        result[np.ix_(active, active)] += intersections.to(torch.int64).cpu().numpy()
    return result


def written_nms(
    crops: np.ndarray,
    masks: list[torch.Tensor],
    areas: np.ndarray,
    iou: float | None,
    containment: float | None = None,
    labels: list | None = None,
    decided: int = 0,
) -> list[int]:
    """Greedy NMS on written masks: which of the hits ``decided ..`` survive.

    Args:
        crops: ``(n, 4)`` whole-pixel crops ``(x0, y0, x1, y1)`` of the hits, highest score first
            (ties in the order the rules rank them)
        masks: ``n`` bool masks, each written for its crop (:mod:`sam3_ops.core.masks`)
        areas: ``(n,)`` their areas in image pixels (:func:`~sam3_ops.core.masks.written_areas`)
        iou, containment, labels: as for :func:`mask_nms`
        decided (0): the first ``decided`` hits are already kept (an earlier round): they suppress,
            and are not checked again

    Returns:
        the indices ``>= decided`` that survive, in order
    """
    n = len(crops)
    if n <= decided or (iou is None and containment is None):
        return list(range(decided, n))
    crops = np.asarray(crops, np.int64).reshape(-1, 4)
    first, second = np.triu_indices(n, 1)
    new = second >= decided
    first, second = first[new], second[new]
    width = np.minimum(crops[first, 2], crops[second, 2]) - np.maximum(crops[first, 0], crops[second, 0])
    height = np.minimum(crops[first, 3], crops[second, 3]) - np.maximum(crops[first, 1], crops[second, 1])
    overlap = np.clip(width, 0, None) * np.clip(height, 0, None)
    live = overlap > 0
    if labels is not None:
        codes = {label: code for code, label in enumerate(dict.fromkeys(labels))}
        label_ids = np.array([codes[label] for label in labels], np.int64)
        live &= label_ids[first] == label_ids[second]
    # the most pixels a pair can share; a pair that could not break the rule even so is not counted
    # (float64: pixel counts of any image are exact, and the products with the thresholds are the
    # ones Python's floats give)
    areas = np.asarray(areas, np.int64)
    bound = torch.from_numpy(np.minimum(np.minimum(areas[first], areas[second]), overlap).astype(np.float64))
    above = torch.from_numpy(areas[first].astype(np.float64))
    below = torch.from_numpy(areas[second].astype(np.float64))
    live &= suppression(bound, above, below, iou, containment).numpy()
    first, second = first[live], second[live]
    involved = np.unique(np.concatenate([first, second]))
    local = np.full(n, -1, np.int64)
    local[involved] = np.arange(len(involved))
    overlaps = written_overlaps(crops[involved], [masks[i] for i in involved.tolist()])
    intersections = overlaps[local[first], local[second]].astype(np.float64)
    suppress = torch.zeros(n, n, dtype=torch.bool)
    rule = suppression(torch.from_numpy(intersections), above[live], below[live], iou, containment)
    suppress[torch.from_numpy(first), torch.from_numpy(second)] = rule
    removed = greedy(suppress, list(range(n)))
    return [i for i in range(decided, n) if not removed[i]]
