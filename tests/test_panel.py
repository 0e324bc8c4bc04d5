"""The refinement panel, driven like the App drives it: a real ExecutionContext per event, the
panel's ``execute`` dispatching to the callback and rendering, on a real dataset with a SAM3 field
written by the tiny checkpoint. Boxes (the field's run re-run with negative boxes) and points (one
detection refined with clicks, from its previous mask)."""

import numpy as np
import pytest

import sam3_ops
from sam3_ops.app.panel import PANELS, RefineWithNegativeBoxes
from sam3_ops.app.panel_input import parse_pixel_boxes, parse_pixel_points, target_sample_ids
from sam3_ops.curation.click_input import CLICKS_FIELD, check_points, clicks_field_problem, points_of_label
from sam3_ops.curation.clicks import FROM_BOX, FROM_MASK
from sam3_ops.curation.proposals import (
    REFINEMENTS_FIELD,
    RefineError,
    count_per_prompt,
    preview_field_name,
    refinement_history,
)
from sam3_ops.curation.refine import BoxSpec, check_boxes, refine_samples
from sam3_ops.sdk.runs import record_run

from .test_engine import CallCounter

FIELD = "handles"
PREVIEW = preview_field_name(FIELD)


# -- helpers --------------------------------------------------------------------------------------


def call(dataset, method, state, current_sample=None, selected=None, selected_labels=None, value=None):
    """Runs one panel event as the App does; returns the ExecutionContext (state is updated in place)."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import Executor

    params = {"panel_id": "panel-1", "panel_state": state, "state": state, "__method__": method, "event_args": {}}
    if value is not None:
        params["value"] = value
    request_params = {
        "dataset_name": dataset.name,
        "params": params,
        "current_sample": current_sample,
        "selected": list(selected or []),
        "selected_labels": list(selected_labels or []),
    }
    ctx = foo.ExecutionContext(request_params=request_params, executor=Executor())
    RefineWithNegativeBoxes().execute(ctx)
    return ctx


def rendered(ctx) -> dict:
    """The panel output the last event sent to the App."""
    requests = [r for r in ctx.executor._requests if r.operator_uri == "show_panel_output"]
    assert requests, "the panel did not render"
    return requests[-1].params["output"]


def message(state):
    return state.get("message") or {}


def snapshot(dataset):
    """Everything a write would change: the schema and every sample (last_modified_at included)."""
    dataset.reload()
    return sorted(dataset.get_field_schema()), [sample.to_dict() for sample in dataset]


def pixel_box(bounding_box, width, height):
    x, y, w, h = bounding_box
    return np.array([x * width, y * height, (x + w) * width, (y + h) * height])


@pytest.fixture
def model(tiny_checkpoint):
    return sam3_ops.load_model(tiny_checkpoint, prompts=["handle"], threshold=0.0, reuse=True)


@pytest.fixture
def sam3_dataset(dataset, model):
    """The test dataset with a recorded SAM3 field ``handles`` (3 samples keep the tests fast)."""
    for sample in dataset.skip(3):
        dataset.delete_samples(sample)
    dataset.apply_model(model, label_field=FIELD, batch_size=3, num_workers=0)
    record_run(dataset, FIELD, model)
    dataset.compute_metadata()
    return dataset


class DetectorInputs:
    """Captures the box prompts each detector forward receives."""

    def __init__(self, engine):
        self.calls = []
        self._handle = engine.detector.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        boxes, labels = kwargs.get("input_boxes"), kwargs.get("input_boxes_labels")
        self.calls.append(
            (None if boxes is None else boxes.cpu().numpy(), None if labels is None else labels.cpu().numpy())
        )

    def remove(self):
        self._handle.remove()


class TrackerInputs:
    """Captures the prompts each tracker forward receives (points, their labels, box, previous mask)."""

    def __init__(self, engine):
        self.calls = []
        self._handle = engine.tracker.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(
            {
                k: (None if v is None else v.detach().cpu().float().numpy())
                for k, v in kwargs.items()
                if k.startswith("input_")
            }
        )

    def remove(self):
        self._handle.remove()


def selected(sample, field_name, label):
    """A label as the App reports it selected."""
    return {"label_id": label.id, "sample_id": sample.id, "field": field_name, "type": "default"}


def centre_px(detection, width, height) -> str:
    """The centre of a detection's box as a typed pixel point."""
    x, y, w, h = detection.bounding_box
    return f"{(x + w / 2) * width:.1f}, {(y + h / 2) * height:.1f}"


# -- the panel, end to end ------------------------------------------------------------------------


def test_panel_is_exported_and_subscribes_to_the_context_events():
    assert PANELS == [RefineWithNegativeBoxes]
    panel = RefineWithNegativeBoxes()
    assert panel.config.name == "refine_with_negative_boxes"
    config = panel.resolve_panel_config()
    for event in ("on_load", "on_change_current_sample", "on_change_selected", "on_change_selected_labels"):
        assert event in config
    assert "modal" in config["surfaces"] and "grid" in config["surfaces"]


def test_on_load_picks_the_sam3_field_and_shows_prompts_and_counts(sam3_dataset):
    sample = sam3_dataset.first()
    state = {}
    ctx = call(sam3_dataset, "on_load", state, current_sample=sample.id)
    assert state["field"] == FIELD
    output = rendered(ctx)
    markdown = output["type"]["properties"]["run"]["default"]
    assert "`handle`" in markdown
    assert f"| handle | {len(sample[FIELD].detections)} |" in markdown


