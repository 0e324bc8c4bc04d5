"""App operators for QA review: review a ground-truth field, upgrade boxes to masks, accept, restore.

Each operator reads its form and makes one call to the public function in :mod:`sam3_ops.curation`
(which runs SAM3 through :func:`sam3_ops.segment`). Bad input is flagged on the
form (``prop.invalid`` + ``prop.error_message``), not raised: no ``Detections`` field, a field
without labels, blank class labels, an eval key in use, a backup field that already exists, no
detection tagged as accepted. Immediate runs use ``num_workers=0`` and end with
``reload_dataset``; delegated runs report their stages with ``ctx.set_progress``.
"""

from __future__ import annotations

import fiftyone.operators.types as types
from fiftyone import ViewField as F

from ..core.checkpoint import DEFAULT_MODEL
from ..curation import edits, review
from ..sdk.fields import detections_fields
from ..sdk.settings import Sam3Settings
from .forms import (
    FormOperator,
    flag,
    hf_token,
    model_input,
    num_workers,
    reload_after,
    report,
    slider,
    table_view,
)

TABLE_COLUMNS = (
    ("class", "Class"),
    ("ground_truth", "Ground truth"),
    ("sam3", "SAM3"),
    ("matched", "Matched"),
    ("possible_missing", "Possibly missing"),
    ("possible_spurious", "Possibly spurious"),
    ("loose_boxes", "Loose boxes"),
    ("precision", "Precision"),
    ("recall", "Recall"),
)


class _SummaryOperator(FormOperator):
    """An operator whose output is one markdown ``summary``, titled with its label."""

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        return types.Property(outputs, view=types.View(label=self.LABEL))


