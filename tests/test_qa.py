"""QA review, box-to-mask upgrade, accept and restore (sam3_ops.curation) on real FiftyOne datasets.

The tagging logic is tested on recorded SAM3 output (fields written here, so what SAM3 "said"
is known); the tiny random checkpoint runs the whole path end to end.
"""

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

import sam3_ops
from sam3_ops.curation import edits, review
from sam3_ops.sdk.model import Sam3Model

EVAL_KEY = "qa_test"


def gt_dumps(dataset, field="ground_truth"):
    """The field's stored documents, sample by sample: what 'byte-for-byte' compares."""
    return [sample.to_mongo_dict(include_id=True).get(field) for sample in dataset.sort_by("filepath")]


def record_review(dataset):
    """Writes recorded SAM3 output: text hits in ``recorded`` and box-prompt masks in ``recorded_boxes``.

    sample 0: SAM3 agrees; 1: an extra confident dog (missing); 2: the first gt box has no SAM3 hit
    (spurious); 3: an extra hit of low confidence (not flagged); 4: the first box's mask fills only
    its top-left quarter (loose); 5: agrees, and its first box has an empty mask (not loose).
    """
    expected = {review.MISSING_TAG: set(), review.SPURIOUS_TAG: set(), review.LOOSE_BOX_TAG: set()}
    for index, sample in enumerate(dataset.sort_by("filepath")):
        gts = sample.ground_truth.detections
        hits = [fo.Detection(label=d.label, bounding_box=list(d.bounding_box), confidence=0.9) for d in gts]
        if index == 1:
            hits.append(fo.Detection(label="dog", bounding_box=[0.8, 0.8, 0.15, 0.15], confidence=0.8))
            expected[review.MISSING_TAG].add(sample.id)
        if index == 2:
            hits = hits[1:]
            expected[review.SPURIOUS_TAG].add(sample.id)
        if index == 3:
            hits.append(fo.Detection(label="cat", bounding_box=[0.8, 0.8, 0.15, 0.15], confidence=0.2))
        boxed = []
        for j, d in enumerate(gts):
            mask = np.ones((8, 10), dtype=bool)
            if index == 4 and j == 0:
                mask[:] = False
                mask[:4, :5] = True  # tight box = a quarter of the annotated box: IoU 0.25
                expected[review.LOOSE_BOX_TAG].add(sample.id)
            if index == 5 and j == 0:
                mask[:] = False  # an empty mask is no evidence: not loose
            boxed.append(
                fo.Detection(
                    label=d.label, bounding_box=list(d.bounding_box), mask=mask, confidence=0.9, prompt_id=d.id
                )
            )
        sample["recorded"] = fo.Detections(detections=hits)
        sample["recorded_boxes"] = fo.Detections(detections=boxed)
        sample.save()
    return expected


def review_recorded(dataset, **kwargs):
    return review.review_annotations(
        dataset, "ground_truth", pred_field="recorded", box_field="recorded_boxes", eval_key=EVAL_KEY,
        run_model=False, **kwargs,
    )  # fmt: skip


def tagged(collection, tag):
    return set(collection.match_tags(tag).values("id"))


# -- review on recorded output ------------------------------------------------------------------


def test_review_tags_land_where_the_evaluation_says(dataset):
    expected = record_review(dataset)
    result = review_recorded(dataset)

    for tag, ids in expected.items():
        assert tagged(dataset, tag) == ids, tag
    # ... and those are exactly the samples the stored evaluation marks
    fp_ids = set(dataset.filter_labels("recorded", (F(EVAL_KEY) == "fp") & (F("confidence") >= 0.5)).values("id"))
    fn_ids = set(dataset.filter_labels("ground_truth", F(EVAL_KEY) == "fn").values("id"))
    assert tagged(dataset, review.MISSING_TAG) == fp_ids
    assert tagged(dataset, review.SPURIOUS_TAG) == fn_ids

    view = dataset.load_saved_view(review.NEEDS_REVIEW_VIEW)
    assert set(view.values("id")) == set().union(*expected.values())
    assert dataset.has_evaluation(EVAL_KEY)
    assert result.tag_counts == {tag: len(ids) for tag, ids in expected.items()}
    assert result.num_reviewed == len(dataset) and result.num_skipped == 0
    loose = dataset.filter_labels("recorded_boxes", F("tags").contains(review.LOOSE_BOX_TAG))
    assert loose.count("recorded_boxes.detections") == 1
    assert loose.values(f"recorded_boxes.detections.{review.TIGHT_IOU_ATTR}")[0][0] == pytest.approx(0.25)


