"""Point prompts (issue 13): parity with the plain transformers tracker loop, ragged batches, the
three multimask choices, refinement from a previous mask, and the Keypoints path of apply_model."""

import numpy as np
import pytest
import torch

from sam3_ops.core.engine import Sam3Engine
from sam3_ops.core.queries import ImagePrompts, ObjectPrompt

from .test_engine import CallCounter


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Sam3Engine(tiny_checkpoint, device="cpu", feature_cache_size=4, mask_cache_size=16)


@pytest.fixture(scope="module")
def reference(engine):
    """The transformers docs loop on the same tracker: Sam3TrackerProcessor -> Sam3TrackerModel ->
    post_process_masks, one image and one object at a time."""
    from transformers import Sam3ImageProcessor, Sam3TrackerProcessor

    size = engine.tracker.prompt_encoder.input_image_size
    processor = Sam3TrackerProcessor(image_processor=Sam3ImageProcessor(size={"height": size, "width": size}))

    def run(image, points, labels, multimask=False, input_masks=None):
        inputs = processor(
            images=image, input_points=[[points.tolist()]], input_labels=[[labels.tolist()]], return_tensors="pt"
        )
        with torch.no_grad():
            output = engine.tracker(**inputs, multimask_output=multimask, input_masks=input_masks)
        masks = processor.post_process_masks(output.pred_masks, inputs["original_sizes"])[0][0].numpy()
        return output.iou_scores[0, 0].numpy(), masks.astype(bool), output.pred_masks[0, 0]

    return run


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(120, 160), (300, 200), (97, 333)]]


def _objects(image, seed, count):
    """``count`` objects with 1 to 4 points each, some negative (each keeps a positive one)."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    objects = []
    for k in range(count):
        n = int(rng.integers(1, 5))
        points = rng.uniform([0, 0], [width - 1, height - 1], (n, 2)).astype(np.float32)
        labels = np.r_[1, rng.integers(0, 2, n - 1)]
        objects.append(ObjectPrompt(f"o{k}", points, labels))
    return objects


def _canvas(segmentation, k):
    """Hit ``k``'s mask pasted into a full-image canvas (masks cover exactly their boxes)."""
    canvas = np.zeros(segmentation.image_size, bool)
    x0, y0, x1, y1 = segmentation.boxes_xyxy[k].astype(int)
    canvas[y0:y1, x0:x1] = segmentation.masks[k]
    return canvas


def _assert_tight(mask):
    """A mask whose box is tight: it touches every edge of its box."""
    assert mask.any(0)[0] and mask.any(0)[-1] and mask.any(1)[0] and mask.any(1)[-1]


@pytest.mark.parametrize("multimask", [None, "best", "all"])
def test_points_equal_the_transformers_tracker_loop(engine, reference, images, multimask):
    """Objects of 1-4 points (positive and negative), ragged in one batch, against one object at
    a time through the processor: the same masks (>= 99% of pixels) and the same scores."""
    prompts = [ImagePrompts(objects=_objects(image, seed, 3)) for seed, image in enumerate(images)]
    results = engine.segment(images, prompts, mode="points", multimask=multimask)
    for image, image_prompts, result in zip(images, prompts, results):
        expected_hits = 3 if multimask == "all" else 1
        assert len(result) == expected_hits * len(image_prompts.objects)
        for index, obj in enumerate(image_prompts.objects):
            scores, masks, _ = reference(image, obj.points, obj.point_labels, multimask=multimask is not None)
            mine = np.flatnonzero(result.prompt_index == index)
            if multimask == "all":
                order = np.argsort(-scores, kind="stable")
                assert result.mask_rank[mine].tolist() == [0, 1, 2]
            else:
                order = [int(np.argmax(scores))]
                assert (result.mask_rank[mine] == -1).all()
            np.testing.assert_allclose(result.scores[mine], scores[order], atol=1e-5)
            for k, j in zip(mine, order):
                assert result.labels[k] == obj.label
                _assert_tight(result.masks[k])
                assert (_canvas(result, k) == masks[j]).mean() >= 0.99


def test_negative_points_change_the_mask(engine, images):
    """The negative point reaches the prompt encoder (the same positive point alone differs)."""
    positive = ObjectPrompt("a", [[50, 40]], [1])
    with_negative = ObjectPrompt("a", [[50, 40], [20, 20]], [1, 0])
    alone, both = engine.segment(
        images[:1] * 2, [ImagePrompts(objects=(o,)) for o in (positive, with_negative)], mode="points"
    )
    assert alone.scores[0] != both.scores[0] or not np.array_equal(_canvas(alone, 0), _canvas(both, 0))


