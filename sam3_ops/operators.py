"""App operators: text-prompt and box-prompt SAM3 segmentation from the operator menu.

Each operator reads its form, builds the model with :func:`sam3_ops.load_model` (``reuse=True``,
so a second run does not load the weights again) and calls ``target_view.apply_model(...)``:
the same public API SDK users call, no second inference loop.

- Immediate runs use ``num_workers=0``, stream progress to the App (the target is applied in a
  few chunks, each one ``apply_model`` call), end with ``reload_dataset`` and show the summary.
- Delegated runs make one ``apply_model`` call, report progress with ``ctx.set_progress`` and
  return the summary, which :meth:`resolve_output` lays out on the run's page.

Bad input is flagged on the form (``prop.invalid`` + ``prop.error_message``), never raised: no
prompts, blank prompts, no ``Detections`` field to prompt from, an empty target, a model that
cannot be found or reached, an invalid output field name, an existing output field without the
overwrite choice, and an existing field of another type (never overwritten).
"""

from __future__ import annotations

import math
import os
import re

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from . import DEFAULT_MODEL

TOKEN_SECRET = "HF_TOKEN"
#: an immediate run reports progress about this many times
PROGRESS_STEPS = 10

_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# model paths whose hub repository answered (or whose files are cached): not asked again
_REACHABLE_MODELS: set[str] = set()


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
        prompts, _ = parse_prompts(ctx.params.get("prompts"))
        return _execute(ctx, mode="text", prompts=prompts, prompt_field=None, negative_field=None)

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
        mode = ctx.params.get("mode") or "boxes"
        prompts, _ = parse_prompts(ctx.params.get("prompts")) if mode == "exemplars" else ((), None)
        return _execute(
            ctx,
            mode=mode,
            prompts=prompts or None,
            prompt_field=ctx.params["prompt_field"],
            negative_field=ctx.params.get("negative_field") or None,
        )

    def resolve_output(self, ctx):
        return _summary_outputs()


OPERATORS = [SegmentWithTextPrompts, SegmentWithBoxPrompts]


# -- parsing and checks (pure) ------------------------------------------------------------------


def parse_prompts(value) -> tuple[tuple[str, ...], str | None]:
    """Reads the prompts input: a list of strings, each of which may be comma-separated, or one string.

    Returns:
        ``(prompts, problem)``: the prompts in order without duplicates, and ``None`` or a message
        saying what is wrong (a blank entry, an entry that is not text)
    """
    if value is None:
        return (), None
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list | tuple):
        return (), f"Prompts must be text, not {type(value).__name__}"
    prompts: list[str] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, str):
            return (), f"Prompt {number} is a {type(entry).__name__}; prompts must be text"
        # empty pieces between commas ("cat, dog,") are separators, not prompts
        pieces = [" ".join(piece.split()) for piece in entry.split(",")]
        pieces = [piece for piece in pieces if piece]
        if not pieces:
            where = "The prompt" if isinstance(value, str) else f"Prompt {number}"
            return (), f"{where} is blank: type a word or phrase such as 'cat', or remove it"
        prompts.extend(piece for piece in pieces if piece not in prompts)
    return tuple(prompts), None


def output_field_problem(dataset, name, overwrite: bool, reserved=()) -> str | None:
    """What stops ``name`` from receiving SAM3 ``Detections`` on ``dataset``, or ``None``.

    Args:
        dataset: the dataset
        name: the requested output field
        overwrite: whether the user chose to overwrite an existing ``Detections`` field
        reserved (()): fields the run reads (its prompt fields), which it must not write

    Returns:
        ``None`` if the field is new or an existing ``Detections`` field with ``overwrite`` set
    """
    if not isinstance(name, str) or not name.strip():
        return "Give the field to write the masks to, e.g. 'sam3'"
    if not _FIELD_NAME.match(name):
        return (
            f"{name!r} is not a valid field name: use letters, digits and underscores, "
            "starting with a letter (e.g. 'sam3_masks')"
        )
    if name in reserved:
        return f"{name!r} holds this run's prompts; write the masks to another field"
    field = dataset.get_field(name)
    if field is None:
        return None
    if not _is_detections_field(field):
        return (
            f"Field {name!r} already exists and holds {type(field).__name__} values, not Detections; "
            "it is never overwritten: choose another name"
        )
    if not overwrite:
        return (
            f"Field {name!r} already exists: tick 'Overwrite' to replace its values on the target samples, "
            "or choose another name"
        )
    return None


