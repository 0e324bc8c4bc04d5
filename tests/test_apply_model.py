"""``dataset.apply_model`` with the SAM3 model on real FiftyOne datasets (embedded MongoDB) and
the tiny checkpoint: every mode, batching, loader workers, and bad input."""

import shutil

import numpy as np
import pytest
from PIL import Image

import sam3_ops
from sam3_ops.core.checkpoint import ModelLoadError
from sam3_ops.sdk.convert import relative_to_xyxy
from sam3_ops.sdk.runs import get_run

from .helpers import write_image


@pytest.fixture(scope="module")
def text_model(tiny_checkpoint):
    return sam3_ops.load_model(tiny_checkpoint, prompts=["cat", "dog"], threshold=0.2, device="cpu")


def _serialise(detections):
    """A comparable form of a Detections value (masks as bytes)."""
    if detections is None:
        return None
    out = []
    for d in detections.detections:
        item = {k: v for k, v in d.to_dict().items() if k not in ("_id", "mask")}
        item["mask"] = (d.mask.shape, d.mask.tobytes()) if d.mask is not None else None
        out.append(item)
    return out


def _iou(a, b):
    x = np.frombuffer(a[1], dtype=bool)
    y = np.frombuffer(b[1], dtype=bool)
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else np.logical_and(x, y).sum() / union


def test_text_mode_writes_masks_with_prompt_labels(dataset, text_model):
    dataset.apply_model(text_model, label_field="sam3", batch_size=4, num_workers=0)
    for sample in dataset:
        detections = sample.sam3.detections
        assert len(detections) > 0
        assert {d.label for d in detections} <= {"cat", "dog"}
        width, height = Image.open(sample.filepath).size
        for d in detections:
            x, y, w, h = d.bounding_box
            assert 0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9
            assert d.mask.dtype == bool and d.mask.ndim == 2
            assert d.mask.shape == (round(h * height), round(w * width))  # the mask covers exactly the box
            assert 0.2 < d.confidence <= 1


def test_batch_sizes_and_workers_give_the_same_results(dataset, text_model):
    dataset.apply_model(text_model, label_field="b1", batch_size=1, num_workers=0)
    dataset.apply_model(text_model, label_field="b4", batch_size=4, num_workers=0)
    dataset.apply_model(text_model, label_field="w2", batch_size=4, num_workers=2)
    for sample in dataset:
        one, four, workers = (_serialise(sample[f]) for f in ("b1", "b4", "w2"))
        assert len(one) == len(four) == len(workers) > 0
        for a, b, c in zip(one, four, workers):
            assert a["label"] == b["label"] == c["label"]
            # batched matrix products differ in the last bits: compare masks by IoU, not bytes
            assert a["mask"][0] == b["mask"][0] == c["mask"][0]
            assert _iou(a["mask"], b["mask"]) > 0.98 and _iou(a["mask"], c["mask"]) > 0.98
            np.testing.assert_allclose(a["bounding_box"], b["bounding_box"], atol=1e-6)
            assert abs(a["confidence"] - b["confidence"]) < 1e-4


def test_results_land_on_the_right_samples(dataset, text_model):
    """Each sample's result equals what the engine gives for that sample's image alone."""
    from sam3_ops.core.images import load_image
    from sam3_ops.core.queries import ImagePrompts

    view = dataset.skip(1).limit(4)
    view.apply_model(text_model, label_field="sam3", batch_size=3)
    assert dataset.first().sam3 is None  # untouched: outside the view
    for sample in view:
        alone = text_model.engine.segment(
            [load_image(sample.filepath)], [ImagePrompts(texts=("cat", "dog"))], threshold=0.2
        )[0]
        np.testing.assert_allclose(
            sorted(d.confidence for d in sample.sam3.detections), sorted(alone.scores), atol=1e-5
        )