def test_review_table_counts_each_class(dataset):
    record_review(dataset)
    result = review_recorded(dataset)
    rows = {row["class"]: row for row in result.table}
    assert set(rows) == {"cat", "dog"}
    gt_counts = dataset.count_values("ground_truth.detections.label")
    for name, row in rows.items():
        assert row["ground_truth"] == gt_counts[name]
        assert row["matched"] + row["possible_spurious"] == row["ground_truth"]
    assert rows["dog"]["possible_missing"] == 1 and rows["cat"]["possible_missing"] == 0
    assert rows["cat"]["possible_spurious"] == 1 and rows["cat"]["loose_boxes"] == 1
    assert rows["dog"]["recall"] == 1.0


def test_review_again_replaces_old_tags(dataset):
    record_review(dataset)
    review_recorded(dataset)
    first = dataset.first()
    first.tags.append(review.MISSING_TAG)  # a stale tag from an earlier review
    first.save()
    review_recorded(dataset, overwrite=True)
    assert first.id not in tagged(dataset, review.MISSING_TAG)
    assert set(dataset.load_saved_view(review.NEEDS_REVIEW_VIEW).values("id")) == set(
        dataset.match_tags(list(review.REVIEW_TAGS)).values("id")
    )


def test_review_skips_samples_without_predictions(dataset):
    record_review(dataset)
    failed = dataset.last()
    failed["recorded"] = None
    failed.save()
    result = review_recorded(dataset)
    assert result.num_skipped == 1 and failed.id not in tagged(dataset, review.SPURIOUS_TAG)


def test_review_uses_masks_when_ground_truth_has_them(dataset):
    for sample in dataset:
        for detection in sample.ground_truth.detections:
            detection.mask = np.ones((4, 4), dtype=bool)
        sample.save()
    record_review(dataset)
    for sample in dataset:
        for detection in sample.recorded.detections:
            detection.mask = np.ones((4, 4), dtype=bool)
        sample.save()
    review_recorded(dataset)
    assert dataset.get_evaluation_info(EVAL_KEY).config.use_masks is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gt_field": "filepath"}, "not Detections"),
        ({"gt_field": "nope"}, "does not exist"),
        ({"classes": ["cat", ""]}, "blank"),
        ({"loose_iou": 1.5}, "loose_iou"),
    ],
)
def test_review_rejects_bad_input(dataset, kwargs, message):
    record_review(dataset)
    args = {"gt_field": "ground_truth", **kwargs}
    with pytest.raises(ValueError, match=message):
        review.review_annotations(
            dataset, args.pop("gt_field"), pred_field="recorded", run_model=False, eval_key=EVAL_KEY, **args
        )


def test_review_rejects_field_without_labels_blank_labels_and_used_eval_key(dataset):
    record_review(dataset)
    dataset.clone_sample_field("ground_truth", "empty")
    dataset.set_values("empty", [fo.Detections() for _ in range(len(dataset))])
    with pytest.raises(ValueError, match="no detections"):
        review_recorded(dataset.set_field("ground_truth", F("$empty")))

    review_recorded(dataset)
    with pytest.raises(ValueError, match="already in use"):
        review_recorded(dataset)

    sample = dataset.first()
    sample.ground_truth.detections[0].label = "  "
    sample.save()
    with pytest.raises(ValueError, match="blank labels"):
        review_recorded(dataset, overwrite=True)


# -- upgrade, accept, restore ---------------------------------------------------------------------


