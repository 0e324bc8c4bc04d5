"""App operators: text-prompt and box-prompt SAM3 segmentation from the operator menu.

Each operator reads its form, builds the settings and calls :func:`sam3_ops.segment`: the same
public API SDK users call, no second inference loop, and the same run record.

- Immediate runs use ``num_workers=0``, stream progress to the App (the target is segmented in a
  few chunks, one ``segment`` call each, on one model whose counts add up), end with
  ``reload_dataset`` and show the summary.
- Delegated runs make one ``segment`` call, report progress with ``ctx.set_progress`` and
  return the summary, which :meth:`resolve_output` lays out on the run's page.

Bad input is flagged on the form (``prop.invalid`` + ``prop.error_message``), never raised: the
settings' own validation (:meth:`~sam3_ops.sdk.settings.Sam3Settings.problems`) decides about
prompts, thresholds and the model path; here only what a form adds: no ``Detections`` field to
prompt from, an empty target, a model that cannot be reached, an output field name, an existing
output field without the overwrite choice, an existing field of another type (never overwritten).
"""

from __future__ import annotations

import math

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..core.checkpoint import DEFAULT_MODEL
from ..core.queries import FIELD_MODES
from ..sdk.fields import detections_fields, holds, output_field_problem
from ..sdk.model import Sam3Model
from ..sdk.runs import finish_run, record_run
from ..sdk.segment import DEFAULT_BATCH_SIZE, build_engine, segment, without_results
from ..sdk.settings import Sam3Settings
from .forms import device_input, flag, flag_settings, hf_token, model_input, operator_config, target_input

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
        return _summary_outputs()


class SegmentWithBoxPrompts(foo.Operator):
    """Segments from the boxes of a ``Detections`` field: one mask per box, or boxes as exemplars."""

    @property
    def config(self):
        return operator_config(
            "segment_with_box_prompts",
            "Segment with box prompts",
            "SAM3 instance masks from the boxes of a Detections field",
            generator=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _box_prompt_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="Segment with box prompts"))

    def resolve_run_name(self, ctx):
        return f"Segment with box prompts ({ctx.params.get('mode', 'boxes')}) -> {ctx.params.get('label_field')}"

    def execute(self, ctx):
        return _execute(ctx, _settings(ctx.params, mode=ctx.params.get("mode") or "boxes"))

    def resolve_output(self, ctx):
        return _summary_outputs()


OPERATORS = [SegmentWithTextPrompts, SegmentWithBoxPrompts]


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


def _settings_values(params: dict, mode: str) -> dict:
    """The settings a segment form's values ask for (unvalidated)."""
    prompts, _ = parse_prompts(params.get("prompts"))
    device = params.get("device") or "auto"
    values = {
        "model_path": params.get("model_path") or DEFAULT_MODEL,
        "mode": mode,
        "prompts": prompts if mode != "boxes" else (),
        "threshold": params.get("threshold", 0.5),
        "mask_threshold": params.get("mask_threshold", 0.5),
        "device": None if device == "auto" else device,
    }
    if mode in FIELD_MODES:
        values["prompt_field"] = params.get("prompt_field")
        values["negative_field"] = params.get("negative_field") or None
    return values


def _settings(params: dict, mode: str) -> Sam3Settings:
    return Sam3Settings(**_settings_values(params, mode))


# -- form builders ----------------------------------------------------------------------------------


def _text_prompt_inputs(ctx, inputs) -> None:
    target_input(ctx, inputs)
    props = {
        "prompts": _prompts_input(
            ctx,
            inputs,
            required=True,
            description="What to segment: every instance of each prompt gets a mask, e.g. cat, dog",
        )
    }
    props.update(_threshold_inputs(inputs, score=True))
    _output_inputs(ctx, inputs, default_field="sam3", reserved=())
    props.update(_run_inputs(ctx, inputs))
    _flag_form(ctx.params, "text", props)