def test_boxes_mode_one_mask_per_prompt_box(dataset, tiny_checkpoint):
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    dataset.apply_model(model, label_field="gt_masks", prompt_field="ground_truth", batch_size=4)
    for sample in dataset:
        prompts = sample.ground_truth.detections
        results = sample.gt_masks.detections
        assert [d.prompt_id for d in results] == [p.id for p in prompts]
        assert [d.label for d in results] == [p.label for p in prompts]
        width, height = Image.open(sample.filepath).size
        for prompt, result in zip(prompts, results):
            # the result's box is the prompt box on whole pixels: each edge within one pixel
            np.testing.assert_allclose(
                relative_to_xyxy([result.bounding_box], width, height),
                np.clip(relative_to_xyxy([prompt.bounding_box], width, height), 0, [width, height] * 2),
                atol=1.0,
            )
            assert result.mask is not None and result.mask.dtype == bool
            assert 0 <= result.confidence <= 1


def test_exemplars_mode_labels_from_examples(dataset, tiny_checkpoint):
    model = sam3_ops.load_model(tiny_checkpoint, mode="exemplars", threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="similar", prompt_field="ground_truth", negative_field="not_wanted")
    for sample in dataset:
        example_labels = {d.label for d in sample.ground_truth.detections}
        assert {d.label for d in sample.similar.detections} == example_labels


def test_exemplars_with_text_and_negative_attribute(dataset, tiny_checkpoint):
    import fiftyone as fo

    sample = dataset.first()
    sample.ground_truth.detections.append(fo.Detection(label="cat", bounding_box=[0.7, 0.1, 0.2, 0.2], negative=True))
    sample.save()
    model = sam3_ops.load_model(tiny_checkpoint, mode="exemplars", prompts=["pet"], threshold=0.2, device="cpu")
    dataset.apply_model(model, label_field="similar", prompt_field="ground_truth")
    assert {d.label for d in dataset.first().similar.detections} == {"pet"}


def test_text_mode_with_negative_field(dataset, text_model):
    dataset.apply_model(text_model, label_field="with_neg", negative_field="not_wanted")
    dataset.apply_model(text_model, label_field="without_neg")
    changed = [s.with_neg.detections[0].confidence != s.without_neg.detections[0].confidence for s in dataset]
    assert any(changed)  # the negative boxes reached the model


def test_sample_without_prompt_boxes_gets_empty_detections(dataset, tiny_checkpoint):
    import fiftyone as fo

    sample = dataset.first()
    sample.ground_truth = fo.Detections()
    sample.save()
    second = dataset.skip(1).first()
    second.ground_truth = None
    second.save()
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    dataset.apply_model(model, label_field="gt_masks", prompt_field="ground_truth")
    assert dataset.first().gt_masks.detections == []
    assert dataset.skip(1).first().gt_masks.detections == []
    assert all(len(s.gt_masks.detections) > 0 for s in dataset.skip(2))


def test_odd_boxes_are_dropped_or_clipped(dataset, tiny_checkpoint, caplog):
    import fiftyone as fo

    sample = dataset.first()
    good = fo.Detection(label="cat", bounding_box=[0.1, 0.1, 0.3, 0.3])
    partly_out = fo.Detection(label="cat", bounding_box=[0.8, 0.8, 0.5, 0.5])
    sample.ground_truth = fo.Detections(
        detections=[
            good,
            fo.Detection(label="cat", bounding_box=[0.5, 0.5, 0.0, 0.2]),  # zero area
            fo.Detection(label="cat", bounding_box=[0.5, 0.5, -0.2, 0.2]),  # inverted
            fo.Detection(label="cat", bounding_box=[float("nan"), 0.1, 0.2, 0.2]),  # NaN
            fo.Detection(label="cat", bounding_box=[1.5, 1.5, 0.2, 0.2]),  # outside
            partly_out,
        ]
    )
    sample.save()
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    with caplog.at_level("WARNING"):
        dataset.limit(1).apply_model(model, label_field="gt_masks", prompt_field="ground_truth")
    results = dataset.first().gt_masks.detections
    assert [d.prompt_id for d in results] == [good.id, partly_out.id]
    x, y, w, h = results[1].bounding_box
    assert x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9
    assert "dropped 4 of 6 prompt boxes" in caplog.text


