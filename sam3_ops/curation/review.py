"""QA review of annotations with SAM3, on FiftyOne's own evaluation, tagging and saved views.

:func:`review_annotations` runs SAM3 with the ground truth's classes as text prompts (and its
boxes as box prompts) through :func:`sam3_ops.segment` (so both fields get run records), compares
with :meth:`evaluate_detections` under an eval key (so the Model Evaluation panel shows it), tags
the samples to look at and saves the view :data:`NEEDS_REVIEW_VIEW`. It can also review recorded
prediction fields without running SAM3. With a calibration (:func:`sam3_ops.calibrate`), each
class is prompted with its calibrated wording at its calibrated threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import fiftyone.core.labels as fol
import numpy as np
from fiftyone import ViewField as F

from ..core.checkpoint import DEFAULT_MODEL
from ..sdk.fields import check_label_field, output_field_problem, root_dataset
from ..sdk.runs import CALIBRATION_METHOD, Run, RunSummary, calibration_run_key, get_run, save_summary
from ..sdk.segment import segment, split_options
from ..sdk.settings import Sam3Settings, unit_interval_problem
from .calibrate import CalibrationResult, get_calibration
from .classes import review_classes

MISSING_TAG = "sam3:possible_missing"
SPURIOUS_TAG = "sam3:possible_spurious"
LOOSE_BOX_TAG = "sam3:loose_box"
REVIEW_TAGS = (MISSING_TAG, SPURIOUS_TAG, LOOSE_BOX_TAG)
NEEDS_REVIEW_VIEW = "sam3_needs_review"
#: the attribute that :func:`review_annotations` writes on each box-prompt detection: the IoU of
#: its mask's tight box with the annotated box
TIGHT_IOU_ATTR = "tight_iou"


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
        model_summary: the runs' summaries, merged, when SAM3 ran
        calibration: the key of the calibration the prompts came from, ``None`` without one
        prompts: per class, what SAM3 was prompted with: ``text``, ``label`` (the class) and
            ``threshold`` (``None``: the run's threshold)
        calibration_flags: ``{class: flag}`` of the reviewed classes the calibration flagged
            (prompted all the same)
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
    calibration: str | None = None
    prompts: list[dict] = field(default_factory=list)
    calibration_flags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Review:
    """The fields and criteria of one review, checked."""

    gt_field: str
    pred_field: str
    box_field: str | None
    eval_key: str
    classes: list[str]
    iou: float
    missing_confidence: float
    loose_iou: float
    #: ``{class: its text prompt}``: the class name, or its calibrated ``{"text", "label", "threshold"}``
    prompts: dict = field(default_factory=dict)
    calibration: CalibrationResult | None = None


def review_problems(samples, values: dict, overwrite: bool = False, check_outputs: bool = True) -> dict[str, str]:
    """Every problem of a review's fields and criteria, by argument name (``{}`` if none): the SDK
    raises the first, the review form flags each on its input.

    Args:
        samples: the samples to review
        values: ``gt_field``, ``pred_field``, ``box_field`` (``None``: no loose-box check),
            ``eval_key``, ``classes`` (``None``: every class of ``gt_field``), ``calibration``
            (optional: see :func:`resolve_calibration`) and the criteria ``iou``,
            ``missing_confidence``, ``loose_iou``
        overwrite (False): whether an existing evaluation and output fields may be replaced
        check_outputs (True): whether SAM3 will write ``pred_field`` / ``box_field``
    """
    problems: dict[str, str] = {}
    gt_field, pred_field, box_field, eval_key = (
        values.get(k) for k in ("gt_field", "pred_field", "box_field", "eval_key")
    )
    try:
        check_label_field(samples, gt_field, require_labels=True, what="gt_field")
        classes = review_classes(samples, gt_field, values.get("classes"))
    except ValueError as error:
        problems["gt_field" if "gt_field" in str(error) else "classes"] = str(error)
    if values.get("calibration") is not None and not problems:
        try:
            review_prompts(classes, resolve_calibration(samples, values["calibration"], gt_field))
        except ValueError as error:
            problems["calibration"] = str(error)
    for name in ("iou", "missing_confidence", "loose_iou"):
        problem = unit_interval_problem(values.get(name), name)
        if problem:
            problems[name] = problem
    if pred_field == gt_field or box_field in (gt_field, pred_field):
        problems["pred_field"] = "gt_field, pred_field and box_field must be three different fields"
    if not isinstance(eval_key, str) or not eval_key.isidentifier():
        problems["eval_key"] = f"eval_key must be a name of letters, digits and underscores, not {eval_key!r}"
    elif root_dataset(samples).has_evaluation(eval_key) and not overwrite:
        problems["eval_key"] = (
            f"eval key {eval_key!r} is already in use on this dataset; choose another eval_key, or overwrite that evaluation"
        )
    for name, what in ((pred_field, "pred_field"), (box_field, "box_field")):
        if not check_outputs or not name or what in problems:
            continue
        if root_dataset(samples).get_field(name) is not None and not overwrite:
            problems[what] = f"{what} {name!r} already exists; overwrite it or choose another name"
        elif problem := output_field_problem(samples, name, reserved=(gt_field,)):
            problems[what] = f"{what}: {problem}"
    return problems


def stored_calibrations(samples) -> dict[str, str | None]:
    """The calibrations stored on ``samples``' dataset (runs of ``sam3_ops.calibrate``):
    ``{key: the gt_field it was calibrated on}``."""
    dataset = root_dataset(samples)
    prefix = calibration_run_key("_")[:-1]
    return {
        run[len(prefix) :]: getattr(dataset.get_run_info(run).config, "gt_field", None)
        for run in sorted(dataset.list_runs(method=CALIBRATION_METHOD))
        if run.startswith(prefix)
    }


def resolve_calibration(samples, calibration, gt_field: str) -> CalibrationResult | None:
    """The calibration a review of ``gt_field`` uses: ``calibration`` itself, or the one stored on
    ``samples``' dataset under that key; ``None`` for ``None``.

    A calibration made on another ground-truth field is refused: its thresholds fit those labels.
    To use it all the same (a copy of the field, say), pass
    ``dataclasses.replace(result, gt_field=gt_field)``.

    Raises:
        ValueError: ``calibration`` is neither a :class:`~sam3_ops.curation.calibrate.CalibrationResult`
            nor a key, no calibration is stored under the key, or it was made on another field
    """
    if calibration is None:
        return None
    if isinstance(calibration, str):
        key = calibration
        try:
            calibration = get_calibration(samples, key)
        except ValueError as error:  # not a key at all
            raise ValueError(f"calibration: {error}") from error
        if calibration is None:
            stored = ", ".join(repr(k) for k in stored_calibrations(samples)) or "none"
            raise ValueError(
                f"there is no calibration {key!r} on this dataset (stored: {stored}); run "
                f"sam3_ops.calibrate(..., key={key!r}) first"
            )
    elif not isinstance(calibration, CalibrationResult):
        raise ValueError(
            "calibration must be a CalibrationResult (sam3_ops.calibrate) or the key of a stored one, "
            f"not a {type(calibration).__name__}"
        )
    if calibration.gt_field != gt_field:
        raise ValueError(
            f"calibration {calibration.key!r} was made on gt_field {calibration.gt_field!r}, not {gt_field!r}: its "
            f"thresholds fit those labels; calibrate on {gt_field!r}, or pass "
            f"dataclasses.replace(calibration, gt_field={gt_field!r}) to use it all the same"
        )
    return calibration


def review_prompts(classes: Sequence[str], calibration: CalibrationResult | None = None) -> dict:
    """``{class: its text prompt}``: the calibrated ``{"text", "label", "threshold"}`` of a class
    the calibration covers (its hits labelled with the class), else the class name (the run's threshold).

    Raises:
        ValueError: two classes would be prompted with the same words (one text prompt writes one label)
    """
    calibrated = {prompt["label"]: prompt for prompt in (calibration.prompts if calibration else [])}
    prompts = {name: calibrated.get(name, name) for name in classes}
    seen: dict[str, str] = {}
    for name, prompt in prompts.items():
        text = " ".join((prompt["text"] if isinstance(prompt, dict) else prompt).split())
        if text in seen:
            raise ValueError(
                f"classes {seen[text]!r} and {name!r} would both be prompted with {text!r} (one text prompt writes "
                "one label): review them separately (classes=) or calibrate one of them with other words"
            )
        seen[text] = name
    return prompts


# A public function in FiftyOne's style (compare evaluate_detections): every option a documented
# keyword; SAM3's own settings and the run options pass through to sam3_ops.segment.
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
    iou: float = 0.5,
    missing_confidence: float = 0.5,
    loose_iou: float = 0.75,
    view_name: str = NEEDS_REVIEW_VIEW,
    overwrite: bool = False,
    calibration: CalibrationResult | str | None = None,
    **segment_options,
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

    With a ``calibration`` (:func:`sam3_ops.calibrate` on this ``gt_field``), each class it covers
    is prompted with its calibrated wording at its calibrated threshold, its hits labelled with
    the class (so the evaluation matches them to the class's ground truth); other classes with
    their name at the run's ``threshold``. A class the calibration flagged is prompted all the same,
    as the calibration holds it (not found: expect possible-spurious flags there), and listed in
    :attr:`ReviewResult.calibration_flags`. The key is recorded in the result and in
    ``pred_field``'s run summary (``sam3_ops.get_run(dataset, pred_field).summary["calibration"]``).

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
        iou (0.5): the IoU for a match in the evaluation
        missing_confidence (0.5): the confidence from which an unmatched SAM3 hit is flagged
        loose_iou (0.75): the tight-box IoU below which a box is loose
        view_name ("sam3_needs_review"): the saved view to write
        overwrite (False): replace an existing ``pred_field``/``box_field`` and ``eval_key``
        calibration (None): a :class:`~sam3_ops.curation.calibrate.CalibrationResult`, or the key of
            one stored on the dataset (:func:`stored_calibrations`); only when SAM3 runs
        **segment_options: for :func:`sam3_ops.segment`: SAM3 settings (``threshold`` (0.5),
            ``mask_threshold``, ``device``, ...) and run options (``batch_size``, ``num_workers``,
            ``token``, ``progress``)

    Returns:
        a :class:`ReviewResult`

    Raises:
        ValueError: ``gt_field`` is not a ``Detections`` field or has no labels, a class is blank,
            ``eval_key`` or an output field is in use (without ``overwrite``), a threshold is out
            of range, recorded predictions are missing, or the calibration is unknown, made on
            another ground-truth field or given with ``run_model=False`` (all before anything is written)
    """
    if calibration is not None and not run_model:
        raise ValueError(
            "calibration= sets the prompts SAM3 runs with; run_model=False reviews the recorded predictions as "
            "they are: leave calibration out"
        )
    box_field = (box_field or f"{pred_field}_boxes") if check_boxes else None
    values = dict(gt_field=gt_field, pred_field=pred_field, box_field=box_field, eval_key=eval_key, classes=classes)
    values |= dict(calibration=calibration, iou=iou, missing_confidence=missing_confidence, loose_iou=loose_iou)
    for problem in review_problems(samples, values, overwrite, check_outputs=run_model).values():
        raise ValueError(problem)
    calibration = resolve_calibration(samples, calibration, gt_field)
    classes = review_classes(samples, gt_field, classes)
    prompts = review_prompts(classes, calibration)
    review = _Review(
        gt_field, pred_field, box_field, eval_key, classes, iou, missing_confidence, loose_iou, prompts, calibration
    )
    settings, run = split_options(segment_options)
    # built (and so checked) even when SAM3 does not run
    text = Sam3Settings(model_path=model_path, mode="text", prompts=list(prompts.values()), **settings)

    summary: dict = {}
    if run_model:
        summary = _run_review_models(samples, review, text, per_sample_classes, run)
        if calibration is not None:
            _record_calibration_key(samples, pred_field, calibration.key)
    else:
        for name in (pred_field, box_field):
            if name:
                check_label_field(samples, name, what="recorded field")
    result = _evaluate_and_tag(samples, review, view_name, summary, segment_options.get("progress"))
    if run_model:
        _note_prompts(result, review, text)
    return result


def _record_calibration_key(samples, pred_field: str, key: str) -> None:
    """Adds the calibration's key to the results of the run that wrote ``pred_field``."""
    record = get_run(samples, pred_field)
    save_summary(samples, pred_field, {**((record.summary if record else None) or {}), "calibration": key})


def _note_prompts(result: ReviewResult, review: _Review, text: Sam3Settings) -> None:
    """Says on ``result`` what SAM3 was prompted with, and from which calibration."""
    result.prompts = [
        {"text": p.text, "label": p.name, "threshold": p.threshold if p.threshold is not None else text.threshold}
        for p in text.prompts
    ]
    if review.calibration is not None:
        result.calibration = review.calibration.key
        result.calibration_flags = {
            row.label: row.flag for row in review.calibration.classes if row.flag and row.label in review.prompts
        }


def _evaluate_and_tag(samples, review: _Review, view_name: str, summary: dict, progress) -> ReviewResult:
    """Evaluates the predictions, tags what to look at, saves the view; the :class:`ReviewResult`."""
    dataset = root_dataset(samples)
    gt_field, pred_field, box_field, eval_key = review.gt_field, review.pred_field, review.box_field, review.eval_key
    if dataset.has_evaluation(eval_key):
        dataset.delete_evaluation(eval_key)
    # samples without predictions failed (a run writes an empty Detections for "no hits")
    reviewed = samples.exists(pred_field)
    gt_has_masks = bool(len(reviewed.filter_labels(gt_field, F("mask").exists() | F("mask_path").exists())))
    reviewed.evaluate_detections(
        pred_field,
        gt_field=gt_field,
        eval_key=eval_key,
        classes=review.classes,
        iou=review.iou,
        use_masks=gt_has_masks,
        progress=progress,
    )
    samples.untag_samples(list(REVIEW_TAGS))
    missing, spurious = _flagged(reviewed, review)
    missing.tag_samples(MISSING_TAG)
    spurious.tag_samples(SPURIOUS_TAG)
    loose = None
    if box_field:
        boxed = reviewed.exists(box_field)
        _write_tight_ious(boxed, gt_field, box_field)
        boxed.untag_labels(LOOSE_BOX_TAG, label_fields=box_field)
        # exists() first: in an aggregation, a missing value (no evidence) sorts below every number
        loose = boxed.filter_labels(box_field, F(TIGHT_IOU_ATTR).exists() & (F(TIGHT_IOU_ATTR) < review.loose_iou))
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
        classes=review.classes,
        num_reviewed=len(reviewed),
        num_skipped=len(samples) - len(reviewed),
        tag_counts={tag: counts.get(tag, 0) for tag in REVIEW_TAGS},
        table=agreement_table(reviewed, review, loose),
        model_summary=summary,
    )


