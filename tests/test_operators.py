"""The App operators, driven without the App: FiftyOne's plugin discovery, operator execution
(immediate and through the delegated operation service), and forms resolved on real
``ExecutionContext``s. Real FiftyOne, the tiny random checkpoint; no mocks."""

import dataclasses

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone import ViewField as F
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ValidationContext

import sam3_ops
from sam3_ops.app.operators import SegmentEverything, SegmentWithBoxPrompts, SegmentWithTextPrompts, parse_prompts
from sam3_ops.app.segment_forms import settings_from_form
from sam3_ops.core.engine import SegmentOptions
from sam3_ops.sdk.fields import output_field_problem
from sam3_ops.sdk.runs import get_run
from sam3_ops.sdk.settings import Sam3Settings, SettingsError, normalize_prompts

PLUGIN = "@sam3-ops/sam3"
TEXT_URI = f"{PLUGIN}/segment_with_text_prompts"
BOX_URI = f"{PLUGIN}/segment_with_box_prompts"
AUTO_URI = f"{PLUGIN}/segment_everything"


@pytest.fixture
def text_params(tiny_checkpoint):
    """A valid text-prompt form: the tiny checkpoint, threshold 0 so its ~0.25 scores are kept."""
    return {
        "prompts": ["cat", "dog"],
        "threshold": 0.0,
        "mask_threshold": 0.5,
        "label_field": "sam3",
        "batch_size": 2,
        "model_path": str(tiny_checkpoint),
        "device": "cpu",
    }


@pytest.fixture
def box_params(tiny_checkpoint):
    """A valid box-prompt form: one mask per ground-truth box."""
    return {
        "prompt_field": "ground_truth",
        "mode": "boxes",
        "mask_threshold": 0.5,
        "label_field": "gt_masks",
        "batch_size": 3,
        "model_path": str(tiny_checkpoint),
        "device": "cpu",
    }