def model_problem(model_path, token: str | None = None) -> str | None:
    """Why ``model_path`` cannot be loaded, found without loading any weights; ``None`` if it can.

    A local directory must hold a SAM3 ``config.json``; a hub id must be in the local cache or
    answer on the hub (one metadata request, remembered once it succeeds).
    """
    from .engine import ModelLoadError, login_help, validate_model_path

    try:
        path = validate_model_path(model_path)
    except ModelLoadError as error:
        return str(error)
    if os.path.isdir(path) or path in _REACHABLE_MODELS:
        return None

    from huggingface_hub import auth_check, constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        _REACHABLE_MODELS.add(path)
        return None
    if constants.HF_HUB_OFFLINE:
        return f"{login_help(path)}\nCause: it is not in the local cache and the hub is offline (HF_HUB_OFFLINE)."
    try:
        auth_check(path, token=token)
    except Exception as error:  # gated, missing, no network: the user's remedy is the same
        return f"{login_help(path)}\nCause: {type(error).__name__}"
    _REACHABLE_MODELS.add(path)
    return None


def detections_fields(dataset) -> list[str]:
    """The names of the dataset's top-level ``Detections`` fields, sorted."""
    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Detections))


def _is_detections_field(field) -> bool:
    return isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, fo.Detections)


def hf_token(ctx) -> str | None:
    """The plugin secret ``HF_TOKEN``, or ``None`` (then ``from_pretrained`` reads the environment's).

    Shared by every operator and the panel; the value is passed on, never logged or shown.
    """
    try:
        token = ctx.secrets[TOKEN_SECRET]
    except Exception:  # no secrets store (a context built outside the App)
        return None
    # a secret resolved on access comes back as a secret object, one resolved up front as text
    token = getattr(token, "value", token)
    return token or None


def operator_config(name: str, label: str, description: str, generator: bool = False) -> foo.OperatorConfig:
    """The configuration every sam3_ops operator shares: dynamic forms, immediate or delegated runs."""
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        dynamic=True,
        execute_as_generator=generator,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


