"""Point refinement of one SAM3 detection: the click flow of the refinement panel.

A curator picks one detection of a SAM3 field (a label selected in the App) and clicks positive
("this is the object") and negative ("not this") points on the image; SAM3's tracker re-segments
that one object from the points and its current mask, as SAM's interactive segmentation does.

- **The points**: drawn in the App's annotation mode into a scratch field, selected keypoints or
  polylines, typed pixel coordinates (:mod:`sam3_ops.curation.click_input`).
- **The run**: the field's recorded run in ``points`` mode (its model, device, mask threshold and
  limits kept; one mask per object), through the one inference path
  (:func:`~sam3_ops.curation.proposals.run_proposal` with the prompt keypoint given in memory). The keypoint
  names the detection (``sam3_refines``), so the engine starts from that detection's cached
  low-resolution mask logits; when they are not cached (the field was written by another
  process), from its box (``sam3_box``). The image's features are cached too: a further click
  on the same image costs no image-encoder work.
- **The proposal**: the field with that detection replaced by the refined one (same label, tags and
  ``prompt_id``; the other detections untouched, ids included), in the preview field, with a
  record of kind ``"points"``. Accept, undo and discard are :mod:`sam3_ops.curation.proposals`'.

Ids: the refined detection keeps the id SAM3 wrote it with, under which its logits are cached, and
accepting moves the proposal's detections into the field as they are, so the next click on it
starts from its mask. Each record's ``replaced`` map (earlier id -> the id that replaced it) lets
a selection made before a refinement still name the object. Refining again while a point proposal
is pending builds on that proposal (several objects may be refined before one accept); a pending
box proposal is superseded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fiftyone.core.labels as fol
import numpy as np

from ..sdk.convert import REFINES_ATTR, REFINES_BOX_ATTR
from ..sdk.settings import Sam3Settings
from .click_input import CLICKS_FIELD, PointSpec, points_for_sample, points_of_label
from .proposals import (
    Kind,
    Ledger,
    Record,
    RefineError,
    Status,
    count_per_prompt,
    ensure_refinement_fields,
    get_sample,
    image_size_of,
    preview_field_name,
    proposal_model,
    run_proposal,
    settings_for_here,
    validate_field,
)
from .refine import find_selected_label

#: how a refinement started: from the detection's cached mask logits, or from its box
FROM_MASK, FROM_BOX = "previous mask", "box"


def pending_point_samples(dataset, sample_ids: Iterable[str], field_name: str | None) -> list[str]:
    """The samples among ``sample_ids`` whose pending proposal of ``field_name`` is a point proposal."""
    if not field_name:
        return []
    return [i for i in dict.fromkeys(sample_ids) if _pending_points(get_sample(dataset, i), field_name) is not None]


# -- the selection --------------------------------------------------------------------------------


def is_object_selection(selection: dict, field_name: str | None) -> bool:
    """Whether an App selection is in the SAM3 field ``field_name`` or its preview: a candidate
    object to refine (read from the field names alone, without loading anything)."""
    return bool(field_name) and selection.get("field") in (field_name, preview_field_name(field_name))


def resolve_click_selection(
    dataset, selected_labels: Iterable[dict], field_name: str | None, strict: bool = True
) -> tuple[list[dict], list[dict]]:
    """Splits the App's selected labels into the objects to refine and the point labels.

    Args:
        dataset: the dataset
        selected_labels: ``ctx.selected_labels``
        field_name: the SAM3 field
        strict (True): raise on a selection that is neither; ``False`` skips it (to show what a
            refinement would use while other labels are selected for the box flow)

    Returns:
        ``(objects, point_labels)``: objects are the selected detections of ``field_name`` (or of
        its preview field) as targets (see :func:`choose_object`); point labels the selected
        ``Keypoint`` / ``Polyline`` labels of any field, as for :class:`PointSpec`

    Raises:
        RefineError: with ``strict``, a selected label that is neither (a detection of another
            field, a classification...), a video frame label, or one that no longer exists
    """
    objects, points = [], []
    for selection in selected_labels or ():
        try:
            label = find_selected_label(dataset, selection)
            if is_object_selection(selection, field_name) and isinstance(label, fol.Detection):
                objects.append(_target(selection["sample_id"], selection["label_id"], field_name))
            elif isinstance(label, fol.Keypoint | fol.Polyline):
                relative, values = points_of_label(label)
                ref = {k: selection.get(k) for k in ("sample_id", "field", "label_id")} | {"label": label.label}
                points.append(ref | {"points": relative.tolist(), "point_labels": values.tolist()})
            else:
                raise RefineError(_not_a_click(label, selection.get("field"), field_name))
        except RefineError:
            if strict:
                raise
    return objects, points


def _not_a_click(label, where: str | None, field_name: str | None) -> str:
    if isinstance(label, fol.Detection):
        return (
            f"The selected detection {label.label!r} in '{where}' is not a detection of the SAM3 field "
            f"'{field_name}': points refine one detection SAM3 wrote (boxes of other fields are used with "
            "'Refine with boxes'); deselect it"
        )
    return (
        f"The selected label in '{where}' is a {type(label).__name__}: select one detection of '{field_name}' "
        "and, as points, keypoints or polylines"
    )


def _target(sample_id: str, label_id: str, field_name: str, origin_id: str | None = None) -> dict:
    """An object to refine: its sample, its id now, the id first selected, and the SAM3 field."""
    return {"sample_id": sample_id, "label_id": label_id, "origin_id": origin_id or label_id, "field_name": field_name}


def choose_object(objects: list[dict], remembered: dict | None, field_name: str | None, sample_id: str | None) -> dict:
    """The one object to refine: the selected detection of the SAM3 field, else the one remembered
    from an earlier selection or refinement when it is on ``sample_id``, the open sample (with no
    sample open, never: accept and undo act on the open or selected samples, which may be others).

    Raises:
        RefineError: several selected, or none selected or remembered
    """
    if len(objects) > 1:
        raise RefineError(
            f"{len(objects)} detections of '{field_name}' are selected: select the one detection to refine with points"
        )
    if objects:
        return objects[0]
    if (
        remembered
        and remembered.get("field_name") == field_name
        and sample_id
        and sample_id == remembered.get("sample_id")
    ):
        return remembered
    raise RefineError(f"Select the detection to refine: click one detection of '{field_name}' in the sample")


def next_target(target: dict, outcome: ClickOutcome) -> dict:
    """The object to remember after a refinement: the refined detection, same origin."""
    return _target(outcome.sample_id, outcome.result_id, outcome.field, target.get("origin_id"))


# -- the object and its proposal ------------------------------------------------------------------


def current_id(sample, field_name: str, label_id: str) -> str:
    """The id ``label_id`` has now, following the ``replaced`` maps of the field's pending and
    accepted point refinements (oldest first); ``label_id`` itself if none replaced it."""
    for record in Ledger(sample).of_field(field_name, Status.PROPOSED, Status.ACCEPTED):
        label_id = (record.details.get("replaced") or {}).get(label_id, label_id)
    return label_id


def _pending_points(sample, field_name: str) -> Record | None:
    """The field's pending proposal when it is a point proposal (one to build on), else ``None``."""
    record = Ledger(sample).last(field_name, Status.PROPOSED)
    preview = preview_field_name(field_name)
    if record is None or record.kind != Kind.POINTS or not sample.has_field(preview) or sample[preview] is None:
        return None
    return record


