"""De-duplication of an image's hits by their masks (non-maximum suppression), on the device.

Two hits whose masks overlap with IoU above ``iou`` are one object: the lower-scoring one is
dropped. Optionally only hits with the same label compete (``per_label``), and a hit whose mask
lies inside a higher-scoring one by at least ``containment`` of its own area is dropped too (a
part found by a second prompt: "wheel" inside "car" is not a duplicate, so this is off unless
asked for).

The masks are the low-resolution ones the model predicts (288 x 288 for the full-size model),
before anything is upsampled, so a dropped hit costs nothing more. Intersections come from
matrix products over the flattened masks, in blocks that bound memory (never a Python loop over
pairs); only hits whose boxes overlap another's (torchvision's box IoU) take part. The greedy pass
walks the hits once, highest score first, as box NMS does.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

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
        local = torch.zeros_like(pair)
        if iou is not None:
            union = areas[:, None] + areas[None, :] - intersections
            local |= intersections > iou * union.clamp(min=1)
        if containment is not None:
            # row i suppresses column j when j lies inside i: intersection / area of j
            local |= intersections > containment * areas[None, :].clamp(min=1)
        suppress[involved[:, None], involved[None, :]] = local & pair
    # highest score first; a stable sort keeps the earlier of two equal scores first
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    suppress = suppress.cpu()
    removed = torch.zeros(n, dtype=torch.bool)
    pending = torch.ones(n, dtype=torch.bool)  # not yet decided: only these can still be suppressed
    for i in order:
        pending[i] = False
        if not removed[i]:
            removed |= suppress[i] & pending
    return torch.nonzero(~removed).flatten().to(scores.device)
