"""The negative-box refinement panel: a thin App door into :mod:`sam3_ops.curation.refine`.

Each callback reads the App's context (current or selected samples, selected labels, the panel's
state), calls one function of :mod:`sam3_ops.curation.refine`, and puts the outcome in the panel state;
:meth:`RefineWithNegativeBoxes.render` draws the state. Bad input never raises: the panel shows
the message and nothing is written.

Panel state keys: ``field`` (the SAM3 field), ``negative_labels`` / ``positive_labels`` (boxes
taken from selected labels), ``negative_field`` / ``positive_field``, ``negative_boxes`` /
``positive_boxes`` (typed pixel boxes), ``result`` (before -> after counts) and ``message``.
"""

from __future__ import annotations

import logging

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..curation.refine import (
    BoxSpec,
    RefineError,
    accept_refinement,
    describe_field,
    detections_fields,
    discard_refinement,
    parse_pixel_boxes,
    preview_field_name,
    refine_samples,
    refinement_history,
    resolve_selected_labels,
    sam3_fields,
    target_sample_ids,
    undo_refinement,
)
from .forms import hf_token

logger = logging.getLogger(__name__)

_HELP = """Refine a SAM3 result with negative boxes.

1. Pick the SAM3 field (one written by a SAM3 run of this plugin).
2. Select the wrong detections in the sample and press **Use selected as negatives** (or pick a
   field of negative boxes, or type pixel boxes `x1, y1, x2, y2; ...`).
3. **Refine** re-runs the field's prompts with the negatives; the proposal appears in the field
   `<field>_refined`. **Accept** writes it into the field, **Undo** restores what was there.
"""