def test_bad_images_are_skipped_and_the_rest_written(dataset, text_model, tmp_path, caplog):
    import fiftyone as fo

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    missing = tmp_path / "missing.png"
    odd_modes = [
        write_image(tmp_path / "gray.png", 50, 60, mode="L"),
        write_image(tmp_path / "rgba.png", 50, 60, mode="RGBA"),
        write_image(tmp_path / "palette.png", 50, 60, mode="P"),
        write_image(tmp_path / "cmyk.jpg", 50, 60, mode="CMYK"),
    ]
    bad = dataset.add_samples([fo.Sample(filepath=str(corrupt)), fo.Sample(filepath=str(missing))])
    odd = dataset.add_samples([fo.Sample(filepath=p) for p in odd_modes])
    # a previous result on a bad sample must survive the failed run
    previous = fo.Detections(detections=[fo.Detection(label="old", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    bad_sample = dataset[bad[0]]
    bad_sample["sam3"] = previous
    bad_sample.save()

    model = sam3_ops.load_model(text_model.engine.model_path, prompts=["cat"], threshold=0.2, device="cpu")
    with caplog.at_level("WARNING"):
        dataset.apply_model(model, label_field="sam3", batch_size=4, num_workers=0)
    assert dataset[bad[0]].sam3.detections[0].label == "old"
    assert dataset[bad[1]].sam3 is None
    for sample_id in odd:
        assert len(dataset[sample_id].sam3.detections) > 0
    summary = model.summary()
    assert summary["samples_skipped"] == 2
    assert summary["samples_processed"] == len(dataset) - 2
    assert {s["filepath"] for s in summary["skipped"]} == {str(corrupt), str(missing)}
    assert "cannot decode" in caplog.text and "not found" in caplog.text


def test_exif_rotated_image_is_segmented_as_shown(dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo

    array = np.random.default_rng(3).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 60 wide x 100 high
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif)
    sample = fo.Sample(filepath=str(path))
    sample["ground_truth"] = fo.Detections(detections=[fo.Detection(label="a", bounding_box=[0.0, 0.0, 0.5, 0.5])])
    dataset.add_sample(sample)
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    dataset.select(sample.id).apply_model(model, label_field="gt_masks", prompt_field="ground_truth")
    detection = dataset[sample.id].gt_masks.detections[0]
    assert detection.mask.shape == (50, 30)  # half of 100 high x half of 60 wide


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"prompts": []}, ValueError, "at least one prompt"),
        ({"prompts": ["cat", " "]}, ValueError, "prompt 2 is blank"),
        ({"prompts": [7]}, ValueError, "prompt 1 is a int"),
        ({"prompts": ["cat"], "mode": "segment"}, ValueError, "the valid modes are"),
        ({"prompts": ["cat"], "threshold": 1.5}, ValueError, "threshold must be a number in"),
        ({"mode": "boxes", "prompts": ["cat"]}, ValueError, "takes no text prompts"),
    ],
)
def test_load_model_rejects_bad_arguments(tiny_checkpoint, kwargs, error, message):
    with pytest.raises(error, match=message):
        sam3_ops.load_model(tiny_checkpoint, **kwargs)


def test_load_model_rejects_bad_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        sam3_ops.load_model(str(tmp_path / "nope"), prompts=["cat"])
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ModelLoadError, match="not a SAM3 checkpoint"):
        sam3_ops.load_model(str(tmp_path), prompts=["cat"])


def test_box_modes_need_a_prompt_field(dataset, tiny_checkpoint):
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    with pytest.raises(ValueError, match="needs the boxes to prompt with"):
        dataset.apply_model(model, label_field="x")


def test_prompt_field_of_another_type_is_a_logged_skip(dataset, tiny_checkpoint):
    import fiftyone as fo

    for sample in dataset:
        sample["a_class"] = fo.Classification(label="cat")
        sample.save()
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", device="cpu")
    dataset.apply_model(model, label_field="x", prompt_field="a_class")
    assert model.summary()["samples_skipped"] == len(dataset)
    assert "must hold Detections" in model.summary()["skipped"][0]["reason"]


def test_shared_engine_is_reused(tiny_checkpoint):
    first = sam3_ops.load_model(tiny_checkpoint, prompts=["a"], reuse=True, device="cpu")
    second = sam3_ops.load_model(tiny_checkpoint, mode="boxes", reuse=True, device="cpu")
    assert first.engine is second.engine


