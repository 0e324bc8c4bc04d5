"""The calibration operators and PR-curve plots, driven without the App: FiftyOne's plugin
discovery, operator execution (immediate, and delegated through the delegated operation service),
forms resolved on real ``ExecutionContext``s, on the ground truth of ``tests/test_calibrate.py``
(the grid checkpoint's own "cat" hits above a gap in their scores, labelled "animal"), so the
answer is known: the wording "cat" and a threshold in the gap."""

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ValidationContext

import sam3_ops
from sam3_ops.app.calibrate_operators import (
    CALIBRATED_FIELD,
    TEXT_OPERATOR_URI,
    CalibratePrompts,
    SegmentWithCalibratedPrompts,
    words_param,
)
from sam3_ops.app.segment_forms import text_prompt_inputs
from sam3_ops.sdk.runs import get_run
from tests.test_calibrate import hits, tiny_checkpoint  # noqa: F401  (fixtures: the grid checkpoint, its hits)

PLUGIN = "@sam3-ops/sam3"
CALIBRATE_URI = f"{PLUGIN}/calibrate_prompts"
CALIBRATED_URI = f"{PLUGIN}/segment_with_calibrated_prompts"
WORDINGS = ["dog", "cat", "red car"]


@pytest.fixture
def params(tiny_checkpoint):  # noqa: F811
    """A valid form: three wordings for "animal", the grid checkpoint on the CPU, any number of objects."""
    return {
        "gt_field": "gt",
        words_param("animal"): ", ".join(WORDINGS),
        "objective": "f1",
        "iou": 0.5,
        "min_objects": 1,
        "key": "app",
        "batch_size": 4,
        "model_path": str(tiny_checkpoint),
        "device": "cpu",
    }


def resolve_form(operator, dataset, params):
    """Resolves ``operator``'s form on a real context; returns (properties by name, validation)."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": dict(params)})
    form = operator.resolve_input(ctx)
    return form.type.properties, ValidationContext(ctx, form, operator)


def flagged(properties, validation) -> dict[str, str]:
    """The inputs the form flags, with their messages (each also stops the form being submitted)."""
    messages = {name: prop.error_message for name, prop in properties.items() if getattr(prop, "invalid", False)}
    assert {f".{name}" for name in messages} <= {error.path for error in validation.errors}
    return messages


def output_schema(dataset, params, results) -> dict:
    """The output *Calibrate prompts* lays out for ``results``, as the App receives it."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params, "results": results})
    return CalibratePrompts().resolve_output(ctx).to_json()


def triggered(result, operator_name):
    """The params of each ``operator_name`` trigger an immediate run sent to the App."""
    return [r["params"] for r in result.executor.to_json()["requests"] if r["operator_uri"] == operator_name]


def check_results(dataset, results, low, high):
    """The table, curves and stored run of a calibration of "animal" with :data:`WORDINGS`."""
    (row,) = results["table"]
    ground_truth = dataset.count("gt.detections")
    assert ground_truth > 0
    assert (row["label"], row["text"], row["ground_truth"]) == ("animal", "cat", ground_truth)
    stored = sam3_ops.get_calibration(dataset, results["key"])
    assert stored is not None
    threshold = stored.classes[0].threshold
    assert low < threshold < high and row["threshold"] == round(threshold, 4)  # rounded for reading
    assert row["precision"] == row["recall"] == row["f1"] == row["ap"] == 1.0 and row["flag"] == ""
    # one PR curve per wording, on FiftyOne's 101 recall levels
    names = [trace["name"] for trace in results["curves"]]
    assert "animal: cat (chosen) (AP = 1.000)" in names
    assert len(names) == len(WORDINGS) and all(len(trace["y"]) == 101 for trace in results["curves"])
    assert stored.prompts == results["prompts"] == [{"text": "cat", "label": "animal", "threshold": threshold}]
    assert results["text_params"]["prompt_table"] == results["prompts"]


# -- discovery ----------------------------------------------------------------------------------


def test_the_operators_are_discovered(plugins_dir):
    import fiftyone.operators.registry as foor

    registry = foor.OperatorRegistry()
    operators = {op.uri: op for op in registry.list_operators(builtin=False)}
    assert {CALIBRATE_URI, CALIBRATED_URI} <= set(operators), f"plugin errors: {registry.list_errors()}"
    assert operators[CALIBRATE_URI].config.label == "Calibrate prompts"
    assert operators[CALIBRATE_URI].config.allow_delegated_execution
    assert operators[CALIBRATED_URI].config.label == "Segment with calibrated prompts"


