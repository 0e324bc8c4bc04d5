"""App operators: SAM3 segmentation from the operator menu, with text prompts (a list, and a table
of prompts with their own label and threshold), box or point prompts from a label field, or none
(segment everything); a shard of a sharded run and the status of one.

The three segment operators are one :class:`SegmentOperator` parametrised by mode: its name,
label, description and form (:mod:`sam3_ops.app.segment_forms`). Each reads its form, builds the
settings and calls :func:`sam3_ops.segment`: the same public API SDK users call, no second
inference loop, and the same run record.

- Immediate runs use ``num_workers=0``, stream progress to the App (the target is segmented in a
  few chunks, one ``segment`` call each, on one model whose counts add up), end with
  ``reload_dataset`` and show the summary.
- Delegated runs make one ``segment`` call, report progress with ``ctx.set_progress`` and
  return the summary, which :meth:`~SegmentOperator.resolve_output` lays out on the run's page.

Bad input is flagged on the form, never raised (see :mod:`sam3_ops.app.segment_forms`).
"""

from __future__ import annotations

import math

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..sdk.fields import frame_field_name, is_video_collection
from ..sdk.images import IMAGES
from ..sdk.runs import Run, get_run, recorded_fields
from ..sdk.segment import segment, without_results
from ..sdk.settings import RunOptions, Sam3Settings
from ..sdk.shard_worker import run_shard
from ..sdk.shards import DEFAULT_STALE_AFTER, check_shards, reconcile, resume_shards, shard_status
from ..sdk.video import VIDEOS, video_settings_problem
from .forms import FormOperator, delegated_progress, flag, hf_token, operator_config, table_view
from .segment_forms import (
    VIDEO_AUTO_REFUSAL,
    box_prompt_inputs,
    everything_inputs,
    parse_prompts,
    prompt_rows,
    run_values,
    settings_from_form,
    text_prompt_inputs,
)

__all__ = [
    "OPERATORS",
    "PROGRESS_STEPS",
    "VIDEO_AUTO_REFUSAL",  # what Segment everything says on a video dataset (its form's)
    "SegmentEverything",
    "SegmentOperator",
    "SegmentShard",
    "SegmentWithBoxPrompts",
    "SegmentWithTextPrompts",
    "ShardedRunStatus",
    "parse_prompts",  # the form readers, public here before the forms had their module
    "prompt_rows",
]

#: an immediate run reports progress about this many times
PROGRESS_STEPS = 10


class SegmentOperator(FormOperator):
    """A segment operator: its form, its mode's settings, one :func:`sam3_ops.segment` run (or a
    sharded one), the summary. Subclasses set the class attributes (:class:`~sam3_ops.app.forms.FormOperator`'s and ``MODE``)."""

    #: the mode it runs; ``None``: the form's ``mode`` (default ``"boxes"``)
    MODE: str | None = None
    # distributed execution: FiftyOne Enterprise; shards = ctx.num_distributed_tasks
    OPTIONS = {"generator": True, "allow_distributed_execution": True}

    def mode(self, params: dict) -> str:
        """The mode a run with the form's ``params`` uses."""
        return self.MODE or params.get("mode") or "boxes"

    def resolve_run_name(self, ctx):
        return f"{self.LABEL} -> {ctx.params.get('label_field')}"

    def execute(self, ctx):
        return _execute(ctx, settings_from_form(ctx.params, mode=self.mode(ctx.params)))

    def resolve_output(self, ctx):
        return _summary_outputs(ctx)


class SegmentWithTextPrompts(SegmentOperator):
    """Segments every instance of each text prompt on the target samples."""

    NAME = "segment_with_text_prompts"
    LABEL = "Segment with text prompts"
    DESCRIPTION = "SAM3 instance masks for every instance of each text prompt"
    MODE = "text"

    form = staticmethod(text_prompt_inputs)


class SegmentWithBoxPrompts(SegmentOperator):
    """Segments from a label field's prompts: one mask per box (``Detections``) or per keypoint
    object (``Keypoints``, positive/negative points), or boxes as exemplars."""

    NAME = "segment_with_box_prompts"
    LABEL = "Segment with box or point prompts"
    DESCRIPTION = "SAM3 instance masks from the boxes of a Detections field or the points of a Keypoints field"

    form = staticmethod(box_prompt_inputs)

    def resolve_run_name(self, ctx):
        return f"Segment with {ctx.params.get('mode', 'boxes')} prompts -> {ctx.params.get('label_field')}"


