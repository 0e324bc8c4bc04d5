"""Where the clicks of a point refinement (:mod:`sam3_ops.curation.clicks`) come from, and the
scratch field the App draws them in.

- The labels of a scratch field drawn in the App's annotation mode (:data:`CLICKS_FIELD`, a
  ``Polylines`` field: every vertex is a point, the label ``positive`` or ``negative`` says which;
  FiftyOne 1.22's annotation mode draws classifications, boxes, masks and polylines, not
  keypoints): :func:`setup_clicks_field` prepares it, :func:`clear_clicks` empties it.
- Selected ``Keypoints`` / ``Polylines`` labels of any field, and pixel coordinates typed in the
  panel (:class:`PointSpec`).

A label's ``sam_labels`` (FiftyOne's convention for SAM prompts) gives per-point labels; without one
its ``label`` does (:data:`NEGATIVE_CLICK_LABELS`). Points are checked strictly
(:func:`check_points`): a click the curator made that cannot be used is a mistake to report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import numpy as np

from ..sdk.convert import POINT_LABEL_ATTRS, point_labels
from ..sdk.fields import label_fields
from .proposals import RefineError, get_sample

#: the scratch field the App's annotation mode draws clicks into (a ``Polylines`` field)
CLICKS_FIELD = "sam3_clicks"
#: the classes of the scratch field's label schema: what a drawn click is
CLICK_CLASSES = ("positive", "negative")
#: labels that make a click label's points negative; any other label (or none) is positive
NEGATIVE_CLICK_LABELS = frozenset({"negative", "neg", "-", "background", "bg"})


# -- points ---------------------------------------------------------------------------------------


@dataclass
class PointSpec:
    """Where a refinement's points come from.

    Attributes:
        labels: selected point labels (see :func:`resolve_click_selection`): dicts with
            ``sample_id``, ``field``, ``label_id``, ``label``, relative ``points`` and
            ``point_labels`` (1 positive, 0 negative); each applies to its own sample only
        field: a ``Polylines`` or ``Keypoints`` field whose labels on the sample are clicks (the
            scratch field :data:`CLICKS_FIELD`), or ``None``
        positive_px, negative_px: ``(N, 2)`` pixel ``xy`` points typed by the curator
    """

    labels: list[dict] = dataclasses.field(default_factory=list)
    field: str | None = None
    positive_px: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))
    negative_px: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))

    def __post_init__(self):
        self.labels = list(self.labels or [])
        self.field = self.field or None
        self.positive_px = np.asarray(self.positive_px, dtype=np.float32).reshape(-1, 2)
        self.negative_px = np.asarray(self.negative_px, dtype=np.float32).reshape(-1, 2)


def click_fields(dataset) -> list[str]:
    """The fields that can hold clicks: the dataset's ``Polylines`` and ``Keypoints`` fields."""
    return sorted({*label_fields(dataset, fol.Polylines), *label_fields(dataset, fol.Keypoints)})


def points_of_label(label) -> tuple[np.ndarray, np.ndarray]:
    """The clicks of one ``Keypoint`` or ``Polyline``: relative ``(N, 2)`` points (every vertex of
    every shape of a polyline) and their labels, 1 positive / 0 negative. NaN points (FiftyOne's
    "not visible") are left out.

    Raises:
        RefineError: ``sam_labels`` (or ``sam2_labels``) that do not fit the points
    """
    raw = label.points or []
    shapes = raw if isinstance(label, fol.Polyline) else [raw]
    vertices = [vertex for shape in shapes for vertex in (shape or [])]
    try:
        points = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise RefineError(f"The points of {_describe_label(label)} are not [x, y] pairs") from None
    if any(label.has_field(name) and label.get_field(name) is not None for name in POINT_LABEL_ATTRS):
        values, problem = point_labels(label, len(points))
        if problem:
            raise RefineError(f"Cannot use {_describe_label(label)}: {problem}")
    else:
        negative = str(label.label or "").strip().lower() in NEGATIVE_CLICK_LABELS
        values = np.full(len(points), 0 if negative else 1, np.int64)
    visible = np.isfinite(points).all(axis=1)
    return points[visible], values[visible]


def _describe_label(label) -> str:
    return f"{type(label).__name__} {label.label!r}" if label.label else f"a {type(label).__name__}"


def check_points(points_px: np.ndarray, width: int, height: int, names: Sequence[str]) -> None:
    """Checks pixel points against a ``width x height`` image (strict: a click the curator made
    that cannot be used is a mistake to report, not to drop).

    Raises:
        RefineError: a point that is not finite or lies outside the image, named by ``names``
    """
    for name, (x, y) in zip(names, np.asarray(points_px, dtype=np.float64).reshape(-1, 2)):
        shown = f"[{x:g}, {y:g}]"
        if not (np.isfinite(x) and np.isfinite(y)):
            raise RefineError(f"{name} {shown} has a coordinate that is not a finite number")
        if not (0 <= x <= width and 0 <= y <= height):
            raise RefineError(
                f"{name} {shown} lies outside the image ({width} x {height} pixels; points are 'x, y' in pixels)"
            )


