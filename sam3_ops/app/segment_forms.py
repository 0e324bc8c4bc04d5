"""The forms of the segment operators (:mod:`sam3_ops.app.operators`): reading a form's values
into settings, and building the inputs of each mode's form.

- Reading: :func:`parse_prompts` and :func:`prompt_rows` split the prompt inputs;
  :func:`settings_values` turns a form's values into settings values (unvalidated) and
  :func:`settings_from_form` into :class:`~sam3_ops.sdk.settings.Sam3Settings`;
  :func:`run_values` reads the run options (batch size, shards). An empty input means the
  setting's default, and the inputs show the defaults the settings own (:func:`setting_default`).
- Building: :func:`text_prompt_inputs`, :func:`box_prompt_inputs` (:func:`video_prompt_inputs` on
  a video dataset) and :func:`everything_inputs` are the three forms; the groups of inputs they
  are made of (the other ``*_input`` / ``*_inputs`` functions) serve any form that offers SAM3's
  settings (the zoo's too), and :func:`flag_form` flags the settings' problems on them.

Bad input is flagged on the form (``prop.invalid`` + ``prop.error_message``), never raised, with
the message ``segment`` raises: the settings' own validation
(:meth:`~sam3_ops.sdk.settings.Sam3Settings.problems`; what a mode reads and a medium refuses: the
settings' one table, :data:`~sam3_ops.sdk.settings.APPLIES`) and the run options'
(:meth:`~sam3_ops.sdk.settings.RunOptions.problems`) decide. Here only what a form adds: no
``Detections`` / ``Keypoints`` field to prompt from, an empty target, a model that cannot be
reached, an output field that cannot be written (its name, an existing one without the overwrite
choice, one of another type).
"""

from __future__ import annotations

import dataclasses

import fiftyone.core.labels as fol
import fiftyone.operators.types as types

from ..core.engine import SegmentOptions
from ..core.queries import FIELD_MODES, TRACKER_MODES
from ..sdk.fields import (
    frame_field_name,
    frame_label_fields,
    holds,
    is_video_collection,
    label_fields,
    output_field_problem,
    prompt_label_type,
)
from ..sdk.settings import APPLIES, DEFAULT_BATCH_SIZE, Sam3Settings, applies
from ..sdk.shards import MAX_SHARDS
from .forms import (
    device_input,
    field_choice,
    flag,
    flag_problems,
    flag_run_options,
    fraction_input,
    label_field_choice,
    model_input,
    target_input,
)

#: what Segment everything says on a video dataset
VIDEO_AUTO_REFUSAL = (
    "Segment everything runs on images. On videos, track concepts with 'Segment with text prompts' or chosen "
    "objects with 'Segment with box or point prompts'"
)

#: every setting's default: :class:`~sam3_ops.sdk.settings.Sam3Settings`' own, the one source
DEFAULTS = {setting.name: setting.default for setting in dataclasses.fields(Sam3Settings)}
#: the settings' defaults as segment everything reads them (its de-duplication is never off)
_AUTO_DEFAULTS = Sam3Settings(mode="auto")
#: the run options a segment form offers (images); an empty one is ``segment``'s default
RUN_OPTIONS = ("batch_size", "shards")


def setting_default(name: str, mode: str | None = None):
    """What the setting ``name`` is when a form leaves it empty: the settings' default, as a run in
    ``mode`` reads it (``auto``: ``nms_iou`` off means 0.7)."""
    return getattr(_AUTO_DEFAULTS, name) if mode == "auto" else DEFAULTS[name]


# -- reading a form -------------------------------------------------------------------------------


