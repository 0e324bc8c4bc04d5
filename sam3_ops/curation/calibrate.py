"""Calibration of text prompts on labels a curator already has: the right words and threshold per class.

SAM3's scores are not comparable across concepts, so one threshold does not fit every class.
:func:`calibrate` runs every candidate wording of every class as text prompts in ONE run of
:func:`sam3_ops.sdk.segment.segment` over a labelled view (the image encoder runs once per image
however many candidates), keeping every hit down to a low score floor in a scratch field that is
removed afterwards. It then matches each candidate's hits to its class's ground truth as the COCO
evaluation of ``evaluate_detections`` does (greedy, highest score first; :func:`_match_candidates`)
and sweeps every distinct score: precision, recall and F1 at each threshold, no re-run. The
objective picks a threshold per candidate and the best candidate per class; the result's
:attr:`~CalibrationResult.prompts` go to ``sam3_ops.segment(unlabelled, "sam3", prompts=result.prompts)``.

Greedy matching in descending score order makes the sweep exact: a hit is matched only against
hits that score higher, so the matches of the hits above a threshold are the same whether or not
the lower ones exist.

The result is stored as a run (:func:`~sam3_ops.sdk.runs.record_calibration`); :func:`get_calibration` reloads it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from fiftyone.core.labels import Detections
from fiftyone.utils.eval.coco import COCOEvaluationConfig

from ..sdk.fields import check_label_field, root_dataset
from ..sdk.runs import calibration_run_key, load_calibration, record_calibration
from ..sdk.segment import segment, split_options
from ..sdk.settings import normalize_prompts, unit_interval_problem
from .classes import review_classes

#: the note on a class whose best F1 is below ``min_f1``
NOT_FOUND_NOTE = "SAM3 does not find this concept with these words"
#: the note on a class with fewer than ``min_objects`` ground-truth objects
TOO_FEW_NOTE = "too few ground-truth objects to calibrate; the default threshold is kept"
#: settings calibrate chooses itself
_FIXED = ("mode", "prompts", "prompt_field", "negative_field", "max_detections")
#: samples whose ground truth and hits the sweep reads into memory at a time
SWEEP_CHUNK = 256
#: the attributes FiftyOne's matching sets on the objects it matches (objects read, never saved)
_EVAL_KEY = "sam3_calibration"


@dataclass
class ClassCalibration:
    """The calibration of one class.

    Attributes:
        label: the class (the label of its ground truth, and of the hits its prompt writes)
        text: the chosen wording
        threshold: the chosen threshold (the default one when not ``calibrated``)
        precision, recall, f1: at ``threshold`` (``None`` when not calibrated)
        ap: average precision of the chosen wording (COCO 101-point, at the run's IoU)
        ground_truth: ground-truth objects of the class in the view
        tp, fp, fn: the counts at ``threshold``
        calibrated: whether the threshold was calibrated (enough ground truth)
        flag: ``None``, :data:`NOT_FOUND_NOTE` or :data:`TOO_FEW_NOTE` (and why an objective was missed)
        candidates: per candidate wording, its best point: ``threshold``, ``precision``, ``recall``,
            ``f1``, ``ap``, ``reached`` (whether it met the objective)
    """

    label: str
    text: str
    threshold: float | None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    ap: float | None = None
    ground_truth: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    calibrated: bool = False
    flag: str | None = None
    candidates: dict = field(default_factory=dict)


@dataclass
class CalibrationResult:
    """What :func:`calibrate` found.

    Attributes:
        key: the calibration's key; its run is ``sam3_calibration_<key>`` (``dataset.get_run_info``)
        gt_field: the ground truth it was calibrated on
        objective: ``"f1"``, ``{"precision": p}`` or ``{"recall": r}``
        iou: the IoU of a match; use_masks: whether masks were matched instead of boxes
        score_floor: the lowest score kept
        classes: one :class:`ClassCalibration` per class, in order
        curves: ``{label: {text: {"thresholds", "precision", "recall", "f1"}}}``, descending thresholds
        model_summary: the inference pass's summary (samples processed, detections, skipped)
        seconds: wall-clock seconds of the ``inference`` pass and of the ``sweep`` (matching included)
    """

    key: str
    gt_field: str
    objective: object
    iou: float
    use_masks: bool
    score_floor: float
    classes: list[ClassCalibration]
    curves: dict = field(default_factory=dict)
    model_summary: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def prompts(self) -> list[dict]:
        """``{"text", "label", "threshold"}`` per class, for ``sam3_ops.segment(..., prompts=...)``
        (a ``None`` threshold, a class not calibrated with no default given, is left out)."""
        prompts = []
        for row in self.classes:
            prompt = {"text": row.text, "label": row.label}
            if row.threshold is not None:
                prompt["threshold"] = row.threshold
            prompts.append(prompt)
        return prompts

    @property
    def table(self) -> list[dict]:
        """One row per class (the candidates left out): for a report or a table."""
        return [{k: v for k, v in asdict(row).items() if k != "candidates"} for row in self.classes]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CalibrationResult:
        values = dict(values)
        values["classes"] = [ClassCalibration(**row) for row in values["classes"]]
        return cls(**values)


def calibrate(
    labelled_view,
    gt_field: str,
    *,
    candidates: dict | None = None,
    objective="f1",
    iou: float = 0.5,
    use_masks: bool = False,
    score_floor: float = 0.05,
    min_objects: int = 10,
    min_f1: float = 0.2,
    key: str = "default",
    record: bool = True,
    **options,
) -> CalibrationResult:
    """Calibrates text prompts on ``labelled_view``'s ground truth: per class, the wording and
    threshold that best meet ``objective``.

    Args:
        labelled_view: an image dataset or view with ground truth in ``gt_field``
        gt_field: its ``Detections`` ground truth
        candidates (None): ``{class: [wording, ...]}``; default: every class of ``gt_field``, its
            name its only wording. A class may be absent from the ground truth (it is then reported
            with too few objects)
        objective ("f1"): ``"f1"`` (the threshold of highest F1), ``{"precision": p}`` (the lowest
            threshold whose precision reaches ``p``) or ``{"recall": r}`` (the highest threshold
            whose recall reaches ``r``); a class none of whose wordings reaches it gets its best F1
            point, flagged
        iou (0.5): the IoU of a match; use_masks (False): match masks rather than boxes
        score_floor (0.05): the lowest score kept in the one inference pass
        min_objects (10): classes with fewer ground-truth objects keep the default threshold
        min_f1 (0.2): a class whose best F1 is below this is flagged :data:`NOT_FOUND_NOTE`
        key ("default"): the calibration's key; its run is ``sam3_calibration_<key>``
        record (True): store the result as a run (replacing a calibration of the same key)
        **options: as for :func:`sam3_ops.segment`: run options (``token``, ``reuse``,
            ``batch_size``, ``num_workers``, ``skip_failures``, ``progress``) and
            :class:`~sam3_ops.sdk.settings.Sam3Settings` (``model_path``, ``device``,
            ``mask_threshold``, ...); ``threshold`` is the default threshold of classes not
            calibrated (default 0.5). ``mode``, ``prompts``, the prompt fields and
            ``max_detections`` are calibrate's own; ``shards`` and ``only_missing`` do not apply

    Returns:
        a :class:`CalibrationResult`

    Raises:
        ValueError: a bad argument or setting, naming it (before anything runs); a missing or empty
            ground-truth field; a scratch field that already exists
        ModelLoadError: the checkpoint cannot be loaded
    """
    # a public function in FiftyOne's style (compare evaluate_detections): every knob a documented keyword
    settings, run = split_options(options)
    default_threshold = _check_arguments(labelled_view, gt_field, settings, run, iou, score_floor, min_f1, min_objects)
    candidates = _candidates(labelled_view, gt_field, candidates)
    goal = _objective(objective)
    scratch = f"{calibration_run_key(key)}_scratch"
    if root_dataset(labelled_view).has_field(scratch):
        raise ValueError(f"the scratch field {scratch!r} exists (an interrupted calibration?): delete it first")
    # the one inference pass: every distinct wording as a text prompt, its hits labelled with the wording
    texts = list(dict.fromkeys(text for words in candidates.values() for text in words))
    started = time.perf_counter()
    try:
        summary = segment(labelled_view, scratch, prompts=texts, threshold=score_floor, record=False, **run, **settings)
        inferred = time.perf_counter()
        matches, counts = _match_candidates(labelled_view, scratch, gt_field, candidates, iou, use_masks)
        rows, curves = [], {}
        for label, by_text in matches.items():
            sweeps = {text: _sweep(found, counts[label]) for text, found in by_text.items()}
            curves[label] = {text: sweep.curve() for text, sweep in sweeps.items()}
            limits = (min_objects, min_f1, score_floor)
            rows.append(_choose(label, sweeps, counts[label], goal, limits, default_threshold))
        swept = time.perf_counter()
    finally:
        if root_dataset(labelled_view).has_field(scratch):
            root_dataset(labelled_view).delete_sample_field(scratch)
    numbers = {"iou": float(iou), "use_masks": bool(use_masks), "score_floor": float(score_floor)}
    result = CalibrationResult(
        key=key,
        gt_field=gt_field,
        objective=objective,
        classes=rows,
        curves=curves,
        model_summary=summary.counts().to_dict(),
        seconds={"inference": round(inferred - started, 3), "sweep": round(swept - inferred, 3)},
        **numbers,
    )
    if record:
        config = {"gt_field": gt_field, "candidates": candidates, "objective": objective, **numbers}
        config |= {"min_objects": min_objects, "min_f1": float(min_f1)}
        config["settings"] = {k: v for k, v in settings.items() if _plain(v)}
        record_calibration(labelled_view, key, config, result.to_dict())
    return result


def _check_arguments(labelled_view, gt_field, settings: dict, run: dict, iou, score_floor, min_f1, min_objects):
    """Checks calibrate's arguments before anything runs; takes calibrate's own settings out of
    ``settings`` (a ``threshold``: the default of classes not calibrated, returned; ``nms_per_label``
    forced on when de-duplicating, as wordings must not suppress each other's hits).

    Raises:
        ValueError: naming the bad argument
    """
    given = (name for name in _FIXED if name in settings and not (name == "mode" and settings[name] == "text"))
    fixed = sorted(given) + sorted(name for name in ("shards", "only_missing") if name in run)
    if fixed:
        raise ValueError(f"calibrate chooses {', '.join(fixed)} itself; do not pass {fixed[0]!r}")
    settings.pop("mode", None)
    media_type = getattr(labelled_view, "media_type", type(labelled_view))
    if media_type != "image":
        raise ValueError(f"calibrate needs an image dataset or view, not {media_type!r}")
    check_label_field(labelled_view, gt_field, require_labels=True, what="gt_field")
    for name, value in (("iou", iou), ("score_floor", score_floor), ("min_f1", min_f1)):
        if problem := unit_interval_problem(value, name):
            raise ValueError(problem)
    if not isinstance(min_objects, int) or isinstance(min_objects, bool) or min_objects < 1:
        raise ValueError(f"min_objects must be a positive integer, not {min_objects!r}")
    default_threshold = settings.pop("threshold", None)
    if default_threshold is not None and (problem := unit_interval_problem(default_threshold, "threshold")):
        raise ValueError(problem)
    if settings.get("nms_iou") is not None or settings.get("nms_containment") is not None:
        settings["nms_per_label"] = True
    return default_threshold


def get_calibration(samples, key: str = "default") -> CalibrationResult | None:
    """The calibration stored under ``key`` on ``samples``' dataset, or ``None``."""
    stored = load_calibration(samples, key)
    return None if stored is None else CalibrationResult.from_dict(stored)


# -- the sweep (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """One candidate's hits, matched: scores (descending) and whether each matched a ground truth."""

    scores: np.ndarray
    matched: np.ndarray
    ground_truth: int

    def points(self):
        """``(thresholds, tp, fp)`` at each distinct score (descending): hits scoring >= it kept."""
        if not len(self.scores):
            return np.zeros(0), np.zeros(0, int), np.zeros(0, int)
        tp = np.cumsum(self.matched)
        fp = np.cumsum(~self.matched)
        # the last hit of each run of equal scores: a threshold keeps all of them or none
        last = np.r_[self.scores[1:] != self.scores[:-1], True]
        return self.scores[last], tp[last], fp[last]

    def curve(self) -> dict:
        thresholds, tp, fp = self.points()
        precision, recall, f1 = _prf(tp, fp, self.ground_truth)
        return dict(
            thresholds=thresholds.tolist(), precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist()
        )

    def ap(self) -> float:
        """COCO's 101-point interpolated average precision."""
        if not self.ground_truth or not len(self.scores):
            return 0.0
        _, tp, fp = self.points()
        precision, recall, _ = _prf(tp, fp, self.ground_truth)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or more
        levels = np.linspace(0.0, 1.0, 101)
        at = np.searchsorted(recall, levels, side="left")
        return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in at]))