def test_pooled_engine_is_shared_but_never_changed_by_a_caller(dataset, tiny_checkpoint):
    """Two models on one pooled engine: the second one's mask size must not reach the first."""
    small = sam3_ops.load_model(
        tiny_checkpoint, prompts=["a"], threshold=0.0, reuse=True, device="cpu", max_mask_size=4
    )
    large = sam3_ops.load_model(
        tiny_checkpoint, prompts=["a"], threshold=0.0, reuse=True, device="cpu", max_mask_size=None
    )
    assert small.engine is large.engine
    small_view, large_view = dataset.limit(2), dataset.limit(2)
    small_view.apply_model(small, label_field="small", num_workers=0)
    large_view.apply_model(large, label_field="large", num_workers=0)
    assert max(max(d.mask.shape) for s in small_view for d in s.small.detections) <= 4
    assert max(max(d.mask.shape) for s in large_view for d in s.large.detections) > 4
    compiled = sam3_ops.load_model(tiny_checkpoint, prompts=["a"], reuse=True, device="cpu", compile=True)
    assert compiled.engine is not small.engine  # the weights differ: a pool entry of its own


def test_segment_with_a_model_that_ran_before_reports_this_call_only(dataset, tiny_checkpoint, tmp_path):
    """A model's counts add up over its runs; each ``segment`` call's result and run record hold
    that call's: what it processed, wrote and skipped."""
    import fiftyone as fo

    missing = dataset.add_sample(fo.Sample(filepath=str(tmp_path / "missing.png")))
    images = dataset.exclude([missing])
    model = sam3_ops.load_model(tiny_checkpoint, prompts=["cat"], threshold=0.0, device="cpu")
    first = sam3_ops.segment(dataset, "first", model=model, num_workers=0)
    second = sam3_ops.segment(images, "second", model=model, num_workers=0)
    assert (first.samples_processed, first.samples_skipped) == (len(images), 1)
    assert [entry["filepath"] for entry in first.skipped] == [str(tmp_path / "missing.png")]
    assert (second.samples_processed, second.samples_skipped, second.skipped) == (len(images), 0, [])
    for result in (first, second):
        written = dataset.count(f"{result.label_field}.detections")
        assert written > 0 and result.detections == written  # what this call wrote, and it wrote some
        recorded = get_run(dataset, result.label_field).summary
        assert {k: recorded[k] for k in ("samples_processed", "detections", "samples_skipped")} == {
            "samples_processed": result.samples_processed,
            "detections": result.detections,
            "samples_skipped": result.samples_skipped,
        }
    # the model itself counts every run (an operator's chunks of one run add up on it)
    assert model.summary()["samples_processed"] == 2 * len(images)
    assert model.summary()["detections"] == first.detections + second.detections


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
def test_segment_with_a_video_model_that_ran_before_reports_this_call_only(tmp_path):
    import fiftyone as fo

    from sam3_ops.testing import build_tiny_video_checkpoint

    from .test_video_core import TEXT_THRESHOLD, synthetic_frames, write_video

    checkpoint = build_tiny_video_checkpoint(tmp_path / "checkpoint")
    frames = synthetic_frames(6)
    videos = fo.Dataset()
    try:
        videos.add_samples(
            [fo.Sample(filepath=write_video(tmp_path / f"{i}.mp4", frames[i * 3 : i * 3 + 3])) for i in range(2)]
        )
        model = sam3_ops.load_model(
            checkpoint, prompts=["red ball"], threshold=TEXT_THRESHOLD, max_objects=2, media_type="video", device="cpu"
        )
        first = sam3_ops.segment(videos, "first", model=model)
        second = sam3_ops.segment(videos.limit(1), "second", model=model)
        assert (first.samples_processed, second.samples_processed) == (2, 1)
        for result in (first, second):
            written = videos.count(f"frames.{result.label_field}.detections")
            assert written > 0 and result.detections == written
            assert get_run(videos, result.label_field).summary["samples_processed"] == result.samples_processed
        assert model.summary()["samples_processed"] == 3  # the model counts every run
    finally:
        videos.delete()


# -- bad settings and run options: named, and refused before anything is written ------------------