def parse_prompts(value) -> tuple[list[str], str | None]:
    """The form's prompts: a list of strings, each of which may be comma-separated, or one string.

    Only splits the text into entries (empty pieces between commas are separators); the settings
    validate the entries.

    Returns:
        ``(prompts, problem)``: the entries in order, and ``None`` or a message saying what is wrong
        with the form's value itself (not text, or an entry with nothing but commas)
    """
    if value is None:
        return [], None
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        return [], f"Prompts must be text, not {type(value).__name__}"
    prompts: list = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, str):
            prompts.append(entry)  # the settings name the problem
            continue
        pieces = [piece for piece in entry.split(",") if piece.strip()]
        if not pieces and "," in entry:
            where = "The prompt" if isinstance(value, str) else f"Prompt {number}"
            return [], f"{where} is blank: type a word or phrase such as 'cat', or remove it"
        prompts.extend(pieces or [entry])
    return prompts, None


#: the multimask dropdown's choices and the settings they stand for
MULTIMASK_CHOICES = {"one": None, "best": "best", "all": "all"}


def prompt_rows(value) -> list:
    """The form's table of prompts with their own settings, as the settings' prompt dicts: blank
    cells dropped (a blank label or threshold means "the default"). Anything that is not a row is
    passed on for the settings to name."""
    return [
        {k: v for k, v in row.items() if v not in (None, "")} if isinstance(row, dict) else row for row in value or []
    ]


def settings_values(params: dict, mode: str) -> dict:
    """The settings a segment form's values ask for (unvalidated); an empty input (``None`` or
    absent) is left out: the settings' default. The table's prompts come first: a plain prompt
    with the same text is then a duplicate, and the table row's settings win."""
    prompts, _ = parse_prompts(params.get("prompts"))
    device = params.get("device") or "auto"
    values = {
        "model_path": params.get("model_path") or DEFAULTS["model_path"],
        "mode": mode,
        "prompts": [*prompt_rows(params.get("prompt_table")), *prompts] if mode not in TRACKER_MODES else (),
        "device": None if device == "auto" else device,
    }
    # an empty threshold: the model's own (see Sam3Settings)
    values.update({name: params[name] for name in ("threshold", "mask_threshold") if params.get(name) is not None})
    if mode in FIELD_MODES:
        values["prompt_field"] = params.get("prompt_field")
        values["negative_field"] = params.get("negative_field") or None
    # the settings of the mode (the settings' table, any medium: one given on a medium it does not
    # apply to is flagged by flag_form); a zoo form that switched modes may hold another mode's
    for name in APPLIES:
        if name not in ("prompt_field", "negative_field") and applies(name, mode) and params.get(name) is not None:
            values[name] = params[name]
    if "multimask" in values:
        values["multimask"] = MULTIMASK_CHOICES.get(values["multimask"], values["multimask"])
    return values


def settings_from_form(params: dict, mode: str) -> Sam3Settings:
    """The settings a segment form asks for, validated (:class:`~sam3_ops.sdk.settings.SettingsError` if not)."""
    return Sam3Settings(**settings_values(params, mode))


def run_values(params: dict) -> dict:
    """The run options a segment form's values ask for (:data:`RUN_OPTIONS`), unvalidated and
    unconverted, so that :class:`~sam3_ops.sdk.settings.RunOptions` names a bad one; an empty
    input is left out: ``segment``'s default."""
    return {name: params[name] for name in RUN_OPTIONS if params.get(name) is not None}


# -- form builders ----------------------------------------------------------------------------------


def text_prompt_inputs(ctx, inputs) -> None:
    """The form of Segment with text prompts (images, or videos: tracking)."""
    target_input(ctx, inputs)
    video = is_video_collection(ctx.dataset)
    rows = prompt_rows(ctx.params.get("prompt_table"))
    props = {
        "prompts": prompts_input(
            ctx,
            inputs,
            required=not rows,
            description="What to segment: every instance of each prompt gets a mask, e.g. cat, dog",
        ),
        "prompt_table": prompt_table_input(inputs),
    }
    props.update(threshold_inputs(inputs, score=True, video=video))
    # tracking: de-duplication and limits are image-only
    props.update(video_inputs(inputs, "text") if video else dedup_inputs(inputs, "text"))
    output_inputs(ctx, inputs, default_field="sam3", reserved=())
    props.update(run_inputs(ctx, inputs))
    flag_form(ctx.params, "text", props, inputs, "video" if video else "image")


