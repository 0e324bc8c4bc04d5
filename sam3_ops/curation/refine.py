"""Refinement of SAM3 results with negative and positive boxes: the logic behind the refinement panel.

A curator refines a sample's SAM3 field by re-running the run that wrote it (its settings, read
from the run record: :mod:`sam3_ops.sdk.runs`) with extra negative boxes ("not this") and,
optionally, extra positive example boxes ("more like this"). Everything here takes a dataset and
sample ids and returns results, so it is testable without the App. It runs SAM3 through the one
inference path (:func:`sam3_ops.segment` with the chosen boxes given to the loader in memory),
never beside it.

The life of one refinement, per sample and field ``F``:

1. :func:`refine_samples` validates everything first (nothing is written on bad input), runs
   SAM3 (the image is keyed by its filepath, so the engine's feature cache spares the image
   encoder on the next refinement of the same image), writes the proposal to the preview field
   ``F_refined`` (:func:`preview_field_name`), which the App shows next to ``F``, and appends a
   record (status ``"proposed"``) to the sample's :data:`REFINEMENTS_FIELD` list.
2. :func:`accept_refinement` moves the proposal into ``F``; the record becomes ``"accepted"`` and
   keeps an exact backup of what ``F`` held (FiftyOne's own JSON serialisation: ids, masks and
   every attribute the user added).
3. :func:`undo_refinement` restores that backup (record ``"undone"``); repeated undos walk back
   through earlier accepts. :func:`discard_refinement` drops a proposal that is not wanted.

The records stay on the sample for QA review: which boxes were used (pixel ``xyxy`` and where
they came from), when, the counts per prompt before and after, and what happened to it.

Point refinement of one detection (:mod:`sam3_ops.curation.clicks`) writes its proposals to the
same preview field with records of kind ``"points"`` (:func:`append_proposal`); accept, undo and
discard here serve both kinds.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import numpy as np

from ..core.checkpoint import ModelLoadError, device_problem, resolve_device
from ..core.images import ImageLoadError, image_size
from ..core.queries import VISUAL_PROMPT
from ..sdk.convert import relative_to_xyxy, xyxy_to_relative
from ..sdk.fields import detections_fields as all_detections_fields
from ..sdk.model import Sam3Model
from ..sdk.runs import RunRecord, get_run, recorded_fields
from ..sdk.segment import build_engine, segment
from ..sdk.settings import Sam3Settings, SettingsError

#: the sample field (a list of dicts) holding each sample's refinement records
REFINEMENTS_FIELD = "sam3_refinements"
#: the suffix of the preview field a proposal is written to
PREVIEW_SUFFIX = "_refined"

PROPOSED, ACCEPTED, UNDONE, DISCARDED, SUPERSEDED = "proposed", "accepted", "undone", "discarded", "superseded"
#: a record's ``kind``: the field's run re-run with boxes, or one detection refined with points
#: (:mod:`sam3_ops.curation.clicks`); records written before kinds existed have none (boxes)
BOXES_KIND, POINTS_KIND = "boxes", "points"
#: how many accepts per field can be undone; older records keep their metadata, not the masks
#: (each backup holds a whole Detections with masks, and a sample must fit in 16 MB)
MAX_UNDO_STEPS = 5


class RefineError(ValueError):
    """Input the refinement cannot use; the message is meant for the curator, as is."""


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


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_pixel_boxes(text: str | None) -> np.ndarray:
    """Parses boxes typed in pixel coordinates: ``x1, y1, x2, y2`` per box.

    Boxes are separated by ``;`` or new lines; brackets are optional
    (``"[10, 20, 50, 60]; 5 5 30 30"`` is two boxes).

    Returns:
        ``(N, 4)`` float32 pixel ``xyxy`` boxes (``(0, 4)`` for blank text)

    Raises:
        RefineError: a box without exactly four numbers, saying which one and what it read
    """
    return _parse_groups(text, 4, "box", "'x1, y1, x2, y2' in pixels, boxes separated by ';'")


def parse_pixel_points(text: str | None, what: str = "point") -> np.ndarray:
    """Parses points typed in pixel coordinates: ``x, y`` per point.

    Points are separated by ``;`` or new lines; brackets are optional (``"[10, 20]; 30 40"`` is
    two points).

    Returns:
        ``(N, 2)`` float32 pixel ``xy`` points (``(0, 2)`` for blank text)

    Raises:
        RefineError: a point without exactly two numbers, saying which one and what it read
    """
    return _parse_groups(text, 2, what, "'x, y' in pixels, points separated by ';'")


def _parse_groups(text: str | None, size: int, what: str, expected: str) -> np.ndarray:
    """Groups of ``size`` numbers separated by ``;``, new lines or ``] [``: ``(N, size)`` float32."""
    if text is None or not str(text).strip():
        return np.zeros((0, size), np.float32)
    groups = []
    chunks = [c for c in re.split(r"[;\n]|\]\s*,?\s*\[", str(text)) if c.strip(" \t[](),")]
    for i, chunk in enumerate(chunks):
        cleaned = chunk.strip().strip("[]() ")
        tokens = [t for t in re.split(r"[,\s]+", cleaned) if t]
        if len(tokens) != size or not all(re.fullmatch(_NUMBER, t) for t in tokens):
            count = {2: "two", 4: "four"}.get(size, str(size))
            raise RefineError(f"Typed {what} {i + 1} ({chunk.strip()!r}) is not {count} numbers: expected {expected}")
        groups.append([float(t) for t in tokens])
    return np.asarray(groups, np.float32).reshape(-1, size)


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
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    return clipped.astype(np.float32)


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
        resolved.append(
            {
                "sample_id": sample_id,
                "field": field_name,
                "label_id": label_id,
                "label": found.label,
                "bounding_box": [float(v) for v in found.bounding_box],
            }
        )
    return resolved


# -- fields and runs ----------------------------------------------------------------------------


def preview_field_name(field_name: str) -> str:
    """The field a proposal for ``field_name`` is written to (shown in the App next to it)."""
    return f"{field_name}{PREVIEW_SUFFIX}"


def detections_fields(dataset) -> list[str]:
    """The dataset's Detections fields (without refinement previews): sources of boxes."""
    names = all_detections_fields(dataset)
    previews = {preview_field_name(name) for name in names}
    return [name for name in names if name not in previews]


def sam3_fields(dataset) -> list[str]:
    """The Detections fields that a recorded SAM3 run wrote: the fields that can be refined."""
    recorded = set(recorded_fields(dataset))
    return [name for name in detections_fields(dataset) if name in recorded]


def count_per_prompt(detections, prompts: Sequence[str] = ()) -> dict[str, int]:
    """The number of detections per label: every prompt first (zero if none), then other labels."""
    found = Counter(str(d.label) for d in detections.detections) if detections is not None else Counter()
    counts = {str(p): found.pop(str(p), 0) for p in prompts}
    counts.update(sorted(found.items()))
    return counts


def validate_field(dataset, field_name: str | None) -> RunRecord:
    """The recorded run of a field that can be refined.

    Raises:
        RefineError: no field chosen, no such field, not Detections, or no recorded run
    """
    if not field_name:
        fields = sam3_fields(dataset)
        if not fields:
            raise RefineError(
                "This dataset has no SAM3 result field: run 'Segment with text prompts' (or sam3_ops.segment) first"
            )
        raise RefineError(f"Choose the SAM3 field to refine ({', '.join(fields)})")
    if not dataset.has_sample_field(field_name):
        raise RefineError(f"The dataset has no field '{field_name}'")
    if field_name not in all_detections_fields(dataset):
        raise RefineError(f"Field '{field_name}' does not hold Detections; only SAM3 Detections fields can be refined")
    record = get_run(dataset, field_name)
    if record is None:
        raise RefineError(
            f"Field '{field_name}' has no recorded SAM3 prompts, so it cannot be re-run: refine a field "
            "written by a SAM3 run of this plugin"
        )
    return record


def get_sample(dataset, sample_id: str):
    """``dataset[sample_id]``, or a :class:`RefineError` a curator can act on."""
    try:
        return dataset[sample_id]
    except (KeyError, ValueError, TypeError):
        raise RefineError(
            f"Sample {sample_id} is not in the dataset: refinement works on the dataset's own samples "
            "(not on patches, clips or frames views)"
        ) from None


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
        accepted += last_record(sample, field_name, ACCEPTED) is not None
    ordered = {p: counts.pop(p, 0) for p in prompts}
    ordered.update(sorted(counts.items()))
    return {
        **settings.to_dict(),
        "field": field_name,
        "prompts": prompts,
        "counts": ordered,
        "pending": pending,
        "accepted": accepted,
    }


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
            sources.append(
                {
                    "source": "label",
                    "field": ref.get("field"),
                    "label_id": ref.get("label_id"),
                    "label": ref.get("label"),
                }
            )
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
    try:
        height, width = image_size(sample.filepath)
    except ImageLoadError as error:
        raise RefineError(f"Cannot read the image of sample {sample.id}: {error}") from None
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


def plan_refinement(
    dataset,
    sample_ids: Sequence[str],
    field_name: str | None,
    negatives: BoxSpec | None = None,
    positives: BoxSpec | None = None,
) -> tuple[RunRecord, list[SamplePlan], list[str]]:
    """Checks a refinement and prepares it, writing nothing.

    Args:
        dataset: the dataset
        sample_ids: the samples to refine (the App's current sample, or its selected samples)
        field_name: the SAM3 field to refine
        negatives, positives: the extra boxes (:class:`BoxSpec`)

    Returns:
        ``(run, plans, notes)``: the field's recorded run, one :class:`SamplePlan` per sample that
        has boxes to add, and notes for the curator (samples skipped because they have none)

    Raises:
        RefineError: saying what is wrong (no sample, no/unknown field, no recorded prompts, a bad
            box, an unreadable image, no boxes at all)
    """
    negatives, positives = negatives or BoxSpec(), positives or BoxSpec()
    if not sample_ids:
        raise RefineError("No sample to refine: open a sample, or select samples in the grid")
    run = validate_field(dataset, field_name)
    _check_refinement(dataset, run.settings, negatives, positives)
    plans, skipped = [], []
    for sample_id in dict.fromkeys(sample_ids):
        plan = _plan_sample(get_sample(dataset, sample_id), run.settings, negatives, positives)
        if plan is None:
            skipped.append(sample_id)
        else:
            plans.append(plan)
    if not plans:
        raise RefineError("None of the chosen boxes belong to the current sample(s): select labels on these samples")
    notes = [f"Skipped {len(skipped)} sample(s) with no boxes to add: {', '.join(skipped)}"] if skipped else []
    return run, plans, notes


def settings_for_here(settings: Sam3Settings) -> tuple[Sam3Settings, list[str]]:
    """A recorded run's settings to re-run on this machine: on its best device if the recorded one
    is not here (with a note saying so)."""
    if not device_problem(settings.device):
        return settings, []
    note = f"The run used device {settings.device!r}, which is not here: refined on {resolve_device(None)}"
    return settings.replace(device=None), [note]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def sample_records(sample) -> list[dict]:
    """A sample's refinement records (copies, oldest first; ``[]`` for none)."""
    if not sample.has_field(REFINEMENTS_FIELD) or sample[REFINEMENTS_FIELD] is None:
        return []
    return [dict(record) for record in sample[REFINEMENTS_FIELD]]


def last_record(sample, field_name: str, status: str) -> dict | None:
    """The newest record of ``field_name`` with ``status``, or ``None``."""
    for record in reversed(sample_records(sample)):
        if record.get("field") == field_name and record.get("status") == status:
            return record
    return None


def ensure_refinement_fields(dataset, field_name: str) -> None:
    """Declares the preview field of ``field_name`` and the records field, if they are missing."""
    preview = preview_field_name(field_name)
    if not dataset.has_sample_field(preview):
        dataset.add_sample_field(preview, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    if not dataset.has_sample_field(REFINEMENTS_FIELD):
        dataset.add_sample_field(REFINEMENTS_FIELD, fof.ListField, subfield=fof.DictField)


def _run_plans(dataset, preview: str, settings: Sam3Settings, plans: list[SamplePlan], token) -> list[str]:
    """Runs the plans through the one inference path into ``preview``; returns notes on failures.

    One :func:`~sam3_ops.sdk.segment.segment` call per mode (a sample given positive examples runs
    as ``exemplars``), on the process's pooled engine with its feature cache, so refining an
    image again costs no image-encoder work. Loader workers are not used: the App's server
    process must not fork.
    """
    notes = []
    for mode in dict.fromkeys(plan.mode for plan in plans):
        group = [plan for plan in plans if plan.mode == mode]
        overrides = {
            plan.sample_id: {"prompt_field": plan.prompt_boxes, "negative_field": plan.negative_boxes} for plan in group
        }
        try:
            run_settings = settings.replace(mode=mode)
            model = Sam3Model(
                run_settings, build_engine(run_settings, token), cache_features=True, prompt_overrides=overrides
            )
        except (ModelLoadError, SettingsError) as error:
            raise RefineError(str(error)) from None
        segment(
            dataset.select([plan.sample_id for plan in group]),
            preview,
            model=model,
            record=False,
            num_workers=0,
            progress=False,
        )
        notes += [f"Skipped {failure.filepath}: {failure.reason}" for failure in model.failures]
    return notes


def refine_samples(
    dataset,
    sample_ids: Sequence[str],
    field_name: str | None,
    negatives: BoxSpec | None = None,
    positives: BoxSpec | None = None,
    token: str | None = None,
) -> RefineResult:
    """Re-runs a SAM3 field's recorded run on samples with extra negative (and positive) boxes.

    The run's settings are read from its record and reproduced exactly (on this machine's best
    device if the recorded one is not here). The proposal goes to the preview field
    (:func:`preview_field_name`); ``field_name`` itself is not touched until
    :func:`accept_refinement`. The images run through ``apply_model`` like any run (batched, with
    the document guard, the pixel limit and per-sample failure isolation); each is keyed by its
    filepath, so refining an image again reuses its cached vision features.

    Args:
        dataset: the dataset
        sample_ids: the samples to refine
        field_name: the SAM3 field (written by a recorded run)
        negatives (None): the negative boxes (:class:`BoxSpec`)
        positives (None): positive example boxes (:class:`BoxSpec`); they turn a text run into an
            exemplar run with the same prompts
        token (None): a Hugging Face token for a gated model

    Returns:
        a :class:`RefineResult`

    Raises:
        RefineError: bad input (see :func:`plan_refinement`), a model that cannot be loaded, or no
            sample that could be segmented; nothing is written to ``field_name``
    """
    run, plans, notes = plan_refinement(dataset, sample_ids, field_name, negatives, positives)
    settings, device_notes = settings_for_here(run.settings)
    notes += device_notes
    preview = preview_field_name(field_name)
    ensure_refinement_fields(dataset, field_name)
    dataset.select([plan.sample_id for plan in plans]).set_field(preview, None).save(preview)  # no stale proposal
    notes += _run_plans(dataset, preview, settings, plans, token)
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
    append_proposal(
        sample,
        field_name,
        {
            "kind": BOXES_KIND,
            "model_path": settings.model_path,
            "mode": plan.mode,
            "prompts": prompts,
            "threshold": settings.threshold,
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
    return RefineOutcome(
        plan.sample_id, before, after, plan.added_negatives.tolist(), plan.added_positives.tolist(), detections
    )


def append_proposal(sample, field_name: str, record: dict) -> None:
    """Appends the record of a proposal just written to the preview field, and saves the sample.

    The record gets ``field``, ``status`` ``"proposed"`` and ``refined_at``; the field's earlier
    pending proposal (replaced in the preview field by this one) becomes ``"superseded"``.
    """
    records = [
        {**r, "status": SUPERSEDED} if r.get("field") == field_name and r.get("status") == PROPOSED else r
        for r in sample_records(sample)
    ]
    records.append({"field": field_name, "status": PROPOSED, "refined_at": _now(), **record})
    sample[REFINEMENTS_FIELD] = records
    sample.save()


# -- accept, undo, discard ----------------------------------------------------------------------


def _replace_last(records: list[dict], field_name: str, status: str, update: dict) -> list[dict]:
    for i in range(len(records) - 1, -1, -1):
        if records[i].get("field") == field_name and records[i].get("status") == status:
            records[i] = {**records[i], **update}
            break
    return records


def accept_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Writes each sample's proposal into ``field_name``, keeping an exact backup for undo.

    Returns:
        the ids of the samples whose field was replaced

    Raises:
        RefineError: a bad field, or no proposal on any of the samples (nothing written)
    """
    validate_field(dataset, field_name)
    preview = preview_field_name(field_name)
    samples = [get_sample(dataset, i) for i in dict.fromkeys(sample_ids or ())]
    pending = [s for s in samples if dataset.has_sample_field(preview) and s[preview] is not None]
    if not pending:
        raise RefineError("Nothing to accept: press Refine first")
    for sample in pending:
        previous = sample[field_name]
        backup = previous.to_json() if previous is not None else None
        records = sample_records(sample)
        if last_record(sample, field_name, PROPOSED) is None:  # a proposal written by another tool
            records.append({"field": field_name, "status": PROPOSED, "refined_at": None})
        records = _replace_last(
            records, field_name, PROPOSED, {"status": ACCEPTED, "accepted_at": _now(), "backup": backup}
        )
        sample[REFINEMENTS_FIELD] = _expire_old_backups(records, field_name)
        sample[field_name] = sample[preview]
        sample[preview] = None
        sample.save()
    return [s.id for s in pending]


def _expire_old_backups(records: list[dict], field_name: str, keep: int = MAX_UNDO_STEPS) -> list[dict]:
    """Drops the backups of all but the last ``keep`` accepted refinements of ``field_name``."""
    undoable = [
        i
        for i, r in enumerate(records)
        if r.get("field") == field_name and r.get("status") == ACCEPTED and "backup" in r
    ]
    for i in undoable[:-keep] if keep else undoable:
        records[i] = {k: v for k, v in records[i].items() if k != "backup"}
        records[i]["undo_expired"] = True
    return records


def undo_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Restores what ``field_name`` held before each sample's last accepted refinement, exactly.

    Returns:
        the ids of the samples restored

    Raises:
        RefineError: a bad field, or no accepted refinement to undo on any of the samples
    """
    validate_field(dataset, field_name)
    samples = [get_sample(dataset, i) for i in dict.fromkeys(sample_ids or ())]
    restored = []
    for sample in samples:
        record = last_record(sample, field_name, ACCEPTED)
        if record is None or "backup" not in record:  # nothing accepted, or past MAX_UNDO_STEPS
            continue
        backup = record.get("backup")
        sample[field_name] = fol.Detections.from_json(backup) if backup else None
        sample[REFINEMENTS_FIELD] = _replace_last(
            sample_records(sample), field_name, ACCEPTED, {"status": UNDONE, "undone_at": _now()}
        )
        sample.save()
        restored.append(sample.id)
    if not restored:
        raise RefineError(
            f"Nothing to undo: no accepted refinement of '{field_name}' on the current sample(s) "
            f"(the last {MAX_UNDO_STEPS} accepts can be undone)"
        )
    return restored


def discard_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Drops each sample's pending proposal (the field is untouched); returns the samples changed.

    Raises:
        RefineError: a bad field, or no proposal on any of the samples
    """
    validate_field(dataset, field_name)
    preview = preview_field_name(field_name)
    if not dataset.has_sample_field(preview):
        raise RefineError("Nothing to discard: there is no pending refinement")
    changed = []
    for sample_id in dict.fromkeys(sample_ids or ()):
        sample = get_sample(dataset, sample_id)
        if sample[preview] is None:
            continue
        sample[preview] = None
        sample[REFINEMENTS_FIELD] = _replace_last(
            sample_records(sample), field_name, PROPOSED, {"status": DISCARDED, "discarded_at": _now()}
        )
        sample.save()
        changed.append(sample_id)
    if not changed:
        raise RefineError("Nothing to discard: there is no pending refinement on the current sample(s)")
    return changed


def refinement_history(sample, field_name: str | None = None) -> list[dict]:
    """A sample's refinement records (oldest first), for QA review; backups are left out."""
    return [
        {k: v for k, v in record.items() if k != "backup"}
        for record in sample_records(sample)
        if field_name is None or record.get("field") == field_name
    ]


def target_sample_ids(current_sample: str | None, selected: Sequence[str] | None) -> list[str]:
    """The samples the panel works on: the sample open in the modal, else the grid's selection."""
    if current_sample:
        return [current_sample]
    return list(dict.fromkeys(selected or ()))


def boxes_to_text(boxes_xyxy: Sequence[Sequence[float]]) -> str:
    """Pixel boxes as the panel shows them: ``x1, y1, x2, y2; ...`` (whole pixels where exact)."""
    return "; ".join(", ".join(f"{v:g}" for v in box) for box in boxes_xyxy)