def test_ragged_batch_runs_the_image_encoder_once_per_image(engine, images):
    """Images with 0, 1 and 40 objects of 1-4 points in one batch (several decoder chunks): one
    encoder call with every image in it, and each image's results equal to running it alone."""
    engine.clear_cache()
    prompts = [
        ImagePrompts(),
        ImagePrompts(objects=_objects(images[1], 7, 1)),
        ImagePrompts(objects=_objects(images[2], 8, 40)),
    ]
    counter = CallCounter(engine.tracker.vision_encoder)
    try:
        together = engine.segment(images, prompts, mode="points")
    finally:
        counter.close()
    assert counter.batches == [3]
    assert [len(r) for r in together] == [0, 1, 40]
    assert together[2].prompt_index.tolist() == list(range(40))
    for image, image_prompts, result in zip(images[1:], prompts[1:], together[1:]):
        alone = engine.segment([image], [image_prompts], mode="points")[0]
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
        assert all(np.array_equal(a, b) for a, b in zip(result.masks, alone.masks))


def test_refining_a_mask_costs_no_image_encoder_and_starts_from_that_mask(engine, reference, images):
    """A click on a known mask: the previous low-resolution logits go in as input_masks (as the
    tracker loop does with them), and the image encoder does not run again."""
    engine.clear_cache()
    image, key = images[0], "image-0"
    first = engine.segment(
        [image],
        [ImagePrompts(objects=(ObjectPrompt("a", [[60, 50]], [1]),))],
        mode="points",
        image_keys=[key],
        keep_logits=True,
    )[0]
    assert first.low_res_logits is not None and len(first.low_res_logits) == 1
    engine.remember_masks({(key, "det-1"): first.low_res_logits[0]})

    click = ObjectPrompt("a", [[60, 50], [100, 30]], [1, 0], mask_key=(key, "det-1"))
    counter = CallCounter(engine.tracker.vision_encoder)
    try:
        refined = engine.segment([image], [ImagePrompts(objects=(click,))], mode="points", image_keys=[key])[0]
    finally:
        counter.close()
    assert counter.batches == []  # prompt encoder and mask decoder only

    previous = first.low_res_logits[0].float()[None, None]
    scores, masks, _ = reference(image, click.points, click.point_labels, input_masks=previous)
    np.testing.assert_allclose(refined.scores, scores[:1], atol=1e-3)  # float16 logits in the cache
    assert (_canvas(refined, 0) == masks[0]).mean() >= 0.99
    restarted = engine.segment(
        [image],
        [ImagePrompts(objects=(ObjectPrompt("a", click.points, click.point_labels),))],
        mode="points",
        image_keys=[key],
    )[0]
    assert restarted.scores[0] != refined.scores[0] or not np.array_equal(restarted.masks[0], refined.masks[0])


def test_a_forgotten_mask_falls_back_to_its_box(engine, images):
    """A refinement whose mask left the bounded cache restarts from the detection's box."""
    image = images[1]
    box = np.array([20, 30, 150, 200], np.float32)
    click = ObjectPrompt("a", [[80, 100]], [1], box=box, mask_key=("image-1", "evicted"))
    with_box = engine.segment([image], [ImagePrompts(objects=(click,))], mode="points")[0]
    plain = ObjectPrompt("a", [[80, 100]], [1], box=box)
    expected = engine.segment([image], [ImagePrompts(objects=(plain,))], mode="points")[0]
    np.testing.assert_allclose(with_box.scores, expected.scores, atol=1e-6)
    assert np.array_equal(with_box.masks[0], expected.masks[0])


def test_the_mask_cache_is_bounded(tiny_checkpoint):
    engine = Sam3Engine(tiny_checkpoint, device="cpu", mask_cache_size=2)
    engine.remember_masks({("i", n): torch.zeros(4, 4) for n in range(5)})
    assert [engine.cached_mask(("i", n)) is not None for n in range(5)] == [False, False, False, True, True]


# -- the Keypoints path of apply_model and segment -------------------------------------------------


def _keypoint(label, points, **attributes):
    import fiftyone as fo

    return fo.Keypoint(label=label, points=points, **attributes)


@pytest.fixture
def clicked(dataset):
    """The test dataset with a ``clicks`` Keypoints field: an object of two positive points and one
    of a positive and a negative point (``sam_labels``) on every sample."""
    import fiftyone as fo

    for sample in dataset:
        sample["clicks"] = fo.Keypoints(
            keypoints=[
                _keypoint("cup", [[0.3, 0.3], [0.35, 0.4]]),
                _keypoint("handle", [[0.7, 0.6], [0.2, 0.8]], sam_labels=[1, 0]),
            ]
        )
        sample.save()
    return dataset


