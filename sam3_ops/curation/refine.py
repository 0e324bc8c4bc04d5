"""Refinement of a SAM3 field with negative and positive boxes: the box flow of the refinement panel.

A curator refines a sample's SAM3 field by re-running the run that wrote it (its settings, read
from the run record: :mod:`sam3_ops.sdk.runs`) with extra negative boxes ("not this") and,
optionally, extra positive example boxes ("more like this"): selected labels, a field of boxes,
or pixel boxes typed in the panel. Everything here takes a dataset and sample ids and returns
results, so it is testable without the App.

:func:`refine_samples` validates everything first (nothing is written on bad input), runs SAM3
into the preview field through :func:`~sam3_ops.curation.proposals.run_proposal` (the image is
keyed by its filepath, so the engine's feature cache spares the image encoder on the next
refinement of the same image) and records a proposal of kind ``"boxes"``: which boxes were used (pixel ``xyxy`` and where they came
from) and the counts per prompt before and after. Accept, undo and discard are
:mod:`sam3_ops.curation.proposals`'.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fiftyone.core.labels as fol
import numpy as np

from ..core.queries import VISUAL_PROMPT
from ..sdk.convert import relative_to_xyxy, xyxy_to_relative
from ..sdk.settings import Sam3Settings
from .proposals import (
    Kind,
    Ledger,
    RefineError,
    Status,
    count_per_prompt,
    detections_fields,
    ensure_refinement_fields,
    get_sample,
    image_size_of,
    preview_field_name,
    proposal_model,
    run_proposal,
    settings_for_here,
    validate_field,
)

# -- boxes --------------------------------------------------------------------------------------


@dataclass
class BoxSpec:
    """Where one kind of box (negative or positive) comes from.

    Attributes:
        labels: resolved labels (see :func:`resolve_selected_labels`): dicts with ``sample_id``,
            ``field``, ``label_id``, ``label`` and relative ``bounding_box``; each applies to its
            own sample only
        field: a Detections field whose boxes (on each sample) are used, or ``None``
        pixel_boxes: ``(N, 4)`` pixel ``xyxy`` boxes typed by the user, used on every target sample
    """

    labels: list[dict] = dataclasses.field(default_factory=list)
    field: str | None = None
    pixel_boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __post_init__(self):
        self.labels = list(self.labels or [])
        self.field = self.field or None
        self.pixel_boxes = np.asarray(self.pixel_boxes, dtype=np.float32).reshape(-1, 4)

    def is_empty(self) -> bool:
        return not self.labels and not self.field and not len(self.pixel_boxes)


def check_boxes(boxes_xyxy: np.ndarray, width: int, height: int, what: str) -> np.ndarray:
    """Checks pixel boxes against an image; returns them clipped to it.

    Strict, unlike :func:`sam3_ops.prompts.sanitize_boxes` (which drops bad boxes quietly): a box
    the user chose that cannot be used is a mistake to report, not to skip.

    Raises:
        RefineError: a box that is not finite, is inverted or has zero area, or lies wholly outside
            the ``width x height`` image, naming the box
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    for i, box in enumerate(boxes):
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        if not np.isfinite(box).all():
            raise RefineError(f"{what} {i + 1} {shown} has a coordinate that is not a finite number")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RefineError(
                f"{what} {i + 1} {shown} is degenerate: x2 must be greater than x1 and y2 greater than y1 "
                "(boxes are 'x1, y1, x2, y2' in pixels)"
            )
        if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            raise RefineError(f"{what} {i + 1} {shown} lies outside the image ({width} x {height} pixels)")
    return boxes.clip(0, [width, height, width, height]).astype(np.float32)


def _is_box_label(label) -> bool:
    return isinstance(label, fol.Detection) and label.bounding_box is not None and len(label.bounding_box) == 4


def find_selected_label(dataset, selection: dict):
    """The label an App selection (``{"sample_id", "field", "label_id"}``) names.

    Raises:
        RefineError: a video frame label, or a label (or sample) that no longer exists
    """
    sample_id, field_name, label_id = selection.get("sample_id"), selection.get("field"), selection.get("label_id")
    if selection.get("frame_number") is not None:
        raise RefineError("Selected video frame labels cannot be used: refinement works on images")
    try:
        sample = dataset[sample_id]
    except (KeyError, ValueError, TypeError):
        raise RefineError(
            f"The selected label {label_id} belongs to sample {sample_id}, which is not in the dataset"
        ) from None
    value = sample.get_field(field_name) if field_name and sample.has_field(field_name) else None
    list_field = getattr(value, "_LABEL_LIST_FIELD", None)  # Detections, Keypoints, Polylines, ...
    if list_field:
        candidates = value.get_field(list_field) or []
    else:
        candidates = [value] if value is not None else []
    found = next((label for label in candidates if getattr(label, "id", None) == label_id), None)
    if found is None:
        raise RefineError(f"The selected label {label_id} is no longer in field '{field_name}' (reload the sample)")
    return found