class SegmentEverything(SegmentOperator):
    """Segments everything: a grid of point prompts over each image, masks filtered by predicted
    IoU and stability and de-duplicated, labelled ``auto_label``."""

    NAME = "segment_everything"
    LABEL = "Segment everything"
    DESCRIPTION = "SAM3 masks of every object, with no prompts (a grid of points; for datasets with no labels yet)"
    MODE = "auto"

    form = staticmethod(everything_inputs)


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


class ShardedRunStatus(FormOperator):
    """Where a sharded run stands: shards queued, running, done, failed, samples written; re-queues
    the shards whose worker died."""

    NAME = "sharded_run_status"
    LABEL = "Sharded run status"
    DESCRIPTION = "Progress of a SAM3 run split into shards; re-queues the shards of workers that died"

    def form(self, ctx, inputs):
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

    def execute(self, ctx):
        minutes = ctx.params.get("stale_after_minutes")
        stale_after = DEFAULT_STALE_AFTER if minutes is None else float(minutes) * 60
        requeue = bool(ctx.params.get("requeue", True))
        label_field = ctx.params["label_field"]
        resumed = resume_shards(ctx.dataset, label_field) if ctx.params.get("resume") else 0
        status = reconcile(ctx.dataset, label_field, stale_after=stale_after if requeue else None)
        if not requeue:  # completed if due; dead shards listed (stale) but left as they are
            status = shard_status(ctx.dataset, label_field, stale_after=stale_after)
        return {**status.to_dict(), "resumed": resumed}

    def resolve_output(self, ctx):
        return _sharded_outputs("SAM3 sharded run", status=True)


OPERATORS = [SegmentWithTextPrompts, SegmentWithBoxPrompts, SegmentEverything, SegmentShard, ShardedRunStatus]


# -- outputs ----------------------------------------------------------------------------------------


def _summary_outputs(ctx=None) -> types.Property:
    if ctx is not None and "run_id" in (ctx.results or {}):
        return _sharded_outputs("SAM3 sharded run queued")
    outputs = types.Object()
    outputs.str("label_field", label="Output field")
    outputs.int("samples_processed", label="Samples processed")
    outputs.int("detections", label="Detections written")
    outputs.int("samples_skipped", label="Samples skipped")
    table = table_view([("filepath", "Skipped sample"), ("reason", "Reason")])
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
        columns = ("shard", "state", "attempt", "samples", "written", "worker", "error")
        table = table_view([(column, column.capitalize()) for column in columns])
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
    # the form's batch size as given (empty: segment's default), checked by segment's own rule before
    # anything is written (the immediate route records the run before its first segment call)
    given = {name: value for name, value in run_values(params).items() if name != "shards"}  # shards: _shards
    run = {"batch_size": RunOptions(**given).batch_size, "skip_failures": True}
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
    unit = "videos" if is_video_collection(target) else "samples"
    progress = delegated_progress(ctx, f"Segmenting {len(target)} {unit}")
    result = segment(target, label_field, token=hf_token(ctx), progress=progress, **run, **settings.to_dict())
    return result.to_dict()


def _execute_immediate(ctx, target, settings: Sam3Settings, label_field: str, run: dict):
    # one model and one run for every chunk: the chunks' summaries add up to the run's
    video = is_video_collection(target)
    media = VIDEOS if video else IMAGES
    model = media.load(settings, RunOptions(token=hf_token(ctx)))
    recorded = Run(target, label_field, settings).start()
    sample_ids = target.values("id")
    total = len(sample_ids)
    unit = "videos" if video else "samples"
    # whole batches per chunk, so chunking costs no extra forward passes; videos: progress per video
    chunk = 1 if video else run["batch_size"] * max(1, math.ceil(total / (PROGRESS_STEPS * run["batch_size"])))
    workers = {} if video else {"num_workers": 0}
    for start in range(0, total, chunk):
        yield ctx.ops.set_progress(progress=start / total, label=f"Segmented {start} of {total} {unit}")
        part = target.select(sample_ids[start : start + chunk])
        recorded.add(segment(part, label_field, model=model, record=False, progress=False, **workers, **run))
    summary = recorded.finish().counts().to_dict()
    yield ctx.ops.set_progress(progress=1.0, label=f"Segmented {total} {unit}")
    yield ctx.trigger("reload_dataset")
    yield ctx.ops.show_output(outputs=_summary_outputs().to_json(), results={"label_field": label_field, **summary})