def points_for_sample(spec: PointSpec, sample, width: int, height: int) -> tuple[np.ndarray, np.ndarray, list]:
    """The clicks of ``spec`` on ``sample``: pixel ``(N, 2)`` points, their 1/0 labels, and where
    they came from (one entry per label or kind of typed point, with its count).

    Raises:
        RefineError: a points field that is not ``Polylines`` / ``Keypoints``, labels whose
            ``sam_labels`` do not fit, or a point outside the image (naming it)
    """
    chosen, sources, seen = [], [], set()  # chosen: (pixel points, labels, a name per point)
    scale = np.array([width, height], np.float64)
    for ref in spec.labels:
        if ref.get("sample_id") == sample.id and ref["label_id"] not in seen:
            seen.add(ref["label_id"])
            values = np.asarray(ref["point_labels"], np.int64)
            name = f"A point of the selected label {ref.get('label')!r} in '{ref.get('field')}'"
            chosen.append((np.asarray(ref["points"], np.float64).reshape(-1, 2) * scale, values, [name] * len(values)))
            sources.append({"source": "label", **{k: ref.get(k) for k in ("field", "label_id", "label")}})
    for label in _field_labels(sample, spec.field):
        if label.id not in seen:
            seen.add(label.id)
            points, values = points_of_label(label)
            name = f"A point of {label.label or 'a label'!r} in '{spec.field}'"
            chosen.append((points * scale, values, [name] * len(values)))
            sources.append({"source": "field", "field": spec.field, "label_id": label.id, "label": label.label})
    for typed, value, kind in ((spec.positive_px, 1, "Positive"), (spec.negative_px, 0, "Negative")):
        if len(typed):
            names = [f"{kind} point {i + 1}" for i in range(len(typed))]
            chosen.append((typed.astype(np.float64), np.full(len(typed), value, np.int64), names))
            sources.append({"source": "typed", "label": kind.lower()})
    for source, (_, values, _) in zip(sources, chosen):
        source["points"] = len(values)
    points = np.concatenate([c[0] for c in chosen]) if chosen else np.zeros((0, 2))
    values = np.concatenate([c[1] for c in chosen]) if chosen else np.zeros(0, np.int64)
    check_points(points, width, height, [name for c in chosen for name in c[2]])
    return points.astype(np.float32), values.astype(np.int64), sources


def _field_labels(sample, field_name: str | None) -> list:
    """The click labels (``Keypoint`` / ``Polyline``) a points field holds on ``sample``."""
    if not field_name:
        return []
    if not sample.has_field(field_name):
        raise RefineError(f"The points field '{field_name}' does not exist: set up the click field, or choose another")
    value = sample[field_name]
    if value is None:
        return []
    if not isinstance(value, fol.Keypoints | fol.Polylines):
        raise RefineError(
            f"The points field '{field_name}' holds {type(value).__name__}, not Polylines or Keypoints: "
            "choose the field the clicks are drawn in"
        )
    return list(value.keypoints if isinstance(value, fol.Keypoints) else value.polylines)


# -- the scratch field ---------------------------------------------------------------------------


def clicks_field_problem(dataset, field_name: str = CLICKS_FIELD) -> str | None:
    """Why the App's annotation mode cannot draw clicks into ``field_name`` yet, or ``None``: the
    field must be a ``Polylines`` field with an active label schema (classes :data:`CLICK_CLASSES`)."""
    if not dataset.has_sample_field(field_name):
        return f"There is no click field '{field_name}' yet"
    if field_name not in label_fields(dataset, fol.Polylines):
        return f"'{field_name}' is not a Polylines field: the annotation mode cannot draw clicks into it"
    if not hasattr(dataset, "label_schemas"):  # FiftyOne before the annotation mode's label schemas
        return "This FiftyOne has no annotation mode to draw clicks with: select keypoints or type points"
    if field_name not in dataset.label_schemas or field_name not in dataset.active_label_schemas:
        return f"'{field_name}' is not active in the annotation mode (it has no active label schema)"
    return None


def setup_clicks_field(dataset, field_name: str = CLICKS_FIELD) -> str:
    """Prepares ``field_name`` for drawing clicks in the App's annotation mode: a ``Polylines``
    field with a label schema of classes :data:`CLICK_CLASSES`, active (first in the list).

    Returns:
        what was done, for the curator

    Raises:
        RefineError: ``field_name`` exists and is not a ``Polylines`` field, or FiftyOne refuses
            the label schema (annotation needs an image dataset)
    """
    if not dataset.has_sample_field(field_name):
        dataset.add_sample_field(field_name, fof.EmbeddedDocumentField, embedded_doc_type=fol.Polylines)
    elif field_name not in label_fields(dataset, fol.Polylines):
        raise RefineError(f"'{field_name}' exists and is not a Polylines field: clicks are drawn as polylines")
    schema = {"type": "polylines", "component": "radio", "classes": list(CLICK_CLASSES)}
    try:
        dataset.update_label_schema(field_name, schema)
        if field_name not in dataset.active_label_schemas:
            dataset.activate_label_schemas(field_name, prepend=True)
    except Exception as error:  # FiftyOne's schema validation raises ValueError or an ExceptionGroup
        raise RefineError(f"FiftyOne refused the label schema of '{field_name}': {error}") from None
    return (
        f"'{field_name}' is ready: in a sample's Annotate tab, pick the polyline tool and click points on the "
        "image (each click is a point), labelled positive or negative"
    )


def clear_clicks(dataset, sample_ids: Iterable[str], field_name: str | None = CLICKS_FIELD) -> list[str]:
    """Removes the clicks drawn in ``field_name`` on the samples; returns the samples that had some.
    (``field_name`` is a scratch field: its labels are the curator's clicks, nothing else.)"""
    if not field_name or not dataset.has_sample_field(field_name):
        return []
    cleared = []
    for sample_id in dict.fromkeys(sample_ids):
        sample = get_sample(dataset, sample_id)
        if sample[field_name] is not None:
            sample[field_name] = None
            sample.save()
            cleared.append(sample_id)
    return cleared