def test_upgrade_adds_masks_keeps_everything_else_and_restores_exactly(dataset, tiny_checkpoint):
    sample = dataset.first()
    sample.ground_truth.detections[0].tags = ["checked"]
    sample.save()
    before = gt_dumps(dataset)
    before_labels = {d.id: d for labels in dataset.values("ground_truth") for d in labels.detections}

    result = edits.upgrade_boxes_to_masks(
        dataset, "ground_truth", model_path=tiny_checkpoint, min_score=0.0, mask_threshold=0.0, num_workers=0
    )
    assert result.backup_field == "ground_truth_backup" and result.changed == len(before_labels)
    after = {d.id: d for labels in dataset.values("ground_truth") for d in labels.detections}
    assert set(after) == set(before_labels)
    for label_id, detection in after.items():
        old = before_labels[label_id]
        assert detection.mask is not None and detection.mask.dtype == bool and detection.mask.any()
        assert (detection.label, detection.bounding_box, detection.tags) == (old.label, old.bounding_box, old.tags)
        assert detection.annotator == "ann"
    assert dataset.get_field("ground_truth_sam3_staging") is None
    assert gt_dumps(dataset, "ground_truth_backup") == before

    with pytest.raises(ValueError, match="already exists"):
        edits.upgrade_boxes_to_masks(dataset, "ground_truth", model_path=tiny_checkpoint)

    edits.restore_field(dataset, "ground_truth", "ground_truth_backup", delete_backup=True)
    assert gt_dumps(dataset) == before
    assert dataset.get_field("ground_truth_backup") is None


def test_upgrade_respects_min_score(dataset, tiny_checkpoint):
    before = gt_dumps(dataset)
    result = edits.upgrade_boxes_to_masks(
        dataset, "ground_truth", model_path=tiny_checkpoint, min_score=1.0, num_workers=0
    )
    assert result.changed == 0 and result.below_threshold + result.skipped == dataset.count("ground_truth.detections")
    assert gt_dumps(dataset) == before


class InterruptedModel(Sam3Model):
    """A real SAM3 model that is interrupted (as by Ctrl-C) after its first batch."""

    batches = 0

    def predict_all(self, args):
        if self.batches >= 1:
            raise KeyboardInterrupt("interrupted in a test")
        self.batches += 1
        return super().predict_all(args)


def test_interrupted_upgrade_leaves_ground_truth_unchanged(dataset, tiny_checkpoint):
    before = gt_dumps(dataset)
    loaded = sam3_ops.load_model(tiny_checkpoint, mode="boxes", mask_threshold=0.0)
    model = InterruptedModel(loaded.config, engine=loaded.engine)
    with pytest.raises(KeyboardInterrupt):
        edits.upgrade_boxes_to_masks(dataset, "ground_truth", model=model, min_score=0.0, batch_size=2, num_workers=0)
    assert model.batches == 1  # it did write a batch to the staging field before stopping
    dataset.reload()
    assert gt_dumps(dataset) == before
    assert dataset.get_field("ground_truth_backup") is None
    assert dataset.get_field("ground_truth_sam3_staging") is None


def test_upgrade_rejects_bad_input(dataset, tiny_checkpoint):
    dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    with pytest.raises(ValueError, match="no detections"):
        edits.upgrade_boxes_to_masks(dataset, "empty", model_path=tiny_checkpoint)
    with pytest.raises(ValueError, match="not Detections"):
        edits.upgrade_boxes_to_masks(dataset, "filepath", model_path=tiny_checkpoint)
    text_model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"])
    with pytest.raises(ValueError, match="mode='boxes'"):
        edits.upgrade_boxes_to_masks(dataset, "ground_truth", model=text_model)