def resolve_form(operator, dataset, params, **request_params):
    """Resolves ``operator``'s form on a real context; returns (properties by name, validation)."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": dict(params), **request_params})
    form = operator.resolve_input(ctx)
    return form.type.properties, ValidationContext(ctx, form, operator)


def written_ids(dataset, field):
    """The ids of the samples that hold a value in ``field``."""
    return set(dataset.exists(field).values("id"))


def triggered(result, operator_name):
    """The params of each ``operator_name`` trigger an immediate run sent to the App."""
    return [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == operator_name]


# -- discovery ----------------------------------------------------------------------------------


def test_plugin_is_discovered_with_its_segment_operators_and_labels(plugins_dir):
    import fiftyone.operators.registry as foor
    import fiftyone.plugins as fop

    assert PLUGIN in [plugin.name for plugin in fop.list_plugins()]
    registry = foor.OperatorRegistry()
    operators = {op.uri: op for op in registry.list_operators(builtin=False)}
    assert {TEXT_URI, BOX_URI, AUTO_URI} <= set(operators), f"plugin errors: {registry.list_errors()}"
    assert operators[TEXT_URI].config.label == "Segment with text prompts"
    assert operators[BOX_URI].config.label == "Segment with box or point prompts"
    assert operators[AUTO_URI].config.label == "Segment everything"
    for uri in (TEXT_URI, BOX_URI, AUTO_URI):
        config = operators[uri].config
        assert config.allow_immediate_execution and config.allow_delegated_execution
        assert operators[uri]._plugin_secrets == ["HF_TOKEN"]


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (["cat", "dog"], ("cat", "dog")),
        ("cat, dog", ("cat", "dog")),
        (["cat, dog", "red  car", "cat"], ("cat", "dog", "red car")),
        ("cat, dog,", ("cat", "dog")),
        (None, ()),
        ([], ()),
    ],
)
def test_parse_prompts_accepts_lists_and_comma_separated_text(value, expected):
    entries, problem = parse_prompts(value)
    assert problem is None
    # the form splits; the settings normalise (trim, collapse spaces, drop duplicates)
    assert tuple(p.text for p in normalize_prompts(entries, "exemplars")) == expected


@pytest.mark.parametrize(
    "value, words",
    [
        (["cat", "   "], ["prompt 2", "blank"]),  # the settings name the entry
        (" , ", ["prompt", "blank"]),  # the form: nothing but commas
        ("", ["prompt 1", "blank"]),
        (["cat", 3], ["prompt 2", "int"]),
        (7, ["prompts must be text", "int"]),  # the form: not text at all
    ],
)
def test_bad_form_prompts_are_named_by_the_form_or_the_settings(dataset, text_params, value, words):
    """What the form shows under its prompts input, whichever of the form or the settings found it."""
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, {**text_params, "prompts": value})
    assert_flagged(properties, validation, "prompts", *words)


# -- execution with each target ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["DATASET", "CURRENT_VIEW", "SELECTED_SAMPLES"])
def test_text_prompts_write_exactly_the_target_samples(plugins_dir, dataset, text_params, target):
    ids = dataset.values("id")
    request = {"dataset": dataset, "params": {**text_params, "view_target": target}}
    if target == "CURRENT_VIEW":
        request["view"] = dataset.skip(1).limit(3)
        expected = set(ids[1:4])
    elif target == "SELECTED_SAMPLES":
        request["view"] = dataset.skip(1).limit(3)  # samples are selected in the current view
        request["selected"] = [ids[1], ids[3]]
        expected = {ids[1], ids[3]}
    else:
        request["view"] = dataset.limit(2)  # the dataset target wins over the view
        expected = set(ids)

    result = foo.execute_operator(TEXT_URI, request)

    dataset.reload()
    assert written_ids(dataset, "sam3") == expected
    labels = {d.label for dets in dataset.select(list(expected)).values("sam3") for d in dets.detections}
    assert labels and labels <= {"cat", "dog"}
    (summary,) = [params["results"] for params in triggered(result, "show_output")]
    assert summary["samples_processed"] == len(expected)
    assert summary["samples_skipped"] == 0 and summary["skipped"] == []
    assert summary["detections"] == sum(len(d.detections) for d in dataset.values("sam3") if d is not None)
    assert triggered(result, "reload_dataset") == [{}]
    progress = [params["progress"] for params in triggered(result, "set_progress")]
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert get_run(dataset, "sam3").settings.labels == ["cat", "dog"]


def test_box_prompts_give_one_mask_per_box_of_the_prompt_field(plugins_dir, dataset, box_params):
    foo.execute_operator(BOX_URI, {"dataset": dataset, "params": {**box_params, "negative_field": "not_wanted"}})

    dataset.reload()
    for sample in dataset:
        boxes = {d.id: d.label for d in sample.ground_truth.detections}
        masks = sample.gt_masks.detections
        assert {d.prompt_id: d.label for d in masks} == boxes
        assert all(d.mask is not None and d.mask.dtype == bool for d in masks)
    run = get_run(dataset, "gt_masks").settings
    assert (run.mode, run.prompt_field, run.negative_field) == ("boxes", "ground_truth", "not_wanted")
    assert dataset.get_run_info("sam3_gt_masks").config.settings["mode"] == "boxes"  # FiftyOne's runs framework


def test_a_corrupt_image_is_skipped_with_its_reason(plugins_dir, dataset, text_params, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    dataset.add_sample(fo.Sample(filepath=str(broken)))

    result = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": text_params})

    (summary,) = [params["results"] for params in triggered(result, "show_output")]
    assert summary["samples_processed"] == len(dataset) - 1
    assert summary["samples_skipped"] == 1
    assert summary["skipped"][0]["filepath"] == str(broken) and summary["skipped"][0]["reason"]


def test_a_second_run_reuses_the_weights_and_the_token_never_reaches_outputs(
    plugins_dir, dataset, text_params, monkeypatch
):
    secret = "hf_sam3ops_test_secret_value"
    monkeypatch.setenv("HF_TOKEN", secret)

    first = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": text_params})
    detector = sam3_ops.get_engine(text_params["model_path"], "cpu").detector
    second = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": {**text_params, "overwrite": True}})

    # the second run reused the weights the first one loaded
    assert sam3_ops.get_engine(text_params["model_path"], "cpu").detector is detector
    dataset.reload()
    for result in (first, second):
        assert secret not in repr(result.executor.to_json())
    assert secret not in repr(dataset.info)


# -- delegated execution ------------------------------------------------------------------------


def test_delegated_run_is_queued_then_executed_by_the_service(plugins_dir, dataset, tiny_checkpoint):
    params = {
        "prompt_field": "ground_truth",
        "mode": "exemplars",
        "prompts": "cat",
        "threshold": 0.0,
        "label_field": "similar",
        "batch_size": 2,
        "model_path": str(tiny_checkpoint),
        "device": "cpu",
    }
    queued = foo.execute_operator(BOX_URI, {"dataset": dataset, "params": params, "request_delegation": True})
    assert queued.delegated
    dataset.reload()
    assert dataset.get_field("similar") is None  # nothing runs until the service executes it

    service = DelegatedOperationService()
    try:
        (result,) = service.execute_queued_operations(operator=BOX_URI, dataset_name=dataset.name)
        assert result.error is None, result.error
        assert result.result["samples_processed"] == len(dataset)
        assert result.outputs_schema is not None  # resolve_output ran on the run's results
        doc = service.get(queued.result["id"])
        assert doc.run_state == "completed"
        assert doc.status is not None and doc.status.progress == 1.0  # ctx.set_progress reached the run

        dataset.reload()
        assert written_ids(dataset, "similar") == set(dataset.values("id"))
        assert result.result["detections"] == dataset.count("similar.detections")
        assert get_run(dataset, "similar").settings.labels == ["cat"]
    finally:
        service.delete_for_dataset(dataset._doc.id)


# -- overwrite protection -----------------------------------------------------------------------


def test_existing_field_is_kept_unless_overwrite_is_chosen(plugins_dir, dataset, text_params):
    marker = fo.Detections(detections=[fo.Detection(label="keep me", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    dataset.set_values("sam3", [marker.copy() for _ in range(len(dataset))])
    first = dataset.first().id

    with pytest.raises(Exception, match="already exists"):
        foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": text_params})
    dataset.reload()
    assert set(dataset.distinct("sam3.detections.label")) == {"keep me"}

    foo.execute_operator(
        TEXT_URI,
        {
            "dataset": dataset,
            "selected": [first],
            "params": {**text_params, "overwrite": True, "view_target": "SELECTED_SAMPLES"},
        },
    )
    dataset.reload()
    assert {d.label for d in dataset[first].sam3.detections} <= {"cat", "dog"}
    others = dataset.exclude([first]).values("sam3.detections.label")
    assert all(labels == ["keep me"] for labels in others)  # samples outside the target keep their value


def test_a_field_of_another_type_is_never_overwritten(plugins_dir, dataset, text_params):
    dataset.set_values("note", ["hand-written"] * len(dataset))

    with pytest.raises(Exception, match="never overwritten"):
        foo.execute_operator(
            TEXT_URI, {"dataset": dataset, "params": {**text_params, "label_field": "note", "overwrite": True}}
        )
    dataset.reload()
    assert dataset.distinct("note") == ["hand-written"]
    assert isinstance(dataset.get_field("note"), fo.StringField)


# -- the forms flag bad input -------------------------------------------------------------------


def test_valid_forms_have_no_errors(dataset, text_params, box_params):
    for operator, params in ((SegmentWithTextPrompts(), text_params), (SegmentWithBoxPrompts(), box_params)):
        properties, validation = resolve_form(operator, dataset, params)
        assert not validation.invalid, [e.to_json() for e in validation.errors]
        assert "view_target" in properties  # FiftyOne's target input: dataset, view or selection
    properties, _ = resolve_form(SegmentWithBoxPrompts(), dataset, box_params)
    assert properties["prompt_field"].type.values == ["ground_truth", "not_wanted"]  # Detections fields only


def assert_flagged(properties, validation, name, *words):
    prop = properties[name]
    assert prop.invalid, f"{name} not flagged"
    for word in words:
        assert word.lower() in prop.error_message.lower(), prop.error_message
    assert f".{name}" in [error.path for error in validation.errors]  # and the form cannot be submitted


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"prompts": None}, "prompts", ["at least one"]),
        ({"prompts": []}, "prompts", ["at least one"]),
        ({"prompts": ["cat", "  "]}, "prompts", ["prompt 2", "blank"]),
        ({"prompts": " , "}, "prompts", ["blank"]),
        ({"model_path": "facebook/sam3"}, "model_path", ["hf auth login", "HF_TOKEN", "local"]),
        ({"model_path": "/no/such/checkpoint"}, "model_path", ["does not exist"]),
        ({"model_path": "https://example.com/sam3"}, "model_path", ["url"]),
        ({"label_field": "bad name!"}, "label_field", ["not a valid field name"]),
        ({"label_field": "_private"}, "label_field", ["not a valid field name"]),
        ({"label_field": ""}, "label_field", ["give the field"]),
        ({"label_field": "not_wanted"}, "label_field", ["already exists", "overwrite"]),
        ({"label_field": "filepath", "overwrite": True}, "label_field", ["never overwritten"]),
    ],
)
def test_text_form_flags_bad_input(dataset, text_params, change, name, words):
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, {**text_params, **change})
    assert_flagged(properties, validation, name, *words)


def test_everything_form_flags_a_grid_past_its_bound(dataset, tiny_checkpoint):
    """A grid of more than 128 points a side (16,384 prompts an image) is refused on its input."""
    base = {"label_field": "everything", "model_path": str(tiny_checkpoint), "device": "cpu"}
    properties, validation = resolve_form(SegmentEverything(), dataset, {**base, "points_per_side": 128})
    assert not validation.invalid, [e.to_json() for e in validation.errors]
    properties, validation = resolve_form(SegmentEverything(), dataset, {**base, "points_per_side": 129})
    assert_flagged(properties, validation, "points_per_side", "from 1 to 128", "129")


def test_text_form_accepts_comma_separated_prompts_and_a_chosen_overwrite(dataset, text_params):
    params = {**text_params, "prompts": "cat, dog", "label_field": "not_wanted", "overwrite": True}
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, params)
    assert not validation.invalid, [e.to_json() for e in validation.errors]
    assert "overwrite" in properties


def test_form_flags_an_empty_target(dataset, text_params):
    properties, validation = resolve_form(
        SegmentWithTextPrompts(), dataset, {**text_params, "view_target": "SELECTED_SAMPLES"}, selected=[]
    )
    assert_flagged(properties, validation, "view_target", "no samples")

    empty_view = dataset.match(F("filepath") == "nowhere")._serialize()
    properties, validation = resolve_form(
        SegmentWithTextPrompts(), dataset, {**text_params, "view_target": "CURRENT_VIEW"}, view=empty_view
    )
    assert_flagged(properties, validation, "view_target", "no samples")


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"label_field": "ground_truth", "overwrite": True}, "label_field", ["prompts"]),
        ({"label_field": "not_wanted", "negative_field": "not_wanted", "overwrite": True}, "label_field", ["prompts"]),
        ({"mode": "exemplars", "prompts": ["cat", ""]}, "prompts", ["blank"]),
        ({"prompt_field": "no_such_field"}, "prompt_field", ["not a detections field"]),
        ({"label_field": "gt masks"}, "label_field", ["not a valid field name"]),
    ],
)
def test_box_form_flags_bad_input(dataset, box_params, change, name, words):
    properties, validation = resolve_form(SegmentWithBoxPrompts(), dataset, {**box_params, **change})
    assert_flagged(properties, validation, name, *words)


def test_box_form_flags_a_dataset_without_detections(image_paths, box_params):
    plain = fo.Dataset()
    try:
        plain.add_samples([fo.Sample(filepath=path) for path in image_paths[:2]])
        properties, validation = resolve_form(SegmentWithBoxPrompts(), plain, {**box_params, "prompt_field": None})
        assert_flagged(properties, validation, "prompt_field", "no detections field")
    finally:
        plain.delete()


def test_output_field_problem_outside_a_form(dataset):
    assert output_field_problem(dataset, "brand_new", overwrite=False) is None
    assert output_field_problem(dataset, "not_wanted", overwrite=True) is None
    assert "already exists" in output_field_problem(dataset, "not_wanted", overwrite=False)
    assert "never overwritten" in output_field_problem(dataset, "metadata", overwrite=True)


def test_only_samples_without_results_resumes_an_interrupted_run(plugins_dir, dataset, text_params):
    first_half = dataset.limit(3).values("id")
    foo.execute_operator(
        TEXT_URI,
        {"dataset": dataset, "selected": first_half, "params": {**text_params, "view_target": "SELECTED_SAMPLES"}},
    )
    dataset.reload()
    before = {s.id: [d.id for d in s.sam3.detections] for s in dataset.select(first_half)}
    assert written_ids(dataset, "sam3") == set(first_half)

    # the field exists: resuming needs no overwrite choice, and replaces nothing
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, {**text_params, "only_missing": True})
    assert "only_missing" in properties and not validation.errors
    foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": {**text_params, "only_missing": True}})
    dataset.reload()
    assert written_ids(dataset, "sam3") == set(dataset.values("id"))
    after = {s.id: [d.id for d in s.sam3.detections] for s in dataset.select(first_half)}
    assert after == before  # not redone


# -- points, multimask, per-prompt settings, de-duplication, segment everything ----------------------


@pytest.fixture
def clicked(dataset):
    """The dataset with a ``clicks`` Keypoints field: one object of a positive and a negative point."""
    for sample in dataset:
        keypoint = fo.Keypoint(label="cup", points=[[0.3, 0.3], [0.8, 0.8]], sam_labels=[1, 0])
        sample["clicks"] = fo.Keypoints(keypoints=[keypoint])
        sample.save()
    return dataset


def test_point_prompts_with_all_three_masks_from_the_box_operator(plugins_dir, clicked, box_params):
    params = {**box_params, "mode": "points", "prompt_field": "clicks", "multimask": "all", "label_field": "pts"}
    properties, validation = resolve_form(SegmentWithBoxPrompts(), clicked, params)
    assert not validation.invalid, [e.to_json() for e in validation.errors]
    assert properties["prompt_field"].type.values == ["clicks"]  # Keypoints fields only, in points mode
    assert "threshold" not in properties  # one mask per prompt object whatever its score

    foo.execute_operator(BOX_URI, {"dataset": clicked, "params": params})

    clicked.reload()
    for sample in clicked:
        (keypoint,) = sample.clicks.keypoints
        assert [(d.label, d.prompt_id, d.mask_rank) for d in sample.pts.detections] == [
            ("cup", keypoint.id, rank) for rank in (0, 1, 2)
        ]
    settings = get_run(clicked, "pts").settings
    assert (settings.mode, settings.prompt_field, settings.multimask) == ("points", "clicks", "all")


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"mode": "points", "prompt_field": "ground_truth"}, "prompt_field", ["not a keypoints field"]),
        ({"multimask": "some"}, "multimask", []),
    ],
)
def test_box_form_flags_bad_point_input(clicked, box_params, change, name, words):
    properties, validation = resolve_form(SegmentWithBoxPrompts(), clicked, {**box_params, **change})
    assert_flagged(properties, validation, name, *words)


def test_prompt_table_gives_labels_and_thresholds_of_their_own(plugins_dir, dataset, text_params):
    table = [{"text": "person wearing a hard hat", "label": "hardhat_person", "threshold": 0.0}, {"text": "dog"}]
    params = {**text_params, "prompts": ["dog", "cat"], "prompt_table": table, "threshold": 0.9}
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, params)
    assert not validation.invalid, [e.to_json() for e in validation.errors]

    foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": params})

    settings = get_run(dataset, "sam3").settings
    assert settings.to_dict()["prompts"] == [
        {"text": "person wearing a hard hat", "label": "hardhat_person", "threshold": 0.0},
        "dog",
        "cat",
    ]
    dataset.reload()
    labels = {d.label for value in dataset.values("sam3") for d in value.detections}
    assert labels == {"hardhat_person"}  # the tiny model's ~0.25 scores pass 0.0, never 0.9


@pytest.mark.parametrize(
    "table, words",
    [
        ([{"text": "cat", "threshold": 1.5}], ["row 1", "[0, 1]"]),
        ([{"text": "cat"}, {"text": "  "}], ["row 2", "blank"]),
        ([{"text": "cat", "label": "   "}], ["row 1", "label"]),
    ],
)
def test_text_form_flags_a_bad_prompt_table_row(dataset, text_params, table, words):
    params = {**text_params, "prompts": [], "prompt_table": table}
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, params)
    assert_flagged(properties, validation, "prompt_table", *words)
    assert not properties["prompts"].invalid  # the table's problem is shown once, on the table


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"nms_iou": 1.5}, "nms_iou", ["(0, 1]"]),
        ({"nms_containment": 0}, "nms_containment", ["(0, 1]"]),
        ({"max_detections": 0}, "max_detections", [">= 1"]),
        ({"min_area": 1.0}, "min_area", ["[0, 1)"]),
    ],
)
def test_text_form_flags_bad_deduplication_settings(dataset, text_params, change, name, words):
    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, {**text_params, **change})
    assert_flagged(properties, validation, name, *words)


@pytest.mark.parametrize(
    "operator, uri, params_fixture, change",
    [
        (SegmentWithTextPrompts, TEXT_URI, "text_params", {"max_objects": 5}),
        (SegmentWithTextPrompts, TEXT_URI, "text_params", {"direction": "both"}),
        (SegmentWithBoxPrompts, BOX_URI, "box_params", {"direction": "both"}),
        (SegmentWithBoxPrompts, BOX_URI, "box_params", {"max_objects": 5}),
    ],
    ids=["text-max_objects", "text-direction", "boxes-direction", "boxes-max_objects"],
)
def test_image_forms_flag_video_settings_on_their_input_and_refuse_to_run(
    request, plugins_dir, dataset, operator, uri, params_fixture, change
):
    """A video-only setting given to an image form (an SDK caller of the operator) is flagged on an
    input of its own, with the settings' message, and the form cannot be submitted: never ignored."""
    params = {**request.getfixturevalue(params_fixture), **change}
    (name,) = change
    properties, validation = resolve_form(operator(), dataset, params)
    assert_flagged(properties, validation, name, f"{name} apply to videos only", "unset for images")
    with pytest.raises(Exception, match=name):
        foo.execute_operator(uri, {"dataset": dataset, "params": params})
    dataset.reload()
    assert not dataset.has_field(params["label_field"]) and dataset.list_runs() == []


