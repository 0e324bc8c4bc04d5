"""QA review of annotations with SAM3, on FiftyOne's own evaluation, tagging, saved views and cloning.

- :func:`review_annotations` runs SAM3 with the ground truth's classes as text prompts (and its
  boxes as box prompts), compares with :meth:`evaluate_detections` under an eval key (so the
  Model Evaluation panel shows it), tags the samples to look at and saves the view
  :data:`NEEDS_REVIEW_VIEW`. It can also review a recorded prediction field without running SAM3.
- :func:`upgrade_boxes_to_masks` adds SAM3 masks to the existing detections of a field.
- :func:`accept_reviewed` copies the SAM3 detections a reviewer tagged into the ground truth.
- :func:`restore_field` undoes either of them from the backup they made first.

Nothing is lost: each in-place change clones the field to a backup first; SAM3 runs into a
staging field, and the ground truth is written only once every prediction is in, in one write
that touches only the labels it changes. A run that fails midway leaves the field as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import numpy as np
from fiftyone import ViewField as F

from .engine import DEFAULT_MODEL

logger = logging.getLogger(__name__)

MISSING_TAG = "sam3:possible_missing"
SPURIOUS_TAG = "sam3:possible_spurious"
LOOSE_BOX_TAG = "sam3:loose_box"
REVIEW_TAGS = (MISSING_TAG, SPURIOUS_TAG, LOOSE_BOX_TAG)
NEEDS_REVIEW_VIEW = "sam3_needs_review"
ACCEPTED_TAG = "accepted"
#: the attribute that :func:`review_annotations` writes on each box-prompt detection: the IoU of
#: its mask's tight box with the annotated box
TIGHT_IOU_ATTR = "tight_iou"
#: the attribute on a detection copied by :func:`accept_reviewed`: the id of the SAM3 detection
SOURCE_ID_ATTR = "sam3_source_id"
STAGING_SUFFIX = "_sam3_staging"


# -- results ------------------------------------------------------------------------------------


@dataclass
class ReviewResult:
    """What :func:`review_annotations` did.

    Attributes:
        eval_key: the evaluation's key (``dataset.load_evaluation_results(eval_key)``)
        pred_field, box_field: the SAM3 text-prompt and box-prompt fields (``box_field`` is
            ``None`` when loose boxes were not checked)
        view_name: the saved view of the samples to review
        classes: the classes reviewed
        num_reviewed: samples compared; num_skipped: samples without SAM3 predictions (failed)
        tag_counts: samples per review tag
        table: one row per class: ``class``, ``ground_truth``, ``sam3``, ``matched``,
            ``possible_missing``, ``possible_spurious``, ``loose_boxes``, ``precision``, ``recall``
        model_summary: the model's :meth:`~sam3_ops.model.Sam3Model.summary` when it ran
    """

    eval_key: str
    pred_field: str
    box_field: str | None
    view_name: str
    classes: list[str]
    num_reviewed: int
    num_skipped: int
    tag_counts: dict[str, int]
    table: list[dict]
    model_summary: dict = field(default_factory=dict)


@dataclass
class UpdateResult:
    """What :func:`upgrade_boxes_to_masks` or :func:`accept_reviewed` changed.

    Attributes:
        field: the field changed; backup_field: its clone from before the change
        changed: detections given a mask (upgrade) or copied in (accept)
        below_threshold: detections whose SAM3 mask scored below ``min_score`` (upgrade)
        skipped: detections left alone for another reason (a mask already there, no SAM3 output,
            an empty mask, already accepted)
        model_summary: the model's summary when it ran
    """

    field: str
    backup_field: str
    changed: int = 0
    below_threshold: int = 0
    skipped: int = 0
    model_summary: dict = field(default_factory=dict)


# -- validation -----------------------------------------------------------------------------------


def detections_fields(samples) -> list[str]:
    """The top-level ``Detections`` fields of ``samples``, sorted."""
    return sorted(samples.get_field_schema(embedded_doc_type=fol.Detections).keys())


def validate_detections_field(samples, field_name, require_labels: bool = True, what: str = "field") -> str:
    """Checks that ``field_name`` is a ``Detections`` field of ``samples`` (with labels); returns it.

    Raises:
        ValueError: naming the problem and the ``Detections`` fields there are
    """
    choices = detections_fields(samples)
    listing = ", ".join(repr(name) for name in choices) or "none"
    if not isinstance(field_name, str) or not field_name:
        raise ValueError(f"{what} must be the name of a Detections field; the Detections fields are: {listing}")
    schema_field = samples.get_field(field_name)
    if schema_field is None:
        raise ValueError(f"{what} {field_name!r} does not exist; the Detections fields are: {listing}")
    if field_name not in choices:
        kind = getattr(schema_field, "document_type", None) or type(schema_field)
        raise ValueError(
            f"{what} {field_name!r} holds {kind.__name__} values, not Detections; the Detections fields are: {listing}"
        )
    if require_labels and not samples.count(f"{field_name}.detections"):
        raise ValueError(f"{what} {field_name!r} has no detections on these {len(samples)} samples")
    return field_name


def validate_classes(classes: Iterable[str]) -> list[str]:
    """Classes as text prompts: strings with words, duplicates dropped (first kept).

    Raises:
        ValueError: a class that is not a string or is blank (an empty-string label cannot be a prompt)
    """
    if isinstance(classes, str):
        classes = [classes]
    cleaned: list[str] = []
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise ValueError(f"class {i} is a {type(name).__name__} ({name!r}); classes must be strings")
        if not name.strip():
            raise ValueError(
                f"class {i} is {name!r}: blank classes cannot be text prompts; relabel those detections "
                "or pass classes= without it"
            )
        if name not in cleaned:
            cleaned.append(name)
    if not cleaned:
        raise ValueError("there are no classes to review")
    return cleaned


def _dataset(samples):
    return samples._dataset


def _check_new_field(samples, name: str, what: str, overwrite: bool) -> None:
    existing = _dataset(samples).get_field(name)
    if existing is None:
        return
    if not overwrite:
        raise ValueError(f"{what} {name!r} already exists; pass overwrite=True to replace it or choose another name")
    if name not in detections_fields(_dataset(samples)):
        raise ValueError(f"{what} {name!r} exists and is not a Detections field; it is never overwritten")


def _check_backup_field(samples, field_name: str, backup_field: str | None) -> str:
    backup_field = backup_field or f"{field_name}_backup"
    if backup_field == field_name:
        raise ValueError("backup_field must differ from the field it backs up")
    if _dataset(samples).get_field(backup_field) is not None:
        raise ValueError(
            f"backup field {backup_field!r} already exists (an earlier change not yet undone): restore it with "
            f"restore_field(..., {field_name!r}, {backup_field!r}), delete it, or choose another backup_field"
        )
    return backup_field


# -- review -------------------------------------------------------------------------------------


def review_annotations(
    samples,
    gt_field: str = "ground_truth",
    model_path: str = DEFAULT_MODEL,
    pred_field: str = "sam3_review",
    eval_key: str = "sam3_review",
    classes: Sequence[str] | None = None,
    per_sample_classes: bool = False,
    run_model: bool = True,
    check_boxes: bool = True,
    box_field: str | None = None,
    threshold: float = 0.5,
    iou: float = 0.5,
    missing_confidence: float = 0.5,
    loose_iou: float = 0.75,
    view_name: str = NEEDS_REVIEW_VIEW,
    overwrite: bool = False,
    batch_size: int = 4,
    num_workers: int | None = None,
    device: str | None = None,
    token: str | None = None,
    progress=None,
) -> ReviewResult:
    """Reviews a ground-truth ``Detections`` field with SAM3 and tags the samples to look at.

    SAM3 runs with the classes as text prompts into ``pred_field`` (and, when ``check_boxes``,
    with the ground-truth boxes as box prompts into ``box_field``); FiftyOne's
    ``evaluate_detections`` compares ``pred_field`` with the ground truth under ``eval_key``
    (masks are compared when the ground truth has masks). Then, on the samples reviewed:

    - ``sam3:possible_missing``: a SAM3 detection with ``confidence >= missing_confidence`` that
      the evaluation left unmatched (``fp``);
    - ``sam3:possible_spurious``: a ground-truth detection the evaluation left unmatched (``fn``);
    - ``sam3:loose_box``: a box whose SAM3 box-prompt mask has a tight box with IoU below
      ``loose_iou`` with the annotated box (stored as ``tight_iou`` on the ``box_field``
      detections, which are label-tagged too).

    Earlier review tags on these samples are removed first; the saved view ``view_name`` holds
    every sample with a review tag. Samples without SAM3 predictions (failed) are not reviewed.

    Args:
        samples: a dataset or view
        gt_field ("ground_truth"): the ``Detections`` field to review
        model_path ("facebook/sam3"): the SAM3 checkpoint
        pred_field ("sam3_review"): where SAM3's text-prompt detections go (or are, see ``run_model``)
        eval_key ("sam3_review"): the evaluation key
        classes (None): the classes to prompt with; ``None`` for every label of ``gt_field``
        per_sample_classes (False): prompt each sample with its own ground-truth classes only
        run_model (True): ``False`` to review the predictions already in ``pred_field`` (and
            ``box_field``) without running SAM3
        check_boxes (True): look for loose boxes
        box_field (None): the box-prompt field; ``None`` for ``f"{pred_field}_boxes"``
        threshold (0.5): SAM3's score threshold for text-prompt hits
        iou (0.5): the IoU for a match in the evaluation
        missing_confidence (0.5): the confidence from which an unmatched SAM3 hit is flagged
        loose_iou (0.75): the tight-box IoU below which a box is loose
        view_name ("sam3_needs_review"): the saved view to write
        overwrite (False): replace an existing ``pred_field``/``box_field`` and ``eval_key``
        batch_size (4), num_workers (None), device (None), progress (None): for ``apply_model``
        token (None): a Hugging Face token; ``None`` reads ``HF_TOKEN``

    Returns:
        a :class:`ReviewResult`

    Raises:
        ValueError: ``gt_field`` is not a ``Detections`` field or has no labels, a class is blank,
            ``eval_key`` or an output field is in use (without ``overwrite``), a threshold is out
            of range, or recorded predictions are missing
    """
    dataset = _dataset(samples)
    validate_detections_field(samples, gt_field, what="gt_field")
    for name, value in (("threshold", threshold), ("iou", iou), ("missing_confidence", missing_confidence), ("loose_iou", loose_iou)):
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], not {value!r}")
    box_field = (box_field or f"{pred_field}_boxes") if check_boxes else None
    if pred_field == gt_field or box_field in (gt_field, pred_field):
        raise ValueError("gt_field, pred_field and box_field must be three different fields")
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        raise ValueError(f"eval_key must be a name of letters, digits and underscores, not {eval_key!r}")
    if dataset.has_evaluation(eval_key) and not overwrite:
        raise ValueError(
            f"eval key {eval_key!r} is already in use on dataset {dataset.name!r}; choose another eval_key, "
            "or pass overwrite=True to replace that evaluation"
        )

    gt_classes = samples.distinct(f"{gt_field}.detections.label")
    if classes is None:
        blank = [label for label in gt_classes if not isinstance(label, str) or not label.strip()]
        if blank:
            raise ValueError(
                f"gt_field {gt_field!r} has detections labelled {blank[0]!r}: blank labels cannot be text prompts; "
                "relabel them, or pass classes= to review the others"
            )
    classes = validate_classes(gt_classes if classes is None else classes)

    summary: dict = {}
    if run_model:
        _check_new_field(samples, pred_field, "pred_field", overwrite)
        if box_field:
            _check_new_field(samples, box_field, "box_field", overwrite)
        if dataset.has_evaluation(eval_key):
            dataset.delete_evaluation(eval_key)
        summary = _run_review_models(
            samples, gt_field, model_path, pred_field, box_field, classes, per_sample_classes,
            threshold, batch_size, num_workers, device, token, progress,
        )  # fmt: skip
    else:
        for name in (pred_field, box_field):
            if name:
                validate_detections_field(samples, name, require_labels=False, what="recorded field")
        if dataset.has_evaluation(eval_key):
            dataset.delete_evaluation(eval_key)

    # samples without predictions failed (a run writes an empty Detections for "no hits")
    reviewed = samples.exists(pred_field)
    num_skipped = len(samples) - len(reviewed)
    gt_has_masks = bool(len(reviewed.filter_labels(gt_field, F("mask").exists() | F("mask_path").exists())))
    reviewed.evaluate_detections(
        pred_field, gt_field=gt_field, eval_key=eval_key, classes=classes, iou=iou, use_masks=gt_has_masks, progress=progress
    )

    samples.untag_samples(list(REVIEW_TAGS))
    missing = reviewed.filter_labels(pred_field, (F(eval_key) == "fp") & (F("confidence") >= missing_confidence))
    missing.tag_samples(MISSING_TAG)
    spurious = reviewed.filter_labels(gt_field, F(eval_key) == "fn")
    spurious.tag_samples(SPURIOUS_TAG)
    loose = None
    if box_field:
        boxed = reviewed.exists(box_field)
        _write_tight_ious(boxed, gt_field, box_field)
        boxed.untag_labels(LOOSE_BOX_TAG, label_fields=box_field)
        # exists() first: in an aggregation, a missing value (no evidence) sorts below every number
        loose = boxed.filter_labels(box_field, F(TIGHT_IOU_ATTR).exists() & (F(TIGHT_IOU_ATTR) < loose_iou))
        loose.tag_labels(LOOSE_BOX_TAG, label_fields=box_field)
        loose.tag_samples(LOOSE_BOX_TAG)

    dataset.save_view(
        view_name,
        dataset.match_tags(list(REVIEW_TAGS)),
        description=f"Samples SAM3 review flagged ({', '.join(REVIEW_TAGS)})",
        overwrite=True,
    )
    counts = samples.count_sample_tags()
    return ReviewResult(
        eval_key=eval_key,
        pred_field=pred_field,
        box_field=box_field,
        view_name=view_name,
        classes=classes,
        num_reviewed=len(reviewed),
        num_skipped=num_skipped,
        tag_counts={tag: counts.get(tag, 0) for tag in REVIEW_TAGS},
        table=agreement_table(reviewed, gt_field, pred_field, eval_key, classes, missing_confidence, loose, box_field),
        model_summary=summary,
    )


def _run_review_models(
    samples, gt_field, model_path, pred_field, box_field, classes, per_sample_classes, threshold, batch_size,
    num_workers, device, token, progress,
) -> dict:  # fmt: skip
    """Runs SAM3 for a review: text prompts into ``pred_field``, gt boxes into ``box_field``."""
    import sam3_ops

    from .runs import record_run

    kwargs = {"batch_size": batch_size, "num_workers": num_workers, "skip_failures": True, "progress": progress}
    dataset = _dataset(samples)
    # clear stale values first: a sample that fails gets nothing written and must not keep an old result
    for name in (pred_field, box_field):
        if name and dataset.get_field(name) is not None:
            samples.clear_sample_field(name)

    summaries = []
    if per_sample_classes:
        groups: dict[tuple[str, ...], list[str]] = {}
        for sample_id, labels in zip(samples.values("id"), samples.values(f"{gt_field}.detections.label")):
            key = tuple(c for c in classes if c in set(labels or ()))
            groups.setdefault(key, []).append(sample_id)
        for key, ids in groups.items():
            group = samples.select(ids)
            if not key:  # nothing to prompt for: no hits, by definition
                group.set_values(pred_field, [fol.Detections() for _ in ids])
                continue
            # reuse=True: one engine (weights, text-feature cache) serves every group
            model = sam3_ops.load_model(model_path, mode="text", prompts=list(key), threshold=threshold, device=device, token=token, reuse=True)
            group.apply_model(model, label_field=pred_field, **kwargs)
            summaries.append(model.summary())
    else:
        model = sam3_ops.load_model(model_path, mode="text", prompts=classes, threshold=threshold, device=device, token=token, reuse=True)
        samples.apply_model(model, label_field=pred_field, **kwargs)
        record_run(samples, pred_field, model)
        summaries.append(model.summary())

    if box_field:
        boxes = sam3_ops.load_model(model_path, mode="boxes", device=device, token=token, reuse=True)
        samples.apply_model(boxes, label_field=box_field, prompt_field=gt_field, **kwargs)
        record_run(samples, box_field, boxes, prompt_field=gt_field)
        summaries.append(boxes.summary())
    return _merge_summaries(summaries)


def _merge_summaries(summaries: list[dict]) -> dict:
    merged = {"samples_processed": 0, "detections": 0, "samples_skipped": 0, "skipped": []}
    for summary in summaries:
        for key in merged:
            merged[key] += summary.get(key, 0 if key != "skipped" else [])
    return merged


def tight_box(detection) -> list[float] | None:
    """The relative ``[x, y, w, h]`` box of ``detection``'s mask pixels, or ``None`` without any.

    The mask covers exactly the detection's bounding box (FiftyOne's convention).
    """
    mask = detection.get_mask()  # inline, or a PNG at mask_path
    if mask is None or detection.bounding_box is None:
        return None
    mask = np.asarray(mask) > 0
    if mask.ndim != 2 or not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x, y, w, h = detection.bounding_box
    mask_h, mask_w = mask.shape
    return [
        x + w * cols[0] / mask_w,
        y + h * rows[0] / mask_h,
        w * (cols[-1] + 1 - cols[0]) / mask_w,
        h * (rows[-1] + 1 - rows[0]) / mask_h,
    ]


def _write_tight_ious(samples, gt_field: str, box_field: str) -> None:
    """Stores on each ``box_field`` detection the IoU of its mask's tight box with the annotated box."""
    from fiftyone.utils.iou import compute_ious

    values: dict[str, float | None] = {}
    for gt, boxed in zip(samples.values(gt_field), samples.values(box_field)):
        annotated = {d.id: d for d in (gt.detections if gt else [])}
        for detection in boxed.detections if boxed else []:
            source = annotated.get(detection.get_field("prompt_id") if detection.has_field("prompt_id") else None)
            box = tight_box(detection)
            if source is None or box is None:
                values[detection.id] = None  # no annotated box or an empty mask: no evidence either way
                continue
            tight = fol.Detection(label=source.label, bounding_box=box)
            plain = fol.Detection(label=source.label, bounding_box=source.bounding_box)
            values[detection.id] = float(compute_ious([tight], [plain])[0, 0])
    if values:
        samples.set_label_values(f"{box_field}.detections.{TIGHT_IOU_ATTR}", values, dynamic=True)