def box_prompt_inputs(ctx, inputs) -> None:
    """The form of Segment with box or point prompts (:func:`video_prompt_inputs` on a video dataset)."""
    if is_video_collection(ctx.dataset):
        return video_prompt_inputs(ctx, inputs)
    target_input(ctx, inputs)
    mode_choices = types.RadioGroup()
    mode_choices.add_choice("boxes", label="Add masks to these boxes", description="One mask per box")
    mode_choices.add_choice(
        "exemplars", label="Find all similar", description="The boxes are examples; find every similar object"
    )
    mode_choices.add_choice(
        "points",
        label="Masks from points",
        description="One mask per keypoint object of a Keypoints field (sam_labels: 1 positive, 0 negative)",
    )
    inputs.enum("mode", mode_choices.values(), default="boxes", label="Mode", view=mode_choices)
    mode = ctx.params.get("mode") or "boxes"
    props = {}
    props["prompt_field"], prompt_field = prompt_field_input(ctx, inputs, mode, video=False)

    negative_choices = [name for name in label_fields(ctx.dataset, fol.Detections) if name != prompt_field]
    if negative_choices:
        props["negative_field"] = inputs.enum(
            "negative_field",
            negative_choices,
            required=False,
            label="Negative box field (optional)",
            description="A Detections field whose boxes mark what must not be segmented",
            view=types.DropdownView(),
        )
    negative_field = ctx.params.get("negative_field") or None

    if mode == "exemplars":
        props["prompts"] = prompts_input(
            ctx, inputs, required=False, description="Optional text to go with the example boxes"
        )
        props.update(dedup_inputs(inputs, mode))
    else:
        props["multimask"] = multimask_input(inputs)
    # the tracker modes write one mask per prompt whatever its score: no score threshold to offer
    props.update(threshold_inputs(inputs, score=mode == "exemplars"))
    default_field = f"{prompt_field}_masks" if mode in TRACKER_MODES and prompt_field else "sam3_exemplars"
    reserved = tuple(name for name in (prompt_field, negative_field) if name)
    output_inputs(ctx, inputs, default_field=default_field, reserved=reserved)
    props.update(run_inputs(ctx, inputs))
    if prompt_field:
        flag_form({**ctx.params, "prompt_field": prompt_field}, mode, props, inputs, "image")


def video_prompt_inputs(ctx, inputs) -> None:
    """The box / point form on a video dataset: a frame-level ``Detections`` / ``Keypoints`` field
    holds prompts on some frames; each prompt object is tracked through its video."""
    target_input(ctx, inputs)
    mode_choices = types.RadioGroup()
    mode_choices.add_choice(
        "boxes", label="Track these boxes", description="Each box of a frame-level Detections field is one object"
    )
    mode_choices.add_choice(
        "points",
        label="Track from points",
        description="Each keypoint object of a frame-level Keypoints field is one object (sam_labels: 1 / 0)",
    )
    mode_prop = inputs.enum("mode", mode_choices.values(), default="boxes", label="Mode", view=mode_choices)
    mode = ctx.params.get("mode") or "boxes"
    if mode not in ("boxes", "points"):
        flag(mode_prop, f"{mode!r} does not run on videos: track boxes or points")
        mode = "boxes"
    props = {}
    props["prompt_field"], prompt_field = prompt_field_input(ctx, inputs, mode, video=True)
    props.update(video_inputs(inputs, mode))
    props.update(threshold_inputs(inputs, score=False, video=True))
    default_field = f"{prompt_field}_masks" if prompt_field else "sam3_masks"
    output_inputs(ctx, inputs, default_field=default_field, reserved=(prompt_field,) if prompt_field else ())
    props.update(run_inputs(ctx, inputs))
    if prompt_field:
        flag_form({**ctx.params, "mode": mode, "prompt_field": prompt_field}, mode, props, inputs, "video")