def test_segment_everything_operator(plugins_dir, dataset, tiny_checkpoint):
    params = {
        "points_per_side": 4,
        "pred_iou_threshold": 0.0,
        "stability_threshold": 0.0,
        "auto_label": "thing",
        "max_detections": 5,
        "label_field": "everything",
        "model_path": str(tiny_checkpoint),
        "device": "cpu",
    }
    properties, validation = resolve_form(SegmentEverything(), dataset, params)
    assert not validation.invalid, [e.to_json() for e in validation.errors]
    assert properties["nms_iou"].default == 0.7

    foo.execute_operator(AUTO_URI, {"dataset": dataset, "params": params})

    dataset.reload()
    counts = [len(value.detections) for value in dataset.values("everything")]
    assert all(0 < count <= 5 for count in counts)
    assert {d.label for value in dataset.values("everything") for d in value.detections} == {"thing"}
    settings = get_run(dataset, "everything").settings
    assert (settings.mode, settings.points_per_side, settings.nms_iou) == ("auto", 4, 0.7)


# -- run options: flagged as segment names them; the settings' defaults on the forms ----------------

BAD_RUN_OPTIONS = [("batch_size", 0), ("batch_size", "abc"), ("batch_size", -1), ("shards", 0)]


def nothing_written(dataset) -> bool:
    """No output field, no run record: a refused run left the dataset as it was."""
    dataset.reload()
    return not dataset.has_field("sam3") and dataset.list_runs() == []