#: (setting or run option, a wrong value): every setting and run option of segment, wrong types
#: (numbers as text, bools as numbers and numbers as bools, ...) and wrong ranges
BAD_VALUES = [
    ("model_path", 123),
    ("model_path", ["facebook/sam3"]),
    ("mode", 3),
    ("mode", "segment"),
    ("prompts", 7),
    ("prompts", ["cat", ""]),
    ("threshold", "0.5"),
    ("threshold", 1.5),
    ("threshold", True),
    ("threshold", float("nan")),
    ("mask_threshold", "0.5"),
    ("mask_threshold", -0.1),
    ("max_mask_size", "2048"),
    ("max_mask_size", 0),
    ("max_mask_size", 2.5),
    ("max_image_pixels", "1000"),
    ("max_image_pixels", True),
    ("device", 0),
    ("device", "tpu"),
    ("compile", 1),
    ("prompt_field", 3),
    ("negative_field", ""),
    ("mask_dir", 3),
    ("multimask", True),
    ("multimask", "some"),
    ("nms_iou", "0.5"),
    ("nms_iou", 0),
    ("nms_iou", float("inf")),
    ("nms_per_label", 1),
    ("nms_containment", "0.5"),
    ("nms_containment", 1.5),
    ("max_detections", "10"),
    ("max_detections", 0),
    ("max_detections", True),
    ("min_area", "0.01"),
    ("min_area", 1),
    ("min_area", float("nan")),
    ("points_per_side", "32"),
    ("points_per_side", 0),
    ("points_per_side", 129),
    ("pred_iou_threshold", "0.9"),
    ("stability_threshold", 2),
    ("auto_label", 5),
    ("direction", "sideways"),
    ("max_objects", "50"),
    ("max_objects", 0),
    ("batch_size", 0),
    ("batch_size", "8"),
    ("batch_size", 2.5),
    ("batch_size", True),
    ("num_workers", -1),
    ("num_workers", "2"),
    ("num_workers", False),
    ("skip_failures", 1),
    ("only_missing", "yes"),
    ("record", 0),
    ("reuse", None),
    ("shards", 0),
    ("shards", "4"),
    ("shards", 2.0),
    ("output_dir", 3),
    ("token", 12345),
    ("progress", "verbose"),
]


@pytest.fixture(scope="module")
def segmented(image_paths, tiny_checkpoint):
    """A dataset with a recorded run in ``sam3`` that wrote detections (threshold 0: every query kept)."""
    import fiftyone as fo

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p) for p in image_paths[:3]])
    sam3_ops.segment(ds, "sam3", model_path=tiny_checkpoint, prompts=["cat"], threshold=0.0, device="cpu")
    assert ds.count("sam3.detections") > 0  # there are values to keep
    yield ds
    ds.delete()


def _state(dataset) -> dict:
    """Everything a refused call could have changed: schema, runs (and their records), values."""
    dataset.reload()
    runs = {
        key: (dataset.get_run_info(key).timestamp, dataset.get_run_info(key).config.to_str())
        for key in dataset.list_runs()
    }
    schema = {name: type(field).__name__ for name, field in dataset.get_field_schema(flat=True).items()}
    values = [d.to_json() if d is not None else None for d in dataset.values("sam3")]
    return {"schema": schema, "runs": runs, "values": values, "detections": dataset.count("sam3.detections")}