def resolve_selected_labels(dataset, selected_labels: Iterable[dict]) -> list[dict]:
    """Turns the App's selected labels (``ctx.selected_labels``) into boxes to prompt with.

    Each becomes ``{"sample_id", "field", "label_id", "label", "bounding_box"}``: the box is read
    now, so it stays usable after the label itself is replaced (by an accepted refinement).

    Raises:
        RefineError: a selection that is not a box (a video frame label, a polyline, a
            classification...) or that no longer exists
    """
    resolved = []
    for selection in selected_labels or ():
        sample_id, field_name, label_id = selection.get("sample_id"), selection.get("field"), selection.get("label_id")
        found = find_selected_label(dataset, selection)
        if not _is_box_label(found):
            raise RefineError(
                f"The selected label {label_id} in '{field_name}' is a {type(found).__name__}, not a box: "
                "select detections"
            )
        ref = {"sample_id": sample_id, "field": field_name, "label_id": label_id, "label": found.label}
        resolved.append(ref | {"bounding_box": [float(v) for v in found.bounding_box]})
    return resolved


# -- fields and runs ----------------------------------------------------------------------------


def describe_field(dataset, field_name: str, sample_ids: Sequence[str] = ()) -> dict:
    """What the panel shows about a field: its run's settings and detections per prompt.

    Returns:
        the run's settings (``model_path``, ``mode``, ``prompts`` (the labels), ``threshold``, ...)
        plus ``field``, ``counts`` summed over ``sample_ids``, ``pending`` (the number of those
        samples with a proposal to accept) and ``accepted`` (the number with an accepted
        refinement that can be undone)

    Raises:
        RefineError: as :func:`validate_field`
    """
    settings = validate_field(dataset, field_name).settings
    prompts = settings.labels
    counts: Counter = Counter()
    pending = accepted = 0
    preview = preview_field_name(field_name)
    has_preview = dataset.has_sample_field(preview)
    for sample_id in sample_ids:
        sample = get_sample(dataset, sample_id)
        counts.update(count_per_prompt(sample[field_name], prompts))
        pending += bool(has_preview and sample[preview] is not None)
        accepted += Ledger(sample).last(field_name, Status.ACCEPTED) is not None
    ordered = {p: counts.pop(p, 0) for p in prompts}
    ordered.update(sorted(counts.items()))
    return dict(
        settings.to_dict(), field=field_name, prompts=prompts, counts=ordered, pending=pending, accepted=accepted
    )


# -- planning and running -----------------------------------------------------------------------


@dataclass
class SamplePlan:
    """One sample's refinement, checked and ready to run: the prompts that replace its run's
    prompt fields (the run's own boxes plus the curator's)."""

    sample_id: str
    image_size: tuple[int, int]
    mode: str
    prompt_boxes: fol.Detections | None
    negative_boxes: fol.Detections
    added_negatives: np.ndarray
    negative_sources: list
    added_positives: np.ndarray
    positive_sources: list


@dataclass
class RefineOutcome:
    """What one sample's refinement produced (already written to the preview field)."""

    sample_id: str
    before: dict
    after: dict
    negative_boxes: list
    positive_boxes: list
    detections: fol.Detections