class ReviewAnnotations(FormOperator):
    """Compares a ground-truth field with SAM3 and tags the samples a curator should look at."""

    NAME = "review_annotations"
    LABEL = "Review annotations with SAM3"
    DESCRIPTION = "Find possibly missing, spurious and loose annotations with SAM3 and FiftyOne's evaluation"

    def form(self, ctx, inputs):
        target = ctx.target_view()
        gt_field = _detections_choice(
            ctx, inputs, "gt_field", "Ground truth field", target, "The annotations to review"
        )
        if gt_field is None:
            return
        classes_from = types.RadioGroup()
        classes_from.add_choice("dataset", label="All classes of the field")
        classes_from.add_choice("sample", label="Each sample's own classes")
        inputs.enum("classes_from", classes_from.values(), default="dataset", label="Prompt with", view=classes_from)
        props = {
            "classes": inputs.list(
                "classes", types.String(), label="Classes (optional)", description="Only these classes; empty for all"
            ),
            "model_path": model_input(ctx, inputs),
            "pred_field": inputs.str("pred_field", default="sam3_review", required=True, label="SAM3 output field"),
            "eval_key": inputs.str("eval_key", default="sam3_review", required=True, label="Evaluation key"),
        }
        inputs.bool(
            "check_boxes", default=True, label="Look for loose boxes", description="Also prompt SAM3 with each box"
        )
        props["calibration"] = _calibration_choice(ctx, inputs)
        props["threshold"] = inputs.float(
            "threshold",
            default=0.5,
            label="SAM3 score threshold",
            description="For the classes no calibration covers" if ctx.params.get("calibration") else None,
            view=slider(),
        )
        props["missing_confidence"] = inputs.float(
            "missing_confidence", default=0.5, label="Flag unmatched SAM3 hits from confidence", view=slider()
        )
        props["loose_iou"] = inputs.float(
            "loose_iou", default=0.75, label="Loose box below tight-box IoU", view=slider()
        )
        inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description="Replace an earlier review's field and evaluation",
        )
        values = _review_values(ctx.params)
        problems = review.review_problems(
            target, {**values, "gt_field": gt_field}, overwrite=bool(ctx.params.get("overwrite"))
        )
        problems |= Sam3Settings.problems({"threshold": values["threshold"], "mode": "exemplars"})
        for name, message in problems.items():
            flag(props.get(name) or (props["pred_field"] if name == "box_field" else props["classes"]), message)
        _execution_note(ctx, inputs)

    def execute(self, ctx):
        params = ctx.params
        values = _review_values(params)
        report(ctx, 0.05, "Running SAM3 and evaluating")
        result = review.review_annotations(
            ctx.target_view(),
            values["gt_field"],
            model_path=params.get("model_path") or DEFAULT_MODEL,
            pred_field=values["pred_field"],
            eval_key=values["eval_key"],
            classes=values["classes"],
            per_sample_classes=params.get("classes_from") == "sample",
            check_boxes=values["box_field"] is not None,
            threshold=values["threshold"],
            missing_confidence=values["missing_confidence"],
            loose_iou=values["loose_iou"],
            overwrite=bool(params.get("overwrite")),
            calibration=values["calibration"],
            num_workers=num_workers(ctx),
            device=params.get("device") or None,
            token=hf_token(ctx),
        )
        reload_after(ctx)
        return {
            "summary": (
                f"Reviewed {result.num_reviewed} samples ({result.num_skipped} skipped): "
                + ", ".join(f"{n} {tag}" for tag, n in result.tag_counts.items())
                + f". Saved view '{result.view_name}'; evaluation '{result.eval_key}' is in the Model Evaluation panel."
                + _calibration_note(result)
            ),
            "table": result.table,
            "plot": agreement_plot(result.table),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Summary", view=types.MarkdownView())
        outputs.list("table", types.Object(), label="Per-class agreement", view=table_view(TABLE_COLUMNS))
        outputs.plot(
            "plot",
            label="Recall and precision per class",
            height=400,  # the App's plot fills its container, which an output dialog does not size
            layout={"barmode": "group", "yaxis": {"range": [0, 1]}},
        )
        return types.Property(outputs, view=types.View(label="SAM3 review"))


class UpgradeBoxesToMasks(_SummaryOperator):
    """Adds SAM3 masks to the existing boxes of a Detections field, after backing it up."""

    NAME = "upgrade_boxes_to_masks"
    LABEL = "Upgrade boxes to masks"
    DESCRIPTION = "Add SAM3 instance masks to existing boxes (ids, labels, attributes kept; field backed up first)"

    def form(self, ctx, inputs):
        target = ctx.target_view()
        field = _detections_choice(ctx, inputs, "field", "Field", target, "The boxes to give masks to")
        if field is None:
            return
        model_input(ctx, inputs)
        inputs.float(
            "min_score", default=0.5, label="Minimum mask score", description="SAM3's predicted IoU", view=slider()
        )
        inputs.bool("replace_masks", default=False, label="Replace existing masks")
        _backup_input(ctx, inputs, field)
        _execution_note(ctx, inputs)

    def execute(self, ctx):
        params = ctx.params
        report(ctx, 0.05, "Running SAM3 on the boxes")
        result = edits.upgrade_boxes_to_masks(
            ctx.target_view(),
            params["field"],
            model_path=params.get("model_path") or DEFAULT_MODEL,
            min_score=params.get("min_score", 0.5),
            backup_field=params.get("backup_field") or None,
            replace_masks=bool(params.get("replace_masks")),
            num_workers=num_workers(ctx),
            device=params.get("device") or None,
            token=hf_token(ctx),
        )
        reload_after(ctx)
        return {
            "summary": (
                f"Added masks to {result.changed} detections of '{result.field}'; {result.below_threshold} scored "
                f"below the threshold, {result.skipped} left as they were. Backup: '{result.backup_field}' "
                "(undo with 'Restore field backup')."
            )
        }


class RestoreFieldBackup(_SummaryOperator):
    """Puts a field back exactly as its backup holds it."""

    NAME = "restore_field_backup"
    LABEL = "Restore field backup"
    DESCRIPTION = "Undo a mask upgrade or an accept from its backup"

    def form(self, ctx, inputs):
        dataset = ctx.dataset
        field = _detections_choice(ctx, inputs, "field", "Field", None, "The field to put back", require_labels=False)
        if field is None:
            return
        backups = [name for name in detections_fields(dataset) if name != field]
        choices = types.Dropdown()
        for name in backups:
            choices.add_choice(name, label=name)
        default = f"{field}_backup" if f"{field}_backup" in backups else None
        prop = inputs.enum(
            "backup_field", choices.values(), default=default, required=True, label="Backup", view=choices
        )
        if not backups:
            flag(prop, "There is no other Detections field to restore from")
        inputs.bool("delete_backup", default=False, label="Delete the backup afterwards (whole dataset only)")
        if ctx.params.get("delete_backup") and len(ctx.target_view()) != len(dataset):
            flag(inputs.get_property("delete_backup"), "Only a restore of the whole dataset can delete the backup")

    def execute(self, ctx):
        params = ctx.params
        restored = edits.restore_field(
            ctx.target_view(), params["field"], params["backup_field"], delete_backup=bool(params.get("delete_backup"))
        )
        reload_after(ctx)
        return {"summary": f"Restored '{params['field']}' from '{params['backup_field']}' on {restored} samples."}


class AcceptReviewedDetections(_SummaryOperator):
    """Copies the SAM3 detections a reviewer tagged into the ground truth, after backing it up."""

    NAME = "accept_reviewed_detections"
    LABEL = "Accept reviewed detections"
    DESCRIPTION = "Copy SAM3 detections tagged as accepted into the ground truth (field backed up first)"

    def form(self, ctx, inputs):
        target = ctx.target_view()
        pred_field = _detections_choice(ctx, inputs, "pred_field", "SAM3 field", target, "The reviewed SAM3 detections")
        if pred_field is None:
            return
        gt_field = _detections_choice(
            ctx, inputs, "gt_field", "Ground truth field", target, "Where accepted detections go", require_labels=False
        )
        if gt_field is None:
            return
        tag_prop = inputs.str(
            "tag", default=edits.ACCEPTED_TAG, required=True, label="Label tag of accepted detections"
        )
        tag = ctx.params.get("tag") or edits.ACCEPTED_TAG
        if gt_field == pred_field:
            flag(inputs.get_property("gt_field"), "Choose a field other than the SAM3 field")
        elif not target.filter_labels(pred_field, F("tags").contains(tag)).count(f"{pred_field}.detections"):
            flag(tag_prop, f"No '{pred_field}' detection is tagged '{tag}' here: tag the ones to keep in the App first")
        _backup_input(ctx, inputs, gt_field)

    def execute(self, ctx):
        params = ctx.params
        result = edits.accept_reviewed(
            ctx.target_view(),
            params["pred_field"],
            params["gt_field"],
            tag=params.get("tag") or edits.ACCEPTED_TAG,
            backup_field=params.get("backup_field") or None,
        )
        reload_after(ctx)
        return {
            "summary": (
                f"Copied {result.changed} detections into '{result.field}' ({result.skipped} were already there). "
                f"Backup: '{result.backup_field}'."
            )
        }


OPERATORS = [ReviewAnnotations, UpgradeBoxesToMasks, RestoreFieldBackup, AcceptReviewedDetections]


# -- forms ------------------------------------------------------------------------------------------


def _review_values(params) -> dict:
    """The review's fields and criteria as the form holds them (``classes`` ``None`` for all)."""
    pred_field = params.get("pred_field") or "sam3_review"
    return {
        "gt_field": params.get("gt_field"),
        "pred_field": pred_field,
        "box_field": f"{pred_field}_boxes" if params.get("check_boxes", True) else None,
        "eval_key": params.get("eval_key") or "sam3_review",
        "classes": [c.strip() if isinstance(c, str) else c for c in params.get("classes") or []] or None,
        "calibration": params.get("calibration") or None,
        "threshold": params.get("threshold", 0.5),
        "iou": 0.5,
        "missing_confidence": params.get("missing_confidence", 0.5),
        "loose_iou": params.get("loose_iou", 0.75),
    }


def _calibration_choice(ctx, inputs):
    """A dropdown of the dataset's stored calibrations (``sam3_ops.calibrate`` runs); ``None`` (no
    input) when there is none and none was chosen."""
    stored = review.stored_calibrations(ctx.dataset)
    if not stored and not ctx.params.get("calibration"):
        return None
    choices = types.Dropdown()
    for key, gt_field in stored.items():
        choices.add_choice(key, label=f"{key} (calibrated on {gt_field})")
    return inputs.enum(
        "calibration",
        choices.values(),
        label="Calibration (optional)",
        description="Prompt each class it covers with its calibrated words and threshold; empty for none",
        view=choices,
    )


def _calibration_note(result) -> str:
    """The summary's sentence on the calibration the review used (empty without one)."""
    if result.calibration is None:
        return ""
    flagged = "; ".join(f"{label}: {flag}" for label, flag in result.calibration_flags.items())
    return f" Prompts from calibration '{result.calibration}'" + (f" (flagged: {flagged})." if flagged else ".")


def _detections_choice(ctx, inputs, name, label, target, description, require_labels=True):
    """A dropdown of the dataset's Detections fields; returns the chosen one, or None if unusable."""
    fields = detections_fields(ctx.dataset)
    choices = types.Dropdown()
    for field in fields:
        choices.add_choice(field, label=field)
    default = "ground_truth" if "ground_truth" in fields and name in ("gt_field", "field") else None
    prop = inputs.enum(
        name, choices.values(), default=default, required=True, label=label, description=description, view=choices
    )
    if not fields:
        flag(prop, "This dataset has no Detections field")
        return None
    value = ctx.params.get(name, default)
    if value not in fields:
        if value is not None:
            flag(prop, f"'{value}' is not a Detections field of this dataset")
        return None
    if require_labels and target is not None and not target.count(f"{value}.detections"):
        flag(prop, f"'{value}' has no detections on the target samples")
        return None
    return value


def _backup_input(ctx, inputs, field):
    default = f"{field}_backup"
    prop = inputs.str(
        "backup_field",
        default=default,
        required=True,
        label="Backup field",
        description="A copy made before any change",
    )
    name = ctx.params.get("backup_field") or default
    if name == field:
        flag(prop, "The backup must be another field")
    elif ctx.dataset.get_field(name) is not None:
        flag(prop, f"Field '{name}' already exists: restore it first ('Restore field backup'), or choose another name")


def _execution_note(ctx, inputs):
    target = ctx.target_view()
    inputs.view("note", types.Notice(label=f"SAM3 will run on {len(target)} samples"))


# -- execution ------------------------------------------------------------------------------------


def agreement_plot(table: list[dict]) -> list[dict]:
    """Plotly bar traces of recall and precision per class (the review's table as a picture)."""
    classes = [row["class"] for row in table]
    bars = {"recall": "Recall (ground truth SAM3 found)", "precision": "Precision (SAM3 hits annotated)"}
    return [{"type": "bar", "name": name, "x": classes, "y": [row[key] for row in table]} for key, name in bars.items()]
