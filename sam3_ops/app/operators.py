"""App operators: SAM3 segmentation from the operator menu, with text prompts (a list, and a table
of prompts with their own label and threshold), box or point prompts from a label field, or none
(segment everything).

Each operator reads its form, builds the settings and calls :func:`sam3_ops.segment`: the same
public API SDK users call, no second inference loop, and the same run record.

- Immediate runs use ``num_workers=0``, stream progress to the App (the target is segmented in a
  few chunks, one ``segment`` call each, on one model whose counts add up), end with
  ``reload_dataset`` and show the summary.
- Delegated runs make one ``segment`` call, report progress with ``ctx.set_progress`` and
  return the summary, which :meth:`resolve_output` lays out on the run's page.

Bad input is flagged on the form (``prop.invalid`` + ``prop.error_message``), never raised: the
settings' own validation (:meth:`~sam3_ops.sdk.settings.Sam3Settings.problems`) decides about
prompts, thresholds, de-duplication, limits and the model path; here only what a form adds: no
``Detections`` / ``Keypoints`` field to prompt from, an empty target, a model that cannot be reached, an output field name, an existing
output field without the overwrite choice, an existing field of another type (never overwritten).
"""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.core.labels as fol
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..core.checkpoint import DEFAULT_MODEL
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
from ..sdk.model import Sam3Model
from ..sdk.runs import finish_run, get_run, record_run, recorded_fields
from ..sdk.segment import DEFAULT_BATCH_SIZE, build_engine, segment, without_results
from ..sdk.settings import Sam3Settings
from ..sdk.shards import DEFAULT_STALE_AFTER, MAX_SHARDS, check_shards, resume_shards, run_shard, shard_status
from ..sdk.video import Sam3VideoModel, build_video_engine, video_settings_problem
from .forms import (
    device_input,
    flag,
    flag_settings,
    hf_token,
    label_field_choice,
    model_input,
    operator_config,
    target_input,
)

#: an immediate run reports progress about this many times
PROGRESS_STEPS = 10


