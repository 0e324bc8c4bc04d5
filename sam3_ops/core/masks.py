"""Mask math on the device: whole-pixel crops, bilinear upsampling evaluated over a crop only,
memory budgets for doing it in batches, and the areas and overlaps of masks as written. torch +
numpy only.

SAM3 predicts each mask as a low-resolution map (288 x 288 for the full-size model).
FiftyOne stores a Detection's mask covering exactly its box, so a kept hit's map is upsampled
over its own box and nowhere else: ``rows @ map @ cols.T`` with 1-D bilinear weight matrices
(:func:`upsample_crops`), which equals interpolating the whole image and slicing, at a fraction of
the cost.

**A written mask in the image's pixel frame** (how the de-duplication rules and ``min_area`` count
pixels, :func:`written_areas`, :func:`written_window`): a mask of ``h x w`` written for the
whole-pixel crop ``(x0, y0, x1, y1)`` covers exactly that crop; image pixel ``(y, x)`` of the crop
shows mask pixel ``((y - y0) * h // (y1 - y0), (x - x0) * w // (x1 - x0))`` (nearest neighbour,
integer arithmetic). A mask of the crop's own size (every mask whose box fits ``max_mask_size``)
is its pixels; a mask scaled down by ``max_mask_size`` is stretched back over its box. Areas and
overlaps are counts of image pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def crop_box(box_xyxy: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-pixel crop ``(x0, y0, x1, y1)`` covering ``box_xyxy``, inside the image, at least 1 px."""
    x0 = min(max(int(math.floor(box_xyxy[0])), 0), width - 1)
    y0 = min(max(int(math.floor(box_xyxy[1])), 0), height - 1)
    x1 = max(min(int(math.ceil(box_xyxy[2])), width), x0 + 1)
    y1 = max(min(int(math.ceil(box_xyxy[3])), height), y0 + 1)
    return x0, y0, x1, y1