def _box_prompt_inputs(ctx, inputs) -> None:
    target_input(ctx, inputs)
    fields = detections_fields(ctx.dataset)
    props = {}
    if fields:
        props["prompt_field"] = inputs.enum(
            "prompt_field",
            fields,
            required=True,
            default=fields[0],
            label="Prompt field",
            description="The Detections field whose boxes prompt SAM3",
            view=types.DropdownView(),
        )
    else:
        props["prompt_field"] = inputs.str("prompt_field", required=True, label="Prompt field")
        flag(
            props["prompt_field"],
            "This dataset has no Detections field to prompt from: add boxes first, or use 'Segment with text prompts'",
        )
    prompt_field = ctx.params.get("prompt_field") or (fields[0] if fields else None)
    if fields and prompt_field not in fields:
        flag(props["prompt_field"], f"{prompt_field!r} is not a Detections field of this dataset")

    mode_choices = types.RadioGroup()
    mode_choices.add_choice("boxes", label="Add masks to these boxes", description="One mask per box")
    mode_choices.add_choice(
        "exemplars", label="Find all similar", description="The boxes are examples; find every similar object"
    )
    inputs.enum("mode", mode_choices.values(), default="boxes", label="Mode", view=mode_choices)
    mode = ctx.params.get("mode") or "boxes"

    negative_choices = [name for name in fields if name != prompt_field]
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
    # "boxes" mode writes one mask per box whatever its score: no score threshold to offer
    props.update(_threshold_inputs(inputs, score=mode == "exemplars"))
    default_field = f"{prompt_field}_masks" if mode == "boxes" and prompt_field else "sam3_exemplars"
    reserved = tuple(name for name in (prompt_field, negative_field) if name)
    _output_inputs(ctx, inputs, default_field=default_field, reserved=reserved)
    props.update(_run_inputs(ctx, inputs))
    if fields and prompt_field in fields:
        _flag_form({**ctx.params, "prompt_field": prompt_field}, mode, props)


def _flag_form(params: dict, mode: str, props: dict) -> None:
    """Flags the settings' problems on the form, each on its own input."""
    values = _settings_values(params, mode)
    values["model_path"] = params.get("model_path") or DEFAULT_MODEL
    if props["model_path"].invalid:  # already explained (reachability included)
        values.pop("model_path")
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
    field = ctx.dataset.get_field(name) if isinstance(name, str) and name else None
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
    inputs.int(
        "batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size", description="Images per forward pass"
    )
    return {"model_path": model_input(ctx, inputs), "device": device_input(inputs)}


def _summary_outputs() -> types.Property:
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


# -- execution --------------------------------------------------------------------------------------


def _execute(ctx, settings: Sam3Settings):
    params = ctx.params
    label_field = params["label_field"]
    run = {"batch_size": int(params.get("batch_size") or DEFAULT_BATCH_SIZE), "skip_failures": True}
    target = ctx.target_view()
    if params.get("only_missing"):
        target = without_results(target, label_field)
    if ctx.delegated:
        return _execute_delegated(ctx, target, settings, label_field, run)
    return _execute_immediate(ctx, target, settings, label_field, run)


def _execute_delegated(ctx, target, settings: Sam3Settings, label_field: str, run: dict) -> dict:
    label = f"Segmenting {len(target)} samples"

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
    model = Sam3Model(settings, engine=build_engine(settings, hf_token(ctx)))
    record_run(target, label_field, settings)
    sample_ids = target.values("id")
    total = len(sample_ids)
    # whole batches per chunk, so chunking costs no extra forward passes
    chunk = run["batch_size"] * max(1, math.ceil(total / (PROGRESS_STEPS * run["batch_size"])))
    for start in range(0, total, chunk):
        yield ctx.ops.set_progress(progress=start / total, label=f"Segmented {start} of {total} samples")
        part = target.select(sample_ids[start : start + chunk])
        segment(part, label_field, model=model, record=False, num_workers=0, progress=False, **run)
    summary = model.summary()
    finish_run(target, label_field, settings, summary)
    yield ctx.ops.set_progress(progress=1.0, label=f"Segmented {total} samples")
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(outputs=_summary_outputs().to_json(), results={"label_field": label_field, **summary})
