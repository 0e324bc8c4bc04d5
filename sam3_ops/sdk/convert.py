"""Conversions between FiftyOne labels and the engines' pixel boxes and masks, images' and videos'
(a video's prompt frames -> tracker prompts, a tracked frame -> ``Detections``). Pure functions.

FiftyOne boxes are relative ``[x, y, width, height]`` in ``[0, 1]``; a Detection's ``mask`` is a
2-D array covering exactly its box. The engine works in pixel ``xyxy`` on whole-pixel crops, so
these conversions are exact: a mask of ``h x w`` pixels gets a box of ``w / W`` by ``h / H``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fiftyone.core.labels as fol
import numpy as np

from ..core.engine import ImageSegmentation
from ..core.queries import ImagePrompts, ObjectPrompt, describe_box_problems, sanitize_boxes
from ..core.video import FrameResult, VideoPrompt


def relative_to_xyxy(boxes_xywh: np.ndarray | Sequence, width: int, height: int) -> np.ndarray:
    """FiftyOne relative ``[x, y, w, h]`` boxes ``(N, 4)`` -> pixel ``xyxy`` float32 ``(N, 4)``.

    Values are not validated here (NaN stays NaN): :func:`~sam3_ops.core.queries.sanitize_boxes` decides.
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


def box_of(detection) -> list:
    """A detection's relative ``[x, y, w, h]`` box as floats, NaNs where it has none (a bad box is
    then refused by name by :func:`~sam3_ops.core.queries.sanitize_boxes`)."""
    box = getattr(detection, "bounding_box", None)
    try:
        return [float(v) for v in box] if box is not None and len(box) == 4 else [np.nan] * 4
    except (TypeError, ValueError):
        return [np.nan] * 4


def _usable_boxes(detections: list, width: int, height: int, what: str) -> tuple[np.ndarray, list[int], str | None]:
    """The pixel ``xyxy`` boxes of ``detections`` that can be used (clipped to the image), the
    indexes of their detections, and a warning naming the ``what`` boxes dropped (``None``: none)."""
    boxes, keep = sanitize_boxes(relative_to_xyxy([box_of(d) for d in detections], width, height), width, height)
    return boxes, keep, describe_box_problems(len(detections), len(keep), what)