def _bilinear_weights(
    starts: torch.Tensor, stops: torch.Tensor, counts: torch.Tensor, out_size: int, in_size: int, length: int
) -> torch.Tensor:
    """Rows of the 1-D bilinear resampling matrix ``in_size -> out_size`` for ``counts[i]`` output
    samples evenly covering pixels ``starts[i] .. stops[i]``, zero-padded to ``length``:
    shape ``(n, length, in_size)``. With ``counts == stops - starts`` the samples are exactly the
    pixels ``starts[i] .. stops[i] - 1``.

    The arithmetic of ``F.interpolate(mode="bilinear", align_corners=False)``: source coordinate
    ``(y + 0.5) * in / out - 0.5``, clamped at 0, neighbour clamped at the last pixel.
    """
    offsets = torch.arange(length, device=starts.device, dtype=torch.float32)
    step = (stops - starts).float() / counts.float()
    positions = starts[:, None].float() + (offsets[None, :] + 0.5) * step[:, None] - 0.5
    valid = (offsets[None, :] < counts[:, None]).float()
    source = ((positions + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    fraction = source - lower.float()
    weights = torch.zeros(len(starts), length, in_size, device=starts.device)
    weights.scatter_add_(2, lower[..., None], ((1 - fraction) * valid)[..., None])
    weights.scatter_add_(2, upper[..., None], (fraction * valid)[..., None])
    return weights


def mask_shape(crop: tuple[int, int, int, int], max_mask_size: int | None) -> tuple[int, int]:
    """The ``(height, width)`` of the mask stored for ``crop``: the crop's pixels, scaled down so
    that neither side exceeds ``max_mask_size`` (FiftyOne stretches a mask over its box)."""
    x0, y0, x1, y1 = crop
    height, width = y1 - y0, x1 - x0
    if max_mask_size and max(height, width) > max_mask_size:
        scale = max_mask_size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def upsample_crops(
    low_res: torch.Tensor, crops: Sequence[tuple[int, int, int, int]], size: tuple[int, int], shapes=None
) -> torch.Tensor:
    """Bilinear upsampling of ``n`` low-res maps ``(n, h, w)`` to image ``size``, each evaluated
    over its own crop ``(x0, y0, x1, y1)`` only (at ``shapes[i]`` samples, default the crop's
    pixels); returns ``(n, max height, max width)``, each map in its top-left corner.

    Equals ``F.interpolate(low_res, size, mode="bilinear", align_corners=False)[i, y0:y1, x0:x1]``
    (what transformers' post-processing computes at full size) without building the full maps:
    bilinear resampling is separable, so each crop is ``Wy @ map @ Wx.T``, one batched matmul.
    """
    height, width = size
    device = low_res.device
    boxes = torch.tensor(crops, device=device, dtype=torch.long).reshape(-1, 4)
    if shapes is None:
        shapes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in crops]
    counts = torch.tensor(shapes, device=device, dtype=torch.long).reshape(-1, 2)
    max_height, max_width = (max(column) for column in zip(*shapes))  # from the host: no device sync
    rows = _bilinear_weights(boxes[:, 1], boxes[:, 3], counts[:, 0], height, low_res.shape[-2], max_height)
    cols = _bilinear_weights(boxes[:, 0], boxes[:, 2], counts[:, 1], width, low_res.shape[-1], max_width)
    # float32 even inside the engine's bf16 autocast: the threshold decides on these values
    with torch.autocast(device_type=device.type, enabled=False):
        return rows @ low_res.float() @ cols.transpose(1, 2)


def memory_groups(
    shapes: Sequence[tuple[int, int]], budget: int, low_res_shape: tuple[int, int] = (0, 0)
) -> list[list[int]]:
    """Splits hits into groups whose upsampling (:func:`upsample_crops`, padded to the group's
    largest mask) stays within ``budget`` float elements, so one huge mask never multiplies the
    memory of the others: per hit the output ``H x W`` and the intermediates ``H x lh``
    (row weights), ``H x lw`` (rows applied) and ``W x lw`` (column weights), where
    ``low_res_shape = (lh, lw)``. Thin tall masks cost more than their pixels."""
    low_h, low_w = low_res_shape

    def cost(count, h, w):
        return count * (h * w + h * low_h + h * low_w + w * low_w)

    order = sorted(range(len(shapes)), key=lambda i: cost(1, *shapes[i]))
    groups, current, max_h, max_w = [], [], 0, 0
    for i in order:
        h, w = shapes[i]
        new_h, new_w = max(max_h, h), max(max_w, w)
        if current and cost(len(current) + 1, new_h, new_w) > budget:
            groups.append(current)
            current, new_h, new_w = [], h, w
        current.append(i)
        max_h, max_w = new_h, new_w
    if current:
        groups.append(current)
    return groups


def logit(probability: float) -> float:
    """The logit of ``probability`` (clamped away from 0 and 1)."""
    probability = min(max(float(probability), 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def written_areas(crops: Sequence[tuple[int, int, int, int]], masks: Sequence[torch.Tensor]) -> np.ndarray:
    """The area in image pixels ``(n,)`` int64 of each written mask (``h x w`` bool, covering its
    crop ``(x0, y0, x1, y1)``: see the module's docstring); one host copy."""
    if not len(masks):
        return np.zeros(0, np.int64)
    areas = []
    for (x0, y0, x1, y1), mask in zip(crops, masks):
        height, width = mask.shape
        if (height, width) == (y1 - y0, x1 - x0):
            areas.append(mask.sum())
            continue
        # a stretched mask: each cell counts the image rows and columns that show it
        device = mask.device
        rows = torch.bincount(torch.arange(y1 - y0, device=device) * height // (y1 - y0), minlength=height)
        cols = torch.bincount(torch.arange(x1 - x0, device=device) * width // (x1 - x0), minlength=width)
        areas.append(((mask.to(torch.int64) * cols).sum(1) * rows).sum())  # int64: exact at any size
    return torch.stack(areas).cpu().numpy().astype(np.int64)


def written_window(mask: torch.Tensor, crop, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """The image pixels ``top .. bottom`` x ``left .. right`` (inside ``crop``) of a mask written for
    ``crop`` (see the module's docstring): a slice where the mask has its crop's size, else the
    rows and columns of the mask that show there."""
    x0, y0, x1, y1 = crop
    height, width = mask.shape
    if (height, width) == (y1 - y0, x1 - x0):
        return mask[top - y0 : bottom - y0, left - x0 : right - x0]
    device = mask.device
    rows = (torch.arange(top, bottom, device=device) - y0) * height // (y1 - y0)
    cols = (torch.arange(left, right, device=device) - x0) * width // (x1 - x0)
    return mask.index_select(0, rows).index_select(1, cols)