def _available_devices() -> list[str]:
    import torch

    devices = ["auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def _invalid(prop, message: str) -> None:
    prop.invalid = True
    prop.error_message = message


# -- form builders ------------------------------------------------------------------------------


def _text_prompt_inputs(ctx, inputs) -> None:
    _target_input(ctx, inputs)
    _prompts_input(
        ctx,
        inputs,
        required=True,
        description="What to segment: every instance of each prompt gets a mask, e.g. cat, dog",
    )
    _threshold_inputs(inputs, score=True)
    _output_inputs(ctx, inputs, default_field="sam3", reserved=())
    _run_inputs(ctx, inputs)


def _box_prompt_inputs(ctx, inputs) -> None:
    _target_input(ctx, inputs)
    fields = detections_fields(ctx.dataset)
    if fields:
        prompt_prop = inputs.enum(
            "prompt_field",
            fields,
            required=True,
            default=fields[0],
            label="Prompt field",
            description="The Detections field whose boxes prompt SAM3",
            view=types.DropdownView(),
        )
    else:
        prompt_prop = inputs.str("prompt_field", required=True, label="Prompt field")
        _invalid(
            prompt_prop,
            "This dataset has no Detections field to prompt from: add boxes first, or use 'Segment with text prompts'",
        )
    prompt_field = ctx.params.get("prompt_field") or (fields[0] if fields else None)
    if fields and prompt_field not in fields:
        _invalid(prompt_prop, f"{prompt_field!r} is not a Detections field of this dataset")

    mode_choices = types.RadioGroup()
    mode_choices.add_choice("boxes", label="Add masks to these boxes", description="One mask per box")
    mode_choices.add_choice(
        "exemplars", label="Find all similar", description="The boxes are examples; find every similar object"
    )
    inputs.enum("mode", mode_choices.values(), default="boxes", label="Mode", view=mode_choices)
    mode = ctx.params.get("mode") or "boxes"

    negative_choices = [name for name in fields if name != prompt_field]
    if negative_choices:
        inputs.enum(
            "negative_field",
            negative_choices,
            required=False,
            label="Negative box field (optional)",
            description="A Detections field whose boxes mark what must not be segmented",
            view=types.DropdownView(),
        )
    negative_field = ctx.params.get("negative_field") or None

    if mode == "exemplars":
        _prompts_input(ctx, inputs, required=False, description="Optional text to go with the example boxes")
    # "boxes" mode writes one mask per box whatever its score: no score threshold to offer
    _threshold_inputs(inputs, score=mode == "exemplars")
    default_field = f"{prompt_field}_masks" if mode == "boxes" and prompt_field else "sam3_exemplars"
    reserved = tuple(name for name in (prompt_field, negative_field) if name)
    _output_inputs(ctx, inputs, default_field=default_field, reserved=reserved)
    _run_inputs(ctx, inputs)


def _target_input(ctx, inputs) -> None:
    prop = inputs.view_target(ctx, action_description="Segment")
    if len(ctx.target_view()) == 0:
        message = "The target has no samples: choose the dataset, a view with samples, or select samples"
        _invalid(prop, message)
        inputs.view("empty_target", types.Error(label="Nothing to segment", description=message))


def _prompts_input(ctx, inputs, required: bool, description: str) -> None:
    value = ctx.params.get("prompts")
    if isinstance(value, str):  # a comma-separated string from an SDK caller
        prop = inputs.str("prompts", required=required, label="Text prompts", description=description)
    else:
        prop = inputs.list("prompts", types.String(), required=required, label="Text prompts", description=description)
    prompts, problem = parse_prompts(value)
    if problem:
        _invalid(prop, problem)
    elif required and not prompts:
        _invalid(prop, "Add at least one prompt, e.g. 'cat'")


def _threshold_inputs(inputs, score: bool) -> None:
    if score:
        inputs.float(
            "threshold",
            default=0.5,
            min=0.0,
            max=1.0,
            label="Score threshold",
            description="Keep hits scoring above this (0-1)",
        )
    inputs.float(
        "mask_threshold",
        default=0.5,
        min=0.0,
        max=1.0,
        label="Mask threshold",
        description="A pixel is in a mask above this probability (0-1)",
    )


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
    field = ctx.dataset.get_field(name) if isinstance(name, str) and _FIELD_NAME.match(name) else None
    if field is not None and _is_detections_field(field) and name not in reserved:
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
        _invalid(prop, problem)


def _run_inputs(ctx, inputs) -> None:
    inputs.int("batch_size", default=4, min=1, label="Batch size", description="Images per forward pass")
    model_prop = inputs.str(
        "model_path",
        default=DEFAULT_MODEL,
        required=True,
        label="Model",
        description="A hub id or a local checkpoint directory (save_pretrained layout)",
    )
    problem = model_problem(ctx.params.get("model_path", DEFAULT_MODEL), hf_token(ctx))
    if problem:
        _invalid(model_prop, problem)
    inputs.enum(
        "device",
        _available_devices(),
        default="auto",
        label="Device",
        description="'auto' picks cuda, then mps, then cpu",
        view=types.DropdownView(),
    )


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


# -- execution ----------------------------------------------------------------------------------


def _execute(ctx, mode: str, prompts, prompt_field: str | None, negative_field: str | None):
    import sam3_ops

    params = ctx.params
    device = params.get("device") or "auto"
    model = sam3_ops.load_model(
        params.get("model_path") or DEFAULT_MODEL,
        mode=mode,
        prompts=prompts,
        threshold=params.get("threshold", 0.5),
        mask_threshold=params.get("mask_threshold", 0.5),
        device=None if device == "auto" else device,
        token=hf_token(ctx),
        reuse=True,
    )
    fields = {
        key: value for key, value in (("prompt_field", prompt_field), ("negative_field", negative_field)) if value
    }
    run = dict(
        label_field=params["label_field"],
        batch_size=int(params.get("batch_size") or 4),
        skip_failures=True,
        **fields,
    )
    target = ctx.target_view()
    if params.get("only_missing"):
        target = sam3_ops.without_results(target, run["label_field"])
    if ctx.delegated:
        return _execute_delegated(ctx, target, model, run)
    return _execute_immediate(ctx, target, model, run)


def _execute_delegated(ctx, target, model, run) -> dict:
    label = f"Segmenting {len(target)} samples"

    def report(progress_bar):
        ctx.set_progress(progress=progress_bar.progress, label=label)

    target.apply_model(model, progress=fo.report_progress(report, dt=2.0), **run)
    return _finish(target, model, run)


def _execute_immediate(ctx, target, model, run):
    sample_ids = target.values("id")
    total = len(sample_ids)
    # whole batches per chunk, so chunking costs no extra forward passes
    chunk = run["batch_size"] * max(1, math.ceil(total / (PROGRESS_STEPS * run["batch_size"])))
    for start in range(0, total, chunk):
        yield ctx.ops.set_progress(progress=start / total, label=f"Segmented {start} of {total} samples")
        target.select(sample_ids[start : start + chunk]).apply_model(model, num_workers=0, progress=False, **run)
    summary = _finish(target, model, run)
    yield ctx.ops.set_progress(progress=1.0, label=f"Segmented {total} samples")
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(outputs=_summary_outputs().to_json(), results=summary)


def _finish(target, model, run) -> dict:
    from .runs import record_run

    record_run(target, run["label_field"], model, run.get("prompt_field"), run.get("negative_field"))
    return {"label_field": run["label_field"], **model.summary()}