def _prf(tp, fp, ground_truth):
    tp, fp = np.asarray(tp, float), np.asarray(fp, float)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / ground_truth if ground_truth else np.zeros_like(tp)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def _sweep(matches: list[tuple[float, bool]], ground_truth: int) -> Sweep:
    order = sorted(matches, key=lambda m: -m[0])
    scores = np.array([m[0] for m in order], float)
    matched = np.array([m[1] for m in order], bool)
    return Sweep(scores, matched, ground_truth)


def _match_candidates(labelled_view, scratch: str, gt_field: str, candidates: dict, iou: float, use_masks: bool):
    """Each wording's hits in ``scratch`` matched to its class's ground truth, image by image.

    Boxes (no crowd in the ground truth) are matched by :func:`_match_boxes`, on arrays; masks, and
    ground truth with crowds, by FiftyOne's own COCO evaluation of ``evaluate_detections``
    (``classwise=False``: ground truth and hits carry different labels), run on labels read once,
    ``SWEEP_CHUNK`` samples at a time, rather than one ``evaluate_detections`` and two filtered
    views per class and wording. Nothing is written.

    Returns:
        ``(matches, counts)``: ``{class: {wording: [(score, matched), ...]}}`` and the ground-truth
        objects of each class in ``labelled_view``
    """
    if not use_masks and iou > 0 and not labelled_view.count_values(f"{gt_field}.detections.iscrowd").get(True):
        return _match_boxes(labelled_view, scratch, gt_field, candidates, iou)
    method = COCOEvaluationConfig(scratch, gt_field, iou=iou, classwise=False, use_masks=use_masks).build()
    method.register_samples(labelled_view, None)  # the fields it reads; no eval key: nothing registered
    samples = labelled_view.select_fields([gt_field, scratch])
    if not use_masks:
        samples = samples.set_field(f"{gt_field}.detections.mask", None).set_field(f"{scratch}.detections.mask", None)
    matches = {label: {text: [] for text in dict.fromkeys(words)} for label, words in candidates.items()}
    counts = dict.fromkeys(candidates, 0)
    ids = labelled_view.values("id")
    for start in range(0, len(ids), SWEEP_CHUNK):
        chunk = samples.select(ids[start : start + SWEEP_CHUNK])
        for truth, hits in zip(*chunk.values([gt_field, scratch])):
            truth, hits = _by_label(truth), _by_label(hits)
            for label, by_text in matches.items():
                counts[label] += len(truth.get(label, ()))
                for text, found in by_text.items():
                    found += _match_image(method, truth.get(label), hits.get(text))
    return matches, counts