def locate_object(sample, field_name: str, label_ids: Sequence[str]) -> tuple[fol.Detections, fol.Detection]:
    """The detections a new proposal starts from and the object in them.

    The base is the pending point proposal if there is one, else the field; the object is the first
    of ``label_ids`` found there once mapped through :func:`current_id`.

    Raises:
        RefineError: none of ``label_ids`` is in the base any longer
    """
    pending = _pending_points(sample, field_name)
    base = sample[preview_field_name(field_name)] if pending else sample[field_name]
    by_id = {detection.id: detection for detection in (base.detections if base is not None else [])}
    for label_id in label_ids:
        found = by_id.get(current_id(sample, field_name, label_id))
        if found is not None:
            return base, found
    raise RefineError(
        f"The detection to refine is no longer in '{field_name}' (it was replaced, removed, or is part of a pending "
        "box proposal): select it again in the sample"
    )


def _prompt_keypoint(detection: fol.Detection, points_px: np.ndarray, values: np.ndarray, width: int, height: int):
    """The in-memory prompt: the clicks, naming the detection whose mask they refine."""
    return fol.Keypoint(
        label=detection.label,
        points=(points_px.astype(np.float64) / [width, height]).tolist(),
        sam_labels=[int(v) for v in values],
        **{REFINES_ATTR: detection.id, REFINES_BOX_ATTR: [float(v) for v in detection.bounding_box]},
    )