def test_accept_copies_tagged_detections_and_restores_exactly(dataset):
    record_review(dataset)
    review_recorded(dataset)
    before = gt_dumps(dataset)
    missing = dataset.filter_labels("recorded", (F(EVAL_KEY) == "fp") & (F("confidence") >= 0.5))
    missing.tag_labels("accepted", label_fields="recorded")
    accepted_ids = set(missing.values("recorded.detections.id", unwind=True))

    result = edits.accept_reviewed(dataset, "recorded", "ground_truth")
    assert result.changed == 1
    copies = dataset.filter_labels("ground_truth", F(edits.SOURCE_ID_ATTR).exists())
    copied = copies.values("ground_truth.detections", unwind=True)
    assert {d[edits.SOURCE_ID_ATTR] for d in copied} == accepted_ids
    assert all(d.id not in accepted_ids and d.tags == [] and not d.has_field(EVAL_KEY) for d in copied)
    assert copied[0].label == "dog" and copied[0].confidence == 0.8
    # the ground truth's own detections were not rewritten
    for old, new in zip(before, gt_dumps(dataset)):
        assert new["detections"][: len(old["detections"])] == old["detections"]

    with pytest.raises(ValueError, match="already exists"):
        edits.accept_reviewed(dataset, "recorded", "ground_truth")
    again = edits.accept_reviewed(dataset, "recorded", "ground_truth", backup_field="gt_backup_2")
    assert again.changed == 0 and again.skipped == 1

    edits.restore_field(dataset, "ground_truth", "ground_truth_backup")
    assert gt_dumps(dataset) == before


def test_accept_needs_tagged_detections(dataset):
    record_review(dataset)
    with pytest.raises(ValueError, match="tagged 'accepted'"):
        edits.accept_reviewed(dataset, "recorded", "ground_truth")
    assert dataset.get_field("ground_truth_backup") is None


def test_restore_a_view_restores_only_its_samples(dataset):
    for sample in dataset.limit(2):  # labels the view's filter leaves out, so "restored whole" can fail
        sample.ground_truth.detections.append(fo.Detection(label="dog", bounding_box=[0.1, 0.1, 0.2, 0.2]))
        sample.save()

    def stored():
        return {s.id: s.to_mongo_dict(include_id=True).get("ground_truth") for s in dataset}

    before = stored()
    dataset.clone_sample_field("ground_truth", "gt_saved")
    dataset.set_values("ground_truth", [fo.Detections() for _ in range(len(dataset))])
    emptied = stored()
    assert all(emptied[i] != before[i] for i in before)  # every sample's value changed: restoring one shows
    view = dataset.limit(2).filter_labels("gt_saved", F("label") == "cat")
    chosen = set(view.values("id"))
    assert len(chosen) == 2 < len(dataset)
    assert edits.restore_field(view, "ground_truth", "gt_saved") == 2
    after = stored()
    assert {i for i in after if after[i] == before[i]} == chosen  # the view's samples, exactly as they were
    assert all(after[i] == emptied[i] for i in after if i not in chosen)  # the others untouched
    labels = {d["label"] for i in chosen for d in after[i]["detections"]}
    assert labels == {"cat", "dog"}  # whole samples: the view's label filter did not reach the copy
    with pytest.raises(ValueError, match="does not exist"):
        edits.restore_field(dataset, "ground_truth", "nope")


# -- end to end with the tiny checkpoint --------------------------------------------------------


@pytest.mark.parametrize("per_sample_classes", [False, True])
def test_review_runs_the_model_end_to_end(dataset, tiny_checkpoint, per_sample_classes):
    result = review.review_annotations(
        dataset, "ground_truth", model_path=tiny_checkpoint, eval_key=EVAL_KEY, threshold=0.0,
        per_sample_classes=per_sample_classes, num_workers=0,
    )  # fmt: skip
    assert result.num_reviewed == len(dataset)
    assert dataset.count("sam3_review.detections") > 0
    assert dataset.count("sam3_review_boxes.detections") == dataset.count("ground_truth.detections")
    assert dataset.exists(f"sam3_review_boxes.detections.{review.TIGHT_IOU_ATTR}")
    flagged = dataset.match_tags(list(review.REVIEW_TAGS))
    assert set(dataset.load_saved_view(review.NEEDS_REVIEW_VIEW).values("id")) == set(flagged.values("id"))
    if per_sample_classes:
        for gt, preds in zip(
            dataset.values("ground_truth.detections.label"), dataset.values("sam3_review.detections.label")
        ):
            assert set(preds) <= set(gt)
    assert dataset.load_evaluation_results(EVAL_KEY).report()


