"""Conversions between FiftyOne labels and the engine's pixel boxes and masks. Pure functions.

FiftyOne boxes are relative ``[x, y, width, height]`` in ``[0, 1]``; a Detection's ``mask`` is a
2-D array covering exactly its box. The engine works in pixel ``xyxy`` on whole-pixel crops, so
these conversions are exact: a mask of ``h x w`` pixels gets a box of ``w / W`` by ``h / H``.
"""

from __future__ import annotations

from collections.abc import Sequence

import fiftyone.core.labels as fol
import numpy as np

from ..core.engine import ImageSegmentation
from ..core.queries import ImagePrompts, describe_box_problems, sanitize_boxes


def relative_to_xyxy(boxes_xywh: np.ndarray | Sequence, width: int, height: int) -> np.ndarray:
    """FiftyOne relative ``[x, y, w, h]`` boxes ``(N, 4)`` -> pixel ``xyxy`` float32 ``(N, 4)``.

    Values are not validated here (NaN stays NaN): :func:`sam3_ops.prompts.sanitize_boxes` decides.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) * scale
    return xyxy.astype(np.float32)


def xyxy_to_relative(box_xyxy: Sequence[float], width: int, height: int) -> list[float]:
    """A pixel ``xyxy`` box -> FiftyOne relative ``[x, y, w, h]``, clipped to ``[0, 1]``."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    x1, x2 = min(max(x1 / width, 0.0), 1.0), min(max(x2 / width, 0.0), 1.0)
    y1, y2 = min(max(y1 / height, 0.0), 1.0), min(max(y2 / height, 0.0), 1.0)
    return [x1, y1, max(x2 - x1, 0.0), max(y2 - y1, 0.0)]


def _is_negative(detection) -> bool:
    return getattr(detection, "negative", None) is True


def _box_of(detection) -> list:
    box = getattr(detection, "bounding_box", None)
    try:
        return [float(v) for v in box] if box is not None and len(box) == 4 else [np.nan] * 4
    except (TypeError, ValueError):
        return [np.nan] * 4


def prompts_from_detections(
    prompt_detections: fol.Detections | None,
    negative_detections: fol.Detections | None,
    width: int,
    height: int,
    texts: Sequence[str] = (),
    mode: str = "text",
) -> tuple[ImagePrompts, list[str | None], list[str]]:
    """Builds one image's :class:`~sam3_ops.prompts.ImagePrompts` from Detections fields.

    In ``exemplars`` mode a prompt detection with attribute ``negative=True`` is a negative
    example. Unusable boxes are dropped (and reported in the returned warnings); boxes partly
    outside the image are clipped.

    Args:
        prompt_detections: the prompt field's value (``None`` for none)
        negative_detections: the negative field's value (``None`` for none)
        width, height: the image size in pixels
        texts: the text prompts
        mode: the engine mode

    Returns:
        ``(prompts, prompt_ids, warnings)``: ``prompt_ids[i]`` is the id of the detection that
        became prompt box ``i``
    """
    positives = list(prompt_detections.detections) if prompt_detections is not None else []
    negatives = list(negative_detections.detections) if negative_detections is not None else []
    if mode == "exemplars":
        negatives += [d for d in positives if _is_negative(d)]
        positives = [d for d in positives if not _is_negative(d)]

    warnings = []
    pos_boxes, pos_keep = sanitize_boxes(
        relative_to_xyxy([_box_of(d) for d in positives], width, height), width, height
    )
    neg_boxes, neg_keep = sanitize_boxes(
        relative_to_xyxy([_box_of(d) for d in negatives], width, height), width, height
    )
    for given, kept, what in ((len(positives), len(pos_keep), "prompt"), (len(negatives), len(neg_keep), "negative")):
        message = describe_box_problems(given, kept, what)
        if message:
            warnings.append(message)
    kept = [positives[i] for i in pos_keep]
    prompts = ImagePrompts(
        texts=tuple(texts),
        boxes=pos_boxes,
        box_labels=tuple(d.label for d in kept),
        negative_boxes=neg_boxes,
    )
    return prompts, [d.id for d in kept], warnings


def to_detections(segmentation: ImageSegmentation, prompt_ids: Sequence[str | None] | None = None) -> fol.Detections:
    """The engine's hits on one image as ``fo.Detections`` (an empty one for no hits).

    Each Detection: ``label`` (the prompt or the prompt box's label), relative ``bounding_box``
    clipped to [0, 1], ``mask`` (bool, exactly the box), ``confidence`` (the SAM3 score); and, for
    hits that answer a prompt box, ``prompt_id`` (the id of that box's detection).
    """
    height, width = segmentation.image_size
    detections = []
    for i in range(len(segmentation)):
        detection = fol.Detection(
            label=segmentation.labels[i],
            bounding_box=xyxy_to_relative(segmentation.boxes_xyxy[i], width, height),
            mask=np.ascontiguousarray(segmentation.masks[i], dtype=bool),
            confidence=float(segmentation.scores[i]),
        )
        index = int(segmentation.prompt_index[i])
        if prompt_ids is not None and index >= 0:
            detection["prompt_id"] = prompt_ids[index]
        detections.append(detection)
    return fol.Detections(detections=detections)
