"""Pure tests: prompt validation, box sanitising, queries per mode, conversions, crops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam3_ops.core.engine import ImageSegmentation
from sam3_ops.core.masks import crop_box, mask_shape
from sam3_ops.core.masks import memory_groups as _memory_groups
from sam3_ops.core.masks import upsample_crops as _upsample_crops
from sam3_ops.core.queries import (
    VISUAL_PROMPT,
    ImagePrompts,
    ObjectPrompt,
    TextPrompt,
    build_queries,
    grid_points,
    sanitize_boxes,
)
from sam3_ops.sdk.settings import (
    APPLIES,
    MEDIA,
    MEDIA_MODES,
    Sam3Settings,
    SettingsError,
    applies,
    media_problem,
    normalize_prompts,
)


def validate_prompts(prompts, mode):
    """The prompt texts the settings keep."""
    return tuple(p.text for p in normalize_prompts(prompts, mode))


# -- prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, expected",
    [
        ("cat", ("cat",)),
        (["cat", "dog handle"], ("cat", "dog handle")),
        (["  cat ", "cat", "dog\n"], ("cat", "dog")),  # trimmed, deduplicated
        (["two   spaces"], ("two spaces",)),
        (["café", "狗"], ("café", "狗")),
    ],
)
def test_validate_prompts_normalises(prompts, expected):
    assert validate_prompts(prompts, "text") == expected


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([], "at least one prompt"),
        (None, "at least one prompt"),
        ([""], "prompt 1 is blank"),
        (["cat", "   "], "prompt 2 is blank"),
        (["cat", 3], "prompt 2 is a int"),
        ([None], "prompt 1 is a NoneType"),
        (42, "must be a string or a list"),
        ([{"label": "x"}], "prompt 1 has no text"),
        ([{"text": "cat", "threshold": 1.5}], "threshold of prompt 1"),
        ([{"text": "cat", "threshold": True}], "threshold of prompt 1"),
        ([{"text": "cat", "label": " "}], "label"),
        ([{"text": "cat", "colour": "red"}], "unknown keys"),
    ],
)
def test_validate_prompts_rejects(prompts, message):
    with pytest.raises(ValueError, match=message):
        validate_prompts(prompts, "text")


def test_prompts_per_mode():
    assert validate_prompts(None, "exemplars") == ()
    assert validate_prompts(None, "boxes") == ()
    with pytest.raises(ValueError, match="takes no text prompts"):
        validate_prompts(["cat"], "boxes")


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="text, boxes, exemplars"):
        Sam3Settings(mode="segment", prompts=["cat"])


def test_settings_round_trip_through_a_plain_dict():
    import json

    settings = Sam3Settings(
        prompts=["cat", {"text": " person  wearing a hard hat", "label": "hardhat_person", "threshold": 0.3}],
        threshold=0.6,
        max_mask_size=512,
        device="cpu",
    )
    values = json.loads(json.dumps(settings.to_dict()))  # what a run record stores
    assert Sam3Settings.from_dict(values) == settings
    assert settings.prompts[1] == TextPrompt("person wearing a hard hat", "hardhat_person", 0.3)
    assert settings.labels == ["cat", "hardhat_person"]
    assert values["prompts"][0] == "cat"  # plain prompts stay plain strings
    with pytest.raises(AttributeError):
        settings.threshold = 0.1  # immutable
    with pytest.raises(SettingsError, match="unknown settings"):
        Sam3Settings.from_dict({**values, "colour": "red"})


def test_settings_raise_the_first_problem_and_list_every_problem():
    with pytest.raises(SettingsError) as raised:
        Sam3Settings(prompts=["cat"], threshold=True)  # a bool is not a threshold
    assert raised.value.field == "threshold"
    problems = Sam3Settings.problems(
        {
            "mode": "bogus",
            "prompts": ["", 3],
            "threshold": 2,
            "mask_threshold": -0.1,
            "device": "tpu",
            "max_mask_size": 0,
        }
    )
    assert set(problems) == {"mode", "prompts", "threshold", "mask_threshold", "device", "max_mask_size"}
    assert "text, boxes, exemplars" in problems["mode"] and "'tpu'" in problems["device"]
    assert Sam3Settings.problems({"prompts": ["cat"]}) == {}
    assert "model_path" in Sam3Settings.problems({"prompts": ["cat"], "model_path": "https://x/sam3"})


# -- which settings apply where: the one table ----------------------------------------------------

#: a valid value other than the default, for each setting of the table
GIVEN = {
    "prompt_field": "ground_truth",
    "negative_field": "not_wanted",
    "multimask": "best",
    "nms_iou": 0.5,
    "nms_per_label": True,
    "nms_containment": 0.8,
    "max_detections": 3,
    "min_area": 0.01,
    "points_per_side": 16,
    "pred_iou_threshold": 0.5,
    "stability_threshold": 0.5,
    "auto_label": "thing",
    "direction": "both",
    "max_objects": 5,
}


def given_on(name: str, media: str) -> Sam3Settings:
    """Valid settings that give ``name`` a value of its own, in a mode that runs on ``media`` (one
    the setting applies in where there is one, so that only the medium can refuse it)."""
    # else any mode its rule accepts there (multimask is refused in text mode by its own rule)
    modes = [mode for mode in MEDIA_MODES[media] if applies(name, mode)] or ["boxes"]
    mode = modes[0]
    return Sam3Settings(mode=mode, prompts=["cat"] if mode == "text" else (), **{name: GIVEN[name]})


def test_every_setting_of_the_table_is_given_a_value_other_than_its_default():
    assert set(GIVEN) == set(APPLIES)
    defaults = Sam3Settings(prompts=["cat"])
    assert all(GIVEN[name] != getattr(defaults, name) for name in APPLIES)
    assert all(set(scope.media) <= set(MEDIA) and scope.modes for scope in APPLIES.values())


@pytest.mark.parametrize("media", MEDIA)
@pytest.mark.parametrize("name", sorted(APPLIES))
def test_the_table_decides_which_settings_a_medium_refuses_by_name(name, media):
    settings = given_on(name, media)
    problem = media_problem(settings, media)
    if applies(name, media=media):
        assert problem is None, problem
    else:
        assert isinstance(problem, SettingsError) and problem.field == name, problem
        other = "images" if media == "video" else "videos"
        assert f"{name} apply to {other} only" in str(problem)
    # the forms' rule is the same rule, flagged on the setting's own input
    problems = Sam3Settings.problems({**settings.to_dict(), name: GIVEN[name]}, media)
    assert (name in problems) is not applies(name, media=media)


def test_settings_at_their_defaults_apply_anywhere_so_old_run_records_run_again():
    # a run record stores every setting: an image run's holds direction="forward", max_objects=50
    for media, mode in (("image", "text"), ("image", "auto"), ("video", "text"), ("video", "boxes")):
        record = Sam3Settings(mode=mode, prompts=["cat"] if mode == "text" else ()).to_dict()
        assert (record["direction"], record["max_objects"]) == ("forward", 50)
        assert media_problem(Sam3Settings.from_dict(record), media) is None


def test_video_settings_given_to_an_image_run_are_refused_by_name():
    problem = media_problem(Sam3Settings(mode="boxes", direction="both", max_objects=5), "image")
    assert problem.field == "direction" and "direction, max_objects apply to videos only" in str(problem)
    assert "max_detections caps the hits" in str(problem)  # the images' counterpart of max_objects
    problem = media_problem(Sam3Settings(prompts=["cat"], max_objects=5), "image")
    assert problem.field == "max_objects"
    problem = media_problem(Sam3Settings(mode="auto"), "video")  # auto's nms_iou 0.7 is not the point
    assert problem.field == "mode" and "does not run on videos" in str(problem)


def test_multimask_is_refused_outside_the_modes_of_the_table():
    for mode in ("text", "exemplars", "auto"):
        with pytest.raises(SettingsError, match="multimask applies to the 'boxes' and 'points' modes") as error:
            Sam3Settings(mode=mode, prompts=["cat"] if mode == "text" else (), multimask="best")
        assert error.value.field == "multimask"


def test_text_prompts_carry_their_own_label_and_threshold_into_queries():
    prompts = ImagePrompts(texts=(TextPrompt("person wearing a hard hat", "hardhat", 0.7), TextPrompt("dog")))
    first, second = build_queries("text", prompts, threshold=0.4)
    assert (first.text, first.label, first.threshold) == ("person wearing a hard hat", "hardhat", 0.7)
    assert (second.text, second.label, second.threshold) == ("dog", "dog", 0.4)


def test_sanitize_boxes_degenerate_cases():
    boxes = [
        [10, 10, 50, 50],  # fine
        [np.nan, 0, 10, 10],  # NaN
        [30, 30, 20, 40],  # inverted x
        [5, 5, 5, 20],  # zero width
        [-20, -20, 30, 30],  # partly outside: clipped
        [200, 200, 300, 300],  # fully outside
        [0, 0, np.inf, 10],  # infinite
        [90, 10, 120, 60],  # partly outside on the right
    ]
    kept, index = sanitize_boxes(boxes, width=100, height=80)
    assert index.tolist() == [0, 4, 7]
    np.testing.assert_allclose(kept, [[10, 10, 50, 50], [0, 0, 30, 30], [90, 10, 100, 60]])
    assert kept.dtype == np.float32


def test_sanitize_boxes_empty():
    kept, index = sanitize_boxes(np.zeros((0, 4)), 10, 10)
    assert kept.shape == (0, 4) and index.shape == (0,)


def test_queries_text_mode_attach_negatives():
    prompts = ImagePrompts(texts=("cat", "dog"), negative_boxes=[[1, 2, 3, 4]])
    queries = build_queries("text", prompts)
    assert [q.label for q in queries] == ["cat", "dog"]
    assert all(q.negative_boxes.tolist() == [[1, 2, 3, 4]] for q in queries)
    assert all(len(q.positive_boxes) == 0 for q in queries)


def test_queries_exemplars_group_by_label_without_text():
    prompts = ImagePrompts(
        boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
        box_labels=("cat", "dog", "cat"),
        negative_boxes=[[60, 60, 70, 70]],
    )
    queries = build_queries("exemplars", prompts)
    assert [(q.label, q.text, len(q.positive_boxes)) for q in queries] == [
        ("cat", VISUAL_PROMPT, 2),
        ("dog", VISUAL_PROMPT, 1),
    ]
    assert all(len(q.negative_boxes) == 1 for q in queries)


def test_queries_exemplars_with_text_and_without_boxes():
    with_text = build_queries("exemplars", ImagePrompts(texts=("mug",), boxes=[[0, 0, 5, 5]], box_labels=("cup",)))
    assert [(q.label, q.text, len(q.positive_boxes)) for q in with_text] == [("mug", "mug", 1)]
    assert build_queries("exemplars", ImagePrompts(texts=("mug",))) == []


def test_queries_boxes_mode_one_per_box_with_negative_points_inside():
    prompts = ImagePrompts(
        boxes=[[0, 0, 50, 50], [100, 100, 150, 150]],
        box_labels=("a", "b"),
        negative_boxes=[[10, 10, 30, 30]],  # centre (20, 20) is inside box 0 only
    )
    queries = build_queries("boxes", prompts)
    assert [(q.label, q.prompt_index) for q in queries] == [("a", 0), ("b", 1)]
    assert queries[0].points.tolist() == [[20, 20]] and queries[0].point_labels.tolist() == [0]
    assert queries[1].points.shape == (0, 2)


def test_queries_points_mode_one_per_object_with_every_negative_centre():
    prompts = ImagePrompts(
        objects=(
            ObjectPrompt("cup", points=[[5, 5], [9, 9]], point_labels=[1, 0]),
            ObjectPrompt("jug", points=[[70, 70]], point_labels=[1], box=[60, 60, 90, 90], mask_key=("img", "d1")),
        ),
        negative_boxes=[[10, 10, 30, 30]],
    )
    first, second = build_queries("points", prompts)
    assert (first.label, first.prompt_index, second.prompt_index) == ("cup", 0, 1)
    assert first.points.tolist() == [[5, 5], [9, 9], [20, 20]] and first.point_labels.tolist() == [1, 0, 0]
    assert first.positive_boxes.shape == (0, 4) and second.positive_boxes.tolist() == [[60, 60, 90, 90]]
    assert second.mask_key == ("img", "d1")
    with pytest.raises(ValueError, match="2 points but 1 point labels"):
        ObjectPrompt("x", points=[[1, 1], [2, 2]], point_labels=[1])


def test_grid_points_cover_the_image_at_cell_centres():
    points = grid_points(2, 100, 40)
    assert points.tolist() == [[25, 10], [75, 10], [25, 30], [75, 30]]


def test_image_prompts_checks_label_count():
    with pytest.raises(ValueError, match="2 prompt boxes but 1 box labels"):
        ImagePrompts(boxes=[[0, 0, 1, 1], [0, 0, 2, 2]], box_labels=("a",))


# -- crops and upsampling ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, expected",
    [
        ((10.2, 5.7, 20.1, 30.0), (10, 5, 21, 30)),
        ((-5, -5, 500, 500), (0, 0, 100, 80)),  # clipped to the image
        ((50, 40, 50, 40), (50, 40, 51, 41)),  # zero size -> 1 px
        ((120, 90, 130, 95), (99, 79, 100, 80)),  # outside -> the nearest pixel
    ],
)
def test_crop_box(box, expected):
    assert crop_box(box, width=100, height=80) == expected


@pytest.mark.parametrize("size", [(97, 131), (10, 7), (288, 288), (1000, 31)])
def test_upsample_crops_equals_full_interpolation_then_slice(size):
    torch.manual_seed(0)
    height, width = size
    crops = [
        (0, 0, width, height),
        (width // 3, height // 4, width // 2 + 1, height // 2 + 1),
        (width - 1, height - 1, width, height),
    ]
    low_res = torch.randn(len(crops), 18, 18)
    full = F.interpolate(low_res[None], size=size, mode="bilinear", align_corners=False)[0]
    upsampled = _upsample_crops(low_res, crops, size)
    assert upsampled.shape == (len(crops), height, width)
    for i, (x0, y0, x1, y1) in enumerate(crops):
        torch.testing.assert_close(upsampled[i, : y1 - y0, : x1 - x0], full[i, y0:y1, x0:x1], atol=1e-5, rtol=1e-5)


# -- conversions to FiftyOne --------------------------------------------------------------------


def test_relative_and_pixel_boxes_round_trip():
    from sam3_ops.sdk.convert import relative_to_xyxy, xyxy_to_relative

    xyxy = relative_to_xyxy([[0.1, 0.2, 0.5, 0.25]], width=200, height=100)
    np.testing.assert_allclose(xyxy, [[20, 20, 120, 45]])
    np.testing.assert_allclose(xyxy_to_relative(xyxy[0], 200, 100), [0.1, 0.2, 0.5, 0.25], atol=1e-6)
    # clipped to [0, 1]
    np.testing.assert_allclose(xyxy_to_relative([-10, -10, 250, 50], 200, 100), [0, 0, 1, 0.5])


def test_to_detections_masks_cover_boxes_exactly():
    from sam3_ops.sdk.convert import to_detections

    masks = [np.ones((10, 20), bool), np.zeros((5, 4), bool)]
    segmentation = ImageSegmentation(
        image_size=(100, 200),
        labels=["cat", "box-label"],
        prompt_index=np.array([-1, 0]),
        scores=np.array([0.9, 0.4], np.float32),
        boxes_xyxy=np.array([[0, 0, 20, 10], [196, 95, 200, 100]], np.float32),
        masks=masks,
    )
    detections = to_detections(segmentation, prompt_ids=["abc"])
    first, second = detections.detections
    assert first.label == "cat" and first.confidence == pytest.approx(0.9)
    np.testing.assert_allclose(first.bounding_box, [0, 0, 0.1, 0.1])
    assert first.mask.dtype == bool and first.mask.shape == (10, 20)
    assert not first.has_field("prompt_id") or first["prompt_id"] is None
    assert second["prompt_id"] == "abc"
    # mask pixels == box pixels: w * W = 4, h * H = 5
    x, y, w, h = second.bounding_box
    assert (round(w * 200), round(h * 100)) == second.mask.shape[::-1]
    assert all(0 <= v <= 1 for v in second.bounding_box)


def test_to_detections_empty():
    from sam3_ops.sdk.convert import to_detections

    detections = to_detections(ImageSegmentation(image_size=(10, 10)))
    assert detections is not None and detections.detections == []


def test_prompts_from_detections_negative_attribute_and_bad_boxes():
    import fiftyone as fo

    from sam3_ops.sdk.convert import prompts_from_detections

    prompt_field = fo.Detections(
        detections=[
            fo.Detection(label="cat", bounding_box=[0.1, 0.1, 0.2, 0.2]),
            fo.Detection(label="cat", bounding_box=[0.5, 0.5, 0.1, 0.1], negative=True),
            fo.Detection(label="cat", bounding_box=[0.3, 0.3, 0.0, 0.2]),  # zero width: dropped
            fo.Detection(label="cat", bounding_box=[0.9, 0.9, 0.5, 0.5]),  # clipped
        ]
    )
    prompts, ids, warnings = prompts_from_detections(prompt_field, None, 100, 50, mode="exemplars")
    np.testing.assert_allclose(prompts.boxes, [[10, 5, 30, 15], [90, 45, 100, 50]])
    np.testing.assert_allclose(prompts.negative_boxes, [[50, 25, 60, 30]])
    assert ids == [prompt_field.detections[0].id, prompt_field.detections[3].id]
    assert warnings == ["dropped 1 of 3 prompt boxes: degenerate (NaN, inverted, zero area) or outside the image"]
    # in boxes mode `negative` is just an attribute: every box is a prompt
    prompts, _, _ = prompts_from_detections(prompt_field, None, 100, 50, mode="boxes")
    assert len(prompts.boxes) == 3 and len(prompts.negative_boxes) == 0


def test_mask_shape_caps_the_longest_side():
    assert mask_shape((0, 0, 300, 200), 2048) == (200, 300)
    assert mask_shape((0, 0, 10000, 5000), 1000) == (500, 1000)
    assert mask_shape((0, 0, 1, 9000), 100) == (100, 1)
    assert mask_shape((0, 0, 10000, 5000), None) == (5000, 10000)


def test_scaled_crop_samples_the_same_map():
    """A mask scaled down to half the crop still follows the full-resolution one."""
    torch.manual_seed(1)
    low_res = torch.randn(1, 16, 16)
    full = _upsample_crops(low_res, [(0, 0, 400, 400)], (400, 400))[0]
    half = _upsample_crops(low_res, [(0, 0, 400, 400)], (400, 400), [(200, 200)])[0]
    assert half.shape == (200, 200)
    assert ((half > 0) == (full[::2, ::2] > 0)).float().mean() > 0.98


def test_memory_groups_respect_the_budget():
    shapes = [(10, 10)] * 5 + [(1000, 1000)]
    groups = _memory_groups(shapes, budget=1_000_000)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        h = max(shapes[i][0] for i in group)
        w = max(shapes[i][1] for i in group)
        assert len(group) == 1 or len(group) * h * w <= 1_000_000
    assert [5] in groups  # the big one alone


def test_memory_groups_count_the_intermediates_of_thin_masks():
    # 2048 x 1 masks from 288 x 288 maps: 2 K output pixels each, but ~1.2 M floats of intermediates
    shapes = [(2048, 1)] * 100
    budget = 10_000_000
    groups = _memory_groups(shapes, budget, low_res_shape=(288, 288))
    assert sorted(i for g in groups for i in g) == list(range(100))
    assert all(len(g) * (2048 * 1 + 2048 * 288 * 2 + 1 * 288) <= budget for g in groups)
    assert len(groups) > 1  # by output pixels alone all 100 would go at once
    assert len(_memory_groups(shapes, budget)) == 1


def test_upsampling_stays_float32_under_autocast():
    low_res = torch.randn(2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        upsampled = _upsample_crops(low_res, [(0, 0, 50, 40), (5, 5, 30, 30)], (40, 50))
    assert upsampled.dtype == torch.float32


# -- one text prompt type and one engine pool for images and videos (core) --------------------------


def test_images_and_videos_share_one_text_prompt_type_and_normaliser():
    from sam3_ops.core import queries, video

    assert video.TextPrompt is queries.TextPrompt
    assert video.normalize_text_prompts is queries.normalize_text_prompts
    prompts = queries.normalize_text_prompts(
        ["  red   ball ", {"text": "box", "label": " crate ", "threshold": 1}, queries.TextPrompt("dog", None, 0.25)]
    )
    assert prompts == [TextPrompt("red ball"), TextPrompt("box", "crate", 1.0), TextPrompt("dog", None, 0.25)]
    assert isinstance(prompts[1].threshold, float) and prompts[1].name == "crate"
    assert queries.normalize_text_prompts(None, at_least_one=False) == []


@pytest.mark.parametrize(
    "prompts, message",
    [
        (42, "prompts must be a string or a list of strings or dicts, not int"),
        (["cat", 3], r"prompt 2 is a int \(3\)"),
        ([{"txt": "cat"}], r"prompt 1 has unknown keys \['txt'\]; a prompt dict needs 'text'"),
        ([{"label": "x"}], r"prompt 1 has no text \(None\)"),
        ([TextPrompt("   ")], "prompt 1 is blank"),
        (["cat", {"text": "dog", "label": " "}], r"prompt 2 \('dog'\) has label ' '"),
        ([{"text": "cat", "threshold": 1.5}], r"the threshold of prompt 1 \('cat'\) must be a number in \[0, 1\]"),
        ([TextPrompt("cat", threshold=True)], r"must be a number in \[0, 1\], not True"),
        ([TextPrompt("cat", threshold=float("nan"))], r"must be a number in \[0, 1\], not nan"),
        ([TextPrompt("cat", threshold="0.5")], r"must be a number in \[0, 1\], not '0.5'"),
        (["cat", " cat"], "prompt 2 repeats 'cat'; text prompts must be distinct"),
        ([], "at least one prompt"),
        (None, "at least one prompt"),
    ],
)
def test_text_prompt_normaliser_names_the_prompt_and_the_problem(prompts, message):
    from sam3_ops.core.queries import normalize_text_prompts

    with pytest.raises(ValueError, match=message):
        normalize_text_prompts(prompts)


def test_text_prompt_normaliser_can_drop_repeated_texts(caplog):
    from sam3_ops.core.queries import normalize_text_prompts

    with caplog.at_level("WARNING", logger="sam3_ops.core.queries"):
        prompts = normalize_text_prompts(["cat", {"text": "cat ", "label": "kitten"}, "dog"], drop_duplicates=True)
    assert prompts == [TextPrompt("cat"), TextPrompt("dog")]  # the first occurrence kept
    assert "Ignoring duplicate prompt 'cat'" in caplog.text


def test_one_pool_holds_image_and_video_engines():
    from sam3_ops.core import pool
    from sam3_ops.core.engine import Sam3Engine
    from sam3_ops.core.video import Sam3VideoEngine

    pool.clear_pool()
    video_engine = pool.get_video_engine("facebook/sam3", "cpu")
    image_engine = pool.get_engine("facebook/sam3", "cpu")
    assert isinstance(video_engine, Sam3VideoEngine) and isinstance(image_engine, Sam3Engine)
    assert pool.get_video_engine(" facebook/sam3 ", "cpu") is video_engine  # the same key, normalised
    assert pool.get_engine("facebook/sam3", "cpu", compile=False) is image_engine
    assert pool.get_video_engine("someone/other-sam3", "cpu") is not video_engine
    assert pool.get_engine("facebook/sam3", "cpu", compile=True) is not image_engine
    assert video_engine._text_model is None and image_engine._detector is None  # nothing loaded to pool them
    pool.clear_pool()
    assert pool.get_video_engine("facebook/sam3", "cpu") is not video_engine
    assert pool.get_engine("facebook/sam3", "cpu") is not image_engine
    pool.clear_pool()