def prompts_from_detections(
    prompt_detections: fol.Detections | None,
    negative_detections: fol.Detections | None,
    width: int,
    height: int,
    texts: Sequence[str] = (),
    mode: str = "text",
) -> tuple[ImagePrompts, list[str | None], list[str]]:
    """Builds one image's :class:`~sam3_ops.core.queries.ImagePrompts` from Detections fields.

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

    pos_boxes, pos_keep, pos_warning = _usable_boxes(positives, width, height, "prompt")
    neg_boxes, _, neg_warning = _usable_boxes(negatives, width, height, "negative")
    kept = [positives[i] for i in pos_keep]
    prompts = ImagePrompts(
        texts=tuple(texts),
        boxes=pos_boxes,
        box_labels=tuple(d.label for d in kept),
        negative_boxes=neg_boxes,
    )
    return prompts, [d.id for d in kept], [warning for warning in (pos_warning, neg_warning) if warning]


#: per-point positive/negative labels on a ``Keypoint``, FiftyOne's convention for SAM prompts
POINT_LABEL_ATTRS = ("sam_labels", "sam2_labels")
#: a prompt ``Keypoint`` with this attribute refines the detection with that id (its cached mask)
REFINES_ATTR = "sam3_refines"
#: ... and this one holds that detection's relative box, used when its mask is no longer cached
REFINES_BOX_ATTR = "sam3_box"


def point_labels(keypoint, count: int) -> tuple[np.ndarray | None, str | None]:
    """A keypoint's (or any label's) per-point labels from :data:`POINT_LABEL_ATTRS` (all 1 when it
    has none), or ``(None, why not)``."""
    for name in POINT_LABEL_ATTRS:
        value = keypoint.get_field(name) if keypoint.has_field(name) else None
        if value is None:
            continue
        try:
            labels = np.asarray(list(value), dtype=np.float64)
        except (TypeError, ValueError):
            return None, f"its {name} ({value!r}) is not a list of 0/1"
        if len(labels) != count:
            return None, f"it has {count} points but {len(labels)} {name}"
        if not np.isin(labels, (0, 1)).all():
            return None, f"its {name} must be 1 (positive) or 0 (negative), not {sorted(set(labels.tolist()))}"
        return labels.astype(np.int64), None
    return np.ones(count, np.int64), None


def _object_from_keypoint(keypoint, width: int, height: int, image_key) -> tuple[ObjectPrompt | None, list[str]]:
    """One keypoint object as an :class:`ObjectPrompt` (pixel points), or ``None``, with warnings."""
    name = f"keypoint {keypoint.label!r}" if keypoint.label else "a keypoint"
    try:
        points = np.asarray(keypoint.points if keypoint.points is not None else [], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None, [f"skipped {name}: its points are not [x, y] pairs"]
    labels, problem = point_labels(keypoint, len(points))
    if problem:
        return None, [f"skipped {name}: {problem}"]
    visible = np.isfinite(points).all(axis=1)  # NaN: FiftyOne's "not visible"
    inside = visible & (points >= 0).all(axis=1) & (points <= 1).all(axis=1)
    warnings = []
    if (~inside).any():
        warnings.append(
            f"dropped {int((~inside).sum())} of {len(points)} points of {name}: not visible (NaN) or outside the image"
        )
    points, labels = points[inside], labels[inside]
    if not (labels == 1).any():
        return None, [*warnings, f"skipped {name}: no positive point to segment from"]
    box, key = None, None
    if keypoint.has_field(REFINES_ATTR) and keypoint.get_field(REFINES_ATTR):
        key = (image_key, str(keypoint.get_field(REFINES_ATTR)))
        if keypoint.has_field(REFINES_BOX_ATTR) and keypoint.get_field(REFINES_BOX_ATTR) is not None:
            box = relative_to_xyxy([keypoint.get_field(REFINES_BOX_ATTR)], width, height)[0]
            box, kept = sanitize_boxes(box[None], width, height)
            box = box[0] if len(kept) else None
    scaled = (points * [width, height]).astype(np.float32)
    return ObjectPrompt(keypoint.label, scaled, labels, box=box, mask_key=key), warnings


def prompts_from_keypoints(
    keypoints, negative_detections, width: int, height: int, image_key=None
) -> tuple[ImagePrompts, list[str | None], list[str]]:
    """Builds one image's ``points``-mode :class:`~sam3_ops.core.queries.ImagePrompts` from a
    ``Keypoints`` field: one prompt object per ``Keypoint``.

    Each keypoint's points are relative ``[x, y]``; their positive (1) / negative (0) labels come
    from its ``sam_labels`` (or ``sam2_labels``) list, FiftyOne's convention, all positive without
    one. NaN points (not visible) and points outside the image are dropped; a keypoint whose labels
    do not fit its points, or with no positive point left, is skipped; each with a warning.

    Args:
        keypoints: the prompt field's value (``fo.Keypoints`` or ``None``)
        negative_detections: the negative field's value (boxes whose centres become negative points)
        width, height: the image size in pixels
        image_key (None): the image's key, with which a keypoint that refines a detection
            (:data:`REFINES_ATTR`) names that detection's cached mask

    Returns:
        ``(prompts, prompt_ids, warnings)``: ``prompt_ids[i]`` is the id of the keypoint that
        became prompt object ``i``
    """
    objects, ids, warnings = [], [], []
    for keypoint in keypoints.keypoints if keypoints is not None else []:
        obj, notes = _object_from_keypoint(keypoint, width, height, image_key)
        warnings += notes
        if obj is not None:
            objects.append(obj)
            ids.append(keypoint.id)
    negatives = list(negative_detections.detections) if negative_detections is not None else []
    neg_boxes, _, neg_warning = _usable_boxes(negatives, width, height, "negative")
    if neg_warning:
        warnings.append(neg_warning)
    return ImagePrompts(objects=tuple(objects), negative_boxes=neg_boxes), ids, warnings


def to_detections(segmentation: ImageSegmentation, prompt_ids: Sequence[str | None] | None = None) -> fol.Detections:
    """The engine's hits on one image as ``fo.Detections`` (an empty one for no hits).

    Each Detection: ``label`` (the prompt or the prompt box's label), relative ``bounding_box``
    clipped to [0, 1], ``mask`` (bool, exactly the box), ``confidence`` (the SAM3 score); for hits
    that answer a prompt box or keypoint, ``prompt_id`` (its id); with ``multimask="all"``,
    ``mask_rank`` (0 = the most confident of the prompt's three masks).
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
        if len(segmentation.mask_rank) and segmentation.mask_rank[i] >= 0:
            detection["mask_rank"] = int(segmentation.mask_rank[i])
        detections.append(detection)
    return fol.Detections(detections=detections)


# -- videos ------------------------------------------------------------------------------------------


@dataclass
class _PromptObject:
    frame_number: int
    index: int | None
    label: str | None
    prompt_id: str
    box: tuple | None = None
    points: tuple | None = None
    point_labels: tuple | None = None


def video_prompts(
    prompt_frames: Iterable[tuple[int, object]], mode: str, width: int, height: int, max_objects: int
) -> tuple[list[VideoPrompt], dict[int, str], list[str]]:
    """The tracker prompts of one video from its prompt field's values.

    Args:
        prompt_frames: ``(frame_number, labels)`` of the frames holding prompts: ``Detections``
            (``boxes`` mode) or ``Keypoints`` (``points`` mode)
        mode: ``"boxes"`` or ``"points"``
        width, height: the video's frame size in pixels
        max_objects: the most objects to track: the first ones (by frame, then position) are kept

    Returns:
        ``(prompts, prompt_ids, warnings)``: one :class:`~sam3_ops.core.video.VideoPrompt` per
        prompt object and frame (``prompt_id`` = the instance's index); per index, the id of its
        prompt on its first frame; what was dropped and why

    Raises:
        ValueError: a frame's value is not of the mode's label type
    """
    kind, attribute = ("Detections", "detections") if mode == "boxes" else ("Keypoints", "keypoints")
    objects: list[_PromptObject] = []
    warnings: list[str] = []
    for frame_number, labels in sorted(prompt_frames, key=lambda item: item[0]):
        if labels is None:
            continue
        if not hasattr(labels, attribute):
            raise ValueError(
                f"prompt_field must hold {kind} in {mode} mode; frame {frame_number} holds {type(labels).__name__}"
            )
        if mode == "boxes":
            detections = list(labels.detections)
            boxes, keep, message = _usable_boxes(detections, width, height, "prompt")
            if message:
                warnings.append(f"frame {frame_number}: {message}")
            for box, i in zip(boxes, keep):
                d = detections[i]
                objects.append(_PromptObject(frame_number, _index(d), d.label, d.id, box=tuple(map(float, box))))
        else:
            image_prompts, ids, notes = prompts_from_keypoints(labels, None, width, height)
            warnings += [f"frame {frame_number}: {note}" for note in notes]
            by_id = {keypoint.id: keypoint for keypoint in labels.keypoints}
            for obj, keypoint_id in zip(image_prompts.objects, ids):
                objects.append(
                    _PromptObject(
                        frame_number,
                        _index(by_id[keypoint_id]),
                        obj.label,
                        keypoint_id,
                        points=tuple((float(x), float(y)) for x, y in obj.points),
                        point_labels=tuple(int(v) for v in obj.point_labels),
                    )
                )
    given = [o.index for o in objects if o.index is not None]
    next_index = max(given, default=-1) + 1
    for obj in objects:
        if obj.index is None:
            obj.index, next_index = next_index, next_index + 1
    order = list(dict.fromkeys(o.index for o in objects))
    if len(order) > max_objects:
        warnings.append(
            f"{len(order)} prompt objects but max_objects={max_objects}: tracking the first {max_objects} "
            f"(indexes {order[:max_objects]}), not {order[max_objects:]}; raise max_objects to track them all"
        )
        kept = set(order[:max_objects])
        objects = [o for o in objects if o.index in kept]
    prompt_ids: dict[int, str] = {}
    for obj in objects:
        prompt_ids.setdefault(obj.index, obj.prompt_id)
    prompts = [
        VideoPrompt(o.frame_number, o.index, o.label, box_xyxy=o.box, points=o.points, point_labels=o.point_labels)
        for o in objects
    ]
    return prompts, prompt_ids, warnings


def _index(label) -> int | None:
    value = getattr(label, "index", None)
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else None


def frame_detections(result: FrameResult, prompt_ids: dict | None = None) -> fol.Detections:
    """One frame's tracked instances as ``fo.Detections`` (an empty one for none).

    Each Detection: ``label``, relative ``bounding_box`` clipped to [0, 1], ``mask`` (bool,
    exactly the box), ``confidence`` (for text prompts the score the instance was detected with;
    for box / point prompts the tracker's probability that it is on this frame), ``index`` (the
    instance's id, constant across frames) and, for box / point prompts, ``prompt_id``.
    """
    height, width = result.image_size
    detections = []
    for i, obj in enumerate(result.object_ids):
        detection = fol.Detection(
            label=result.labels[i],
            bounding_box=xyxy_to_relative(result.boxes_xyxy[i], width, height),
            mask=np.ascontiguousarray(result.masks[i], dtype=bool),
            confidence=float(result.scores[i]),
            index=int(obj),
        )
        if prompt_ids is not None:
            detection["prompt_id"] = prompt_ids.get(obj)
        detections.append(detection)
    return fol.Detections(detections=detections)