# -- running ------------------------------------------------------------------------------------


def test_calibrate_runs_immediately_shows_the_table_and_curves_and_stores_the_run(plugins_dir, hits, params):  # noqa: F811
    dataset, low, high = hits
    properties, validation = resolve_form(CalibratePrompts(), dataset, params)
    assert flagged(properties, validation) == {}
    assert properties[words_param("animal")].view.label == "Words for 'animal'"

    result = foo.execute_operator(CALIBRATE_URI, {"dataset": dataset, "params": params})

    assert result.error is None, result.error
    (shown,) = triggered(result, "show_output")  # the App's output dialog
    check_results(dataset, shown["results"], low, high)
    assert "sam3_calibration_app" in dataset.list_runs()
    assert not dataset.has_field("sam3_calibration_app_scratch")
    assert shown["outputs"] == output_schema(dataset, params, shown["results"])  # as on a delegated run's page
    schema = shown["outputs"]["type"]["properties"]
    assert [c["key"] for c in schema["table"]["view"]["columns"]] == [
        "label", "text", "threshold", "precision", "recall", "f1", "ap", "ground_truth", "flag"
    ]  # fmt: skip
    assert schema["curves"]["view"]["name"] == "PlotlyView"
    button = schema["segment"]["view"]
    assert (button["operator"], button["prompt"]) == (TEXT_OPERATOR_URI, True)
    assert button["params"] == shown["results"]["text_params"]


def test_calibrate_runs_delegated_with_progress(plugins_dir, hits, params):  # noqa: F811
    dataset, low, high = hits
    # every ground-truth object: the highest threshold reaching recall 1 is the one in the gap
    delegated = {**params, "key": "queued", "objective": "recall", "objective_target": 1.0}
    queued = foo.execute_operator(CALIBRATE_URI, {"dataset": dataset, "params": delegated, "request_delegation": True})
    assert queued.delegated
    assert sam3_ops.get_calibration(dataset, "queued") is None  # nothing runs until the service executes it

    service = DelegatedOperationService()
    try:
        (result,) = service.execute_queued_operations(operator=CALIBRATE_URI, dataset_name=dataset.name)
        assert result.error is None, result.error
        check_results(dataset, result.result, low, high)
        assert result.outputs_schema is not None  # resolve_output ran on the run's results
        doc = service.get(queued.result["id"])
        assert doc.run_state == "completed" and doc.status is not None and doc.status.progress == 1.0
        assert dataset.get_run_info("sam3_calibration_queued").config.objective == [["recall", 1.0]]
    finally:
        service.delete_for_dataset(dataset._doc.id)


def test_the_segment_action_opens_the_text_operator_with_the_calibrated_prompts(plugins_dir, hits, params):  # noqa: F811
    dataset, _, _ = hits
    (shown,) = triggered(foo.execute_operator(CALIBRATE_URI, {"dataset": dataset, "params": params}), "show_output")
    results = shown["results"]
    text_params = shown["outputs"]["type"]["properties"]["segment"]["view"]["params"]

    # the stored calibration, by key: the same prompts, sent to the App to open the text operator
    opened = foo.execute_operator(CALIBRATED_URI, {"dataset": dataset, "params": {"key": "app"}})
    (prompt,) = triggered(opened, "prompt_user_for_operation")
    assert prompt["operator_uri"] == TEXT_OPERATOR_URI and prompt["params"] == text_params
    assert text_params["prompt_table"] == results["prompts"] and text_params["label_field"] == CALIBRATED_FIELD

    # the text operator's form reads them as they are (the App prefills it with them): no problem,
    # the table's rows as prompts; and they run as given
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": text_params})
    inputs = fo.operators.types.Object()
    text_prompt_inputs(ctx, inputs)
    assert not [name for name, prop in inputs.properties.items() if getattr(prop, "invalid", False)]
    foo.execute_operator(TEXT_OPERATOR_URI, {"dataset": dataset, "params": text_params})
    dataset.reload()
    (row,) = sam3_ops.get_calibration(dataset, "app").classes
    assert dataset.count(f"{CALIBRATED_FIELD}.detections") == row.tp + row.fp > 0
    assert dataset.distinct(f"{CALIBRATED_FIELD}.detections.label") == ["animal"]
    assert get_run(dataset, CALIBRATED_FIELD).settings.prompts[0].threshold == row.threshold
    dataset.delete_sample_field(CALIBRATED_FIELD)