def test_selected_labels_reach_the_model_as_negatives_at_their_pixel_coordinates(sam3_dataset, model):
    sample = sam3_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    unwanted = sample[FIELD].detections[0]
    other = sample["ground_truth"].detections[0]
    selected_labels = [
        {"label_id": unwanted.id, "sample_id": sample.id, "field": FIELD, "type": "default"},
        {"label_id": other.id, "sample_id": sample.id, "field": "ground_truth", "type": "default"},
    ]
    state = {"field": FIELD}
    call(sam3_dataset, "use_selected_as_negatives", state, current_sample=sample.id, selected_labels=selected_labels)
    assert [ref["label_id"] for ref in state["negative_labels"]] == [unwanted.id, other.id]

    before = sample[FIELD].to_dict()
    spy = DetectorInputs(model.engine)
    try:
        ctx = call(sam3_dataset, "refine", state, current_sample=sample.id)
    finally:
        spy.remove()
    assert message(state).get("kind") == "success", message(state)

    ((boxes, labels),) = spy.calls  # one prompt, one decoder forward
    assert labels.tolist() == [[0, 0]]
    cx, cy, w, h = boxes[0].T
    received = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
    expected = np.stack([pixel_box(d.bounding_box, width, height) for d in (unwanted, other)])
    np.testing.assert_allclose(received, np.minimum(expected, [width, height, width, height]), atol=1e-2)

    sample.reload()
    assert sample[FIELD].to_dict() == before  # the field waits for Accept
    assert sample[PREVIEW] is not None  # the App shows the proposal
    record = refinement_history(sample, FIELD)[-1]
    assert record["status"] == "proposed" and record["refined_at"]
    np.testing.assert_allclose(record["negative_boxes"], expected, atol=0.01)
    assert [s["label_id"] for s in record["negative_sources"]] == [unwanted.id, other.id]
    assert "→" in state["result"]
    assert "result_md" in rendered(ctx)["type"]["properties"]