def _compose(base: fol.Detections, detection: fol.Detection, refined: fol.Detection) -> fol.Detections:
    """``base`` with ``detection`` replaced by ``refined`` in place: same label, tags and
    ``prompt_id``; ``refined`` keeps its own id (the key of its cached mask logits)."""
    refined.label = detection.label
    refined.tags = list(detection.tags or [])
    prompt_id = detection.get_field("prompt_id") if detection.has_field("prompt_id") else None
    if prompt_id is not None:
        refined["prompt_id"] = prompt_id
    elif refined.has_field("prompt_id"):
        del refined["prompt_id"]  # the in-memory keypoint's id: it names nothing in the dataset
    return fol.Detections(detections=[refined if d.id == detection.id else d for d in base.detections])


def points_settings(settings: Sam3Settings) -> Sam3Settings:
    """The run settings of a point refinement: the recorded run's, in ``points`` mode, with no text
    prompts or prompt fields (the prompt is given in memory) and one mask per object."""
    return settings.replace(mode="points", prompts=(), prompt_field=None, negative_field=None, multimask=None)


# -- planning -------------------------------------------------------------------------------------


@dataclass
class ClickPlan:
    """What a point refinement would refine, and with which points (checked; nothing run).

    Attributes:
        sample: the sample
        width, height: its image's size in pixels
        base: the detections the proposal starts from (the pending point proposal, else the field)
        detection: the object, in ``base``
        points_px, point_labels, sources: the clicks (see :func:`points_for_sample`)
        replaced: the ``replaced`` map of the pending point proposal that ``base`` is (or ``{}``)
    """

    sample: object
    width: int
    height: int
    base: fol.Detections
    detection: fol.Detection
    points_px: np.ndarray
    point_labels: np.ndarray
    sources: list
    replaced: dict


def plan_clicks(dataset, field_name: str, target: dict, points: PointSpec) -> ClickPlan:
    """Finds the object and reads its clicks, writing nothing (what the panel shows before a run).

    Raises:
        RefineError: an unknown sample, an unreadable image, an object no longer there, a bad
            points field or label, a point outside the image
    """
    sample, width, height = _sample_and_size(dataset, target.get("sample_id"))
    base, detection = locate_object(sample, field_name, [target.get("label_id"), target.get("origin_id")])
    points_px, values, sources = points_for_sample(points, sample, width, height)
    pending = _pending_points(sample, field_name)
    replaced = dict((pending.details.get("replaced") if pending else None) or {})
    return ClickPlan(sample, width, height, base, detection, points_px, values, sources, replaced)


def clicks_of_sample(dataset, sample_id: str, points: PointSpec) -> tuple[np.ndarray, list]:
    """The clicks of ``points`` on a sample, before an object is chosen: their 1/0 labels and
    sources (see :func:`points_for_sample`).

    Raises:
        RefineError: as :func:`plan_clicks`, the object aside
    """
    sample, width, height = _sample_and_size(dataset, sample_id)
    _, values, sources = points_for_sample(points, sample, width, height)
    return values, sources


def _sample_and_size(dataset, sample_id: str) -> tuple:
    """``(sample, width, height)``."""
    sample = get_sample(dataset, sample_id)
    return (sample, *image_size_of(sample))


# -- running --------------------------------------------------------------------------------------