def _match_boxes(labelled_view, scratch: str, gt_field: str, candidates: dict, iou: float):
    """:func:`_match_candidates` for boxes without crowds, on arrays read with ``values()`` (no label
    objects are built): per image, class and wording, FiftyOne's COCO greedy matching exactly
    (``fiftyone.utils.eval.coco``: hits by descending confidence, a confidence of 0 or none last;
    each takes the unmatched ground truth of highest IoU at or above ``iou``, computed as
    ``fiftyone.utils.iou.compute_bbox_iou`` does); equal IoUs go to the first ground truth, where
    FiftyOne's order is its spatial index's. The tests compare it with ``evaluate_detections``."""
    threshold = min(iou, 1 - 1e-10)  # FiftyOne's own cap
    matches = {label: {text: [] for text in dict.fromkeys(words)} for label, words in candidates.items()}
    counts = dict.fromkeys(candidates, 0)
    paths = [f"{gt_field}.detections.label", f"{gt_field}.detections.bounding_box"]
    paths += [f"{scratch}.detections.{name}" for name in ("label", "bounding_box", "confidence")]
    for gt_labels, gt_boxes, hit_labels, hit_boxes, hit_scores in zip(*labelled_view.values(paths)):
        truth = _group(gt_labels, gt_boxes)
        hits = _group(hit_labels, hit_boxes, hit_scores)
        for label, by_text in matches.items():
            boxes = truth.get(label, ([], []))[0]
            counts[label] += len(boxes)
            for text, found in by_text.items():
                if text in hits:
                    found += _greedy_match(np.array(boxes, float).reshape(-1, 4), *hits[text], threshold)
    return matches, counts