def test_accept_writes_and_undo_restores_exactly(sam3_dataset):
    sample = sam3_dataset.first()
    # what a curator may have added by hand: an attribute, a tag, an extra detection of their own
    labels = sample[FIELD]
    labels.detections[0]["reviewed"] = "yes"
    labels.detections[0].tags.append("checked")
    labels.detections.append(type(labels.detections[0])(label="handle", bounding_box=[0.1, 0.1, 0.2, 0.2], note="mine"))
    sample.save()
    original = sample[FIELD].to_dict()
    original_ids = [d.id for d in sample[FIELD].detections]

    state = {"field": FIELD, "negative_boxes": "10, 10, 60, 50"}
    call(sam3_dataset, "refine", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    sample.reload()
    proposal = sample[PREVIEW].to_dict()

    call(sam3_dataset, "accept", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    sample.reload()
    assert sample[FIELD].to_dict() == proposal
    # the preview field stays (empty): deleting it while the App shows it breaks the App's reload
    assert sam3_dataset.count(PREVIEW) == 0
    assert refinement_history(sample, FIELD)[-1]["status"] == "accepted"

    call(sam3_dataset, "undo", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    sample.reload()
    assert sample[FIELD].to_dict() == original
    assert [d.id for d in sample[FIELD].detections] == original_ids
    assert sample[FIELD].detections[0]["reviewed"] == "yes" and "checked" in sample[FIELD].detections[0].tags
    history = refinement_history(sample, FIELD)
    assert [r["status"] for r in history] == ["undone"]
    assert history[0]["negative_boxes"] == [[10.0, 10.0, 60.0, 50.0]]

    snap = snapshot(sam3_dataset)
    call(sam3_dataset, "undo", state, current_sample=sample.id)
    assert message(state)["kind"] == "error" and "Nothing to undo" in message(state)["text"]
    assert snapshot(sam3_dataset) == snap


def test_refining_the_same_image_three_times_runs_the_image_encoder_once(sam3_dataset, model):
    sample = sam3_dataset.first()
    model.engine.clear_cache()  # other tests refined these images already
    calls = []
    handle = model.engine.detector.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        state = {"field": FIELD}
        for boxes in ("5, 5, 40, 40", "5, 5, 40, 40; 50, 50, 90, 90", "20, 30, 60, 70"):
            state["negative_boxes"] = boxes
            call(sam3_dataset, "refine", state, current_sample=sample.id)
            assert message(state).get("kind") == "success", message(state)
    finally:
        handle.remove()
    assert len(calls) == 1
    statuses = [r["status"] for r in refinement_history(sam3_dataset[sample.id], FIELD)]
    assert statuses == ["superseded", "superseded", "proposed"]


def test_grid_selection_refines_and_accepts_each_selected_sample(sam3_dataset):
    ids = sam3_dataset.values("id")[:2]
    other = sam3_dataset[sam3_dataset.values("id")[2]]
    untouched = other[FIELD].to_dict()
    state = {"field": FIELD, "negative_boxes": "0, 0, 30, 30"}
    call(sam3_dataset, "refine", state, selected=ids)
    assert message(state).get("kind") == "success", message(state)
    assert len(state["result"].splitlines()) == 2
    call(sam3_dataset, "accept", state, selected=ids)
    assert message(state).get("kind") == "success", message(state)
    for sample_id in ids:
        assert refinement_history(sam3_dataset[sample_id], FIELD)[-1]["status"] == "accepted"
    other.reload()
    assert other[FIELD].to_dict() == untouched and not refinement_history(other)


def test_discard_drops_the_proposal_and_keeps_the_field(sam3_dataset):
    sample = sam3_dataset.first()
    original = sample[FIELD].to_dict()
    state = {"field": FIELD, "negative_boxes": "0, 0, 30, 30"}
    call(sam3_dataset, "refine", state, current_sample=sample.id)
    call(sam3_dataset, "discard", state, current_sample=sample.id)
    assert message(state).get("kind") == "info", message(state)
    sample.reload()
    assert sample[FIELD].to_dict() == original
    assert sam3_dataset.count(PREVIEW) == 0
    assert refinement_history(sample, FIELD)[-1]["status"] == "discarded"


# -- points: one detection refined with clicks ------------------------------------------------------


def test_point_refinement_replaces_only_the_object_and_accept_and_undo_are_exact(sam3_dataset, model):
    sample = sam3_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    sample[FIELD].detections[0]["reviewed"] = "yes"  # a curator's attribute on another detection
    sample.save()
    original = sample[FIELD].to_dict()
    target = sample[FIELD].detections[1]
    chosen = [selected(sample, FIELD, target)]

    state = {}
    call(sam3_dataset, "on_load", state, current_sample=sample.id)
    call(sam3_dataset, "on_change_selected_labels", state, current_sample=sample.id, selected_labels=chosen)
    assert state["point_target"]["label_id"] == target.id  # remembered while the curator draws points
    state.update(positive_points=centre_px(target, width, height), negative_points="1, 1")
    spy = TrackerInputs(model.engine)
    try:
        ctx = call(sam3_dataset, "refine_points", state, current_sample=sample.id, selected_labels=chosen)
    finally:
        spy.remove()
    assert message(state).get("kind") == "success", message(state)

    # the prompt: both points with their labels and, its mask not being cached, the object's box
    ((inputs,),) = [spy.calls]
    scale = model.engine.tracker.prompt_encoder.input_image_size / np.array([width, height])
    np.testing.assert_allclose(
        inputs["input_points"][0, 0] / scale, [[*map(float, state["positive_points"].split(","))], [1, 1]], atol=0.05
    )
    assert inputs["input_labels"].tolist() == [[[1, 0]]] and inputs["input_masks"] is None
    np.testing.assert_allclose(
        inputs["input_boxes"][0, 0] / np.tile(scale, 2), pixel_box(target.bounding_box, width, height), atol=0.05
    )

    sample.reload()
    assert sample[FIELD].to_dict() == original  # the field waits for Accept
    proposal = sample[PREVIEW]
    record = refinement_history(sample, FIELD)[-1]
    assert record["kind"] == "points" and record["status"] == "proposed" and record["started_from"] == FROM_BOX
    assert record["object_id"] == target.id and record["point_labels"] == [1, 0]
    refined_id = record["result_id"]
    # the object replaced in place (same label), every other detection as it was, ids included
    assert [d.id for d in proposal.detections] == [
        refined_id if d.id == target.id else d.id for d in sample[FIELD].detections
    ]
    kept = [d.to_dict() for d in sample[FIELD].detections if d.id != target.id]
    assert [d.to_dict() for d in proposal.detections if d.id != refined_id] == kept
    refined = proposal.detections[1]
    assert refined.label == target.label and refined.mask is not None and not refined.has_field("prompt_id")
    properties = rendered(ctx)["type"]["properties"]
    assert "refined with 1 positive and 1 negative" in properties["result_md"]["default"]
    assert refined_id in properties["point_object"]["default"]  # the selection now names the refined detection

    call(sam3_dataset, "accept", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    sample.reload()
    assert sample[FIELD].to_dict() == proposal.to_dict()  # ids kept: the refined mask's logits stay findable
    call(sam3_dataset, "undo", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    sample.reload()
    assert sample[FIELD].to_dict() == original
    assert [r["status"] for r in refinement_history(sample, FIELD)] == ["undone"]


def test_each_further_click_refines_the_previous_mask_with_no_image_encoder_work(sam3_dataset, model):
    sample = sam3_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    target = sample[FIELD].detections[0]
    chosen = [selected(sample, FIELD, target)]
    model.engine.clear_cache()  # other tests refined these images already
    state = {"field": FIELD, "positive_points": centre_px(target, width, height)}

    def click(selected_labels):
        counter, spy = CallCounter(model.engine.tracker.vision_encoder), TrackerInputs(model.engine)
        try:
            call(sam3_dataset, "refine_points", state, current_sample=sample.id, selected_labels=selected_labels)
        finally:
            counter.close()
            spy.remove()
        assert message(state).get("kind") == "success", message(state)
        return counter.batches, spy.calls[0], refinement_history(sam3_dataset[sample.id], FIELD)[-1]

    batches, _, first = click(chosen)
    assert batches == [1] and first["started_from"] == FROM_BOX  # the image encoder runs once, on the first click

    # a second click while the proposal is pending: it refines the proposal's mask
    state["negative_points"] = "2, 2"
    previous = model.engine.cached_mask((sample.filepath, first["result_id"]))
    batches, inputs, second = click(chosen)  # the selection still names the original detection
    assert batches == []  # prompt encoder and mask decoder only
    assert second["started_from"] == FROM_MASK and second["object_id"] == first["result_id"]
    assert inputs["input_boxes"] is None
    np.testing.assert_allclose(inputs["input_masks"][0, 0], previous.float().numpy())
    assert second["replaced"] == {target.id: second["result_id"], first["result_id"]: second["result_id"]}
    statuses = [r["status"] for r in refinement_history(sam3_dataset[sample.id], FIELD)]
    assert statuses == ["superseded", "proposed"]

    # accepted, then a third click with nothing selected (as after drawing in the annotation mode)
    call(sam3_dataset, "accept", state, current_sample=sample.id)
    accepted_ids = [d.id for d in sam3_dataset[sample.id][FIELD].detections]
    assert second["result_id"] in accepted_ids and target.id not in accepted_ids
    previous = model.engine.cached_mask((sample.filepath, second["result_id"]))
    batches, inputs, third = click([])
    assert batches == [] and third["started_from"] == FROM_MASK and third["object_id"] == second["result_id"]
    np.testing.assert_allclose(inputs["input_masks"][0, 0], previous.float().numpy())


def test_clicks_drawn_in_the_annotation_field_and_selected_keypoints_are_the_points(sam3_dataset, model):
    import fiftyone as fo

    sample = sam3_dataset.first()
    width, height = sample.metadata.width, sample.metadata.height
    target = sample[FIELD].detections[0]
    state = {"field": FIELD}
    assert "no click field" in clicks_field_problem(sam3_dataset)
    call(sam3_dataset, "setup_click_drawing", state, current_sample=sample.id)
    assert message(state).get("kind") == "success", message(state)
    assert state["points_field"] == CLICKS_FIELD and clicks_field_problem(sam3_dataset) is None
    assert sam3_dataset.label_schemas[CLICKS_FIELD]["classes"] == ["positive", "negative"]
    assert sam3_dataset.active_label_schemas[0] == CLICKS_FIELD

    # what the App's annotation mode writes for clicks: polylines, a vertex per click, labelled
    sample.reload()
    sample[CLICKS_FIELD] = fo.Polylines(
        polylines=[
            fo.Polyline(label="positive", points=[[(0.5, 0.5), (0.25, 0.5)]]),
            fo.Polyline(label="negative", points=[[(0.9, 0.1)]]),
        ]
    )
    sample["landmarks"] = fo.Keypoints(
        keypoints=[fo.Keypoint(label="nose", points=[(0.4, 0.4), (0.1, 0.9)], sam_labels=[1, 0])]
    )
    sample.save()
    chosen = [selected(sample, FIELD, target), selected(sample, "landmarks", sample["landmarks"].keypoints[0])]
    ctx = call(sam3_dataset, "on_change_selected_labels", state, current_sample=sample.id, selected_labels=chosen)
    summary = rendered(ctx)["type"]["properties"]["point_summary"]["default"]
    assert summary == "**Points**: 3 positive, 2 negative (selected: 2, `sam3_clicks`: 3)"

    spy = TrackerInputs(model.engine)
    try:
        call(sam3_dataset, "refine_points", state, current_sample=sample.id, selected_labels=chosen)
    finally:
        spy.remove()
    assert message(state).get("kind") == "success", message(state)
    expected = np.array([(0.4, 0.4), (0.1, 0.9), (0.5, 0.5), (0.25, 0.5), (0.9, 0.1)]) * [width, height]
    scale = model.engine.tracker.prompt_encoder.input_image_size / np.array([width, height])
    np.testing.assert_allclose(spy.calls[0]["input_points"][0, 0] / scale, expected, atol=0.05)
    assert spy.calls[0]["input_labels"].tolist() == [[[1, 0, 1, 1, 0]]]
    record = refinement_history(sam3_dataset[sample.id], FIELD)[-1]
    assert [(s["source"], s["field"], s["points"]) for s in record["point_sources"]] == [
        ("label", "landmarks", 2),
        ("field", CLICKS_FIELD, 2),
        ("field", CLICKS_FIELD, 1),
    ]

    call(sam3_dataset, "accept", state, current_sample=sample.id)
    sample.reload()
    assert sample[CLICKS_FIELD] is None, "accepting clears the clicks: the next object starts from none"
    assert len(sample["landmarks"].keypoints) == 1  # selected keypoints of other fields are never touched

    # Clear points: the typed points and the scratch field's clicks, never another field's labels
    sample[CLICKS_FIELD] = fo.Polylines(polylines=[fo.Polyline(label="positive", points=[[(0.5, 0.5)]])])
    sample.save()
    state.update(points_field="landmarks", positive_points="3, 4")
    call(sam3_dataset, "clear_points", state, current_sample=sample.id)
    sample.reload()
    assert state["positive_points"] == "" and len(sample["landmarks"].keypoints) == 1
    assert sample[CLICKS_FIELD] is not None
    state["points_field"] = CLICKS_FIELD
    call(sam3_dataset, "clear_points", state, current_sample=sample.id)
    sample.reload()
    assert sample[CLICKS_FIELD] is None and "(1 sample(s))" in message(state)["text"]


def test_a_remembered_object_is_refined_only_on_its_open_sample(sam3_dataset, model):
    """Accept and undo act on the open (or selected) samples: a click refinement from the grid, with
    no sample open, must not land on a sample remembered from earlier."""
    sample, other = sam3_dataset.first(), sam3_dataset.last()
    target = sample[FIELD].detections[0]
    state = {"field": FIELD, "positive_points": centre_px(target, sample.metadata.width, sample.metadata.height)}
    call(sam3_dataset, "on_change_selected_labels", state, selected_labels=[selected(sample, FIELD, target)])
    assert state["point_target"]["sample_id"] == sample.id
    for current in (None, other.id):  # the grid, or another sample open
        call(sam3_dataset, "refine_points", state, current_sample=current)
        assert message(state)["kind"] == "error" and "Select the detection to refine" in message(state)["text"]
    assert not sam3_dataset.has_field(PREVIEW) or sam3_dataset[sample.id][PREVIEW] is None  # nothing proposed
    call(sam3_dataset, "refine_points", state, current_sample=sample.id)  # its own sample open: refined
    assert message(state)["kind"] == "success", message(state)


def test_a_mask_written_by_a_box_refinement_in_this_session_is_refined_from(sam3_dataset, model):
    """The box refinement keeps its masks' logits too: clicking one of them starts from its mask."""
    sample = sam3_dataset.first()
    refine_samples(sam3_dataset, [sample.id], FIELD, negatives=BoxSpec(pixel_boxes=[[1, 1, 20, 20]]))
    call(sam3_dataset, "accept", {"field": FIELD}, current_sample=sample.id)
    sample.reload()
    target = sample[FIELD].detections[0]
    state = {"field": FIELD, "positive_points": centre_px(target, sample.metadata.width, sample.metadata.height)}
    chosen = [selected(sample, FIELD, target)]
    call(sam3_dataset, "refine_points", state, current_sample=sample.id, selected_labels=chosen)
    assert message(state).get("kind") == "success", message(state)
    assert refinement_history(sam3_dataset[sample.id], FIELD)[-1]["started_from"] == FROM_MASK

    # a point refinement replaces a pending box proposal, and says so
    refine_samples(sam3_dataset, [sample.id], FIELD, negatives=BoxSpec(pixel_boxes=[[1, 1, 20, 20]]))
    call(sam3_dataset, "refine_points", state, current_sample=sample.id, selected_labels=chosen)
    assert "The pending box proposal was replaced" in message(state)["text"]
    statuses = [(r.get("kind"), r["status"]) for r in refinement_history(sam3_dataset[sample.id], FIELD)]
    assert statuses[-2:] == [("boxes", "superseded"), ("points", "proposed")]


def _point_selection(sample, kind):
    detections = sample[FIELD].detections
    return {
        "none": [],
        "object": [selected(sample, FIELD, detections[0])],
        "other field": [
            selected(sample, FIELD, detections[0]),
            selected(sample, "ground_truth", sample["ground_truth"].detections[0]),
        ],
        "two": [selected(sample, FIELD, detections[0]), selected(sample, FIELD, detections[1])],
    }[kind]


#: (case, panel state, what is selected, the message expected)
BAD_POINT_INPUT = [
    ("nothing selected", {"positive_points": "10, 10"}, "none", "Select the detection to refine"),
    ("a detection of another field", {"positive_points": "10, 10"}, "other field", "not a detection of the SAM3"),
    ("two objects", {"positive_points": "10, 10"}, "two", "2 detections of 'handles' are selected"),
    ("no points", {}, "object", "No points"),
    ("only a negative point", {"negative_points": "10, 10"}, "object", "No positive point"),
    (
        "a point outside",
        {"positive_points": "10, 10; 5000, 20"},
        "object",
        "Positive point 2 [5000, 20] lies outside",
    ),
    ("not two numbers", {"positive_points": "1, 2, 3"}, "object", "not two numbers"),
    (
        "a points field of boxes",
        {"positive_points": "9, 9", "points_field": "ground_truth"},
        "object",
        "holds Detections",
    ),
    (
        "a remembered object that is gone",
        {"positive_points": "10, 10", "point_target": {"label_id": "0" * 24, "field_name": FIELD}},
        "none",
        "no longer in 'handles'",
    ),
]


def test_bad_point_input_shows_a_message_and_writes_nothing(sam3_dataset):
    # one dataset for every case (none writes anything; each dataset costs a SAM3 run to build)
    sample = sam3_dataset.first()
    before = snapshot(sam3_dataset)
    for case, state, selection, expected in BAD_POINT_INPUT:
        state = {"field": FIELD, **state}
        if "point_target" in state:
            state["point_target"] = {**state["point_target"], "sample_id": sample.id}
        ctx = call(
            sam3_dataset,
            "refine_points",
            state,
            current_sample=sample.id,
            selected_labels=_point_selection(sample, selection),
        )
        assert message(state).get("kind") == "error", case
        assert expected in message(state)["text"], (case, message(state)["text"])
        assert rendered(ctx)["type"]["properties"]["message"]["view"]["name"] == "Error", case
        assert snapshot(sam3_dataset) == before, case


# -- bad input: a message, nothing written ----------------------------------------------------------


@pytest.mark.parametrize(
    "case, state, where, expected",
    [
        ("no sample", {"field": FIELD, "negative_boxes": "1, 1, 20, 20"}, "nowhere", "No sample"),
        ("no field chosen", {"negative_boxes": "1, 1, 20, 20"}, "current", "Choose the SAM3 field"),
        (
            "field without recorded prompts",
            {"field": "ground_truth", "negative_boxes": "1, 1, 20, 20"},
            "current",
            "no recorded SAM3 prompts",
        ),
        ("unknown field", {"field": "nope", "negative_boxes": "1, 1, 20, 20"}, "current", "no field 'nope'"),
        ("degenerate box", {"field": FIELD, "negative_boxes": "50, 50, 40, 60"}, "current", "degenerate"),
        ("zero-area box", {"field": FIELD, "negative_boxes": "50, 50, 50, 60"}, "current", "degenerate"),
        (
            "box outside the image",
            {"field": FIELD, "negative_boxes": "5000, 5000, 5100, 5100"},
            "current",
            "outside the image",
        ),
        ("not four numbers", {"field": FIELD, "negative_boxes": "1, 2, 3"}, "current", "not four numbers"),
        ("no boxes at all", {"field": FIELD}, "current", "Add negative boxes"),
        (
            "sample not in the dataset (a patch)",
            {"field": FIELD, "negative_boxes": "1, 1, 20, 20"},
            "patch",
            "not in the dataset",
        ),
        (
            "negative field not Detections",
            {"field": FIELD, "negative_field": "filepath"},
            "current",
            "not a Detections field",
        ),
    ],
)
def test_bad_refine_input_shows_a_message_and_writes_nothing(sam3_dataset, case, state, where, expected):
    sample = sam3_dataset.first()
    before = snapshot(sam3_dataset)
    current = {"current": sample.id, "patch": "0" * 24}.get(where)
    ctx = call(sam3_dataset, "refine", state, current_sample=current)
    assert message(state).get("kind") == "error", case
    assert expected in message(state)["text"], message(state)["text"]
    assert rendered(ctx)["type"]["properties"]["message"]["view"]["name"] == "Error"
    assert snapshot(sam3_dataset) == before


def test_no_sam3_field_in_the_dataset_is_explained(dataset):
    sample = dataset.first()
    state = {}
    ctx = call(dataset, "on_load", state, current_sample=sample.id)
    assert state["field"] is None
    assert "no_field" in rendered(ctx)["type"]["properties"]
    before = snapshot(dataset)
    state["negative_boxes"] = "1, 1, 20, 20"
    call(dataset, "refine", state, current_sample=sample.id)
    assert message(state)["kind"] == "error" and "no SAM3 result field" in message(state)["text"]
    assert snapshot(dataset) == before


@pytest.mark.parametrize(
    "method, expected",
    [("accept", "Nothing to accept"), ("undo", "Nothing to undo"), ("discard", "Nothing to discard")],
)
def test_accept_undo_discard_without_a_refinement_write_nothing(sam3_dataset, method, expected):
    sample = sam3_dataset.first()
    before = snapshot(sam3_dataset)
    state = {"field": FIELD}
    call(sam3_dataset, method, state, current_sample=sample.id)
    assert message(state)["kind"] == "error" and expected in message(state)["text"]
    assert snapshot(sam3_dataset) == before


def test_using_selected_labels_that_are_not_boxes_or_gone_is_refused(sam3_dataset):
    sample = sam3_dataset.first()
    state = {"field": FIELD}
    call(sam3_dataset, "use_selected_as_negatives", state, current_sample=sample.id)
    assert "No labels selected" in message(state)["text"]
    gone = [{"label_id": "0" * 24, "sample_id": sample.id, "field": FIELD}]
    call(sam3_dataset, "use_selected_as_negatives", state, current_sample=sample.id, selected_labels=gone)
    assert message(state)["kind"] == "error" and "no longer" in message(state)["text"]
    assert not state.get("negative_labels")


def test_positive_examples_turn_a_text_run_into_an_exemplar_refinement(sam3_dataset, model):
    sample = sam3_dataset.first()
    positive = sample["ground_truth"].detections[0]
    spy = DetectorInputs(model.engine)
    try:
        result = refine_samples(
            sam3_dataset,
            [sample.id],
            FIELD,
            negatives=BoxSpec(pixel_boxes=[[1, 1, 20, 20]]),
            positives=BoxSpec(
                labels=[
                    {
                        "sample_id": sample.id,
                        "field": "ground_truth",
                        "label_id": positive.id,
                        "label": positive.label,
                        "bounding_box": list(positive.bounding_box),
                    }
                ]
            ),
        )
    finally:
        spy.remove()
    ((_, labels),) = spy.calls
    assert labels.tolist() == [[1, 0]]  # the example first, then the negative
    assert refinement_history(sam3_dataset[sample.id], FIELD)[-1]["mode"] == "exemplars"
    assert result.outcomes[0].sample_id == sample.id


# -- pure helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", []),
        (None, []),
        ("1, 2, 3, 4", [[1, 2, 3, 4]]),
        ("[1, 2, 3, 4]; 5 6 7 8", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ("[[1, 2, 3, 4], [5.5, 6, 7, 8e1]]", [[1, 2, 3, 4], [5.5, 6, 7, 80]]),
        ("1,2,3,4\n10,20,30,40\n", [[1, 2, 3, 4], [10, 20, 30, 40]]),
    ],
)
def test_parse_pixel_boxes(text, expected):
    np.testing.assert_allclose(parse_pixel_boxes(text), np.asarray(expected, np.float32).reshape(-1, 4))


@pytest.mark.parametrize("text", ["1, 2, 3", "a, b, c, d", "1, 2, 3, 4, 5", "1;2"])
def test_parse_pixel_boxes_refuses_malformed_text(text):
    with pytest.raises(RefineError, match="four numbers"):
        parse_pixel_boxes(text)


@pytest.mark.parametrize(
    "box, problem",
    [
        ([10, 10, 5, 20], "degenerate"),
        ([10, 10, 10, 20], "degenerate"),
        ([np.nan, 0, 10, 10], "finite"),
        ([200, 10, 300, 20], "outside"),
        ([-50, -50, 0, 10], "outside"),
    ],
)
def test_check_boxes_names_the_problem(box, problem):
    with pytest.raises(RefineError, match=problem):
        check_boxes([box], 100, 80, "Negative box")


def test_check_boxes_clips_boxes_partly_outside():
    np.testing.assert_allclose(check_boxes([[-10, 5, 150, 90]], 100, 80, "box"), [[0, 5, 100, 80]])
    assert check_boxes(np.zeros((0, 4)), 100, 80, "box").shape == (0, 4)


@pytest.mark.parametrize(
    "text, expected",
    [("", []), (None, []), ("1, 2", [[1, 2]]), ("[1, 2]; 3 4\n5.5,6e1", [[1, 2], [3, 4], [5.5, 60]])],
)
def test_parse_pixel_points(text, expected):
    np.testing.assert_allclose(parse_pixel_points(text), np.asarray(expected, np.float32).reshape(-1, 2))


@pytest.mark.parametrize("text", ["1", "1, 2, 3", "a, b", "1, 2; 3"])
def test_parse_pixel_points_refuses_malformed_text(text):
    with pytest.raises(RefineError, match="two numbers"):
        parse_pixel_points(text, "positive point")


def test_points_of_a_label_take_their_sign_from_sam_labels_else_from_the_label():
    import fiftyone as fo

    polyline = fo.Polyline(label="negative", points=[[(0.1, 0.2), (0.3, 0.4)], [(0.5, 0.6)]])
    points, labels = points_of_label(polyline)
    np.testing.assert_allclose(points, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    assert labels.tolist() == [0, 0, 0]
    keypoint = fo.Keypoint(label="negative", points=[(0.1, 0.2), (np.nan, np.nan), (0.5, 0.6)], sam_labels=[1, 0, 0])
    points, labels = points_of_label(keypoint)  # sam_labels win; the hidden (NaN) point is left out
    assert points.tolist() == [[0.1, 0.2], [0.5, 0.6]] and labels.tolist() == [1, 0]
    assert points_of_label(fo.Keypoint(label="nose", points=[(0.1, 0.2)]))[1].tolist() == [1]
    with pytest.raises(RefineError, match="1 points but 2 sam_labels"):
        points_of_label(fo.Keypoint(label="x", points=[(0.1, 0.2)], sam_labels=[1, 0]))


@pytest.mark.parametrize(
    "point, problem", [((-1, 5), "outside"), ((5, 81), "outside"), ((101, 0), "outside"), ((np.nan, 1), "finite")]
)
def test_check_points_names_the_problem(point, problem):
    with pytest.raises(RefineError, match=f"Positive point 2 .* {problem}"):
        check_points([(0, 0), point], 100, 80, ["Positive point 1", "Positive point 2"])
    check_points([(0, 0), (100, 80)], 100, 80, ["a", "b"])  # the image's edges are inside


def test_count_per_prompt_and_targets():
    import fiftyone as fo

    detections = fo.Detections(detections=[fo.Detection(label="b"), fo.Detection(label="x"), fo.Detection(label="b")])
    assert count_per_prompt(detections, ["a", "b"]) == {"a": 0, "b": 2, "x": 1}
    assert count_per_prompt(None, ["a"]) == {"a": 0}
    assert target_sample_ids("s1", ["s2"]) == ["s1"]
    assert target_sample_ids(None, ["s2", "s3", "s2"]) == ["s2", "s3"]
    assert target_sample_ids(None, None) == []


#: records as this plugin has stored them: a box refinement from before kinds existed (its field
#: was empty before the accept), an accept whose backup expired, a proposal written by another tool
STORED_RECORDS = [
    {
        "field": "f",
        "status": "accepted",
        "refined_at": "2026-01-01T00:00:00+00:00",
        "negative_boxes": [[1.0, 2.0, 3.0, 4.0]],
        "accepted_at": "2026-01-02T00:00:00+00:00",
        "backup": None,
    },
    {
        "field": "f",
        "status": "accepted",
        "refined_at": "t0",
        "kind": "points",
        "replaced": {"a": "b"},
        "accepted_at": "t1",
        "undo_expired": True,
    },
    {"field": "g", "status": "undone", "refined_at": None, "accepted_at": "t1", "backup": "{}", "undone_at": "t2"},
]


def test_stored_records_read_back_typed_and_write_out_unchanged():
    from sam3_ops.curation.proposals import Kind, Record, Status

    for stored in STORED_RECORDS:
        record = Record.from_dict(stored)
        assert isinstance(record.status, Status)
        written = record.to_dict()
        assert written == stored and type(written["status"]) is str  # plain text in the database
    legacy, expired, foreign = (Record.from_dict(r) for r in STORED_RECORDS)
    assert legacy.kind is None and legacy.has_backup and legacy.backup is None  # undo restores "empty"
    assert expired.kind is Kind.POINTS and not expired.has_backup and expired.details == {"replaced": {"a": "b"}}
    assert foreign.status is Status.UNDONE and foreign.backup == "{}"
    assert "backup" not in Record.from_dict(STORED_RECORDS[2]).to_dict(with_backup=False)


def test_the_ledger_moves_proposals_through_their_statuses():
    import fiftyone as fo

    from sam3_ops.curation.proposals import MAX_UNDO_STEPS, Kind, Ledger, Status

    ledger = Ledger(fo.Sample(filepath="image.png"))  # a sample with no records yet
    assert ledger.records == [] and ledger.undo("f") is None
    ledger.propose("f", Kind.BOXES, {"negative_boxes": []})
    ledger.propose("f", Kind.POINTS, {"label": "cat"})
    ledger.propose("g", Kind.BOXES, {})
    assert [(r.field, r.status) for r in ledger.records] == [
        ("f", Status.SUPERSEDED),
        ("f", Status.PROPOSED),
        ("g", Status.PROPOSED),
    ]
    ledger.discard("g")
    assert ledger.records[-1].status is Status.DISCARDED and ledger.records[-1].discarded_at
    ledger.accept("f", backup="before")
    accepted = ledger.last("f", Status.ACCEPTED)
    assert accepted.kind is Kind.POINTS and accepted.backup == "before" and accepted.accepted_at
    ledger.accept("f", backup=None)  # no record pending: a proposal another tool wrote
    assert ledger.records[-1].refined_at is None and ledger.records[-1].kind is None
    for step in range(MAX_UNDO_STEPS):
        ledger.propose("f", Kind.BOXES, {})
        ledger.accept("f", backup=str(step))
    undoable = [r for r in ledger.of_field("f", Status.ACCEPTED) if r.has_backup]
    assert [r.backup for r in undoable] == [str(step) for step in range(MAX_UNDO_STEPS)]
    assert all(r.undo_expired and not r.has_backup for r in ledger.of_field("f", Status.ACCEPTED)[:2])
    undone = ledger.undo("f")
    assert undone.status is Status.UNDONE and undone.backup == str(MAX_UNDO_STEPS - 1) and undone.undone_at


def test_records_field_is_declared_as_a_list_of_dicts(sam3_dataset):
    import fiftyone as fo

    sample = sam3_dataset.first()
    refine_samples(sam3_dataset, [sample.id], FIELD, negatives=BoxSpec(pixel_boxes=[[1, 1, 20, 20]]))
    field = sam3_dataset.get_field(REFINEMENTS_FIELD)
    assert isinstance(field, fo.ListField) and isinstance(field.field, fo.DictField)


def test_a_boxes_mode_field_is_refined_with_its_prompt_boxes_and_refuses_positive_examples(dataset, tiny_checkpoint):
    model = sam3_ops.load_model(tiny_checkpoint, mode="boxes", reuse=True)
    view = dataset.limit(1)
    view.apply_model(model, label_field="gt_masks", prompt_field="ground_truth", num_workers=0)
    record_run(dataset, "gt_masks", model, prompt_field="ground_truth")
    sample = dataset.first()
    prompt_ids = [d.id for d in sample["ground_truth"].detections]

    result = refine_samples(dataset, [sample.id], "gt_masks", negatives=BoxSpec(pixel_boxes=[[0, 0, 40, 40]]))
    assert [d["prompt_id"] for d in result.outcomes[0].detections.detections] == prompt_ids

    with pytest.raises(RefineError, match="positive examples"):
        refine_samples(dataset, [sample.id], "gt_masks", positives=BoxSpec(pixel_boxes=[[0, 0, 40, 40]]))


def test_only_the_last_accepts_keep_an_undo_backup(sam3_dataset):
    from sam3_ops.curation.proposals import MAX_UNDO_STEPS, accept_refinement, undo_refinement

    sample = sam3_dataset.first()
    states = []
    for step in range(MAX_UNDO_STEPS + 2):
        states.append(sam3_dataset[sample.id][FIELD].to_dict())
        refine_samples(sam3_dataset, [sample.id], FIELD, negatives=BoxSpec(pixel_boxes=[[1, 1, 20 + step, 20 + step]]))
        accept_refinement(sam3_dataset, [sample.id], FIELD)
    records = [r for r in sam3_dataset[sample.id][REFINEMENTS_FIELD] if r["status"] == "accepted"]
    assert sum("backup" in r for r in records) == MAX_UNDO_STEPS  # bounded: a sample must fit in 16 MB
    assert all(r.get("undo_expired") for r in records[:2])
    for expected in reversed(states[2:]):
        undo_refinement(sam3_dataset, [sample.id], FIELD)
        assert sam3_dataset[sample.id][FIELD].to_dict() == expected
    before = sam3_dataset[sample.id][FIELD].to_dict()
    with pytest.raises(RefineError, match="last 5 accepts can be undone"):
        undo_refinement(sam3_dataset, [sample.id], FIELD)
    assert sam3_dataset[sample.id][FIELD].to_dict() == before  # nothing written