def prompt_field_input(ctx, inputs, mode: str, video: bool, prefix: str = "frames."):
    """The dropdown of the fields holding ``mode``'s prompts (``Detections`` or ``Keypoints``;
    on videos the frame-level ones, each shown after ``prefix``); returns ``(prop, field)``, the
    field ``None`` (flagged) when there is none or the chosen one is not one of them."""
    kind = prompt_label_type(mode)
    what = "points" if mode == "points" else "boxes"
    if not video:
        description = f"The {kind.__name__} field whose {what} prompt SAM3"
        return label_field_choice(ctx, inputs, "prompt_field", "Prompt field", (kind,), description=description)
    fields = frame_label_fields(ctx.dataset, kind)
    if not fields:
        prop = inputs.str("prompt_field", required=True, label="Prompt field")
        flag(prop, f"This video dataset has no frame-level {kind.__name__} field to prompt from")
        return prop, None
    description = f"The frame-level {kind.__name__} field whose {what} prompt SAM3"
    prop = field_choice(inputs, "prompt_field", fields, "Prompt field", description, default=fields[0], prefix=prefix)
    value = frame_field_name(ctx.params.get("prompt_field") or fields[0])
    if value not in fields:
        flag(prop, f"{value!r} is not a frame-level {kind.__name__} field of this dataset")
        return prop, None
    return prop, value


def everything_inputs(ctx, inputs) -> None:
    """The form of Segment everything (refused on a video dataset)."""
    if is_video_collection(ctx.dataset):
        prop = inputs.str("label_field", required=True, label="Output field")
        flag(prop, VIDEO_AUTO_REFUSAL)
        return
    target_input(ctx, inputs)
    props = auto_inputs(inputs)
    props.update(threshold_inputs(inputs, score=False))
    props.update(dedup_inputs(inputs, "auto"))
    output_inputs(ctx, inputs, default_field="sam3_auto", reserved=())
    props.update(run_inputs(ctx, inputs))
    flag_form(ctx.params, "auto", props, inputs, "image")


def video_inputs(inputs, mode: str) -> dict:
    """What a video run adds: the propagation direction (prompt modes) and the object cap."""
    props = {}
    if mode != "text":
        direction = types.RadioGroup()
        direction.add_choice("forward", label="Forward", description="From each prompt's frame to the end")
        direction.add_choice("backward", label="Backward", description="From the last prompted frame to the first")
        direction.add_choice("both", label="Both", description="Forward, then backward: every frame")
        props["direction"] = inputs.enum(
            "direction", direction.values(), default=DEFAULTS["direction"], label="Propagate", view=direction
        )
    props["max_objects"] = _number_input(inputs, "max_objects")
    return props


def prompt_table_input(inputs):
    """The table of prompts with their own label and threshold."""
    row = types.Object()
    row.str("text", required=True, label="Prompt", description="What SAM3 reads, e.g. person wearing a hard hat")
    row.str("label", required=False, label="Label", description="What its hits are called (default: the prompt)")
    row.float("threshold", required=False, min=0.0, max=1.0, label="Threshold", description="Its own (0-1)")
    return inputs.list(
        "prompt_table",
        row,
        required=False,
        label="Prompts with their own label or threshold (optional)",
        description="A row's label names its hits (e.g. hardhat_person); its threshold replaces the score threshold",
    )


def multimask_input(inputs):
    """The choice of one mask, the best of three, or all three per ambiguous prompt."""
    choices = types.DropdownView()
    choices.add_choice("one", label="One mask per prompt")
    choices.add_choice("best", label="The most confident of three masks")
    choices.add_choice("all", label="All three masks (attribute mask_rank)")
    default = next(choice for choice, value in MULTIMASK_CHOICES.items() if value == DEFAULTS["multimask"])
    return inputs.enum(
        "multimask",
        list(MULTIMASK_CHOICES),
        default=default,
        label="Ambiguous prompts",
        description="A single point or box can mean a part or the whole: SAM3 can predict three masks",
        view=choices,
    )