# -- the forms flag bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, name, words",
    [
        ({"gt_field": "filepath"}, "gt_field", ["not a Detections field"]),
        ({"gt_field": "empty"}, "gt_field", ["no detections"]),
        ({"objective": "accuracy"}, "objective", ["objective must be", "accuracy"]),
        ({"objective": "precision", "objective_target": 1.5}, "objective_target", ["precision objective", "[0, 1]"]),
        ({"objective": "recall", "objective_target": -0.1}, "objective_target", ["recall objective", "[0, 1]"]),
        ({"iou": 2}, "iou", ["iou", "[0, 1]"]),
        ({"min_objects": 0}, "min_objects", ["positive integer"]),
        ({words_param("animal"): " , "}, words_param("animal"), ["animal", "at least one"]),
        ({"key": "my key!"}, "key", ["letters, digits and underscores"]),
        ({"batch_size": 0}, "batch_size", ["batch_size"]),
        ({"model_path": "/no/such/checkpoint"}, "model_path", ["does not exist"]),
    ],
)
def test_the_form_flags_bad_input_on_its_input(hits, params, change, name, words):  # noqa: F811
    dataset, _, _ = hits
    if not dataset.has_field("empty"):
        dataset.add_sample_field("empty", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    problems = flagged(*resolve_form(CalibratePrompts(), dataset, {**params, **change}))
    assert name in problems, problems
    for word in words:
        assert word.lower() in problems[name].lower(), problems[name]


def test_the_form_as_the_app_first_resolves_it_shows_the_defaults(hits, tiny_checkpoint):  # noqa: F811
    """Nothing chosen yet (the App's first resolution): the first Detections field with labels,
    one words input per class holding the class name, calibrate's defaults."""
    dataset, _, _ = hits
    properties, validation = resolve_form(CalibratePrompts(), dataset, {"model_path": str(tiny_checkpoint)})
    assert flagged(properties, validation) == {}
    assert properties["gt_field"].default == "cat_hits"  # no ground_truth field here: the first one
    assert properties[words_param("cat")].default == "cat"
    assert properties["objective"].default == "f1" and "objective_target" not in properties
    assert (properties["iou"].default, properties["min_objects"].default, properties["key"].default) == (
        0.5, 10, "default"
    )  # fmt: skip


def test_a_dataset_without_ground_truth_is_named(image_paths, params):
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in image_paths])
    try:
        problems = flagged(*resolve_form(CalibratePrompts(), dataset, params))
        assert "no Detections field" in problems["gt_field"]
        problems = flagged(*resolve_form(SegmentWithCalibratedPrompts(), dataset, {}))
        assert "no stored calibration" in problems["key"]
    finally:
        dataset.delete()


def test_the_scratch_field_of_an_interrupted_run_is_named(hits, params):  # noqa: F811
    dataset, _, _ = hits
    dataset.add_sample_field("sam3_calibration_app_scratch", fo.StringField)
    try:
        problems = flagged(*resolve_form(CalibratePrompts(), dataset, params))
        assert "sam3_calibration_app_scratch" in problems["key"]
    finally:
        dataset.delete_sample_field("sam3_calibration_app_scratch")


# -- the plots ----------------------------------------------------------------------------------


def test_plot_has_one_trace_per_wording_and_the_calibrations_ap(hits, tiny_checkpoint):  # noqa: F811
    dataset, _, _ = hits
    candidates = {"animal": WORDINGS, "vehicle": ["red car", "truck"]}
    result = sam3_ops.calibrate(
        dataset, "gt", candidates=candidates, record=False, min_objects=1, model_path=tiny_checkpoint, device="cpu"
    )
    figure = sam3_ops.plot_calibration_curves(result)
    names = [trace.name for trace in figure.data]
    assert len(names) == len(WORDINGS) + 2
    for label, words in candidates.items():
        row = next(r for r in result.classes if r.label == label)
        for text in words:
            chosen = " (chosen)" if text == row.text else ""
            ap = row.candidates[text]["ap"]
            assert f"{label}: {text}{chosen} (AP = {ap:.3f})" in names
    assert any(row.candidates[t]["ap"] not in (0.0, 1.0) for row in result.classes for t in row.candidates)
    assert figure.layout.xaxis.title.text == "Recall" and figure.layout.yaxis.title.text == "Precision"

    only = sam3_ops.plot_calibration_curves(result, label="vehicle")
    assert sorted(trace.name.split(" (")[0] for trace in only.data) == ["vehicle: red car", "vehicle: truck"]
    with pytest.raises(ValueError, match="'person' is not a class.*animal"):
        sam3_ops.plot_calibration_curves(result, label="person")