def _run_review_models(samples, review: _Review, text: Sam3Settings, per_sample_classes: bool, run: dict) -> dict:
    """Runs SAM3 for a review through :func:`sam3_ops.segment`: text prompts into ``pred_field``,
    ground-truth boxes into ``box_field`` (both checked by :func:`review_problems` already)."""
    boxes = text.replace(mode="boxes", prompts=(), prompt_field=review.gt_field)
    dataset = root_dataset(samples)
    # clear stale values first: a sample that fails gets nothing written and must not keep an old result
    for name in (review.pred_field, review.box_field):
        if name and dataset.get_field(name) is not None:
            samples.clear_sample_field(name)

    total = RunSummary()
    if per_sample_classes:
        # one run of pred_field, recorded with every class (one settings object cannot hold
        # per-sample prompts), its groups' counts added up
        recorded = Run(samples, review.pred_field, text).start()
        for classes, group in _groups_by_classes(samples, review):
            if not classes:  # nothing to prompt for: no hits, by definition
                group.set_values(review.pred_field, [fol.Detections() for _ in range(len(group))])
                continue
            prompts = [review.prompts[name] for name in classes]  # each class's own prompt, calibrated or not
            recorded.add(
                segment(group, review.pred_field, record=False, **run, **text.replace(prompts=prompts).to_dict())
            )
        total += recorded.finish()
    else:
        total += segment(samples, review.pred_field, **run, **text.to_dict())
    if review.box_field:
        total += segment(samples, review.box_field, **run, **boxes.to_dict())
    return total.counts().to_dict()