# -- operators (a real ExecutionContext, no App) -------------------------------------------------


def make_ctx(dataset, params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import Executor

    return foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": params}, executor=Executor())


def invalid_props(operator, ctx):
    form = operator.resolve_input(ctx).type
    return {name: prop.error_message for name, prop in form.properties.items() if getattr(prop, "invalid", False)}


def test_operators_are_exported():
    from sam3_ops.app.qa_operators import OPERATORS

    names = {cls().config.name for cls in OPERATORS}
    assert names == {
        "review_annotations",
        "upgrade_boxes_to_masks",
        "restore_field_backup",
        "accept_reviewed_detections",
    }


def test_review_operator_flags_bad_input_on_the_form(dataset, tiny_checkpoint):
    from sam3_ops.app.qa_operators import ReviewAnnotations

    operator = ReviewAnnotations()

    def problems(**params):
        return invalid_props(operator, make_ctx(dataset, {"model_path": tiny_checkpoint, **params}))

    assert problems(gt_field="ground_truth") == {}
    assert "gt_field" in problems(gt_field="filepath")
    assert "blank" in problems(gt_field="ground_truth", classes=["cat", " "])["classes"]
    assert "hf auth login" in problems(gt_field="ground_truth", model_path="facebook/sam3")["model_path"]
    record_review(dataset)
    review_recorded(dataset)
    assert "already in use" in problems(gt_field="ground_truth", eval_key=EVAL_KEY)["eval_key"]
    assert "already exists" in problems(gt_field="ground_truth", pred_field="recorded")["pred_field"]
    dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    assert "no detections" in problems(gt_field="empty")["gt_field"]


def test_review_operator_runs_and_reports_a_table(dataset, tiny_checkpoint):
    from sam3_ops.app.qa_operators import ReviewAnnotations

    params = {"gt_field": "ground_truth", "model_path": tiny_checkpoint, "threshold": 0.0, "classes_from": "sample"}
    ctx = make_ctx(dataset, params)
    assert invalid_props(ReviewAnnotations(), ctx) == {}
    output = ReviewAnnotations().execute(ctx)
    assert [row["class"] for row in output["table"]] == sorted(dataset.distinct("ground_truth.detections.label"))
    assert len(output["plot"]) == 2 and dataset.has_evaluation("sam3_review")
    assert review.NEEDS_REVIEW_VIEW in dataset.list_saved_views()


def test_upgrade_restore_and_accept_operators(dataset, tiny_checkpoint):
    from sam3_ops.app.qa_operators import AcceptReviewedDetections, RestoreFieldBackup, UpgradeBoxesToMasks

    before = gt_dumps(dataset)
    ctx = make_ctx(dataset, {"field": "ground_truth", "model_path": tiny_checkpoint, "min_score": 0.0})
    assert invalid_props(UpgradeBoxesToMasks(), ctx) == {}
    UpgradeBoxesToMasks().execute(ctx)
    assert "backup_field" in invalid_props(UpgradeBoxesToMasks(), ctx)  # the backup now exists

    ctx = make_ctx(dataset, {"field": "ground_truth", "backup_field": "ground_truth_backup", "delete_backup": True})
    assert invalid_props(RestoreFieldBackup(), ctx) == {}
    RestoreFieldBackup().execute(ctx)
    assert gt_dumps(dataset) == before and dataset.get_field("ground_truth_backup") is None

    record_review(dataset)
    ctx = make_ctx(dataset, {"pred_field": "recorded", "gt_field": "ground_truth"})
    assert "tag" in invalid_props(AcceptReviewedDetections(), ctx)
    dataset.limit(1).tag_labels("accepted", label_fields="recorded")
    assert invalid_props(AcceptReviewedDetections(), ctx) == {}
    output = AcceptReviewedDetections().execute(ctx)
    assert "Copied" in output["summary"] and dataset.count("ground_truth.detections") > sum(
        len(d["detections"]) for d in before
    )
