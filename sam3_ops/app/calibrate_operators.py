"""App operators for calibration: choose each class's words and threshold on labelled samples,
then segment with them.

- *Calibrate prompts* (``calibrate_prompts``) reads its form and makes one call to
  :func:`sam3_ops.calibrate` on the target samples: the ground-truth field, the wordings to try
  per class (one input per class, comma-separated, default the class name), the objective (F1, a
  precision or a recall) and the IoU, the calibration key, and the model inputs the segment
  operators share. Its output is the per-class table, the PR curves of every wording
  (:func:`~sam3_ops.curation.calibration_plots.plot_calibration_curves`, FiftyOne's PR-curve
  plot) and a button that opens *Segment with text prompts* with the calibrated prompts in its
  table of prompts. Immediate runs use ``num_workers=0`` and show the output with
  ``show_output``; delegated runs report progress with ``ctx.set_progress``, and the output is
  laid out on the run's page.
- *Segment with calibrated prompts* (``segment_with_calibrated_prompts``) does the same from a
  calibration stored earlier (:func:`sam3_ops.get_calibration`, by key).

Bad input is flagged on the form (``prop.invalid`` + ``prop.error_message``), never raised, with
the message :func:`sam3_ops.calibrate` would raise where it has one.
"""

from __future__ import annotations

import base64
import hashlib

import fiftyone.core.labels as fol
import fiftyone.operators.types as types
import numpy as np

from ..core.checkpoint import DEFAULT_MODEL
from ..curation.calibrate import calibrate, get_calibration
from ..curation.calibration_plots import plot_calibration_curves
from ..sdk.fields import check_label_field, root_dataset
from ..sdk.runs import CALIBRATION_METHOD, calibration_run_key
from ..sdk.settings import DEFAULT_BATCH_SIZE, normalize_prompts, unit_interval_problem
from .forms import (
    FormOperator,
    delegated_progress,
    device_input,
    flag,
    flag_problems,
    flag_run_options,
    flag_settings,
    fraction_input,
    hf_token,
    label_field_choice,
    model_input,
    num_workers,
    slider,
    table_view,
    target_input,
)
from .segment_forms import threshold_inputs