@dataclass
class ClickOutcome:
    """What one point refinement produced (already written to the preview field).

    ``object_id`` is the detection refined, ``result_id`` the detection that replaces it;
    ``started_from`` is :data:`FROM_MASK` or :data:`FROM_BOX`.
    """

    field: str
    preview_field: str
    sample_id: str
    label: str | None
    object_id: str
    result_id: str
    positives: int
    negatives: int
    started_from: str
    before: dict
    after: dict
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: the object, the points, and what the refinement started from."""
        return (
            f"`{self.label}` refined with {self.positives} positive and {self.negatives} negative point(s), "
            f"starting from its {self.started_from}"
        )


def refine_with_points(dataset, field_name: str | None, target: dict, points: PointSpec, token=None) -> ClickOutcome:
    """Refines one detection of a SAM3 field with positive and negative points into a proposal.

    Args:
        dataset: the dataset
        field_name: the SAM3 field (written by a recorded run)
        target: the object (:func:`choose_object`): ``sample_id`` and ``label_id``, and optionally
            ``origin_id`` (the id first selected, tried when ``label_id`` is gone: after an undo)
        points: the clicks (:class:`PointSpec`); at least one positive
        token (None): a Hugging Face token for a gated model

    Returns:
        a :class:`ClickOutcome`

    Raises:
        RefineError: bad input (no field or run, no object, no points or no positive one, a point
            outside the image, an unreadable image), a model that cannot be loaded, or no mask;
            nothing is written then
    """
    settings, notes = settings_for_here(validate_field(dataset, field_name).settings)
    plan = plan_clicks(dataset, field_name, target, points)
    sample, detection, values = plan.sample, plan.detection, plan.point_labels
    _check_clicks(values)
    pending = Ledger(sample).last(field_name, Status.PROPOSED)
    if pending is not None and pending.kind != Kind.POINTS:
        notes.append("The pending box proposal was replaced by this one")
    keypoint = _prompt_keypoint(detection, plan.points_px, values, plan.width, plan.height)
    refined, started_from = _run(dataset, sample, field_name, points_settings(settings), keypoint, token)
    proposal = _compose(plan.base, detection, refined)
    outcome = ClickOutcome(
        field=field_name,
        preview_field=preview_field_name(field_name),
        sample_id=sample.id,
        label=detection.label,
        object_id=detection.id,
        result_id=refined.id,
        positives=int((values == 1).sum()),
        negatives=int((values == 0).sum()),
        started_from=started_from,
        before=count_per_prompt(sample[field_name], settings.labels),
        after=count_per_prompt(proposal, settings.labels),
        notes=notes,
    )
    details = _details(settings, plan, outcome, _replaced(plan.replaced, detection.id, refined.id))
    sample[outcome.preview_field] = proposal
    ledger = Ledger(sample)
    ledger.propose(field_name, Kind.POINTS, details)
    ledger.save()
    return outcome


def _check_clicks(values: np.ndarray) -> None:
    """Raises :class:`RefineError` for clicks a refinement cannot start from: none, or no positive one."""
    if not len(values):
        raise RefineError(
            f"No points: draw clicks in '{CLICKS_FIELD}' (the sample's Annotate tab, polyline tool), select "
            "keypoints or polylines, or type pixel points"
        )
    if not (values == 1).any():
        raise RefineError("No positive point: add at least one point on the object (only negative points were given)")


def _run(dataset, sample, field_name: str, settings: Sam3Settings, keypoint, token) -> tuple[fol.Detection, str]:
    """Runs the prompt keypoint into the preview field; returns the refined detection and what it
    started from. On failure the preview field is put back as it was."""
    preview = preview_field_name(field_name)
    ensure_refinement_fields(dataset, field_name)
    previous = sample[preview]
    prompts = {sample.id: {"prompt_field": fol.Keypoints(keypoints=[keypoint]), "negative_field": None}}
    model = proposal_model(settings, prompts, token)
    started_from = FROM_MASK if model.has_cached_mask(sample.filepath, keypoint.get_field(REFINES_ATTR)) else FROM_BOX
    run_proposal(dataset, model, [sample.id], field_name)
    sample.reload()
    result = sample[preview]
    if result is None or not result.detections:
        sample[preview] = previous
        sample.save()
        reason = model.failures[0].reason if model.failures else "SAM3 found no mask for these points"
        raise RefineError(f"The detection could not be refined: {reason}. Nothing was written")
    return result.detections[0], started_from


def _replaced(previous: dict, object_id: str, result_id: str) -> dict:
    """The new record's ``replaced`` map: the pending point proposal's (``previous``), where every
    id that named the object now names the refined detection, plus the object's own id."""
    replaced = {old: (result_id if new == object_id else new) for old, new in previous.items()}
    replaced[object_id] = result_id
    return replaced


def _details(settings: Sam3Settings, plan: ClickPlan, outcome: ClickOutcome, replaced: dict) -> dict:
    """What a point proposal's record keeps: the run, the object, the clicks and the counts."""
    return {
        "model_path": settings.model_path,
        "mode": "points",
        "prompts": settings.labels,
        "mask_threshold": settings.mask_threshold,
        "image_size": [plan.height, plan.width],
        "label": outcome.label,
        "object_id": outcome.object_id,
        "result_id": outcome.result_id,
        "started_from": outcome.started_from,
        "replaced": replaced,
        "before": outcome.before,
        "after": outcome.after,
        "points": plan.points_px.round(2).tolist(),
        "point_labels": [int(v) for v in plan.point_labels],
        "point_sources": plan.sources,
    }