def agreement_table(
    samples, gt_field, pred_field, eval_key, classes, missing_confidence=0.5, loose=None, box_field=None
) -> list[dict]:
    """Per class: ground-truth and SAM3 counts, matches, flags, precision and recall (from the evaluation)."""
    label_path = "{}.detections.label"
    gt_counts = samples.count_values(label_path.format(gt_field))
    pred_counts = samples.count_values(label_path.format(pred_field))
    gt_matched = samples.filter_labels(gt_field, F(eval_key) == "tp").count_values(label_path.format(gt_field))
    pred_matched = samples.filter_labels(pred_field, F(eval_key) == "tp").count_values(label_path.format(pred_field))
    missing = samples.filter_labels(
        pred_field, (F(eval_key) == "fp") & (F("confidence") >= missing_confidence)
    ).count_values(label_path.format(pred_field))
    spurious = samples.filter_labels(gt_field, F(eval_key) == "fn").count_values(label_path.format(gt_field))
    loose_counts = loose.count_values(label_path.format(box_field)) if loose is not None else {}
    rows = []
    for name in classes:
        n_gt, n_pred = gt_counts.get(name, 0), pred_counts.get(name, 0)
        rows.append(
            {
                "class": name,
                "ground_truth": n_gt,
                "sam3": n_pred,
                "matched": gt_matched.get(name, 0),
                "possible_missing": missing.get(name, 0),
                "possible_spurious": spurious.get(name, 0),
                "loose_boxes": loose_counts.get(name, 0),
                "precision": round(pred_matched.get(name, 0) / n_pred, 3) if n_pred else None,
                "recall": round(gt_matched.get(name, 0) / n_gt, 3) if n_gt else None,
            }
        )
    return rows


