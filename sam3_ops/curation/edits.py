"""In-place edits of annotations with SAM3, each undoable from a backup.

- :func:`upgrade_boxes_to_masks` adds SAM3 masks to the existing detections of a field;
- :func:`accept_reviewed` copies the SAM3 detections a reviewer tagged into the ground truth;
- :func:`restore_field` undoes either from the backup they made first.

Both edits run inside :func:`~sam3_ops.curation.transaction.backed_up`: the field is cloned to a
backup, the new labels go to a staging field, and the field is written only once everything is
in, in one update that touches only the labels it changes. SAM3 runs through
:func:`sam3_ops.sdk.segment.segment`, the one inference path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import numpy as np
from fiftyone import ViewField as F

from ..core.checkpoint import DEFAULT_MODEL
from ..sdk.fields import check_label_field, root_dataset
from ..sdk.segment import segment
from ..sdk.settings import unit_interval_problem
from .transaction import backed_up, check_backup_field, drop_field

ACCEPTED_TAG = "accepted"
#: the attribute on a detection copied by :func:`accept_reviewed`: the id of the SAM3 detection
SOURCE_ID_ATTR = "sam3_source_id"


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


def upgrade_boxes_to_masks(
    samples,
    field: str = "ground_truth",
    model_path: str = DEFAULT_MODEL,
    min_score: float = 0.5,
    backup_field: str | None = None,
    replace_masks: bool = False,
    model=None,
    **segment_options,
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
        model (None): a loaded ``boxes``-mode model (:func:`sam3_ops.load_model`) to use instead of ``model_path``
        **segment_options: for :func:`sam3_ops.segment`: ``mask_threshold``, ``device``, ``token``,
            ``batch_size``, ``num_workers``, ``progress``, ...

    Returns:
        an :class:`UpdateResult`: ``changed`` detections given a mask

    Raises:
        ValueError: ``field`` is not a ``Detections`` field or has no detections, the backup field
            exists, ``min_score`` is out of range, or ``model`` is not in ``boxes`` mode
    """
    check_label_field(samples, field, require_labels=True, what="field")
    if problem := unit_interval_problem(min_score, "min_score"):
        raise ValueError(problem)
    backup_field = check_backup_field(samples, field, backup_field)
    if model is not None and getattr(getattr(model, "settings", None), "mode", None) != "boxes":
        raise ValueError("model must be a SAM3 model loaded with mode='boxes'")
    settings = {} if model is not None else {"model_path": model_path, "mode": "boxes"}
    result = UpdateResult(field=field, backup_field=backup_field)
    with backed_up(samples, field, backup_field) as staging:
        ran = segment(samples, staging, model=model, prompt_field=field, record=False, **settings, **segment_options)
        new_masks, new_paths = _masks_to_add(samples, field, staging, min_score, replace_masks, result)
        if new_masks:
            samples.set_label_values(f"{field}.detections.mask", new_masks)
        if new_paths:  # masks the model stored on disk (too large for the sample) stay there
            samples.set_label_values(f"{field}.detections.mask_path", new_paths)
    result.changed = len(new_masks) + len(new_paths)
    result.model_summary = ran.counts().to_dict()
    return result


def _masks_to_add(samples, field, staging, min_score, replace_masks, result: UpdateResult):
    """The SAM3 masks (inline and on disk) to give each detection of ``field``, by detection id;
    counts what is left alone in ``result``."""
    new_masks: dict[str, np.ndarray] = {}
    new_paths: dict[str, str] = {}
    for labels, staged in zip(samples.values(field), samples.values(staging)):
        if labels is None:
            continue
        by_prompt = {d.get_field("prompt_id"): d for d in staged.detections} if staged else {}
        for detection in labels.detections:
            hit = by_prompt.get(detection.id)
            mask = hit.get_mask() if hit is not None else None
            has_mask = detection.mask is not None or detection.mask_path is not None
            if mask is None or not np.asarray(mask).any() or (has_mask and not replace_masks):
                result.skipped += 1
            elif (hit.confidence or 0.0) < min_score:
                result.below_threshold += 1
            elif hit.mask is None:
                new_paths[detection.id] = hit.mask_path
            else:
                new_masks[detection.id] = np.asarray(hit.mask, dtype=bool)
    return new_masks, new_paths


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
    dataset = root_dataset(samples)
    check_label_field(samples, pred_field, require_labels=True, what="pred_field")
    if dataset.get_field(gt_field) is not None:
        check_label_field(samples, gt_field, what="gt_field")
    if gt_field == pred_field:
        raise ValueError("pred_field and gt_field must differ")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"tag must be a non-blank label tag, not {tag!r}")
    accepted = samples.filter_labels(pred_field, F("tags").contains(tag))
    if not len(accepted):
        raise ValueError(f"no {pred_field!r} detection is tagged {tag!r} on these samples: tag the ones to keep first")
    backup_field = check_backup_field(samples, gt_field, backup_field)

    result = UpdateResult(field=gt_field, backup_field=backup_field)
    ids, staged = _copies_to_add(dataset, accepted, pred_field, gt_field, result)
    if not ids:
        return result
    if dataset.get_field(gt_field) is None:
        dataset.add_sample_field(gt_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    with backed_up(samples, gt_field, backup_field) as staging:
        dataset.select(ids, ordered=True).set_values(staging, staged, dynamic=True)
        target = dataset.select(ids)
        # append in the database: the ground truth's own detections are not rewritten
        target.exists(gt_field).set_field(
            f"{gt_field}.detections", F(f"${gt_field}.detections").extend(F(f"${staging}.detections"))
        ).save(gt_field)
        target.match(~F(gt_field).exists()).set_field(gt_field, F(f"${staging}")).save(gt_field)
        dataset.add_dynamic_sample_fields(fields=gt_field)
    result.changed = sum(len(d.detections) for d in staged)
    return result


def _copies_to_add(dataset, accepted, pred_field, gt_field, result: UpdateResult):
    """Per sample with something new to accept, its id and the copies to append (``Detections``)."""
    # attributes that describe an evaluation of the predictions, not the object
    eval_attrs = {f"{key}{suffix}" for key in dataset.list_evaluations() for suffix in ("", "_id", "_iou")}
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
    return ids, staged


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
    dataset = root_dataset(samples)
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
        drop_field(dataset, backup_field)
    return restored
