"""``sam3_ops.calibrate`` on a real dataset and the tiny checkpoint, on ground truth built from the
model's own hits so the answer is known: the wording and threshold it picks, its precision /
recall / F1 against a brute-force count and FiftyOne's own evaluation, one image-encoder pass for
any number of wordings, prompts that ``segment`` takes as they are, and the stored run."""

import fiftyone as fo
import numpy as np
import pytest
import torch
from fiftyone import ViewField as F
from transformers.models.sam3.modeling_sam3 import Sam3VisionModel

import sam3_ops
import sam3_ops.curation.calibrate as calibrate_module
from sam3_ops.curation.calibrate import NOT_FOUND_NOTE, TOO_FEW_NOTE
from sam3_ops.testing import build_tiny_checkpoint

IOU = 0.5


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny checkpoint with each of its 20 queries given a box of its own, the same on every
    image (``grid_boxes``). (The plain tiny checkpoint predicts nearly the same box for every
    query, so every hit matches every ground truth and no wording could be told from another.)
    Each wording still ranks the queries its own way."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3-grid"), grid_boxes=True)


@pytest.fixture(scope="module")
def hits(image_paths, tiny_checkpoint):
    """A dataset of the test images with every hit of "cat" (threshold 0) in ``cat_hits``, and the
    gap in their scores: ``(dataset, low, high)``, no score strictly between ``low`` and ``high``."""
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in image_paths])
    sam3_ops.segment(
        dataset, "cat_hits", prompts=["cat"], threshold=0.0, model_path=tiny_checkpoint, device="cpu", record=False
    )
    scores = np.unique(dataset.values("cat_hits.detections.confidence", unwind=True))
    assert len(scores) > 20  # something to calibrate on
    # the widest gap between neighbouring scores in the middle of the range: GT above it, hits below it
    middle = range(len(scores) // 4, 3 * len(scores) // 4)
    i = max(middle, key=lambda k: scores[k + 1] - scores[k])
    low, high = float(scores[i]), float(scores[i + 1])
    _write_gt(dataset, "gt", lambda det, k: det.confidence >= high)
    yield dataset, low, high
    dataset.delete()


def _write_gt(dataset, field, keep, shift=lambda det, k: False, masks=False, label="animal"):
    """``field``: the ``cat_hits`` that ``keep`` (detection, running index), labelled "animal";
    those that ``shift`` moved to a small box in a corner; with ``masks``, their masks too."""
    counter = iter(range(10**6))
    for sample in dataset.iter_samples(autosave=True):
        detections = []
        for det in sample.cat_hits.detections:
            k = next(counter)
            if not keep(det, k):
                continue
            box = [0.97, 0.97, 0.02, 0.02] if shift(det, k) else list(det.bounding_box)
            mask = det.get_mask() if masks else None
            detections.append(fo.Detection(label=label, bounding_box=box, mask=mask))
        sample[field] = fo.Detections(detections=detections)


def _options(tiny_checkpoint, **more):
    return {"model_path": tiny_checkpoint, "device": "cpu", "min_objects": 1, **more}


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _brute_force(dataset, gt_field, threshold):
    """TP, FP, FN of the "cat" hits above ``threshold`` against ``gt_field``: each hit, highest
    score first, takes the unmatched ground truth it overlaps most (IoU >= 0.5). ``threshold``
    may be a list: then a list of counts."""
    if isinstance(threshold, list):
        samples = [(s.cat_hits.detections, s[gt_field].detections) for s in dataset]
        return [_count(samples, t) for t in threshold]
    return _count([(s.cat_hits.detections, s[gt_field].detections) for s in dataset], threshold)


def _count(samples, threshold):
    tp = fp = fn = 0
    for hits, truth in samples:
        preds = [d.bounding_box for d in sorted(hits, key=lambda d: -d.confidence) if d.confidence > threshold]
        gts = [d.bounding_box for d in truth]
        free = set(range(len(gts)))
        for pred in preds:
            best = max(free, key=lambda j: _iou(pred, gts[j]), default=None)
            if best is not None and _iou(pred, gts[best]) >= IOU:
                free.discard(best)
                tp += 1
            else:
                fp += 1
        fn += len(free)
    return tp, fp, fn


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _cuts(dataset, floor):
    """Each distinct "cat" score above ``floor``, ascending, with a threshold that keeps the hits
    scoring it or more: ``(score, threshold)``."""
    scores = sorted(s for s in set(dataset.values("cat_hits.detections.confidence", unwind=True)) if s > floor)
    return [(s, (s + (scores[i - 1] if i else floor)) / 2) for i, s in enumerate(scores)]


def test_picks_the_wording_and_a_threshold_in_the_gap(hits, tiny_checkpoint):
    dataset, low, high = hits
    ground_truth = dataset.count("gt.detections")
    assert ground_truth > 0
    result = sam3_ops.calibrate(
        dataset, "gt", candidates={"animal": ["dog", "cat", "red car"]}, key="gap", **_options(tiny_checkpoint)
    )
    (row,) = result.classes
    assert row.label == "animal" and row.text == "cat"
    assert low < row.threshold < high
    assert row.precision == row.recall == row.f1 == row.ap == 1.0
    assert (row.tp, row.fp, row.fn, row.ground_truth) == (ground_truth, 0, 0, ground_truth)
    assert row.calibrated and row.flag is None
    # the other wordings had hits and did worse
    for text in ("dog", "red car"):
        assert row.candidates[text]["threshold"] is not None
        assert row.candidates[text]["f1"] < 1.0
    assert result.prompts == [{"text": "cat", "label": "animal", "threshold": row.threshold}]
    assert not dataset.has_field("sam3_calibration_gap_scratch")  # the scratch field is gone


def test_by_default_each_class_is_its_own_wording(hits, tiny_checkpoint):
    dataset, low, high = hits
    _write_gt(dataset, "gt_named", lambda det, k: det.confidence >= high, label="cat")
    result = sam3_ops.calibrate(dataset, "gt_named", record=False, **_options(tiny_checkpoint))
    (row,) = result.classes
    assert (row.label, row.text, list(row.candidates)) == ("cat", "cat", ["cat"])
    assert low < row.threshold < high and row.f1 == 1.0 and row.tp == dataset.count("gt_named.detections") > 0


def test_masks_are_matched_when_asked(hits, tiny_checkpoint):
    dataset, low, high = hits
    _write_gt(dataset, "gt_masks", lambda det, k: det.confidence >= high, masks=True)
    assert dataset.count("gt_masks.detections.mask") == dataset.count("gt_masks.detections") > 0
    result = sam3_ops.calibrate(
        dataset,
        "gt_masks",
        candidates={"animal": ["dog", "cat"]},
        use_masks=True,
        record=False,
        **_options(tiny_checkpoint),
    )
    (row,) = result.classes
    assert row.text == "cat" and low < row.threshold < high and row.f1 == 1.0
    assert row.candidates["dog"]["f1"] < 1.0


def test_reported_counts_equal_a_brute_force_count_and_fiftyones_evaluation(hits, tiny_checkpoint):
    """A quarter of the ground truth removed, a fifth moved away: the reported P/R/F1 are a
    brute-force count's, the best F1 of all thresholds; the prompts run through segment as they
    are, and FiftyOne's evaluation of that field gives the same TP/FP/FN."""
    dataset, _, high = hits
    _write_gt(dataset, "gt_mod", lambda det, k: det.confidence >= high and k % 4, shift=lambda det, k: k % 5 == 0)
    result = sam3_ops.calibrate(
        dataset, "gt_mod", candidates={"animal": ["cat"]}, key="mod", **_options(tiny_checkpoint)
    )
    (row,) = result.classes
    assert row.tp > 0 and row.fp > 0 and row.fn > 0  # an imperfect match, something to compare
    counts = _brute_force(dataset, "gt_mod", row.threshold)
    assert (row.tp, row.fp, row.fn) == counts
    assert (row.precision, row.recall, row.f1) == pytest.approx(_prf(*counts))
    cuts = [t for _, t in _cuts(dataset, result.score_floor)]
    best = max(_prf(*counts)[2] for counts in _brute_force(dataset, "gt_mod", cuts))
    assert row.f1 == pytest.approx(best)

    # AP: FiftyOne's own COCO mAP at this IoU over every hit above the floor, named as the class
    for sample in dataset.iter_samples(autosave=True):
        kept = [d.copy() for d in sample.cat_hits.detections if d.confidence > result.score_floor]
        for d in kept:
            d.label = "animal"
        sample["all_hits"] = fo.Detections(detections=kept)
    coco = dataset.evaluate_detections("all_hits", gt_field="gt_mod", compute_mAP=True, iou_threshs=[IOU])
    assert 0 < row.ap < 1 and row.ap == pytest.approx(coco.mAP(), abs=1e-6)

    written = sam3_ops.segment(dataset, "calibrated", prompts=result.prompts, model_path=tiny_checkpoint, device="cpu")
    assert written.detections == row.tp + row.fp
    dataset.evaluate_detections("calibrated", gt_field="gt_mod", eval_key="ev", iou=IOU)
    assert (dataset.sum("ev_tp"), dataset.sum("ev_fp"), dataset.sum("ev_fn")) == (row.tp, row.fp, row.fn)


def test_precision_and_recall_objectives(hits, tiny_checkpoint):
    dataset, _, high = hits
    _write_gt(dataset, "gt_obj", lambda det, k: det.confidence >= high and k % 3)
    cuts = _cuts(dataset, 0.05)
    scores = [s for s, _ in cuts]
    counts = _brute_force(dataset, "gt_obj", [t for _, t in cuts])
    curve = [(s, _prf(*c)) for (s, _), c in zip(cuts, counts)]

    for kind, target in (("precision", 0.6), ("recall", 0.8)):
        result = sam3_ops.calibrate(
            dataset,
            "gt_obj",
            candidates={"animal": ["cat"]},
            objective={kind: target},
            record=False,
            **_options(tiny_checkpoint),
        )
        (row,) = result.classes
        index = 0 if kind == "precision" else 1
        reaching = [s for s, prf in curve if prf[index] >= target]
        assert reaching and len(reaching) < len(curve)  # the target splits the thresholds
        chosen = min(reaching) if kind == "precision" else max(reaching)
        below = max([s for s in scores if s < chosen], default=0.05)
        assert below <= row.threshold < chosen
        assert getattr(row, kind) >= target and row.flag is None


@pytest.mark.parametrize("crowds", [False, True], ids=["boxes-on-arrays", "crowds-fiftyone-matching"])
def test_each_wording_is_matched_as_evaluate_detections_does_on_filtered_views(
    hits, tiny_checkpoint, monkeypatch, crowds
):
    """Two classes sharing a wording, one of them absent from half the images, labels read two
    samples at a time: every wording's curve is the one FiftyOne's ``evaluate_detections`` gives on
    views filtered to the class's ground truth and the wording's hits (one evaluation per class and
    wording, as calibrate once ran it). Boxes are matched on arrays; with crowds in the ground
    truth, by FiftyOne's own matching (each path checked to be the one taken)."""
    dataset, _, high = hits
    counter = iter(range(10**6))
    on_arrays = []
    match_boxes = calibrate_module._match_boxes
    monkeypatch.setattr(calibrate_module, "_match_boxes", lambda *a: on_arrays.append(1) or match_boxes(*a))
    for index, sample in enumerate(dataset.iter_samples(autosave=True)):
        detections = []
        for det in sample.cat_hits.detections:
            k = next(counter)
            if det.confidence >= high and k % 4:
                crowd = {"iscrowd": 1} if crowds and k % 5 == 0 else {}
                detections.append(fo.Detection(label="animal", bounding_box=list(det.bounding_box), **crowd))
            if index < len(dataset) // 2 and k % 3 == 0:
                detections.append(fo.Detection(label="pet", bounding_box=list(det.bounding_box)))
        sample["gt_two"] = fo.Detections(detections=detections)
    assert 0 < dataset.match(F("gt_two.detections").filter(F("label") == "pet").length() == 0).count() < len(dataset)
    monkeypatch.setattr(calibrate_module, "SWEEP_CHUNK", 2)
    candidates = {"animal": ["cat", "dog"], "pet": ["red car", "cat"]}
    result = sam3_ops.calibrate(dataset, "gt_two", candidates=candidates, record=False, **_options(tiny_checkpoint))

    # the same hits: the same prompts in the same order at the same floor
    sam3_ops.segment(
        dataset,
        "two_hits",
        prompts=["cat", "dog", "red car"],
        threshold=result.score_floor,
        record=False,
        model_path=tiny_checkpoint,
        device="cpu",
    )
    matched_by_class = dict.fromkeys(candidates, 0)
    for row in result.classes:
        gt_view = dataset.filter_labels("gt_two", F("label") == row.label, only_matches=False)
        assert row.ground_truth == gt_view.count("gt_two.detections") > 0
        for text in candidates[row.label]:
            view = gt_view.filter_labels("two_hits", F("label") == text, only_matches=False)
            evaluation = view.evaluate_detections("two_hits", gt_field="gt_two", iou=IOU, classwise=False)
            pairs = [
                (conf, gt_id is not None)
                for gt_id, pred_id, conf in zip(evaluation.ytrue_ids, evaluation.ypred_ids, evaluation.confs)
                if pred_id is not None
            ]
            assert pairs  # hits to compare
            matched_by_class[row.label] += sum(m for _, m in pairs)
            thresholds = sorted({score for score, _ in pairs}, reverse=True)
            kept = [[m for score, m in pairs if score >= t] for t in thresholds]
            curve = result.curves[row.label][text]
            assert curve["thresholds"] == thresholds
            assert curve["precision"] == pytest.approx([sum(k) / len(k) for k in kept])
            assert curve["recall"] == pytest.approx([sum(k) / row.ground_truth for k in kept])
    assert all(matched_by_class.values())  # each class's ground truth was matched by some hit
    assert on_arrays == ([] if crowds else [1])


def test_one_image_encoder_pass_for_any_number_of_wordings(hits, tiny_checkpoint):
    dataset, _, _ = hits
    images = []

    def count(module, args, output):
        if isinstance(module, Sam3VisionModel):
            pixels = args[0] if args else None
            images.append(int(pixels.shape[0]) if pixels is not None else 1)

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        seen = []
        for words in (["cat"], ["dog", "cat", "red car", "a small bird", "tree"]):
            images.clear()
            sam3_ops.calibrate(
                dataset, "gt", candidates={"animal": words}, reuse=False, record=False, **_options(tiny_checkpoint)
            )
            seen.append(sum(images))
    finally:
        handle.remove()
    assert seen == [len(dataset), len(dataset)]


def test_the_run_is_stored_and_reloads(hits, tiny_checkpoint):
    dataset, _, _ = hits
    result = sam3_ops.calibrate(
        dataset, "gt", candidates={"animal": ["cat", "dog"]}, key="stored", **_options(tiny_checkpoint)
    )
    assert "sam3_calibration_stored" in dataset.list_runs()
    assert dataset.get_run_info("sam3_calibration_stored").config.method == "sam3_ops.calibrate"
    loaded = sam3_ops.get_calibration(dataset, "stored")
    assert loaded.to_dict() == result.to_dict()
    assert loaded.prompts == result.prompts and loaded.classes[0].text == "cat"
    assert sam3_ops.get_calibration(dataset, "never_run") is None


def test_too_few_objects_and_words_that_find_nothing_are_flagged(hits, tiny_checkpoint):
    dataset, _, _ = hits
    ground_truth = dataset.count("gt.detections")
    few = sam3_ops.calibrate(
        dataset,
        "gt",
        candidates={"animal": ["cat"]},
        record=False,
        threshold=0.3,
        **_options(tiny_checkpoint, min_objects=ground_truth + 1),
    )
    (row,) = few.classes
    assert row.flag == TOO_FEW_NOTE and not row.calibrated and row.threshold == 0.3
    assert few.prompts == [{"text": "cat", "label": "animal", "threshold": 0.3}]

    absent = sam3_ops.calibrate(
        dataset, "gt", candidates={"animal": ["red car"]}, record=False, min_f1=0.99, **_options(tiny_checkpoint)
    )
    (row,) = absent.classes
    assert row.calibrated and row.f1 < 0.99 and row.flag == NOT_FOUND_NOTE


def test_bad_arguments_are_named_before_anything_runs(hits, tiny_checkpoint):
    dataset, _, _ = hits
    options = _options(tiny_checkpoint)
    with pytest.raises(ValueError, match="objective"):
        sam3_ops.calibrate(dataset, "gt", objective={"accuracy": 0.9}, **options)
    with pytest.raises(ValueError, match="prompts"):
        sam3_ops.calibrate(dataset, "gt", prompts=["cat"], **options)
    with pytest.raises(ValueError, match="gt_field"):
        sam3_ops.calibrate(dataset, "no_such_field", **options)
    for option in ({"shards": 2}, {"only_missing": True}):  # run options that do not apply to calibrate
        with pytest.raises(ValueError, match=next(iter(option))):
            sam3_ops.calibrate(dataset, "gt", **option, **options)
    with pytest.raises(ValueError, match="batch_size"):  # a run option goes through segment's own check
        sam3_ops.calibrate(dataset, "gt", **{**options, "batch_size": 0})
    with pytest.raises(ValueError, match="animal"):
        sam3_ops.calibrate(dataset, "gt", candidates={"animal": ["cat", ""]}, **options)
    dataset.add_sample_field("sam3_calibration_taken_scratch", fo.StringField)
    try:
        with pytest.raises(ValueError, match="sam3_calibration_taken_scratch"):
            sam3_ops.calibrate(dataset, "gt", key="taken", **options)
        assert dataset.has_field("sam3_calibration_taken_scratch")  # refused, not deleted
    finally:
        dataset.delete_sample_field("sam3_calibration_taken_scratch")
    with pytest.raises(sam3_ops.ModelLoadError):
        sam3_ops.calibrate(dataset, "gt", **{**options, "model_path": "/nonexistent/checkpoint"})
    videos = fo.Dataset()
    videos.add_sample(fo.Sample(filepath="/nonexistent/clip.mp4"))
    try:
        with pytest.raises(ValueError, match="image dataset"):
            sam3_ops.calibrate(videos, "gt", **options)
    finally:
        videos.delete()
    assert not any(name.startswith("sam3_calibration") for name in dataset.get_field_schema())


def test_the_box_matcher_equals_fiftyones_coco_matching_on_random_boxes():
    """The array matcher of the sweep (boxes, no crowds) against FiftyOne's own COCO matching, hit by
    hit, on 300 random images: clustered boxes, so that hits compete for the same ground truth,
    confidence ties and zeros among the scores, and IoU thresholds 0.3, 0.5 and 0.75."""
    from fiftyone.utils.eval.coco import COCOEvaluationConfig

    from sam3_ops.curation import calibrate as calibration

    rng = np.random.default_rng(0)
    compared = matched = 0
    for image in range(300):
        centres = rng.uniform(0.2, 0.8, size=(3, 2))

        def boxes(n, centres=centres):
            xy = centres[rng.integers(0, 3, n)] + rng.normal(0, 0.03, (n, 2))
            wh = rng.uniform(0.05, 0.2, (n, 2))
            return np.concatenate([xy - wh / 2, wh], axis=1).tolist()

        truth, hits = boxes(int(rng.integers(0, 6))), boxes(int(rng.integers(1, 9)))
        scores = rng.choice([0.0, 0.3, 0.3, 0.5, 0.7, 0.9], size=len(hits)).tolist()
        iou = [0.3, 0.5, 0.75][image % 3]
        method = COCOEvaluationConfig("hits", "gt", iou=iou, classwise=False).build()
        method.gt_field, method.pred_field = "gt", "hits"  # what register_samples sets, without a dataset
        labels = {
            "gt": fo.Detections(detections=[fo.Detection(label="a", bounding_box=b) for b in truth]),
            "hits": fo.Detections(
                detections=[fo.Detection(label="w", bounding_box=b, confidence=s) for b, s in zip(hits, scores)]
            ),
        }
        expected = (
            sorted(
                (float(conf), gt_id is not None)
                for _, _, _, conf, gt_id, pred_id in method.evaluate(labels, eval_key="check")
                if pred_id is not None
            )
            if truth
            else sorted((s, False) for s in scores)
        )  # FiftyOne's matching wants some ground truth
        ours = calibration._greedy_match(np.array(truth, float).reshape(-1, 4), hits, scores, min(iou, 1 - 1e-10))
        assert sorted(ours) == expected, image
        compared += len(ours)
        matched += sum(m for _, m in ours)
    assert compared > 1000 and 100 < matched < compared  # there were matches and misses to compare