@pytest.mark.parametrize("name, value", BAD_RUN_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_RUN_OPTIONS])
def test_form_flags_a_bad_run_option_with_the_sdks_message(plugins_dir, dataset, text_params, name, value):
    params = {**text_params, name: value}
    with pytest.raises(SettingsError) as raised:  # what the SDK says about the value
        sam3_ops.segment(dataset, "sam3", model_path=text_params["model_path"], prompts=["cat"], **{name: value})
    assert raised.value.field == name

    properties, validation = resolve_form(SegmentWithTextPrompts(), dataset, params)
    assert_flagged(properties, validation, name)
    assert properties[name].error_message == str(raised.value)
    with pytest.raises(Exception, match=name):  # the form cannot be submitted
        foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": params})
    assert nothing_written(dataset)


@pytest.mark.parametrize("value", [0, "abc", -1])
def test_execute_refuses_a_bad_batch_size_by_name_before_writing(dataset, text_params, value):
    """Past the form (an SDK caller of the operator): a bad batch size is named, never replaced by
    the default, and nothing is written (the immediate route records its run before segmenting)."""
    ctx = ExecutionContext(
        request_params={"dataset_name": dataset.name, "params": {**text_params, "batch_size": value}}
    )

    def run():
        result = SegmentWithTextPrompts().execute(ctx)
        return list(result)  # an immediate run is a generator: run it to its end

    with pytest.raises(SettingsError, match=f"batch_size must be .* not {value!r}"):
        run()
    assert nothing_written(dataset)