def _group(labels, boxes, scores=None) -> dict:
    """``{label: (boxes, scores)}`` of one image's label, box (and score) lists (``None``: none)."""
    grouped: dict = {}
    for i, label in enumerate(labels or ()):
        entry = grouped.setdefault(label, ([], []))
        entry[0].append(boxes[i])
        entry[1].append(scores[i] if scores is not None else None)
    return grouped


def _greedy_match(truth: np.ndarray, boxes: list, scores: list, threshold: float) -> list[tuple[float, bool]]:
    """``(score, matched)`` of each hit (relative ``[x, y, w, h]`` ``boxes``) against ``truth``."""
    keys = np.array([score or -1 for score in scores], float)
    hits = np.array(boxes, float).reshape(-1, 4)
    if not len(truth):
        return [(float(score), False) for score in scores]
    # compute_bbox_iou's arithmetic, one hit against every ground-truth box at once
    width = np.minimum(hits[:, None, 0] + hits[:, None, 2], truth[None, :, 0] + truth[None, :, 2])
    width = width - np.maximum(hits[:, None, 0], truth[None, :, 0])
    height = np.minimum(hits[:, None, 1] + hits[:, None, 3], truth[None, :, 1] + truth[None, :, 3])
    height = height - np.maximum(hits[:, None, 1], truth[None, :, 1])
    inter = np.where((width > 0) & (height > 0), height * width, 0.0)
    union = (hits[:, 3] * hits[:, 2])[:, None] + (truth[:, 3] * truth[:, 2])[None, :] - inter
    ious = np.minimum(np.divide(inter, union, out=np.zeros_like(inter), where=union != 0), 1)
    taken = np.zeros(len(truth), bool)
    found = []
    for i in np.argsort(-keys, kind="stable"):  # sorted(..., reverse=True) keeps ties in order too
        open_ = np.flatnonzero(~taken & (ious[i] >= threshold))
        if open_.size:
            taken[open_[np.argmax(ious[i, open_])]] = True
        found.append((float(scores[i]), bool(open_.size)))
    return found