# -- upgrade, accept, restore -------------------------------------------------------------------


def upgrade_boxes_to_masks(
    samples,
    field: str = "ground_truth",
    model_path: str = DEFAULT_MODEL,
    min_score: float = 0.5,
    backup_field: str | None = None,
    replace_masks: bool = False,
    mask_threshold: float = 0.5,
    model=None,
    batch_size: int = 4,
    num_workers: int | None = None,
    device: str | None = None,
    token: str | None = None,
    progress=None,
) -> UpdateResult:
    """Adds SAM3 masks to the existing detections of ``field``, keeping their ids, labels, attributes and tags.

    The whole field is cloned to ``backup_field`` first (undo with :func:`restore_field`). SAM3
    runs in ``boxes`` mode into a staging field; only when every sample is done are the masks
    written, in one update of just the detections that get one. If anything fails before that
    write, the field is untouched and the backup and staging fields are removed.

    Args:
        samples: a dataset or view
        field ("ground_truth"): a ``Detections`` field
        model_path ("facebook/sam3"): the SAM3 checkpoint
        min_score (0.5): a mask is added only if SAM3's score for it (its predicted IoU) is at least this
        backup_field (None): where to clone the field; ``None`` for ``f"{field}_backup"`` (must not exist)
        replace_masks (False): also replace masks that detections already have
        mask_threshold (0.5): the probability above which a pixel is in a mask
        model (None): a loaded ``boxes``-mode model (:func:`sam3_ops.load_model`) to use instead of ``model_path``
        batch_size (4), num_workers (None), device (None), progress (None): for ``apply_model``
        token (None): a Hugging Face token; ``None`` reads ``HF_TOKEN``

    Returns:
        an :class:`UpdateResult`: ``changed`` detections given a mask

    Raises:
        ValueError: ``field`` is not a ``Detections`` field or has no detections, the backup field
            exists, ``min_score`` is out of range, or ``model`` is not in ``boxes`` mode
    """
    import sam3_ops

    dataset = _dataset(samples)
    validate_detections_field(samples, field, what="field")
    if not isinstance(min_score, int | float) or not 0 <= min_score <= 1:
        raise ValueError(f"min_score must be a number in [0, 1], not {min_score!r}")
    backup_field = _check_backup_field(samples, field, backup_field)
    if model is None:
        model = sam3_ops.load_model(model_path, mode="boxes", mask_threshold=mask_threshold, device=device, token=token, reuse=True)
    elif getattr(getattr(model, "config", None), "mode", None) != "boxes":
        raise ValueError("model must be a SAM3 model loaded with mode='boxes'")
    staging = f"{field}{STAGING_SUFFIX}"
    if dataset.get_field(staging) is not None:  # left by a crashed process: ours by name
        dataset.delete_sample_field(staging)

    result = UpdateResult(field=field, backup_field=backup_field)
    dataset.clone_sample_field(field, backup_field)
    written = False
    try:
        samples.apply_model(
            model, label_field=staging, prompt_field=field, batch_size=batch_size, num_workers=num_workers,
            skip_failures=True, progress=progress,
        )  # fmt: skip
        new_masks: dict[str, np.ndarray] = {}
        new_paths: dict[str, str] = {}  # masks the model stored on disk (too large for the sample) stay there
        for labels, staged in zip(samples.values(field), samples.values(staging)):
            if labels is None:
                continue
            by_prompt = {d.get_field("prompt_id"): d for d in staged.detections} if staged else {}
            for detection in labels.detections:
                hit = by_prompt.get(detection.id)
                mask = hit.get_mask() if hit is not None else None
                if mask is None or not np.asarray(mask).any():
                    result.skipped += 1
                elif (detection.mask is not None or detection.mask_path is not None) and not replace_masks:
                    result.skipped += 1
                elif (hit.confidence or 0.0) < min_score:
                    result.below_threshold += 1
                elif hit.mask is None:
                    new_paths[detection.id] = hit.mask_path
                else:
                    new_masks[detection.id] = np.asarray(hit.mask, dtype=bool)
        if new_masks:
            samples.set_label_values(f"{field}.detections.mask", new_masks)
        if new_paths:
            samples.set_label_values(f"{field}.detections.mask_path", new_paths)
        written = True
        result.changed = len(new_masks) + len(new_paths)
    finally:
        if not written:
            dataset.delete_sample_field(backup_field)
        if dataset.get_field(staging) is not None:
            dataset.delete_sample_field(staging)
    result.model_summary = model.summary()
    return result