def dedup_inputs(inputs, mode: str) -> dict:
    """De-duplication across prompts and limits per sample (applied before masks are upsampled)."""
    props = {
        name: _number_input(inputs, name, mode) for name in ("nms_iou", "nms_containment", "max_detections", "min_area")
    }
    if mode != "auto":
        props["nms_per_label"] = inputs.bool(
            "nms_per_label",
            default=DEFAULTS["nms_per_label"],
            label="De-duplicate within a label only",
            description="Hits of different labels never remove each other",
            view=types.CheckboxView(),
        )
    return props


def auto_inputs(inputs) -> dict:
    """The point grid and mask filters of segment everything."""
    props = {
        name: _number_input(inputs, name) for name in ("points_per_side", "pred_iou_threshold", "stability_threshold")
    }
    props["auto_label"] = inputs.str(
        "auto_label", default=DEFAULTS["auto_label"], label="Label", description="The label of every mask"
    )
    return props


#: the inputs of the numeric settings: name -> (type, label, description); a float is a fraction
#: (0-1), an int a count (at least 1)
_NUMBER_INPUTS = {
    "nms_iou": (
        float,
        "De-duplicate above mask IoU (optional)",
        "Of two hits of a sample whose masks overlap more than this, keep the higher-scoring",
    ),
    "nms_containment": (
        float,
        "Drop hits lying inside another (optional)",
        "Drop a hit whose mask lies at least this fraction inside a higher-scoring one",
    ),
    "max_detections": (int, "At most this many hits per sample (optional)", "Keep the highest-scoring"),
    "min_area": (float, "Minimum mask area", "Drop masks covering less than this fraction of the image"),
    "points_per_side": (int, "Points per side", "A grid of this many x this many point prompts per image"),
    "pred_iou_threshold": (float, "Predicted IoU threshold", "Keep masks SAM3 rates at least this good (0-1)"),
    "stability_threshold": (
        float,
        "Stability threshold",
        "Keep masks that hardly change when the mask threshold moves (0-1)",
    ),
    "mask_threshold": (float, "Mask threshold", "A pixel is in a mask above this probability (0-1)"),
    "max_objects": (
        int,
        "Most objects tracked per video",
        "Objects beyond it are not tracked (the log says how many); memory grows with it",
    ),
}


def _number_input(inputs, name: str, mode: str | None = None):
    """The input of the numeric setting ``name`` (:data:`_NUMBER_INPUTS`), showing its default in ``mode``."""
    kind, label, description = _NUMBER_INPUTS[name]
    options = {"default": setting_default(name, mode), "label": label, "description": description}
    return inputs.int(name, min=1, **options) if kind is int else fraction_input(inputs, name, **options)


def flag_form(params: dict, mode: str, props: dict, inputs=None, media: str | None = None) -> None:
    """Flags the settings' problems on the form, each on its own input; a problem of the prompt
    table on the table (its rows numbered as shown), not on the prompt list. With ``media``, a
    setting given that does not apply there (the settings' table) is flagged too, on an input
    added to ``inputs`` for it when the form has none (a video setting given to an image form)."""
    values = settings_values(params, mode)
    if media is not None:
        for name in APPLIES:
            if not applies(name, media=media) and params.get(name) is not None:
                values[name] = params[name]
                if name not in props and inputs is not None:
                    props[name] = _given_input(inputs, name, params[name])
    model_prop = props.get("model_path")
    if model_prop is None or model_prop.invalid:  # no model input (the zoo's), or explained (reachability too)
        values.pop("model_path")
    rows = prompt_rows(params.get("prompt_table"))
    if rows and "prompt_table" in props:
        problem = Sam3Settings.problems({"mode": mode, "prompts": rows}).get("prompts")
        if problem:
            flag(props["prompt_table"], problem.replace("prompt ", "row ", 1))
            values["prompts"] = values["prompts"][len(rows) :]
            if not values["prompts"]:  # "no prompt at all" is explained on the table already
                props = {name: prop for name, prop in props.items() if name != "prompts"}
    flag_problems(Sam3Settings.problems(values, media), props)


def _given_input(inputs, name: str, value):
    """An input for the setting ``name`` that the form does not offer but was given ``value``, so
    that the problem is shown, and the value can be cleared, where it is."""
    define = {bool: inputs.bool, int: inputs.int, float: inputs.float}.get(type(value), inputs.str)
    return define(name, required=False, label=name)