def _groups_by_classes(samples, review: _Review):
    """``(classes, view)`` per distinct set of ground-truth classes on a sample."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for sample_id, labels in zip(samples.values("id"), samples.values(f"{review.gt_field}.detections.label")):
        key = tuple(c for c in review.classes if c in set(labels or ()))
        groups.setdefault(key, []).append(sample_id)
    return [(list(key), samples.select(ids)) for key, ids in groups.items()]


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


def _flagged(samples, review: _Review) -> tuple:
    """The views of the flagged labels: ``(possibly missing, possibly spurious)``: SAM3 hits the
    evaluation left unmatched with ``confidence >= missing_confidence``, and unmatched ground truth."""
    confident_fp = (F(review.eval_key) == "fp") & (F("confidence") >= review.missing_confidence)
    return (
        samples.filter_labels(review.pred_field, confident_fp),
        samples.filter_labels(review.gt_field, F(review.eval_key) == "fn"),
    )


def agreement_table(samples, review: _Review, loose=None) -> list[dict]:
    """Per class: ground-truth and SAM3 counts, matches, flags, precision and recall (from the evaluation)."""
    gt_field, pred_field, eval_key = review.gt_field, review.pred_field, review.eval_key

    def per_class(view, field_name: str) -> dict:
        return view.count_values(f"{field_name}.detections.label")

    flagged_missing, flagged_spurious = _flagged(samples, review)
    gt_counts, pred_counts = per_class(samples, gt_field), per_class(samples, pred_field)
    gt_matched = per_class(samples.filter_labels(gt_field, F(eval_key) == "tp"), gt_field)
    pred_matched = per_class(samples.filter_labels(pred_field, F(eval_key) == "tp"), pred_field)
    missing, spurious = per_class(flagged_missing, pred_field), per_class(flagged_spurious, gt_field)
    loose_counts = per_class(loose, review.box_field) if loose is not None else {}
    rows = []
    for name in review.classes:
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