PLUGIN = "@sam3-ops/sam3"
#: the operator the calibrated prompts open
TEXT_OPERATOR_URI = f"{PLUGIN}/segment_with_text_prompts"
#: the output field the text operator is opened with
CALIBRATED_FIELD = "sam3_calibrated"
#: the objectives the form offers: value -> label
OBJECTIVES = {"f1": "Best F1", "precision": "Reach a precision", "recall": "Reach a recall"}
#: the precision or recall to reach when the form gives none
DEFAULT_TARGET = 0.9
#: calibrate's defaults the form shows
DEFAULTS = {"iou": 0.5, "min_objects": 10, "min_f1": 0.2, "key": "default"}
TABLE_COLUMNS = (
    ("label", "Class"),
    ("text", "Wording"),
    ("threshold", "Threshold"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("ap", "AP"),
    ("ground_truth", "Ground truth"),
    ("flag", "Flag"),
)
#: the height of the PR-curve plot in the output (px)
PLOT_HEIGHT = 480
_RUN_PREFIX = calibration_run_key("x")[:-1]


def words_param(label: str) -> str:
    """The form parameter holding the wordings of class ``label`` (a class name may hold any
    character, a parameter name may not)."""
    return "words_" + hashlib.sha1(label.encode()).hexdigest()[:10]


class CalibratePrompts(FormOperator):
    """Finds each class's wording and threshold on the target's ground truth (:func:`sam3_ops.calibrate`)."""

    NAME = "calibrate_prompts"
    LABEL = "Calibrate prompts"
    DESCRIPTION = "Choose each class's words and threshold for SAM3 on labelled samples (F1, a precision or a recall)"

    def form(self, ctx, inputs):
        """Target, ground truth, wordings per class, criteria, model; each problem flagged on its input."""
        target_input(ctx, inputs, action="Calibrate on")
        props = {}
        props["gt_field"], gt_field = label_field_choice(
            ctx,
            inputs,
            "gt_field",
            "Ground truth",
            (fol.Detections,),
            description="The labels to calibrate on: each class's wording and threshold are chosen to match them",
            default="ground_truth",
        )
        if gt_field is None:
            return
        target = ctx.target_view()
        try:
            check_label_field(target, gt_field, require_labels=True, what="gt_field")
        except ValueError as error:
            flag(props["gt_field"], str(error))
            return
        props["classes"] = inputs.list(
            "classes",
            types.String(),
            required=False,
            label="Classes (optional)",
            description="Only these classes; empty for every class of the ground truth",
        )
        classes, problem = form_classes(target, gt_field, ctx.params)
        if problem:
            flag(props["classes" if ctx.params.get("classes") else "gt_field"], problem)
            return
        props.update(_words_inputs(inputs, classes))
        props.update(_criteria_inputs(ctx, inputs))
        props.update(threshold_inputs(inputs, score=False))
        props["batch_size"] = inputs.int(
            "batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size", description="Images per forward pass"
        )
        props["model_path"] = model_input(ctx, inputs)
        props["device"] = device_input(inputs)
        flag_problems(calibration_problems(ctx, classes), props)
        values = calibration_values(ctx.params, classes)
        flag_run_options({"batch_size": values["batch_size"]}, props)
        flag_settings(values["settings"], props)
        wordings = sum(len(words) for words in values["candidates"].values())
        notice = f"SAM3 will run {wordings} wording(s) of {len(classes)} class(es) on {len(target)} samples, once"
        inputs.view("note", types.Notice(label=notice))

    def resolve_run_name(self, ctx):
        return f"Calibrate prompts on {ctx.params.get('gt_field')} -> {ctx.params.get('key') or DEFAULTS['key']}"

    def execute(self, ctx):
        target = ctx.target_view()
        values = calibration_values(ctx.params, form_classes(target, ctx.params.get("gt_field"), ctx.params)[0])
        settings = values.pop("settings")
        progress = delegated_progress(ctx, f"Calibrating on {len(target)} samples") if ctx.delegated else False
        result = calibrate(
            target, progress=progress, num_workers=num_workers(ctx), token=hf_token(ctx), **values, **settings
        )
        results = calibration_results(result, settings)
        if ctx.delegated:
            return results  # laid out by resolve_output on the run's page
        # shown in the App's output dialog, not the operator's own: a button there opens another
        # operator's form (the operator's dialog would keep showing this output instead)
        ctx.ops.show_output(outputs=calibration_outputs(results).to_json(), results=results)
        return None

    def resolve_output(self, ctx):
        return calibration_outputs(ctx.results)


class SegmentWithCalibratedPrompts(FormOperator):
    """Opens *Segment with text prompts* with the prompts of a stored calibration."""

    NAME = "segment_with_calibrated_prompts"
    LABEL = "Segment with calibrated prompts"
    DESCRIPTION = "Open 'Segment with text prompts' with the words and thresholds of a stored calibration"
    OPTIONS = {"allow_delegated_execution": False}  # it only opens another operator's form

    def form(self, ctx, inputs):
        keys = stored_calibrations(ctx.dataset)
        prop = inputs.enum(
            "key",
            keys,
            default=keys[0] if keys else None,
            required=True,
            label="Calibration",
            description="The key of a calibration stored by 'Calibrate prompts' or sam3_ops.calibrate",
            view=types.DropdownView(),
        )
        if not keys:
            flag(prop, "This dataset has no stored calibration: run 'Calibrate prompts' first")
        elif ctx.params.get("key") not in (None, *keys):
            flag(prop, f"{ctx.params['key']!r} is not a stored calibration; the stored ones are {keys}")

    def execute(self, ctx):
        key = ctx.params.get("key") or DEFAULTS["key"]
        result = get_calibration(ctx.dataset, key)
        if result is None:
            raise ValueError(f"no calibration {key!r} is stored on this dataset")
        params = text_operator_params(result.prompts, stored_settings(ctx.dataset, key))
        ctx.prompt(TEXT_OPERATOR_URI, params=params)
        return {"key": key, "prompts": result.prompts}


OPERATORS = [CalibratePrompts, SegmentWithCalibratedPrompts]


# -- the form ---------------------------------------------------------------------------------------


def _words_inputs(inputs, classes: list[str]) -> dict:
    """One text input per class: its wordings, comma-separated (empty: the class name)."""
    description = "Wordings to try, comma-separated (e.g. cat, kitten); empty: the class name"
    return {
        words_param(label): inputs.str(
            words_param(label), default=label, label=f"Words for '{label}'", description=description
        )
        for label in classes
    }


def _criteria_inputs(ctx, inputs) -> dict:
    """The objective and its target, the IoU, the limits, the default threshold and the key."""
    objective = types.RadioGroup()
    for value, label in OBJECTIVES.items():
        objective.add_choice(value, label=label)
    props = {"objective": inputs.enum("objective", list(OBJECTIVES), default="f1", label="Objective", view=objective)}
    if (ctx.params.get("objective") or "f1") != "f1":
        props["objective_target"] = fraction_input(
            inputs,
            "objective_target",
            default=DEFAULT_TARGET,
            label=f"{str(ctx.params.get('objective')).capitalize()} to reach",
            description="The lowest threshold reaching a precision, the highest reaching a recall (0-1)",
        )
    props["iou"] = inputs.float(
        "iou", default=DEFAULTS["iou"], label="IoU of a match", description="(0-1)", view=slider()
    )
    inputs.bool("use_masks", default=False, label="Match masks instead of boxes", view=types.CheckboxView())
    props["min_objects"] = inputs.int(
        "min_objects",
        default=DEFAULTS["min_objects"],
        min=1,
        label="Fewest ground-truth objects to calibrate a class",
        description="A class with fewer keeps the default threshold (flagged)",
    )
    props["min_f1"] = fraction_input(
        inputs, "min_f1", default=DEFAULTS["min_f1"], label="Flag a class whose best F1 is below", description="(0-1)"
    )
    props["threshold"] = fraction_input(
        inputs,
        "threshold",
        label="Threshold of classes not calibrated (optional)",
        description="Empty: the model's own (0.5)",
    )
    props["key"] = inputs.str(
        "key",
        default=DEFAULTS["key"],
        required=True,
        label="Calibration key",
        description="Stored as the run sam3_calibration_<key> (a calibration of the same key is replaced)",
    )
    return props


def form_classes(target, gt_field: str, params: dict) -> tuple[list[str], str | None]:
    """The classes to calibrate: the form's ``classes``, else every label of ``gt_field`` on
    ``target``; and ``None`` or what is wrong with them (a blank one)."""
    given = params.get("classes")
    if given:
        classes = list(dict.fromkeys(c.strip() if isinstance(c, str) else c for c in given))
        blank = [c for c in classes if not isinstance(c, str) or not c]
        if blank:
            return [], f"classes must be non-blank text, not {blank[0]!r}"
        return classes, None
    classes = target.distinct(f"{gt_field}.detections.label")
    blank = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if blank:
        return [], (
            f"{gt_field!r} has detections labelled {blank[0]!r}: blank labels cannot be calibrated; "
            "relabel them, or list the other classes under Classes"
        )
    return classes, None


def calibration_values(params: dict, classes: list[str]) -> dict:
    """The :func:`sam3_ops.calibrate` keywords a form's values ask for (unvalidated), the model
    settings under ``settings``; an empty input means calibrate's default."""
    given = {name: value for name, value in params.items() if value is not None}
    kind = params.get("objective") or "f1"
    device = params.get("device") or "auto"
    settings = {"model_path": params.get("model_path") or DEFAULT_MODEL, "device": None if device == "auto" else device}
    settings.update({name: given[name] for name in ("mask_threshold", "threshold") if name in given})
    return {
        "gt_field": params.get("gt_field"),
        "candidates": {label: _words(params.get(words_param(label)), label) for label in classes},
        "objective": kind if kind == "f1" else {kind: given.get("objective_target", DEFAULT_TARGET)},
        "iou": given.get("iou", DEFAULTS["iou"]),
        "use_masks": bool(params.get("use_masks")),
        "min_objects": given.get("min_objects", DEFAULTS["min_objects"]),
        "min_f1": given.get("min_f1", DEFAULTS["min_f1"]),
        "key": params.get("key") or DEFAULTS["key"],
        "batch_size": given.get("batch_size", DEFAULT_BATCH_SIZE),
        "settings": settings,
    }


def _words(value, label: str) -> list:
    """A class's wordings from its input: comma-separated text (empty: the class name)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return [label]
    if not isinstance(value, str):
        return [value]  # normalize_prompts names it
    return [piece for piece in value.split(",") if piece.strip()]  # nothing but commas: named as no wording


def calibration_problems(ctx, classes: list[str]) -> dict[str, str]:
    """Every problem of the form's calibration values, by input name (``{}`` if none): the
    wordings of each class, the objective and its target, IoU, limits, threshold and key."""
    params = ctx.params
    values = calibration_values(params, classes)
    problems = {}
    for label, words in values["candidates"].items():
        try:
            normalize_prompts(words, "text")
        except (TypeError, ValueError) as error:
            problems[words_param(label)] = f"the words for {label!r}: {error}"
    kind = params.get("objective") or "f1"
    if kind not in OBJECTIVES:
        problems["objective"] = f"objective must be 'f1', 'precision' or 'recall', not {kind!r}"
    elif kind != "f1":
        _add(problems, "objective_target", unit_interval_problem(values["objective"][kind], f"the {kind} objective"))
    _add(problems, "iou", unit_interval_problem(values["iou"], "iou"))
    _add(problems, "min_f1", unit_interval_problem(values["min_f1"], "min_f1"))
    if params.get("threshold") is not None:
        _add(problems, "threshold", unit_interval_problem(params["threshold"], "threshold"))
    min_objects = values["min_objects"]
    if not isinstance(min_objects, int) or isinstance(min_objects, bool) or min_objects < 1:
        problems["min_objects"] = f"min_objects must be a positive integer, not {min_objects!r}"
    try:
        run = calibration_run_key(values["key"])
    except ValueError as error:
        problems["key"] = str(error)
    else:
        if root_dataset(ctx.dataset).has_field(f"{run}_scratch"):
            problems["key"] = f"the scratch field {run + '_scratch'!r} exists (an interrupted calibration?): delete it"
    return problems


def _add(problems: dict, name: str, problem: str | None) -> None:
    if problem:
        problems[name] = problem


# -- the output -------------------------------------------------------------------------------------


def calibration_results(result, settings: dict) -> dict:
    """What *Calibrate prompts* returns: a summary, the table (rounded for reading), the PR curves
    as plotly traces, the prompts, and the params that open the text operator with them."""
    flagged = [row for row in result.classes if row.flag]
    summary = (
        f"Calibrated {len(result.classes)} class(es) on '{result.gt_field}' (IoU {result.iou:g}); "
        f"{len(flagged)} flagged. Stored as the run '{calibration_run_key(result.key)}': "
        f"reload it with `sam3_ops.get_calibration(dataset, {result.key!r})`."
    )
    figure = plot_calibration_curves(result)
    figure = getattr(figure, "_figure", figure)  # in a notebook: FiftyOne's widget of the figure
    return {
        "summary": summary,
        "table": [_display_row(row) for row in result.table],
        "curves": [_plain(trace) for trace in figure.to_dict()["data"]],
        "prompts": result.prompts,
        "text_params": text_operator_params(result.prompts, settings),
        "key": result.key,
    }


def _plain(value):
    """A plotly trace as plain JSON values: arrays as lists, plotly's base64 typed arrays
    (``{"dtype", "bdata", "shape"}``, plotly >= 6) decoded."""
    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(n) for n in str(shape).split(",")])
        return array.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _display_row(row: dict) -> dict:
    shown = {}
    for name, _ in TABLE_COLUMNS:
        value = row.get(name)
        if isinstance(value, float):
            value = round(value, 4 if name == "threshold" else 3)
        shown[name] = "" if value is None else value
    return shown


def text_operator_params(prompts: list[dict], settings: dict) -> dict:
    """The params that open *Segment with text prompts* with ``prompts`` in its table of prompts
    (text, label, threshold) and the calibration's model settings."""
    params = {"prompt_table": [dict(prompt) for prompt in prompts], "label_field": CALIBRATED_FIELD}
    for name in ("model_path", "device", "mask_threshold"):
        if settings.get(name) is not None:
            params[name] = settings[name]
    return params


def calibration_outputs(results: dict | None) -> types.Property:
    """The output of *Calibrate prompts*: summary, table, PR curves and the segment button."""
    outputs = types.Object()
    outputs.str("summary", label="Summary", view=types.MarkdownView())
    outputs.list(
        "table", types.Object(), label="Per class: the wording and threshold chosen", view=table_view(TABLE_COLUMNS)
    )
    outputs.plot(
        "curves",
        label="Precision-recall curves of every wording (AP in the legend)",
        height=PLOT_HEIGHT,  # the App's plot fills its container, which an output dialog does not size
        layout={
            "xaxis": {"title": {"text": "Recall"}, "range": [0, 1]},
            "yaxis": {"title": {"text": "Precision"}, "range": [0, 1.05]},
            "showlegend": True,
            "legend": {"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"},
            "margin": {"t": 8, "l": 50, "r": 8, "b": 40},
        },
    )
    if results and results.get("text_params"):
        outputs.view(
            "segment",
            types.Button(
                label="Segment with calibrated prompts",
                description="Open 'Segment with text prompts' with these words and thresholds",
                operator=TEXT_OPERATOR_URI,
                prompt=True,
                params=results["text_params"],
            ),
        )
    return types.Property(outputs, view=types.View(label="SAM3 calibration"))


# -- stored calibrations ----------------------------------------------------------------------------


def stored_calibrations(dataset) -> list[str]:
    """The keys of the calibrations stored on ``dataset``, sorted."""
    runs = [run for run in dataset.list_runs() if run.startswith(_RUN_PREFIX)]
    calibrations = [
        run for run in runs if getattr(dataset.get_run_info(run).config, "method", None) == CALIBRATION_METHOD
    ]
    return sorted(run[len(_RUN_PREFIX) :] for run in calibrations)


def stored_settings(dataset, key: str) -> dict:
    """The model settings a stored calibration ran with (``model_path``, ``device``, ...; ``{}`` if none)."""
    settings = getattr(dataset.get_run_info(calibration_run_key(key)).config, "settings", None) or {}
    return dict(settings)  # stored as [name, value] pairs
