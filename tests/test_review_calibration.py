"""QA review with a calibration (``review_annotations(..., calibration=...)``) on a real dataset and
the tiny checkpoint whose queries each have a box of their own (as in ``tests/test_calibrate.py``),
on ground truth built from the model's own hits so the answer is known: each class is prompted
with its calibrated words at its calibrated threshold, the others with their name at the run's
threshold, per-sample classes keep their own prompts, a bad calibration is refused before anything
is written, and the App's review operator offers the stored calibrations."""

import dataclasses

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

import sam3_ops
from sam3_ops.curation import review
from sam3_ops.curation.calibrate import NOT_FOUND_NOTE, CalibrationResult, ClassCalibration
from sam3_ops.testing import build_tiny_checkpoint
from tests.test_qa import invalid_props, make_ctx

#: the threshold of the classes no calibration covers: above every score of the tiny model
GLOBAL_THRESHOLD = 0.5


@pytest.fixture(scope="module")
def grid_checkpoint(tmp_path_factory):
    """The tiny checkpoint with each of its 20 queries given a box of its own, the same on every
    image (``grid_boxes``: a 5 x 4 grid of disjoint boxes), as ``tests/test_calibrate.py`` uses."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3-grid"), grid_boxes=True)


def _gap(scores):
    """A threshold in the widest gap between neighbouring distinct scores in the middle of the
    range: ``(low, high)``, no score strictly between them."""
    scores = np.unique(scores)
    middle = range(len(scores) // 4, 3 * len(scores) // 4)
    i = max(middle, key=lambda k: scores[k + 1] - scores[k])
    return float(scores[i]), float(scores[i + 1])


@pytest.fixture(scope="module")
def labelled(image_paths, grid_checkpoint):
    """The test images with every hit (threshold 0) of "cat" in ``cat_hits`` and of "dog" in
    ``dog_hits``, and ground truth ``gt``: the "cat" hits above the middle gap of their scores,
    labelled "animal". Yields ``(dataset, (low, high))``: the gap of the "cat" scores."""
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in image_paths])
    for word in ("cat", "dog"):
        sam3_ops.segment(
            dataset, f"{word}_hits", prompts=[word], threshold=0.0, model_path=grid_checkpoint, device="cpu",
            record=False,
        )  # fmt: skip
    scores = dataset.values("cat_hits.detections.confidence", unwind=True)
    assert len(set(scores)) > 20 and max(scores) < GLOBAL_THRESHOLD  # at the global threshold: no hit
    low, high = _gap(scores)
    for sample in dataset.iter_samples(autosave=True):
        kept = [d for d in sample.cat_hits.detections if d.confidence >= high]
        sample["gt"] = fo.Detections(
            detections=[fo.Detection(label="animal", bounding_box=list(d.bounding_box)) for d in kept]
        )
    assert dataset.count("gt.detections") > 0
    yield dataset, (low, high)
    dataset.delete()


def _review(dataset, checkpoint, **kwargs):
    options = {
        "model_path": checkpoint, "device": "cpu", "threshold": GLOBAL_THRESHOLD, "check_boxes": False,
        "num_workers": 0, "overwrite": True, **kwargs,
    }  # fmt: skip
    return review.review_annotations(dataset, "gt", **options)


def _calibrate(dataset, checkpoint, key):
    """The real calibration of "animal" on ``gt``: "cat" among three wordings."""
    return sam3_ops.calibrate(
        dataset, "gt", candidates={"animal": ["dog", "cat", "red car"]}, key=key, min_objects=1,
        model_path=checkpoint, device="cpu",
    )  # fmt: skip


def _above(dataset, field, threshold):
    """Per sample (in dataset order), how many detections of ``field`` score above ``threshold``."""
    return [sum(c > threshold for c in confs or []) for confs in dataset.values(f"{field}.detections.confidence")]


def test_the_calibrated_wording_and_threshold_find_what_the_class_name_does_not(labelled, grid_checkpoint):
    dataset, (low, high) = labelled
    ground_truth = dataset.count("gt.detections")

    plain = _review(dataset, grid_checkpoint, pred_field="plain", eval_key="plain")
    assert plain.calibration is None and plain.prompts == [
        {"text": "animal", "label": "animal", "threshold": GLOBAL_THRESHOLD}
    ]
    assert dataset.count("plain.detections") == 0  # "animal" at the global threshold finds nothing
    (row,) = plain.table
    assert (row["ground_truth"], row["matched"], row["possible_spurious"]) == (ground_truth, 0, ground_truth)
    with_gt = set(dataset.match(F("gt.detections").length() > 0).values("id"))
    assert set(dataset.match_tags(review.SPURIOUS_TAG).values("id")) == with_gt

    calibration = _calibrate(dataset, grid_checkpoint, "animals")
    (prompt,) = calibration.prompts
    assert prompt["text"] == "cat" and low < prompt["threshold"] < high
    result = _review(dataset, grid_checkpoint, pred_field="calibrated", eval_key="calibrated", calibration="animals")
    assert result.calibration == "animals" and result.calibration_flags == {}
    assert result.prompts == [prompt]
    assert dataset.count("calibrated.detections") == ground_truth  # exactly the hits the ground truth holds
    assert set(dataset.distinct("calibrated.detections.label")) == {"animal"}
    (row,) = result.table
    assert (row["matched"], row["possible_spurious"], row["possible_missing"]) == (ground_truth, 0, 0)
    assert row["precision"] == row["recall"] == 1.0
    assert result.tag_counts[review.SPURIOUS_TAG] == 0 and len(dataset.match_tags(review.SPURIOUS_TAG)) == 0

    record = sam3_ops.get_run(dataset, "calibrated")
    assert record.summary["calibration"] == "animals"
    assert [p.text for p in record.settings.prompts] == ["cat"]
    assert record.settings.prompts[0].label == "animal" and record.settings.prompts[0].threshold == prompt["threshold"]


def _hand_calibration(dataset, thresholds):
    """A calibration of ``gt`` by hand: "animal" -> "cat", "pet" -> "dog", at ``thresholds``;
    "pet" flagged as not found."""
    animal, pet = thresholds
    return CalibrationResult(
        key="by_hand", gt_field="gt", objective="f1", iou=0.5, use_masks=False, score_floor=0.05,
        classes=[
            ClassCalibration(label="animal", text="cat", threshold=animal, calibrated=True),
            ClassCalibration(label="pet", text="dog", threshold=pet, calibrated=True, flag=NOT_FOUND_NOTE),
            ClassCalibration(label="tree", text="a tall tree", threshold=0.0, calibrated=True),  # not reviewed
        ],
    )  # fmt: skip


def test_each_class_keeps_its_own_threshold_in_the_written_field(labelled, grid_checkpoint):
    dataset, (low, high) = labelled
    animal = (low + high) / 2
    dog_scores = np.unique(dataset.values("dog_hits.detections.confidence", unwind=True))
    k = len(dog_scores) // 4  # a threshold of its own for "pet": between two "dog" scores, well below "animal"'s
    pet = float(dog_scores[k - 1] + dog_scores[k]) / 2
    assert sum(_above(dataset, "dog_hits", pet)) != sum(_above(dataset, "dog_hits", animal))  # told apart
    calibration = _hand_calibration(dataset, (animal, pet))
    result = _review(
        dataset, grid_checkpoint, pred_field="mixed", eval_key="mixed", classes=["animal", "pet", "plant"],
        calibration=calibration,
    )  # fmt: skip
    assert result.calibration == "by_hand"
    assert result.calibration_flags == {"pet": NOT_FOUND_NOTE}  # flagged, prompted all the same
    assert result.prompts == [
        {"text": "cat", "label": "animal", "threshold": animal},
        {"text": "dog", "label": "pet", "threshold": pet},
        {"text": "plant", "label": "plant", "threshold": GLOBAL_THRESHOLD},  # not calibrated: its name
    ]
    written = {}
    for label in ("animal", "pet", "plant"):
        view = dataset.filter_labels("mixed", F("label") == label, only_matches=False)
        written[label] = [len(d.detections) if d else 0 for d in view.values("mixed")]
    assert written["animal"] == _above(dataset, "cat_hits", animal) and sum(written["animal"]) > 0
    assert written["pet"] == _above(dataset, "dog_hits", pet) and sum(written["pet"]) > 0
    assert sum(written["plant"]) == 0  # the global threshold is above every score
    assert dataset.count("mixed.detections") == sum(map(sum, written.values()))


def test_per_sample_classes_prompt_each_group_with_its_own_calibrated_classes(labelled, grid_checkpoint):
    dataset, (low, high) = labelled
    animal, pet = (low + high) / 2, 0.0
    # ground truth "gt_split": the first half of the samples label their objects "animal", the rest "pet"
    ids = dataset.values("id")
    half = set(ids[: len(ids) // 2])
    for sample in dataset.iter_samples(autosave=True):
        label = "animal" if sample.id in half else "pet"
        sample["gt_split"] = fo.Detections(
            detections=[fo.Detection(label=label, bounding_box=list(d.bounding_box)) for d in sample.gt.detections]
        )
    calibration = dataclasses.replace(_hand_calibration(dataset, (animal, pet)), gt_field="gt_split")
    result = review.review_annotations(
        dataset, "gt_split", model_path=grid_checkpoint, device="cpu", threshold=GLOBAL_THRESHOLD,
        check_boxes=False, num_workers=0, pred_field="split", eval_key="split", per_sample_classes=True,
        calibration=calibration,
    )  # fmt: skip
    assert result.calibration == "by_hand" and result.num_reviewed == len(dataset)
    cats, dogs = _above(dataset, "cat_hits", animal), _above(dataset, "dog_hits", pet)
    has_gt = [bool(labels) for labels in dataset.values("gt_split.detections.label")]
    written = dataset.values("split.detections.label")
    assert any(has_gt[: len(half)]) and any(has_gt[len(half) :]) and dataset.count("split.detections") > 0
    for i, (sample_id, labels) in enumerate(zip(ids, written)):
        if not has_gt[i]:  # no class to prompt for: nothing
            assert labels == []
        elif sample_id in half:  # only "animal" prompted here: "cat" at its threshold
            assert labels == ["animal"] * cats[i]
        else:  # only "pet": "dog" at 0.0, every hit
            assert labels == ["pet"] * dogs[i]


def _state(dataset):
    """What a review writes: fields, evaluations, runs, saved views, sample tags."""
    dataset.reload()
    return (
        sorted(dataset.get_field_schema()), dataset.list_evaluations(), dataset.list_runs(),
        dataset.list_saved_views(), dataset.count_sample_tags(),
    )  # fmt: skip


def test_unknown_keys_and_calibrations_of_another_field_are_refused_before_anything_is_written(
    labelled, grid_checkpoint
):
    dataset, _ = labelled
    _calibrate(dataset, grid_checkpoint, "on_gt")
    dataset.clone_sample_field("gt", "gt_copy")
    before = _state(dataset)
    cases = [
        ("gt", "never_calibrated", "no calibration 'never_calibrated'.*stored: .*'on_gt'"),
        ("gt", "not a key!", "calibration key"),
        ("gt", 3, "CalibrationResult"),
        ("gt_copy", "on_gt", "made on gt_field 'gt', not 'gt_copy'"),
        ("gt_copy", sam3_ops.get_calibration(dataset, "on_gt"), "dataclasses.replace"),
    ]
    for gt_field, calibration, message in cases:
        with pytest.raises(ValueError, match=message):
            review.review_annotations(
                dataset, gt_field, model_path=grid_checkpoint, device="cpu", pred_field="refused",
                eval_key="refused", calibration=calibration, num_workers=0,
            )  # fmt: skip
        assert _state(dataset) == before, calibration
    with pytest.raises(ValueError, match="run_model=False"):
        review.review_annotations(dataset, "gt", pred_field="cat_hits", run_model=False, calibration="on_gt")
    # "animal" calibrated to the words "cat" while "cat" is a class too: one text prompt writes one label
    with pytest.raises(ValueError, match="'animal' and 'cat' would both be prompted with 'cat'"):
        review.review_annotations(
            dataset, "gt", classes=["animal", "cat"], model_path=grid_checkpoint, pred_field="refused",
            eval_key="refused", calibration="on_gt",
        )  # fmt: skip
    assert _state(dataset) == before

    # the documented override: the same calibration, declared for the copy
    override = dataclasses.replace(sam3_ops.get_calibration(dataset, "on_gt"), gt_field="gt_copy")
    review.review_annotations(
        dataset, "gt_copy", model_path=grid_checkpoint, device="cpu", threshold=GLOBAL_THRESHOLD,
        check_boxes=False, pred_field="copy_review", eval_key="copy_review", calibration=override, num_workers=0,
    )  # fmt: skip
    assert dataset.count("copy_review.detections") == dataset.count("gt_copy.detections") > 0


def test_the_review_operator_offers_and_uses_a_stored_calibration(labelled, grid_checkpoint):
    from sam3_ops.app.qa_operators import ReviewAnnotations

    dataset, (low, high) = labelled
    _calibrate(dataset, grid_checkpoint, "for_app")
    dataset.clone_sample_field("gt", "gt_other")
    params = {
        "gt_field": "gt", "model_path": grid_checkpoint, "device": "cpu", "threshold": GLOBAL_THRESHOLD,
        "check_boxes": False, "pred_field": "app_review", "eval_key": "app_review", "overwrite": True,
    }  # fmt: skip
    operator = ReviewAnnotations()
    form = operator.resolve_input(make_ctx(dataset, params)).type
    choices = form.properties["calibration"].type.values
    assert "for_app" in choices and all(key in review.stored_calibrations(dataset) for key in choices)

    other_field = make_ctx(dataset, {**params, "gt_field": "gt_other", "calibration": "for_app"})
    assert "made on gt_field 'gt'" in invalid_props(operator, other_field)["calibration"]
    gone = make_ctx(dataset, {**params, "calibration": "gone"})
    assert "no calibration 'gone'" in invalid_props(operator, gone)["calibration"]

    ctx = make_ctx(dataset, {**params, "calibration": "for_app"})
    assert invalid_props(operator, ctx) == {}
    output = operator.execute(ctx)
    assert "calibration 'for_app'" in output["summary"]
    ground_truth = dataset.count("gt.detections")
    (row,) = output["table"]
    assert row["class"] == "animal" and row["matched"] == row["ground_truth"] == ground_truth > 0
    dataset.reload()
    assert dataset.count("app_review.detections") == ground_truth
    assert sam3_ops.get_run(dataset, "app_review").summary["calibration"] == "for_app"
    assert all(low < c < 1 for c in dataset.values("app_review.detections.confidence", unwind=True))