@dataclass
class RefineResult:
    """The result of :func:`refine_samples`."""

    field: str
    preview_field: str
    outcomes: list[RefineOutcome]
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line per sample: ``prompt: before -> after`` counts."""
        lines = []
        for outcome in self.outcomes:
            keys = list(dict.fromkeys([*outcome.before, *outcome.after]))
            counts = ", ".join(f"{k}: {outcome.before.get(k, 0)} → {outcome.after.get(k, 0)}" for k in keys)
            lines.append(f"{outcome.sample_id}: {counts or 'no detections'}")
        return "\n".join(lines)


def _boxes_for_sample(spec: BoxSpec, sample, width: int, height: int, what: str) -> tuple[np.ndarray, list]:
    """The pixel boxes of ``spec`` that apply to ``sample`` and where each came from."""
    boxes, sources = [], []
    for ref in spec.labels:
        if ref.get("sample_id") == sample.id:
            boxes.append(relative_to_xyxy([ref["bounding_box"]], width, height)[0])
            sources.append({"source": "label", **{key: ref.get(key) for key in ("field", "label_id", "label")}})
    if spec.field:
        value = sample[spec.field]
        for detection in value.detections if value is not None else ():
            bounding_box = detection.bounding_box if detection.bounding_box is not None else [np.nan] * 4
            boxes.append(relative_to_xyxy([bounding_box], width, height)[0])
            sources.append({"source": "field", "field": spec.field, "label_id": detection.id, "label": detection.label})
    for box in spec.pixel_boxes:
        boxes.append(np.asarray(box, np.float32))
        sources.append({"source": "typed"})
    stacked = np.asarray(boxes, np.float32).reshape(-1, 4)
    return check_boxes(stacked, width, height, what), sources


def _as_detections(boxes_xyxy: np.ndarray, labels: Sequence, width: int, height: int) -> list:
    return [
        fol.Detection(label=label, bounding_box=xyxy_to_relative(box, width, height))
        for box, label in zip(boxes_xyxy, labels)
    ]


def _check_refinement(dataset, settings: Sam3Settings, negatives: BoxSpec, positives: BoxSpec) -> None:
    """Raises :class:`RefineError` for a refinement that cannot run on a field's recorded run."""
    for name, what in ((negatives.field, "negative-box"), (positives.field, "positive-example")):
        if name and name not in detections_fields(dataset):
            raise RefineError(f"The {what} field '{name}' is not a Detections field of this dataset")
    if settings.mode == "boxes" and not positives.is_empty():
        raise RefineError(
            "This field was made in 'boxes' mode (one mask per prompt box): positive examples apply to "
            "text or exemplar runs; use negative boxes only"
        )
    for key in ("prompt_field", "negative_field"):
        name = getattr(settings, key)
        if name and name not in detections_fields(dataset):
            raise RefineError(
                f"The run that wrote this field used {key} '{name}', which is no longer a Detections field"
            )
    if negatives.is_empty() and positives.is_empty():
        raise RefineError(
            "Add negative boxes first: select the unwanted detections and use them as negatives, pick a field of "
            "negative boxes, or type pixel boxes"
        )


def _plan_sample(sample, settings: Sam3Settings, negatives: BoxSpec, positives: BoxSpec) -> SamplePlan | None:
    """One sample's :class:`SamplePlan`, or ``None`` when no chosen box belongs to it."""
    width, height = image_size_of(sample)
    added_negatives, negative_sources = _boxes_for_sample(negatives, sample, width, height, "Negative box")
    added_positives, positive_sources = _boxes_for_sample(positives, sample, width, height, "Positive example box")
    if not len(added_negatives) and not len(added_positives):
        return None
    prompt_value = sample[settings.prompt_field] if settings.prompt_field else None
    negative_value = sample[settings.negative_field] if settings.negative_field else None
    prompt_boxes = list(prompt_value.detections) if prompt_value is not None else []
    mode = settings.mode
    if len(added_positives):
        # text prompts + examples = exemplar mode with text; examples without a label take the
        # run's first label, so they join the query of what they are examples of
        mode = "exemplars"
        default_label = (
            next((d.label for d in prompt_boxes if d.label is not None), None)
            or (settings.labels or [VISUAL_PROMPT])[0]
        )
        labels = [src.get("label") or default_label for src in positive_sources]
        prompt_boxes += _as_detections(added_positives, labels, width, height)
    negative_boxes = list(negative_value.detections) if negative_value is not None else []
    negative_boxes += _as_detections(added_negatives, [None] * len(added_negatives), width, height)
    return SamplePlan(
        sample_id=sample.id,
        image_size=(height, width),
        mode=mode,
        prompt_boxes=fol.Detections(detections=prompt_boxes) if prompt_value is not None or prompt_boxes else None,
        negative_boxes=fol.Detections(detections=negative_boxes),
        added_negatives=added_negatives,
        negative_sources=negative_sources,
        added_positives=added_positives,
        positive_sources=positive_sources,
    )