def _by_label(labels) -> dict:
    """``{label: [Detection, ...]}`` of a ``Detections`` (or ``None``)."""
    grouped = {}
    for detection in labels.detections if labels is not None else ():
        grouped.setdefault(detection.label, []).append(detection)
    return grouped


def _match_image(method, truth: list | None, hits: list | None) -> list[tuple[float, bool]]:
    """``(score, matched)`` of each of one image's ``hits`` against its ``truth``, by ``method``
    (a registered COCO evaluation; the objects get its attributes, and are never saved)."""
    if not hits:
        return []
    if not truth:  # nothing to match: every hit is a false positive
        return [(float(hit.confidence), False) for hit in hits]
    labels = {method.gt_field: _detections(truth), method.pred_field: _detections(hits)}
    return [
        (float(conf), gt_id is not None)
        for _, _, _, conf, gt_id, pred_id in method.evaluate(labels, eval_key=_EVAL_KEY)
        if pred_id is not None
    ]


def _detections(objects: list) -> Detections:
    labels = Detections()
    labels.detections = objects  # assigned, not passed: validated once already, when they were read
    return labels


def _pick(precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, goal: tuple[str, float | None]):
    """The index of the chosen point of a curve (descending thresholds) and whether it met ``goal``;
    a goal not met gets the best F1 point."""
    kind, target = goal
    if kind == "precision" and (precision >= target).any():
        return int(np.flatnonzero(precision >= target)[-1]), True  # the lowest threshold reaching it
    if kind == "recall" and (recall >= target).any():
        return int(np.flatnonzero(recall >= target)[0]), True  # the highest threshold reaching it
    return int(np.argmax(f1)), kind == "f1"  # ties: the highest threshold