def test_an_empty_batch_size_runs_with_the_default(plugins_dir, dataset, text_params):
    result = foo.execute_operator(TEXT_URI, {"dataset": dataset, "params": {**text_params, "batch_size": None}})
    (summary,) = [params["results"] for params in triggered(result, "show_output")]
    assert summary["samples_processed"] == len(dataset) == len(written_ids(dataset, "sam3"))


def test_forms_show_the_settings_defaults(dataset, text_params, box_params, tiny_checkpoint):
    defaults = {setting.name: setting.default for setting in dataclasses.fields(Sam3Settings)}
    text, _ = resolve_form(SegmentWithTextPrompts(), dataset, text_params)
    auto, _ = resolve_form(SegmentEverything(), dataset, {"model_path": str(tiny_checkpoint), "device": "cpu"})
    points, _ = resolve_form(SegmentWithBoxPrompts(), dataset, box_params)
    for name in ("threshold", "mask_threshold", "nms_iou", "nms_containment", "max_detections", "min_area"):
        assert text[name].default == defaults[name], name
    assert text["nms_per_label"].default is defaults["nms_per_label"]
    for name in ("points_per_side", "pred_iou_threshold", "stability_threshold", "auto_label"):
        assert auto[name].default == defaults[name], name
    assert auto["nms_iou"].default == Sam3Settings(mode="auto").nms_iou  # segment everything always de-duplicates
    assert points["multimask"].default == "one" and defaults["multimask"] is None  # "one mask per prompt"

    # an empty score threshold is the settings' default: the model's own, which the form names
    empty = {"prompts": ["cat"], "threshold": None, "mask_threshold": None}
    settings = settings_from_form(empty, "text")
    assert settings == settings_from_form({"prompts": ["cat"]}, "text") == Sam3Settings(prompts=["cat"])
    assert settings.threshold == defaults["threshold"]
    if defaults["threshold"] is None:  # the model's own: what the image model runs with, shown on the form
        own = str(settings.segment_options().threshold)
        assert own == str(SegmentOptions().threshold)
        assert f"empty: the model's own ({own})" in text["threshold"].view.description
        assert text["threshold"].view.placeholder == own