class SegmentWithTextPrompts(foo.Operator):
    """Segments every instance of each text prompt on the target samples."""

    @property
    def config(self):
        return operator_config(
            "segment_with_text_prompts",
            "Segment with text prompts",
            "SAM3 instance masks for every instance of each text prompt",
            generator=True,
            allow_distributed_execution=True,  # FiftyOne Enterprise; shards = ctx.num_distributed_tasks
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _text_prompt_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Segment with text prompts"))

    def resolve_run_name(self, ctx):
        return f"Segment with text prompts -> {ctx.params.get('label_field')}"

    def execute(self, ctx):
        return _execute(ctx, _settings(ctx.params, mode="text"))

    def resolve_output(self, ctx):
        return _summary_outputs(ctx)


class SegmentWithBoxPrompts(foo.Operator):
    """Segments from a label field's prompts: one mask per box (``Detections``) or per keypoint
    object (``Keypoints``, positive/negative points), or boxes as exemplars."""

    @property
    def config(self):
        return operator_config(
            "segment_with_box_prompts",
            "Segment with box or point prompts",
            "SAM3 instance masks from the boxes of a Detections field or the points of a Keypoints field",
            generator=True,
            allow_distributed_execution=True,  # FiftyOne Enterprise; shards = ctx.num_distributed_tasks
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _box_prompt_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Segment with box or point prompts"))

    def resolve_run_name(self, ctx):
        return f"Segment with {ctx.params.get('mode', 'boxes')} prompts -> {ctx.params.get('label_field')}"

    def execute(self, ctx):
        return _execute(ctx, _settings(ctx.params, mode=ctx.params.get("mode") or "boxes"))

    def resolve_output(self, ctx):
        return _summary_outputs(ctx)


class SegmentEverything(foo.Operator):
    """Segments everything: a grid of point prompts over each image, masks filtered by predicted
    IoU and stability and de-duplicated, labelled ``auto_label``."""

    @property
    def config(self):
        return operator_config(
            "segment_everything",
            "Segment everything",
            "SAM3 masks of every object, with no prompts (a grid of points; for datasets with no labels yet)",
            generator=True,
            allow_distributed_execution=True,  # FiftyOne Enterprise; shards = ctx.num_distributed_tasks
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        if is_video_collection(ctx.dataset):
            prop = inputs.str("label_field", required=True, label="Output field")
            flag(prop, VIDEO_AUTO_REFUSAL)
            return types.Property(inputs, view=types.View(label="Segment everything"))
        target_input(ctx, inputs)
        props = _auto_inputs(inputs)
        props.update(_threshold_inputs(inputs, score=False))
        props.update(_dedup_inputs(inputs, "auto"))
        _output_inputs(ctx, inputs, default_field="sam3_auto", reserved=())
        props.update(_run_inputs(ctx, inputs))
        _flag_form(ctx.params, "auto", props)
        return types.Property(inputs, view=types.View(label="Segment everything"))

    def resolve_run_name(self, ctx):
        return f"Segment everything -> {ctx.params.get('label_field')}"

    def execute(self, ctx):
        return _execute(ctx, _settings(ctx.params, mode="auto"))

    def resolve_output(self, ctx):
        return _summary_outputs(ctx)


class SegmentShard(foo.Operator):
    """One shard of a sharded run, queued by ``sam3_ops.segment(..., shards=N)`` or a segment
    operator's "Split into N tasks"; run by a ``fiftyone delegated launch`` worker. Unlisted."""

    @property
    def config(self):
        return operator_config(
            "segment_shard",
            "SAM3 shard",
            "One shard of a sharded SAM3 run (queued by the segment operators and sam3_ops.segment)",
            unlisted=True,
        )

    def execute(self, ctx):
        return run_shard(
            ctx.view,
            ctx.params,
            token=hf_token(ctx),
            set_progress=ctx.set_progress,
            operation_id=ctx.request_params.get("run_doc"),
        )

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("shard", label="Shard (from 0)")
        outputs.int("attempt", label="Attempt")
        outputs.str("worker", label="Worker (host:pid)")
        outputs.int("samples_processed", label="Samples processed")
        outputs.int("detections", label="Detections written")
        outputs.int("samples_skipped", label="Samples skipped")
        outputs.bool("finalized", label="Completed the run")
        return types.Property(outputs, view=types.View(label="SAM3 shard"))


class ShardedRunStatus(foo.Operator):
    """Where a sharded run stands: shards queued, running, done, failed, samples written; re-queues
    the shards whose worker died."""

    @property
    def config(self):
        return operator_config(
            "sharded_run_status",
            "Sharded run status",
            "Progress of a SAM3 run split into shards; re-queues the shards of workers that died",
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        fields = [name for name in recorded_fields(ctx.dataset) if getattr(get_run(ctx.dataset, name), "shards", None)]
        prop = inputs.enum("label_field", fields, required=True, label="Field", view=types.DropdownView())
        if not fields:
            flag(prop, "This dataset has no sharded run: choose 'Split into N tasks' in a segment operator")
        elif ctx.params.get("label_field") not in (None, *fields):
            flag(prop, f"{ctx.params['label_field']!r} has no sharded run")
        inputs.float(
            "stale_after_minutes",
            default=DEFAULT_STALE_AFTER / 60,
            min=0.0,
            label="Presume a shard dead after (minutes)",
            description="A running shard with no progress or heartbeat for this long is queued again",
        )
        inputs.bool("requeue", default=True, label="Re-queue dead shards", view=types.CheckboxView())
        inputs.bool(
            "resume",
            default=False,
            label="Resume failed or cancelled shards",
            description="Queue them again: the same run goes on, each shard writing what its samples lack",
            view=types.CheckboxView(),
        )
        return types.Property(inputs, view=types.View(label="Sharded run status"))

    def execute(self, ctx):
        minutes = ctx.params.get("stale_after_minutes")
        stale_after = DEFAULT_STALE_AFTER if minutes is None else float(minutes) * 60
        requeue = bool(ctx.params.get("requeue", True))
        resumed = resume_shards(ctx.dataset, ctx.params["label_field"]) if ctx.params.get("resume") else 0
        status = shard_status(ctx.dataset, ctx.params["label_field"], stale_after=stale_after, requeue=requeue)
        return {**status.to_dict(), "resumed": resumed}

    def resolve_output(self, ctx):
        return _sharded_outputs("SAM3 sharded run", status=True)


#: what Segment everything says on a video dataset
VIDEO_AUTO_REFUSAL = (
    "Segment everything runs on images. On videos, track concepts with 'Segment with text prompts' or chosen "
    "objects with 'Segment with box or point prompts'"
)

OPERATORS = [SegmentWithTextPrompts, SegmentWithBoxPrompts, SegmentEverything, SegmentShard, ShardedRunStatus]


# -- reading the form -------------------------------------------------------------------------------


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


#: the settings a form offers only in some modes, and those modes
_MODE_SETTINGS = {
    "multimask": ("boxes", "points"),
    "nms_iou": ("text", "exemplars", "auto"),
    "nms_per_label": ("text", "exemplars"),
    "nms_containment": ("text", "exemplars", "auto"),
    "max_detections": ("text", "exemplars", "auto"),
    "min_area": ("text", "exemplars", "auto"),
    "points_per_side": ("auto",),
    "pred_iou_threshold": ("auto",),
    "stability_threshold": ("auto",),
    "auto_label": ("auto",),
}
#: the multimask dropdown's choices and the settings they stand for
_MULTIMASK_CHOICES = {"one": None, "best": "best", "all": "all"}


def prompt_rows(value) -> list:
    """The form's table of prompts with their own settings, as the settings' prompt dicts: blank
    cells dropped (a blank label or threshold means "the default"). Anything that is not a row is
    passed on for the settings to name."""
    rows = []
    for row in value or []:
        rows.append({k: v for k, v in row.items() if v not in (None, "")} if isinstance(row, dict) else row)
    return rows


def _settings_values(params: dict, mode: str) -> dict:
    """The settings a segment form's values ask for (unvalidated). The table's prompts come first:
    a plain prompt with the same text is then a duplicate, and the table row's settings win."""
    prompts, _ = parse_prompts(params.get("prompts"))
    device = params.get("device") or "auto"
    values = {
        "model_path": params.get("model_path") or DEFAULT_MODEL,
        "mode": mode,
        "prompts": [*prompt_rows(params.get("prompt_table")), *prompts] if mode not in TRACKER_MODES else (),
        "threshold": params.get("threshold", 0.5),
        "mask_threshold": params.get("mask_threshold", 0.5),
        "device": None if device == "auto" else device,
    }
    if mode in FIELD_MODES:
        values["prompt_field"] = params.get("prompt_field")
        values["negative_field"] = params.get("negative_field") or None
    for name, modes in _MODE_SETTINGS.items():
        if mode in modes and params.get(name) is not None:
            values[name] = params[name]
    if "multimask" in values:
        values["multimask"] = _MULTIMASK_CHOICES.get(values["multimask"], values["multimask"])
    for name in ("direction", "max_objects"):  # video datasets' forms
        if params.get(name) is not None:
            values[name] = params[name]
    return values


def _settings(params: dict, mode: str) -> Sam3Settings:
    return Sam3Settings(**_settings_values(params, mode))


# -- form builders ----------------------------------------------------------------------------------


def _text_prompt_inputs(ctx, inputs) -> None:
    target_input(ctx, inputs)
    rows = prompt_rows(ctx.params.get("prompt_table"))
    props = {
        "prompts": _prompts_input(
            ctx,
            inputs,
            required=not rows,
            description="What to segment: every instance of each prompt gets a mask, e.g. cat, dog",
        ),
        "prompt_table": _prompt_table_input(inputs),
    }
    props.update(_threshold_inputs(inputs, score=True))
    if is_video_collection(ctx.dataset):  # tracking: de-duplication and limits are image-only
        props.update(_video_inputs(inputs, "text"))
    else:
        props.update(_dedup_inputs(inputs, "text"))
    _output_inputs(ctx, inputs, default_field="sam3", reserved=())
    props.update(_run_inputs(ctx, inputs))
    _flag_form(ctx.params, "text", props)


def _box_prompt_inputs(ctx, inputs) -> None:
    if is_video_collection(ctx.dataset):
        return _video_prompt_inputs(ctx, inputs)
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
    kind = prompt_label_type(mode)
    prompt_prop, prompt_field = label_field_choice(
        ctx,
        inputs,
        "prompt_field",
        "Prompt field",
        (kind,),
        description=f"The {kind.__name__} field whose {'points' if mode == 'points' else 'boxes'} prompt SAM3",
    )
    props = {"prompt_field": prompt_prop}

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
        props["prompts"] = _prompts_input(
            ctx, inputs, required=False, description="Optional text to go with the example boxes"
        )
        props.update(_dedup_inputs(inputs, mode))
    else:
        props["multimask"] = _multimask_input(inputs)
    # the tracker modes write one mask per prompt whatever its score: no score threshold to offer
    props.update(_threshold_inputs(inputs, score=mode == "exemplars"))
    default_field = f"{prompt_field}_masks" if mode in TRACKER_MODES and prompt_field else "sam3_exemplars"
    reserved = tuple(name for name in (prompt_field, negative_field) if name)
    _output_inputs(ctx, inputs, default_field=default_field, reserved=reserved)
    props.update(_run_inputs(ctx, inputs))
    if prompt_field:
        _flag_form({**ctx.params, "prompt_field": prompt_field}, mode, props)


def _video_prompt_inputs(ctx, inputs) -> None:
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
    kind = prompt_label_type(mode)
    fields = frame_label_fields(ctx.dataset, kind)
    prompt_field = frame_field_name(ctx.params.get("prompt_field") or (fields[0] if fields else None))
    if fields:
        dropdown = types.DropdownView()
        for name in fields:
            dropdown.add_choice(name, label=f"frames.{name}")
        what = "points" if mode == "points" else "boxes"
        description = f"The frame-level {kind.__name__} field whose {what} prompt SAM3"
        props = {
            "prompt_field": inputs.enum(
                "prompt_field",
                fields,
                required=True,
                default=fields[0],
                label="Prompt field",
                description=description,
                view=dropdown,
            )
        }
        if prompt_field not in fields:
            flag(props["prompt_field"], f"{prompt_field!r} is not a frame-level {kind.__name__} field of this dataset")
            prompt_field = None
    else:
        props = {"prompt_field": inputs.str("prompt_field", required=True, label="Prompt field")}
        flag(props["prompt_field"], f"This video dataset has no frame-level {kind.__name__} field to prompt from")
        prompt_field = None
    props.update(_video_inputs(inputs, mode))
    props.update(_threshold_inputs(inputs, score=False))
    default_field = f"{prompt_field}_masks" if prompt_field else "sam3_masks"
    _output_inputs(ctx, inputs, default_field=default_field, reserved=(prompt_field,) if prompt_field else ())
    props.update(_run_inputs(ctx, inputs))
    if prompt_field:
        _flag_form({**ctx.params, "mode": mode, "prompt_field": prompt_field}, mode, props)


def _video_inputs(inputs, mode: str) -> dict:
    """What a video run adds: the propagation direction (prompt modes) and the object cap."""
    props = {}
    if mode != "text":
        direction = types.RadioGroup()
        direction.add_choice("forward", label="Forward", description="From each prompt's frame to the end")
        direction.add_choice("backward", label="Backward", description="From the last prompted frame to the first")
        direction.add_choice("both", label="Both", description="Forward, then backward: every frame")
        props["direction"] = inputs.enum(
            "direction", direction.values(), default="forward", label="Propagate", view=direction
        )
    props["max_objects"] = inputs.int(
        "max_objects",
        default=50,
        min=1,
        label="Most objects tracked per video",
        description="Objects beyond it are not tracked (the log says how many); memory grows with it",
    )
    return props


def _prompt_table_input(inputs):
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


def _multimask_input(inputs):
    choices = types.DropdownView()
    choices.add_choice("one", label="One mask per prompt")
    choices.add_choice("best", label="The most confident of three masks")
    choices.add_choice("all", label="All three masks (attribute mask_rank)")
    return inputs.enum(
        "multimask",
        list(_MULTIMASK_CHOICES),
        default="one",
        label="Ambiguous prompts",
        description="A single point or box can mean a part or the whole: SAM3 can predict three masks",
        view=choices,
    )


def _dedup_inputs(inputs, mode: str) -> dict:
    """De-duplication across prompts and limits per sample (applied before masks are upsampled)."""
    props = {
        "nms_iou": inputs.float(
            "nms_iou",
            required=False,
            default=0.7 if mode == "auto" else None,
            min=0.0,
            max=1.0,
            label="De-duplicate above mask IoU (optional)",
            description="Of two hits of a sample whose masks overlap more than this, keep the higher-scoring",
        ),
        "nms_containment": inputs.float(
            "nms_containment",
            required=False,
            min=0.0,
            max=1.0,
            label="Drop hits lying inside another (optional)",
            description="Drop a hit whose mask lies at least this fraction inside a higher-scoring one",
        ),
        "max_detections": inputs.int(
            "max_detections",
            required=False,
            min=1,
            label="At most this many hits per sample (optional)",
            description="Keep the highest-scoring",
        ),
        "min_area": inputs.float(
            "min_area",
            default=0.0,
            min=0.0,
            max=1.0,
            label="Minimum mask area",
            description="Drop masks covering less than this fraction of the image",
        ),
    }
    if mode != "auto":
        props["nms_per_label"] = inputs.bool(
            "nms_per_label",
            default=False,
            label="De-duplicate within a label only",
            description="Hits of different labels never remove each other",
            view=types.CheckboxView(),
        )
    return props


def _auto_inputs(inputs) -> dict:
    return {
        "points_per_side": inputs.int(
            "points_per_side",
            default=32,
            min=1,
            label="Points per side",
            description="A grid of this many x this many point prompts per image",
        ),
        "pred_iou_threshold": inputs.float(
            "pred_iou_threshold",
            default=0.88,
            min=0.0,
            max=1.0,
            label="Predicted IoU threshold",
            description="Keep masks SAM3 rates at least this good (0-1)",
        ),
        "stability_threshold": inputs.float(
            "stability_threshold",
            default=0.95,
            min=0.0,
            max=1.0,
            label="Stability threshold",
            description="Keep masks that hardly change when the mask threshold moves (0-1)",
        ),
        "auto_label": inputs.str("auto_label", default="object", label="Label", description="The label of every mask"),
    }


def _flag_form(params: dict, mode: str, props: dict) -> None:
    """Flags the settings' problems on the form, each on its own input; a problem of the prompt
    table on the table (its rows numbered as shown), not on the prompt list."""
    values = _settings_values(params, mode)
    values["model_path"] = params.get("model_path") or DEFAULT_MODEL
    if props["model_path"].invalid:  # already explained (reachability included)
        values.pop("model_path")
    rows = prompt_rows(params.get("prompt_table"))
    if rows and "prompt_table" in props:
        problem = Sam3Settings.problems({"mode": mode, "prompts": rows}).get("prompts")
        if problem:
            flag(props["prompt_table"], problem.replace("prompt ", "row ", 1))
            values["prompts"] = values["prompts"][len(rows) :]
            if not values["prompts"]:  # "no prompt at all" is explained on the table already
                props = {name: prop for name, prop in props.items() if name != "prompts"}
    flag_settings(values, props)


def _prompts_input(ctx, inputs, required: bool, description: str):
    value = ctx.params.get("prompts")
    if isinstance(value, str):  # a comma-separated string from an SDK caller
        prop = inputs.str("prompts", required=required, label="Text prompts", description=description)
    else:
        prop = inputs.list("prompts", types.String(), required=required, label="Text prompts", description=description)
    _, problem = parse_prompts(value)
    if problem:
        flag(prop, problem)
    return prop


def _threshold_inputs(inputs, score: bool) -> dict:
    props = {}
    if score:
        props["threshold"] = inputs.float(
            "threshold",
            default=0.5,
            min=0.0,
            max=1.0,
            label="Score threshold",
            description="Keep hits scoring above this (0-1)",
        )
    props["mask_threshold"] = inputs.float(
        "mask_threshold",
        default=0.5,
        min=0.0,
        max=1.0,
        label="Mask threshold",
        description="A pixel is in a mask above this probability (0-1)",
    )
    return props


def _output_inputs(ctx, inputs, default_field: str, reserved) -> None:
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


def _run_inputs(ctx, inputs) -> dict:
    if not is_video_collection(ctx.dataset):  # a video's frames go through the model one at a time
        inputs.int(
            "batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size", description="Images per forward pass"
        )
    if not is_video_collection(ctx.dataset):  # sharded runs: image collections
        inputs.int(
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
    return {"model_path": model_input(ctx, inputs), "device": device_input(inputs)}


def _summary_outputs(ctx=None) -> types.Property:
    if ctx is not None and "run_id" in (ctx.results or {}):
        return _sharded_outputs("SAM3 sharded run queued")
    outputs = types.Object()
    outputs.str("label_field", label="Output field")
    outputs.int("samples_processed", label="Samples processed")
    outputs.int("detections", label="Detections written")
    outputs.int("samples_skipped", label="Samples skipped")
    table = types.TableView()
    table.add_column("filepath", label="Skipped sample")
    table.add_column("reason", label="Reason")
    outputs.list("skipped", types.Object(), label="Skipped samples", view=table)
    return types.Property(outputs, view=types.View(label="SAM3 segmentation"))


def _sharded_outputs(label: str, status: bool = False) -> types.Property:
    """A sharded run's output: what was queued, or (``status``) where it stands."""
    outputs = types.Object()
    outputs.str("label_field", label="Output field")
    outputs.int("shards", label="Shards")
    if status:
        for name in ("queued", "running", "done", "failed"):
            outputs.int(name, label=f"Shards {name}")
        outputs.list("requeued", types.Number(), label="Shards re-queued now (their worker died)")
        outputs.int("resumed", label="Failed or cancelled shards queued again")
        outputs.int("samples", label="Samples")
        outputs.int("samples_written", label="Samples written")
        outputs.bool("finalized", label="Run complete")
        table = types.TableView()
        for column in ("shard", "state", "attempt", "samples", "written", "worker", "error"):
            table.add_column(column, label=column.capitalize())
        outputs.list("per_shard", types.Object(), label="Shards", view=table)
    else:
        outputs.int("samples", label="Samples")
        outputs.list("operation_ids", types.String(), label="Delegated operations queued")
        outputs.str(
            "workers",
            label="Run them",
            default="Start workers where the GPUs are: python -m sam3_ops.sdk.workers (one per GPU)",
            view=types.MarkdownView(),
        )
    return types.Property(outputs, view=types.View(label=label))


# -- execution --------------------------------------------------------------------------------------


def _shards(ctx) -> int:
    """The shards to split a run into: FiftyOne Enterprise's ``ctx.num_distributed_tasks`` where it
    provides one, else the form's "Split into N tasks" (1: one run, here)."""
    if is_video_collection(ctx.dataset):  # videos run as one run (per video, resumable), never sharded
        return 1
    tasks = getattr(ctx, "num_distributed_tasks", None)  # None on open-source FiftyOne
    value = tasks if tasks else ctx.params.get("shards")
    return 1 if value is None else check_shards(value)


def _sharded_queued(ctx, queued: dict):
    """The answer of an operator that queued a sharded run: its description (delegated), or shown."""
    if ctx.delegated:
        return queued

    def show():
        yield ctx.ops.show_output(outputs=_sharded_outputs("SAM3 sharded run queued").to_json(), results=queued)

    return show()


def _execute(ctx, settings: Sam3Settings):
    params = ctx.params
    label_field = params["label_field"]
    run = {"batch_size": int(params.get("batch_size") or DEFAULT_BATCH_SIZE), "skip_failures": True}
    target = ctx.target_view()
    if is_video_collection(target):
        problem = video_settings_problem(settings)  # before any model is loaded
        if problem:
            raise problem
        if settings.prompt_field:  # a frame field, recorded without "frames."
            settings = settings.replace(prompt_field=frame_field_name(settings.prompt_field))
    shards = _shards(ctx)
    if shards > 1:  # FiftyOne's queue does the rest: one delegated operation per shard
        only_missing = bool(params.get("only_missing"))
        queued = segment(target, label_field, shards=shards, only_missing=only_missing, **run, **settings.to_dict())
        return _sharded_queued(ctx, queued.to_dict())
    if params.get("only_missing"):
        target = without_results(target, label_field)
    if ctx.delegated:
        return _execute_delegated(ctx, target, settings, label_field, run)
    return _execute_immediate(ctx, target, settings, label_field, run)


def _execute_delegated(ctx, target, settings: Sam3Settings, label_field: str, run: dict) -> dict:
    label = f"Segmenting {len(target)} {'videos' if is_video_collection(target) else 'samples'}"

    def report(progress_bar):
        ctx.set_progress(progress=progress_bar.progress, label=label)

    result = segment(
        target,
        label_field,
        token=hf_token(ctx),
        progress=fo.report_progress(report, dt=2.0),
        **run,
        **settings.to_dict(),
    )
    return result.to_dict()


def _execute_immediate(ctx, target, settings: Sam3Settings, label_field: str, run: dict):
    # one model for every chunk: its counts add up to the whole run's summary
    video = is_video_collection(target)
    if video:
        model = Sam3VideoModel(settings, engine=build_video_engine(settings, hf_token(ctx)))
    else:
        model = Sam3Model(settings, engine=build_engine(settings, hf_token(ctx)))
    record_run(target, label_field, settings)
    sample_ids = target.values("id")
    total = len(sample_ids)
    unit = "videos" if video else "samples"
    # whole batches per chunk, so chunking costs no extra forward passes; videos: progress per video
    chunk = 1 if video else run["batch_size"] * max(1, math.ceil(total / (PROGRESS_STEPS * run["batch_size"])))
    for start in range(0, total, chunk):
        yield ctx.ops.set_progress(progress=start / total, label=f"Segmented {start} of {total} {unit}")
        part = target.select(sample_ids[start : start + chunk])
        segment(part, label_field, model=model, record=False, num_workers=0, progress=False, **run)
    summary = model.summary()
    finish_run(target, label_field, settings, summary)
    yield ctx.ops.set_progress(progress=1.0, label=f"Segmented {total} {unit}")
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(outputs=_summary_outputs().to_json(), results={"label_field": label_field, **summary})