def _gap_threshold(thresholds: np.ndarray, index: int, floor: float) -> float:
    """A threshold that keeps the hits of point ``index`` and drops the next lower ones: midway
    between the lowest kept score and the next lower (or the floor); the engine keeps scores above it."""
    kept = float(thresholds[index])
    below = float(thresholds[index + 1]) if index + 1 < len(thresholds) else min(floor, kept)
    return (kept + below) / 2


def _choose(label, sweeps, ground_truth, goal, limits, default_threshold) -> ClassCalibration:
    """The best wording of a class and its threshold (or the default threshold with too few
    objects); ``limits``: ``(min_objects, min_f1, score_floor)``."""
    min_objects, min_f1, floor = limits
    summaries, ranked = {}, []
    for position, (text, sweep) in enumerate(sweeps.items()):
        thresholds, tp, fp = sweep.points()
        ap = sweep.ap()
        # a wording with no hits: no point, nothing reached, all zero
        threshold, precision, recall, f1, point, reached = None, 0.0, 0.0, 0.0, None, False
        if len(thresholds):
            curve = _prf(tp, fp, ground_truth)
            index, reached = _pick(*curve, goal)
            precision, recall, f1 = (float(v[index]) for v in curve)
            threshold = _gap_threshold(thresholds, index, floor)
            counts = (int(tp[index]), int(fp[index]), ground_truth - int(tp[index]))
            point = (threshold, precision, recall, f1, counts)
        summaries[text] = dict(threshold=threshold, precision=precision, recall=recall, f1=f1, ap=ap, reached=reached)
        # what the objective leaves free decides between wordings that reach it
        second = {"precision": recall, "recall": precision}.get(goal[0], f1)
        ranked.append(((reached, second, f1, ap, -position), text, point))
    ranked.sort(key=lambda r: r[0], reverse=True)
    _, text, point = ranked[0]
    row = ClassCalibration(label=label, text=text, threshold=default_threshold, ground_truth=ground_truth)
    row.candidates = summaries
    row.ap = summaries[text]["ap"]
    if ground_truth < min_objects:
        row.text = next(iter(sweeps))  # the first wording: nothing to choose on
        row.ap = summaries[row.text]["ap"]
        row.flag = TOO_FEW_NOTE
        return row
    if point is None:
        row.precision = row.recall = row.f1 = 0.0
        row.fn = ground_truth
        row.flag = NOT_FOUND_NOTE
        return row
    row.threshold, row.precision, row.recall, row.f1, (row.tp, row.fp, row.fn) = point
    row.calibrated = True
    if row.f1 < min_f1:
        row.flag = NOT_FOUND_NOTE
    elif not summaries[text]["reached"]:
        row.flag = f"no wording reaches {goal[0]} {goal[1]}; the best F1 threshold is used"
    return row


# -- arguments --------------------------------------------------------------------------------------


def _objective(objective) -> tuple[str, float | None]:
    if objective == "f1":
        return "f1", None
    if isinstance(objective, dict) and len(objective) == 1:
        ((kind, target),) = objective.items()
        if kind in ("precision", "recall"):
            if problem := unit_interval_problem(target, f"the {kind} objective"):
                raise ValueError(problem)
            return kind, float(target)
    raise ValueError(f"objective must be 'f1', {{'precision': p}} or {{'recall': r}}, not {objective!r}")


def _candidates(samples, gt_field: str, candidates) -> dict[str, list[str]]:
    """``{class: [wording, ...]}``, wordings normalised as prompts are (white space collapsed)."""
    if candidates is None:
        return {label: [normalize_prompts(label, "text")[0].text] for label in review_classes(samples, gt_field, None)}
    if not isinstance(candidates, dict) or not candidates:
        raise ValueError(f"candidates must be a non-empty dict {{class: [wording, ...]}}, not {candidates!r}")
    cleaned = {}
    for label, words in candidates.items():
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"candidates has class {label!r}; classes must be non-blank strings")
        try:
            words = [words] if isinstance(words, str) else list(words)
            cleaned[label] = [prompt.text for prompt in normalize_prompts(words, "text")]
        except (TypeError, ValueError) as error:
            raise ValueError(f"the candidates of class {label!r}: {error}") from error
    return cleaned


def _plain(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | tuple | dict)