class RefineWithNegativeBoxes(foo.Panel):
    """Refines the current (or selected) samples' SAM3 detections with negative boxes."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="refine_with_negative_boxes",
            label="Refine with negative boxes",
            help_markdown=_HELP,
            icon="auto_fix_high",
            surfaces="grid modal",
        )

    # -- context events -----------------------------------------------------------------------

    def on_load(self, ctx):
        fields = sam3_fields(ctx.dataset)
        if ctx.panel.state.get("field") not in fields:
            ctx.panel.state.set("field", fields[0] if fields else None)
        self._clear_outcome(ctx)

    def on_change_current_sample(self, ctx):
        self._clear_outcome(ctx)

    def on_change_selected(self, ctx):
        self._clear_outcome(ctx)

    def on_change_selected_labels(self, ctx):
        # the selection is read in render (the count on the buttons); nothing to store
        ctx.panel.state.set("message", None)

    def on_change_field(self, ctx):
        ctx.panel.state.set("field", ctx.params.get("value") or None)
        self._clear_outcome(ctx)

    # -- buttons ------------------------------------------------------------------------------

    def use_selected_as_negatives(self, ctx):
        self._use_selected(ctx, "negative")

    def use_selected_as_positives(self, ctx):
        self._use_selected(ctx, "positive")

    def clear_boxes(self, ctx):
        for kind in ("negative", "positive"):
            ctx.panel.state.set({f"{kind}_labels": [], f"{kind}_field": None, f"{kind}_boxes": ""})
        self._clear_outcome(ctx)

    def refine(self, ctx):
        state = ctx.panel.state
        try:
            result = refine_samples(
                ctx.dataset,
                self._targets(ctx),
                state.get("field"),
                negatives=self._box_spec(state, "negative"),
                positives=self._box_spec(state, "positive"),
                token=hf_token(ctx),
            )
        except RefineError as error:
            return self._show(ctx, "error", str(error))
        state.set("result", result.summary())
        notes = " ".join(result.notes)
        self._show(
            ctx,
            "success",
            f"Refined {len(result.outcomes)} sample(s): the proposal is in '{result.preview_field}'. "
            f"Accept to write it into '{result.field}'. {notes}".strip(),
        )
        ctx.ops.reload_dataset()  # the preview field (new on the first refinement) and its labels

    def accept(self, ctx):
        field_name = ctx.panel.state.get("field")
        try:
            accepted = accept_refinement(ctx.dataset, self._targets(ctx), field_name)
        except RefineError as error:
            return self._show(ctx, "error", str(error))
        # the accepted labels were the selected ones' replacements: old selections are stale now
        ctx.panel.state.set({"negative_labels": [], "positive_labels": [], "result": None})
        self._show(ctx, "success", f"Accepted: '{field_name}' updated on {len(accepted)} sample(s). Undo restores it.")
        ctx.ops.reload_dataset()

    def undo(self, ctx):
        field_name = ctx.panel.state.get("field")
        try:
            restored = undo_refinement(ctx.dataset, self._targets(ctx), field_name)
        except RefineError as error:
            return self._show(ctx, "error", str(error))
        ctx.panel.state.set("result", None)
        self._show(ctx, "success", f"Undone: '{field_name}' restored on {len(restored)} sample(s).")
        ctx.ops.reload_dataset()

    def discard(self, ctx):
        field_name = ctx.panel.state.get("field")
        try:
            discarded = discard_refinement(ctx.dataset, self._targets(ctx), field_name)
        except RefineError as error:
            return self._show(ctx, "error", str(error))
        ctx.panel.state.set("result", None)
        self._show(ctx, "info", f"Discarded the proposal on {len(discarded)} sample(s); '{field_name}' is unchanged.")
        ctx.ops.reload_dataset()

    # -- layout -------------------------------------------------------------------------------

    def render(self, ctx):
        panel = types.Object()
        if ctx.dataset is None:
            panel.view("no_dataset", types.Warning(label="Open a dataset to refine its SAM3 results"))
            return types.Property(panel)
        targets = self._targets(ctx)
        self._render_targets(ctx, panel, targets)
        description = self._render_field(ctx, panel, targets)
        kinds = (
            ("negative",)
            if description is not None and description.get("mode") == "boxes"
            else ("negative", "positive")
        )
        for kind in kinds:
            self._render_boxes(ctx, panel, kind)
        actions = panel.h_stack("actions", gap=1)
        actions.btn("refine", label="Refine", variant="contained", on_click=self.refine, disabled=not targets)
        actions.btn("accept", label="Accept", variant="outlined", on_click=self.accept, disabled=not targets)
        actions.btn("discard", label="Discard", on_click=self.discard, disabled=not targets)
        actions.btn("undo", label="Undo", on_click=self.undo, disabled=not targets)
        actions.btn("clear_boxes", label="Clear boxes", on_click=self.clear_boxes)
        self._render_outcome(ctx, panel, targets, description)
        return types.Property(panel, view=types.GridView(orientation="vertical", align_x="left", gap=1))

    @staticmethod
    def _render_targets(ctx, panel, targets) -> None:
        if ctx.current_sample:
            panel.md(f"Refining the open sample `{ctx.current_sample}`", name="targets")
        elif targets:
            panel.md(f"Refining **{len(targets)}** selected sample(s)", name="targets")
        else:
            panel.view("no_sample", types.Warning(label="No sample: open a sample, or select samples in the grid"))

    def _render_field(self, ctx, panel, targets) -> dict | None:
        """The field chooser and its run's description (``None`` when there is none to show)."""
        state = ctx.panel.state
        fields = sam3_fields(ctx.dataset)
        if not fields:
            panel.view(
                "no_field",
                types.Warning(label="No SAM3 result field in this dataset: run 'Segment with text prompts' first"),
            )
        else:
            choices = types.Dropdown(label="SAM3 field to refine")
            for name in fields:
                choices.add_choice(name, label=name)
            panel.enum(
                "field", choices.values(), view=choices, default=state.get("field"), on_change=self.on_change_field
            )
        if not state.get("field"):
            return None
        try:
            description = describe_field(ctx.dataset, state.get("field"), targets)
        except RefineError as error:
            panel.view("field_error", types.Error(label=str(error)))
            return None
        panel.md(_describe_markdown(description), name="run")
        return description

    def _render_boxes(self, ctx, panel, kind: str) -> None:
        """The inputs of one kind of box: selected labels, a field, typed pixel boxes."""
        state = ctx.panel.state
        n_selected = len(ctx.selected_labels or ())
        title = "Negative boxes (not this)" if kind == "negative" else "Positive examples (more like this)"
        panel.md(f"#### {title}\n{_labels_markdown(state.get(f'{kind}_labels') or [])}", name=f"{kind}_header")
        panel.btn(
            f"use_selected_{kind}",
            label=f"Use selected labels as {kind}s ({n_selected} selected)",
            on_click=getattr(self, f"use_selected_as_{kind}s"),
            disabled=not n_selected,
        )
        field_choices = types.Dropdown(label=f"{kind.capitalize()} boxes from a Detections field (optional)")
        for name in detections_fields(ctx.dataset):
            field_choices.add_choice(name, label=name)
        panel.enum(f"{kind}_field", field_choices.values(), view=field_choices, default=state.get(f"{kind}_field"))
        panel.str(
            f"{kind}_boxes",
            label=f"{kind.capitalize()} boxes in pixels (optional)",
            description="x1, y1, x2, y2 per box, boxes separated by ';' (applies to every sample refined)",
            default=state.get(f"{kind}_boxes"),
        )

    @staticmethod
    def _render_outcome(ctx, panel, targets, description) -> None:
        """The last refinement's counts, the message, and the sample's refinement history."""
        state = ctx.panel.state
        if state.get("result"):
            lines = "\n".join(f"- {line}" for line in state.get("result").splitlines())
            panel.md(
                f"#### Before → after (proposal in `{preview_field_name(state.get('field'))}`)\n{lines}",
                name="result_md",
            )
        message = state.get("message")
        if message:
            view = {"error": types.Error, "success": types.Success}.get(message.get("kind"), types.Notice)
            panel.view("message", view(label=message.get("text")))
        if description is not None and len(targets) == 1:
            history = refinement_history(ctx.dataset[targets[0]], state.get("field"))
            if history:
                panel.md(_history_markdown(history), name="history")

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _targets(ctx) -> list[str]:
        return target_sample_ids(ctx.current_sample, ctx.selected)

    @staticmethod
    def _box_spec(state, kind: str) -> BoxSpec:
        return BoxSpec(
            labels=state.get(f"{kind}_labels") or [],
            field=state.get(f"{kind}_field") or None,
            pixel_boxes=parse_pixel_boxes(state.get(f"{kind}_boxes")),
        )

    def _use_selected(self, ctx, kind: str):
        if not ctx.selected_labels:
            return self._show(ctx, "error", f"No labels selected: click the detections to use as {kind}s first")
        try:
            chosen = resolve_selected_labels(ctx.dataset, ctx.selected_labels)
        except RefineError as error:
            return self._show(ctx, "error", str(error))
        other = "positive" if kind == "negative" else "negative"
        chosen_ids = {ref["label_id"] for ref in chosen}
        kept = [ref for ref in ctx.panel.state.get(f"{kind}_labels") or [] if ref["label_id"] not in chosen_ids]
        others = [ref for ref in ctx.panel.state.get(f"{other}_labels") or [] if ref["label_id"] not in chosen_ids]
        ctx.panel.state.set({f"{kind}_labels": kept + chosen, f"{other}_labels": others})
        self._show(ctx, "info", f"{len(chosen)} selected label(s) will be used as {kind} boxes; press Refine")

    @staticmethod
    def _show(ctx, kind: str, text: str):
        ctx.panel.state.set("message", {"kind": kind, "text": text})

    @staticmethod
    def _clear_outcome(ctx):
        ctx.panel.state.set({"message": None, "result": None})