def test_apply_model_writes_one_detection_per_keypoint(clicked, tiny_checkpoint):
    import sam3_ops

    model = sam3_ops.load_model(tiny_checkpoint, mode="points", device="cpu")
    clicked.apply_model(model, label_field="pts", prompt_field="clicks")
    for sample in clicked:
        keypoints, detections = sample["clicks"].keypoints, sample["pts"].detections
        assert [d.label for d in detections] == ["cup", "handle"]
        assert [d["prompt_id"] for d in detections] == [k.id for k in keypoints]
        for detection in detections:
            _assert_tight(detection.mask)
            x, y, w, h = detection.bounding_box
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6
            assert 0 <= detection.confidence <= 1


def test_segment_points_with_all_three_masks(clicked, tiny_checkpoint):
    import sam3_ops

    result = sam3_ops.segment(
        clicked, "pts", model_path=tiny_checkpoint, mode="points", prompt_field="clicks", multimask="all", device="cpu"
    )
    assert result.detections == 3 * 2 * len(clicked)
    for sample in clicked:
        detections = sample["pts"].detections
        for keypoint in sample["clicks"].keypoints:
            mine = [d for d in detections if d["prompt_id"] == keypoint.id]
            assert [d["mask_rank"] for d in mine] == [0, 1, 2]
            assert [d.confidence for d in mine] == sorted((d.confidence for d in mine), reverse=True)
    assert clicked.get_run_info(result.run_key).config.settings["multimask"] == "all"


def test_bad_keypoints_are_dropped_or_skipped_and_the_rest_written(clicked, tiny_checkpoint, caplog):
    import fiftyone as fo

    import sam3_ops

    sample = clicked.first()
    nan = float("nan")
    sample["clicks"] = fo.Keypoints(
        keypoints=[
            _keypoint("partly hidden", [[0.5, 0.5], [nan, nan], [1.5, 0.2]]),  # two points dropped, one kept
            _keypoint("too many labels", [[0.5, 0.5]], sam_labels=[1, 0]),
            _keypoint("odd label", [[0.5, 0.5]], sam_labels=[2]),
            _keypoint("nothing", []),
            _keypoint("only negative", [[0.5, 0.5]], sam2_labels=[0]),
            _keypoint("fine", [[0.4, 0.4]]),
        ]
    )
    sample.save()
    model = sam3_ops.load_model(tiny_checkpoint, mode="points", device="cpu")
    with caplog.at_level("WARNING"):
        clicked.apply_model(model, label_field="pts", prompt_field="clicks")
    assert [d.label for d in clicked.first()["pts"].detections] == ["partly hidden", "fine"]
    assert "dropped 2 of 3 points of keypoint 'partly hidden'" in caplog.text
    assert "it has 1 points but 2 sam_labels" in caplog.text
    assert "must be 1 (positive) or 0 (negative)" in caplog.text
    assert caplog.text.count("no positive point to segment from") == 2  # no points; only a negative one
    assert all(len(s["pts"].detections) == 2 for s in clicked.skip(1))
    assert model.summary()["samples_skipped"] == 0


def test_a_prompt_field_of_another_type_is_refused_or_skipped(clicked, tiny_checkpoint):
    import sam3_ops

    with pytest.raises(ValueError, match="'ground_truth' holds Detections values, not Keypoints.*'clicks'"):
        sam3_ops.segment(
            clicked, "pts", model_path=tiny_checkpoint, mode="points", prompt_field="ground_truth", device="cpu"
        )
    model = sam3_ops.load_model(tiny_checkpoint, mode="points", device="cpu")
    clicked.apply_model(model, label_field="pts", prompt_field="ground_truth")  # apply_model checks per sample
    assert model.summary()["samples_skipped"] == len(clicked)
    assert "must hold Keypoints" in model.summary()["skipped"][0]["reason"]


def test_a_keypoint_refining_a_detection_starts_from_its_mask(clicked, tiny_checkpoint):
    """The SDK side of a click in the panel: a keypoint naming a detection SAM3 wrote in this
    session (``sam3_refines``) refines its mask, with no image-encoder work."""
    import fiftyone as fo

    import sam3_ops

    view = clicked.limit(1)
    model = sam3_ops.load_model(tiny_checkpoint, mode="points", device="cpu", cache_features=True)
    view.apply_model(model, label_field="pts", prompt_field="clicks")
    first = view.first()["pts"].detections[0]

    def click(**refines):
        sample = view.first()
        sample["click"] = fo.Keypoints(
            keypoints=[_keypoint("cup", [[0.3, 0.3], [0.9, 0.9]], sam_labels=[1, 0], **refines)]
        )
        sample.save()
        view.apply_model(model, label_field="refined", prompt_field="click")
        return view.first()["refined"].detections[0]

    counter = CallCounter(model.engine.tracker.vision_encoder)
    try:
        refined = click(sam3_refines=first.id, sam3_box=first.bounding_box)
    finally:
        counter.close()
    assert counter.batches == []
    restarted = click()
    assert refined.confidence != restarted.confidence or not np.array_equal(refined.mask, restarted.mask)