def prompts_input(ctx, inputs, required: bool, description: str):
    """The text prompts (a list, or one comma-separated string from an SDK caller), flagged when malformed."""
    value = ctx.params.get("prompts")
    if isinstance(value, str):  # a comma-separated string from an SDK caller
        prop = inputs.str("prompts", required=required, label="Text prompts", description=description)
    else:
        prop = inputs.list("prompts", types.String(), required=required, label="Text prompts", description=description)
    _, problem = parse_prompts(value)
    if problem:
        flag(prop, problem)
    return prop


def threshold_inputs(inputs, score: bool, video: bool = False) -> dict:
    """The mask threshold, and the score threshold where the mode has scores to threshold (its
    empty value, the settings' default, is the model's own: :func:`model_threshold`)."""
    props = {}
    if score:
        default = DEFAULTS["threshold"]
        description = "Keep hits scoring above this (0-1)"
        if default is None:
            description += f"; empty: the model's own ({model_threshold(video)})"
        props["threshold"] = fraction_input(
            inputs,
            "threshold",
            default=default,
            label="Score threshold",
            description=description,
            view=types.FieldView(placeholder=model_threshold(video) if default is None else None),
        )
    props["mask_threshold"] = _number_input(inputs, "mask_threshold")
    return props


def model_threshold(video: bool) -> str:
    """What an empty score threshold runs with (the settings' ``threshold=None``): on images the
    image model's default, on videos the checkpoint's own detection thresholds."""
    if video:
        return "the checkpoint's detection thresholds"
    return str(SegmentOptions().threshold)


def output_inputs(ctx, inputs, default_field: str, reserved) -> None:
    """The output field, with the overwrite and resume choices when it exists; flagged when it cannot be written
    (``reserved``: the fields the run reads)."""
    name = ctx.params.get("label_field", default_field)
    # resuming replaces nothing: writing into the existing field needs no overwrite choice
    only_missing = bool(ctx.params.get("only_missing", False))
    overwrite = bool(ctx.params.get("overwrite", False)) or only_missing
    prop = inputs.str(
        "label_field",
        default=default_field,
        required=True,
        label="Output field",
        description="The Detections field to write the masks to",
    )
    path = f"frames.{name}" if is_video_collection(ctx.dataset) and isinstance(name, str) else name  # video: frames
    field = ctx.dataset.get_field(path) if isinstance(name, str) and name else None
    if field is not None and holds(field) and name not in reserved:
        inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description=f"Field {name!r} exists: replace its values on the target samples",
            view=types.CheckboxView(),
        )
        inputs.bool(
            "only_missing",
            default=False,
            label="Only samples without results",
            description=f"Segment only the target samples with no value in {name!r} yet (resume an interrupted run)",
            view=types.CheckboxView(),
        )
    problem = output_field_problem(ctx.dataset, name, overwrite, reserved=reserved)
    if problem:
        flag(prop, problem)


def run_inputs(ctx, inputs) -> dict:
    """Batch size and shards (images), each flagged with the message ``segment`` raises for it
    (:func:`~sam3_ops.app.forms.flag_run_options`), model and device; returns them by name."""
    props = {}
    # videos: a video's frames go through the model one at a time, and a video run is never sharded
    if not is_video_collection(ctx.dataset):
        props["batch_size"] = inputs.int(
            "batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size", description="Images per forward pass"
        )
        props["shards"] = inputs.int(
            "shards",
            default=1,
            min=1,
            max=MAX_SHARDS,
            label="Split into N tasks",
            description=(
                "Above 1: queue N delegated operations, one shard of the target each, for any number of workers "
                "(one per GPU: python -m sam3_ops.sdk.workers) to run in parallel. Progress: 'Sharded run status'"
            ),
        )
        flag_run_options(run_values(ctx.params), props)
    props["model_path"] = model_input(ctx, inputs)
    props["device"] = device_input(inputs)
    return props