def _describe_markdown(description: dict) -> str:
    prompts = ", ".join(f"`{p}`" for p in description.get("prompts") or []) or "(none: box prompts)"
    rows = "\n".join(f"| {label} | {count} |" for label, count in description["counts"].items()) or "| (none) | 0 |"
    pending = (
        f"\n\n{description['pending']} sample(s) have a proposal waiting to be accepted."
        if description["pending"]
        else ""
    )
    return (
        f"**Prompts**: {prompts} · mode `{description.get('mode')}` · threshold {description.get('threshold')} · "
        f"model `{description.get('model_path')}`\n\n| prompt | detections |\n|---|---|\n{rows}{pending}"
    )


def _labels_markdown(refs: list[dict]) -> str:
    if not refs:
        return "No labels chosen yet."
    lines = [f"- `{ref.get('label')}` from `{ref.get('field')}` (sample `{ref.get('sample_id')}`)" for ref in refs]
    return "\n".join(lines)


def _history_markdown(history: list[dict]) -> str:
    lines = []
    for record in history[-5:]:
        boxes = record.get("negative_boxes") or []
        lines.append(
            f"- {record.get('refined_at') or '?'}: **{record.get('status')}**, {len(boxes)} negative box(es), "
            f"{len(record.get('positive_boxes') or [])} positive"
        )
    return "#### Refinements of this sample\n" + "\n".join(lines)


PANELS = [RefineWithNegativeBoxes]