@pytest.mark.parametrize("label_field", ["sam3", "fresh"])
@pytest.mark.parametrize("name, value", BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_a_bad_setting_or_run_option_is_named_and_nothing_is_written(
    segmented, tiny_checkpoint, name, value, label_field
):
    before = _state(segmented)
    options = {"model_path": tiny_checkpoint, "prompts": ["cat"], "threshold": 0.0, "device": "cpu", name: value}
    with pytest.raises(sam3_ops.SettingsError) as raised:
        sam3_ops.segment(segmented, label_field, **options)
    assert raised.value.field == name
    word = "prompt" if name == "prompts" else name  # "prompt 2 is blank": the entry, by number
    assert word in str(raised.value)
    if name == "token":
        assert "12345" not in str(raised.value)  # a token's value is never shown
    after = _state(segmented)
    assert after == before
    assert "fresh" not in after["schema"] and "sam3_fresh" not in after["runs"]
    assert after["detections"] > 0 and all(after["values"])  # the kept values were compared


def test_segment_needs_a_collection_and_a_model_from_load_model(segmented, tiny_checkpoint):
    before = _state(segmented)
    with pytest.raises(ValueError, match="segment needs a dataset or a view, not a Sample.*select"):
        sam3_ops.segment(segmented.first(), "sam3", model_path=tiny_checkpoint, prompts=["cat"], device="cpu")
    with pytest.raises(ValueError, match="model must be a model from sam3_ops.load_model"):
        sam3_ops.segment(segmented, "sam3", model="facebook/sam3")
    assert _state(segmented) == before


def test_unknown_settings_and_a_field_name_of_the_wrong_type_are_named(segmented, tiny_checkpoint):
    before = _state(segmented)
    options = {"model_path": tiny_checkpoint, "prompts": ["cat"], "device": "cpu"}
    with pytest.raises(sam3_ops.SettingsError, match="unknown settings \\['colour'\\]") as raised:
        sam3_ops.segment(segmented, "sam3", colour="red", **options)
    assert raised.value.field == "colour"
    with pytest.raises(ValueError, match="label_field must be a field name .* not int 5"):
        sam3_ops.segment(segmented, 5, **options)
    with pytest.raises(sam3_ops.SettingsError, match="batch_size is a run option.*segment"):
        sam3_ops.load_model(batch_size=8, **options)
    assert _state(segmented) == before


@pytest.mark.parametrize("media_type", ["image", "video"])
def test_load_model_names_a_model_path_of_the_wrong_type(media_type):
    with pytest.raises(sam3_ops.SettingsError, match="model_path must be a hub id .* not int 123") as raised:
        sam3_ops.load_model(123, prompts=["cat"], media_type=media_type)
    assert raised.value.field == "model_path"


VIDEO_ONLY = [
    ({"direction": "both"}, "direction"),
    ({"max_objects": 5}, "max_objects"),
    ({"direction": "both", "shards": 2}, "direction"),
]


@pytest.mark.parametrize("label_field", ["sam3", "fresh"])
@pytest.mark.parametrize("change, name", VIDEO_ONLY, ids=["direction", "max_objects", "direction-sharded"])
def test_a_video_setting_given_to_an_image_run_is_named_and_nothing_is_written(
    segmented, tiny_checkpoint, change, name, label_field
):
    before = _state(segmented)
    options = {"model_path": tiny_checkpoint, "prompts": ["cat"], "threshold": 0.0, "device": "cpu", **change}
    with pytest.raises(sam3_ops.SettingsError, match=f"{name}.* apply to videos only") as raised:
        sam3_ops.segment(segmented, label_field, **options)
    assert raised.value.field == name
    with pytest.raises(sam3_ops.SettingsError, match="apply to videos only"):
        sam3_ops.load_model(**{k: v for k, v in options.items() if k != "shards"})
    after = _state(segmented)
    assert after == before and after["detections"] > 0 and all(after["values"])


def test_run_summaries_add_up_and_a_segment_result_is_one():
    """Every door sums its parts with ``+`` (chunks of an operator run, shards, review groups)."""
    from sam3_ops.sdk.runs import RunSummary, SegmentResult

    first = SegmentResult(2, 5, 1, [{"filepath": "a.jpg", "reason": "x"}], label_field="sam3", run_key="sam3_sam3")
    second = RunSummary.from_dict(
        {
            "samples_processed": 3,
            "detections": 1,
            "samples_skipped": 1,
            "skipped": [{"filepath": "b.jpg", "reason": "y"}],
            "shards": 2,
        }
    )
    total = RunSummary() + first + second
    assert total == RunSummary(5, 6, 2, [{"filepath": "a.jpg", "reason": "x"}, {"filepath": "b.jpg", "reason": "y"}])
    assert first.counts() == RunSummary(2, 5, 1, [{"filepath": "a.jpg", "reason": "x"}])
    assert first.to_dict()["label_field"] == "sam3" and "label_field" not in total.to_dict()