def accept_reviewed(
    samples,
    pred_field: str = "sam3_review",
    gt_field: str = "ground_truth",
    tag: str = ACCEPTED_TAG,
    backup_field: str | None = None,
) -> UpdateResult:
    """Copies the ``pred_field`` detections tagged ``tag`` into ``gt_field``.

    The copies get new ids and no tags or evaluation attributes; each keeps the SAM3 detection's
    id in ``sam3_source_id``, so accepting twice copies nothing twice. ``gt_field`` is cloned to
    ``backup_field`` first (undo with :func:`restore_field`); the copies are written to a staging
    field and appended to the ground truth in one update.

    Args:
        samples: a dataset or view
        pred_field ("sam3_review"): the SAM3 ``Detections`` field the reviewer tagged
        gt_field ("ground_truth"): the ``Detections`` field to add them to (created if missing)
        tag ("accepted"): the label tag that marks a detection as accepted
        backup_field (None): ``None`` for ``f"{gt_field}_backup"`` (must not exist)

    Returns:
        an :class:`UpdateResult`: ``changed`` detections copied, ``skipped`` ones already there

    Raises:
        ValueError: a field is not ``Detections``, no detection carries ``tag``, or the backup exists
    """
    dataset = _dataset(samples)
    validate_detections_field(samples, pred_field, what="pred_field")
    if dataset.get_field(gt_field) is not None:
        validate_detections_field(samples, gt_field, require_labels=False, what="gt_field")
    if gt_field == pred_field:
        raise ValueError("pred_field and gt_field must differ")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"tag must be a non-blank label tag, not {tag!r}")
    accepted = samples.filter_labels(pred_field, F("tags").contains(tag))
    if not len(accepted):
        raise ValueError(f"no {pred_field!r} detection is tagged {tag!r} on these samples: tag the ones to keep first")
    backup_field = _check_backup_field(samples, gt_field, backup_field)

    # attributes that describe an evaluation of the predictions, not the object
    eval_attrs = {f"{key}{suffix}" for key in dataset.list_evaluations() for suffix in ("", "_id", "_iou")}
    result = UpdateResult(field=gt_field, backup_field=backup_field)
    ids, staged = [], []
    for sample_id, gt, preds in zip(accepted.values("id"), accepted.values(gt_field), accepted.values(pred_field)):
        present = {d.get_field(SOURCE_ID_ATTR) for d in (gt.detections if gt else []) if d.has_field(SOURCE_ID_ATTR)}
        copies = []
        for detection in preds.detections:
            if detection.id in present:
                result.skipped += 1
                continue
            data = {k: v for k, v in detection.iter_fields() if k not in ("id", "tags", *eval_attrs) and v is not None}
            copies.append(fol.Detection(**data, **{SOURCE_ID_ATTR: detection.id}))
        if copies:
            ids.append(sample_id)
            staged.append(fol.Detections(detections=copies))
    if not ids:
        return result

    staging = f"{gt_field}{STAGING_SUFFIX}"
    if dataset.get_field(staging) is not None:
        dataset.delete_sample_field(staging)
    if dataset.get_field(gt_field) is None:
        dataset.add_sample_field(gt_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    dataset.clone_sample_field(gt_field, backup_field)
    written = False
    try:
        target = dataset.select(ids, ordered=True)
        target.set_values(staging, staged, dynamic=True)
        target = dataset.select(ids)
        # append in the database: the ground truth's own detections are not rewritten
        target.exists(gt_field).set_field(
            f"{gt_field}.detections", F(f"${gt_field}.detections").extend(F(f"${staging}.detections"))
        ).save(gt_field)
        target.match(~F(gt_field).exists()).set_field(gt_field, F(f"${staging}")).save(gt_field)
        dataset.add_dynamic_sample_fields(fields=gt_field)
        written = True
        result.changed = sum(len(d.detections) for d in staged)
    finally:
        if not written:
            dataset.delete_sample_field(backup_field)
        if dataset.get_field(staging) is not None:
            dataset.delete_sample_field(staging)
    return result


def restore_field(samples, field: str, backup_field: str, delete_backup: bool = False) -> int:
    """Puts back ``field`` on ``samples`` exactly as ``backup_field`` holds it (a database copy).

    Args:
        samples: a dataset or view (the samples to restore)
        field: the field to restore
        backup_field: its backup (written by :func:`upgrade_boxes_to_masks` or :func:`accept_reviewed`)
        delete_backup (False): delete the backup field afterwards (only when ``samples`` is the
            whole dataset, as the backup serves every sample)

    Returns:
        the number of samples restored

    Raises:
        ValueError: the backup field does not exist, or is not of the field's type
    """
    dataset = _dataset(samples)
    backup = dataset.get_field(backup_field)
    if backup is None:
        raise ValueError(f"backup field {backup_field!r} does not exist on dataset {dataset.name!r}")
    current = dataset.get_field(field)
    if current is not None and getattr(current, "document_type", None) != getattr(backup, "document_type", None):
        raise ValueError(f"backup field {backup_field!r} does not hold the same kind of labels as {field!r}")
    if current is None:
        dataset.clone_sample_field(backup_field, field)
        restored = len(dataset)
    else:
        # the view's own filters must not reach the copy: restore whole samples
        scope = dataset if samples is dataset else dataset.select(samples.values("id"))
        scope.set_field(field, F(f"${backup_field}")).save(field)
        restored = len(scope)
    if delete_backup:
        if samples is not dataset and len(samples) != len(dataset):
            raise ValueError("delete_backup=True needs the whole dataset: the backup serves every sample")
        dataset.delete_sample_field(backup_field)
    return restored