def refine_samples(
    dataset,
    sample_ids: Sequence[str],
    field_name: str | None,
    negatives: BoxSpec | None = None,
    positives: BoxSpec | None = None,
    token: str | None = None,
) -> RefineResult:
    """Re-runs a SAM3 field's recorded run on samples with extra negative (and positive) boxes.

    Everything is checked before anything is written. The run's settings are read from its record
    and reproduced exactly (on this machine's best device if the recorded one is not here). The
    proposal goes to the preview field (:func:`preview_field_name`); ``field_name`` itself is not
    touched until :func:`~sam3_ops.curation.proposals.accept_refinement`. The images run through
    ``apply_model`` like any run (batched, with the document guard, the pixel limit and per-sample
    failure isolation).

    Args:
        dataset: the dataset
        sample_ids: the samples to refine (the App's current sample, or its selected samples)
        field_name: the SAM3 field (written by a recorded run)
        negatives (None): the negative boxes (:class:`BoxSpec`)
        positives (None): positive example boxes (:class:`BoxSpec`); they turn a text run into an
            exemplar run with the same prompts
        token (None): a Hugging Face token for a gated model

    Returns:
        a :class:`RefineResult` (its notes name the samples skipped for having no boxes to add)

    Raises:
        RefineError: bad input, saying what is wrong (no sample, no/unknown field, no recorded
            prompts, a bad box, an unreadable image, no boxes at all), a model that cannot be
            loaded, or no sample that could be segmented; nothing is written to ``field_name``
    """
    negatives, positives = negatives or BoxSpec(), positives or BoxSpec()
    if not sample_ids:
        raise RefineError("No sample to refine: open a sample, or select samples in the grid")
    run = validate_field(dataset, field_name)
    _check_refinement(dataset, run.settings, negatives, positives)
    planned = {
        i: _plan_sample(get_sample(dataset, i), run.settings, negatives, positives) for i in dict.fromkeys(sample_ids)
    }
    plans = [plan for plan in planned.values() if plan is not None]
    if not plans:
        raise RefineError("None of the chosen boxes belong to the current sample(s): select labels on these samples")
    skipped = [sample_id for sample_id, plan in planned.items() if plan is None]
    notes = [f"Skipped {len(skipped)} sample(s) with no boxes to add: {', '.join(skipped)}"] if skipped else []
    settings, device_notes = settings_for_here(run.settings)
    notes += device_notes
    preview = preview_field_name(field_name)
    ensure_refinement_fields(dataset, field_name)
    dataset.select([plan.sample_id for plan in plans]).set_field(preview, None).save(preview)  # no stale proposal
    # a sample given positive examples runs as exemplars: one run per mode
    for mode in dict.fromkeys(plan.mode for plan in plans):
        group = {plan.sample_id: plan for plan in plans if plan.mode == mode}
        prompts = {i: {"prompt_field": p.prompt_boxes, "negative_field": p.negative_boxes} for i, p in group.items()}
        notes += run_proposal(dataset, proposal_model(settings, prompts, token, mode=mode), group, field_name)
    outcomes = [_record_outcome(dataset[plan.sample_id], field_name, settings, plan) for plan in plans]
    outcomes = [outcome for outcome in outcomes if outcome is not None]
    if not outcomes:
        raise RefineError("No sample could be refined: " + " ".join(notes))
    return RefineResult(field_name, preview, outcomes, notes)


def _record_outcome(sample, field_name: str, settings: Sam3Settings, plan: SamplePlan) -> RefineOutcome | None:
    """Appends the refinement record of a sample whose proposal was written; ``None`` if none was."""
    sample.reload()
    detections = sample[preview_field_name(field_name)]
    if detections is None:  # the sample failed (logged and noted)
        return None
    prompts = settings.labels
    before, after = count_per_prompt(sample[field_name], prompts), count_per_prompt(detections, prompts)
    ledger = Ledger(sample)
    ledger.propose(
        field_name,
        Kind.BOXES,
        {
            "model_path": settings.model_path,
            "mode": plan.mode,
            "prompts": prompts,
            "threshold": settings.segment_options().threshold,
            "mask_threshold": settings.mask_threshold,
            "image_size": list(plan.image_size),
            "negative_boxes": plan.added_negatives.round(2).tolist(),
            "negative_sources": plan.negative_sources,
            "positive_boxes": plan.added_positives.round(2).tolist(),
            "positive_sources": plan.positive_sources,
            "before": before,
            "after": after,
        },
    )
    ledger.save()
    return RefineOutcome(
        plan.sample_id, before, after, plan.added_negatives.tolist(), plan.added_positives.tolist(), detections
    )
