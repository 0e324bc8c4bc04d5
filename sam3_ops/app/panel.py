"""The refinement panel: a thin App door into :mod:`sam3_ops.curation.refine` (boxes),
:mod:`sam3_ops.curation.clicks` (points, read by :mod:`sam3_ops.curation.click_input`) and :mod:`sam3_ops.curation.proposals` (accept, undo,
discard); typed text is read by :mod:`sam3_ops.app.panel_input`.

Each callback reads the App's context (current or selected samples, selected labels, the panel's
state), calls one function of those modules, and puts the outcome in the panel state;
:meth:`RefineWithNegativeBoxes.render` draws the state. Bad input never raises: the panel shows
the message and nothing is written.

Two ways to refine a SAM3 field, one proposal to accept, undo or discard:

- **points**: one detection (the selected detection of the field) refined with positive and
  negative clicks, drawn in the sample's annotation mode into the scratch field ``sam3_clicks``,
  selected (keypoints, polylines) or typed;
- **boxes**: the field's run re-run with negative (and positive) boxes.

Panel state keys: ``field`` (the SAM3 field); points: ``point_target`` (the object, remembered
from the selection), ``points_field`` (where clicks are drawn), ``positive_points`` /
``negative_points`` (typed pixel points); boxes: ``negative_labels`` / ``positive_labels`` (boxes
taken from selected labels), ``negative_field`` / ``positive_field``, ``negative_boxes`` /
``positive_boxes`` (typed pixel boxes); ``result`` (what the last refinement did) and ``message``.
"""

from __future__ import annotations

import functools

import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..curation.click_input import (
    CLICKS_FIELD,
    PointSpec,
    clear_clicks,
    click_fields,
    clicks_field_problem,
    setup_clicks_field,
)
from ..curation.clicks import (
    choose_object,
    clicks_of_sample,
    is_object_selection,
    next_target,
    pending_point_samples,
    plan_clicks,
    refine_with_points,
    resolve_click_selection,
)
from ..curation.proposals import (
    Kind,
    RefineError,
    accept_refinement,
    detections_fields,
    discard_refinement,
    ensure_refinement_fields,
    preview_field_name,
    refinement_history,
    sam3_fields,
    undo_refinement,
)
from ..curation.refine import BoxSpec, describe_field, refine_samples, resolve_selected_labels
from .forms import hf_token
from .panel_input import parse_pixel_boxes, parse_pixel_points, target_sample_ids

#: where the open sample's new labels show: FiftyOne 1.22's App keeps the labels of the sample open in
#: the modal until the page is reloaded (reload_dataset / reload_samples refresh the grid only)
_SEE_IT = "the grid shows it; the open sample after a page reload"

#: what the panel says on a video dataset
VIDEO_REFUSAL = (
    "The refinement panel works on image datasets only. On videos, re-run 'Segment with text prompts' or "
    "'Segment with box or point prompts' (sam3_ops.segment in Python) with the prompts you need."
)

_HELP = f"""Refine a SAM3 result by clicking points on one detection, or with negative boxes.

Pick the SAM3 field (one written by a SAM3 run of this plugin), then:

- **Points** (one detection): click the detection to refine in the sample. Draw points: press
  **Set up click drawing** once per dataset and reload the page; then in the sample's **Annotate**
  tab pick the polyline tool and click on the image: each click is a point, saved at once; the
  label (`positive` or `negative`) says which (a new polyline for the other kind). They go to the
  field `{CLICKS_FIELD}`. Selected keypoints, and pixel points typed here, are points too.
  **Refine with points** proposes the refined mask; each further click refines from it.
- **Boxes** (the whole field): select wrong detections and press **Use selected as negatives** (or
  pick a field of boxes, or type pixel boxes `x1, y1, x2, y2; ...`), then **Refine with boxes**.

The proposal appears in the field `<field>_refined` (the grid shows it at once, the open sample
after a page reload). **Accept** writes it into the field (and clears the clicks), **Undo**
restores what was there, **Discard** drops the proposal.
"""


def _showing_errors(callback):
    """A panel callback that shows a :class:`~sam3_ops.curation.proposals.RefineError` as the
    panel's message instead of raising it (bad input never raises; nothing is written)."""

    @functools.wraps(callback)
    def shown(self, ctx, *args):
        try:
            return callback(self, ctx, *args)
        except RefineError as error:
            return self._show(ctx, "error", str(error))

    return shown


class RefineWithNegativeBoxes(foo.Panel):
    """Refines SAM3 detections: one detection with clicked points, or the current (or selected)
    samples' field with negative boxes. (Named for its first job; the name is the panel's URI.)"""

    @property
    def config(self):
        return foo.PanelConfig(
            name="refine_with_negative_boxes",
            label="Refine SAM3 masks",
            help_markdown=_HELP,
            icon="auto_fix_high",
            surfaces="grid modal",
        )

    # -- context events -----------------------------------------------------------------------

    def on_load(self, ctx):
        fields = sam3_fields(ctx.dataset)
        if ctx.panel.state.get("field") not in fields:
            ctx.panel.state.set("field", fields[0] if fields else None)
        if ctx.panel.state.get("points_field") is None and CLICKS_FIELD in click_fields(ctx.dataset):
            ctx.panel.state.set("points_field", CLICKS_FIELD)
        self._remember_object(ctx)
        self._clear_outcome(ctx)

    def on_change_current_sample(self, ctx):
        self._clear_outcome(ctx)

    def on_change_selected(self, ctx):
        self._clear_outcome(ctx)

    def on_change_selected_labels(self, ctx):
        ctx.panel.state.set("message", None)
        self._remember_object(ctx)

    def on_change_field(self, ctx):
        ctx.panel.state.set({"field": ctx.params.get("value") or None, "point_target": None})
        self._clear_outcome(ctx)

    # -- buttons: points ----------------------------------------------------------------------

    @_showing_errors
    def setup_click_drawing(self, ctx):
        done = setup_clicks_field(ctx.dataset)
        if ctx.panel.state.get("field") in sam3_fields(ctx.dataset):
            # declared now, the proposals' field is known to the App after the same page reload
            ensure_refinement_fields(ctx.dataset, ctx.panel.state.get("field"))
        ctx.panel.state.set("points_field", CLICKS_FIELD)
        # the App reads fields and label schemas when the page loads (reload_dataset updates the grid,
        # not the open sample's annotation mode or overlays): once per dataset, the curator reloads
        self._show(ctx, "success", f"{done}. Reload the page first: the App reads new fields when it loads.")
        ctx.ops.reload_dataset()

    @_showing_errors
    def refine_points(self, ctx):
        if ctx.dataset.media_type == "video":
            return self._show(ctx, "error", VIDEO_REFUSAL)
        state = ctx.panel.state
        field_name = state.get("field")
        objects, point_labels = resolve_click_selection(ctx.dataset, ctx.selected_labels, field_name)
        target = choose_object(objects, state.get("point_target"), field_name, ctx.current_sample)
        spec = self._point_spec(state, point_labels)
        outcome = refine_with_points(ctx.dataset, field_name, target, spec, token=hf_token(ctx))
        state.set({"point_target": next_target(target, outcome), "result": outcome.summary()})
        self._show(
            ctx,
            "success",
            f"Refined `{outcome.label}`: the proposal is in '{outcome.preview_field}' ({_SEE_IT}). Accept to write "
            f"it into '{outcome.field}', or add points and refine again. {' '.join(outcome.notes)}".strip(),
        )
        ctx.ops.reload_dataset()  # the preview field (new on the first refinement) and its labels

    def clear_points(self, ctx):
        state = ctx.panel.state
        state.set({"positive_points": "", "negative_points": ""})
        points_field = state.get("points_field")
        if points_field != CLICKS_FIELD:  # another field's keypoints or polylines are the curator's labels
            kept = f"; the labels of '{points_field}' are kept" if points_field else ""
            return self._show(ctx, "info", f"Cleared the typed points{kept}")
        cleared = clear_clicks(ctx.dataset, self._targets(ctx), CLICKS_FIELD)
        self._show(
            ctx, "info", f"Cleared the typed points and the clicks in '{CLICKS_FIELD}' ({len(cleared)} sample(s))"
        )
        if cleared:
            ctx.ops.reload_dataset()

    # -- buttons: boxes -----------------------------------------------------------------------

    def use_selected_as_negatives(self, ctx):
        self._use_selected(ctx, "negative")

    def use_selected_as_positives(self, ctx):
        self._use_selected(ctx, "positive")

    def clear_boxes(self, ctx):
        for kind in ("negative", "positive"):
            ctx.panel.state.set({f"{kind}_labels": [], f"{kind}_field": None, f"{kind}_boxes": ""})
        self._clear_outcome(ctx)

    @_showing_errors
    def refine(self, ctx):
        if ctx.dataset.media_type == "video":
            return self._show(ctx, "error", VIDEO_REFUSAL)
        state = ctx.panel.state
        result = refine_samples(
            ctx.dataset,
            self._targets(ctx),
            state.get("field"),
            negatives=self._box_spec(state, "negative"),
            positives=self._box_spec(state, "positive"),
            token=hf_token(ctx),
        )
        state.set("result", result.summary())
        notes = " ".join(result.notes)
        self._show(
            ctx,
            "success",
            f"Refined {len(result.outcomes)} sample(s): the proposal is in '{result.preview_field}' ({_SEE_IT}). "
            f"Accept to write it into '{result.field}'. {notes}".strip(),
        )
        ctx.ops.reload_dataset()  # the preview field (new on the first refinement) and its labels

    @_showing_errors
    def accept(self, ctx):
        field_name = ctx.panel.state.get("field")
        with_points = pending_point_samples(ctx.dataset, self._targets(ctx), field_name)
        accepted = accept_refinement(ctx.dataset, self._targets(ctx), field_name)
        # the accepted labels were the selected ones' replacements: old selections are stale now;
        # the clicks were for the objects just accepted: the next object starts from none
        ctx.panel.state.set({"negative_labels": [], "positive_labels": [], "result": None})
        if ctx.panel.state.get("points_field") == CLICKS_FIELD:
            clear_clicks(ctx.dataset, [i for i in accepted if i in with_points], CLICKS_FIELD)
        self._show(ctx, "success", f"Accepted: '{field_name}' updated on {len(accepted)} sample(s). Undo restores it.")
        ctx.ops.reload_dataset()

    @_showing_errors
    def undo(self, ctx):
        field_name = ctx.panel.state.get("field")
        restored = undo_refinement(ctx.dataset, self._targets(ctx), field_name)
        ctx.panel.state.set("result", None)
        self._show(ctx, "success", f"Undone: '{field_name}' restored on {len(restored)} sample(s).")
        ctx.ops.reload_dataset()

    @_showing_errors
    def discard(self, ctx):
        field_name = ctx.panel.state.get("field")
        discarded = discard_refinement(ctx.dataset, self._targets(ctx), field_name)
        ctx.panel.state.set("result", None)
        self._show(ctx, "info", f"Discarded the proposal on {len(discarded)} sample(s); '{field_name}' is unchanged.")
        ctx.ops.reload_dataset()

    # -- layout -------------------------------------------------------------------------------

    def render(self, ctx):
        panel = types.Object()
        if ctx.dataset is None:
            panel.view("no_dataset", types.Warning(label="Open a dataset to refine its SAM3 results"))
            return types.Property(panel)
        if ctx.dataset.media_type == "video":
            panel.view("video_dataset", types.Warning(label=VIDEO_REFUSAL))
            return types.Property(panel)
        targets = self._targets(ctx)
        self._render_targets(ctx, panel, targets)
        description = self._render_field(ctx, panel, targets)
        boxes_mode = description is not None and description.get("mode") == "boxes"
        if description is not None:
            self._render_points(ctx, panel)
        # the proposal's actions and outcome between the two ways in: near the buttons of either
        actions = panel.h_stack("actions", gap=1)
        actions.btn("accept", label="Accept", variant="contained", on_click=self.accept, disabled=not targets)
        actions.btn("discard", label="Discard", on_click=self.discard, disabled=not targets)
        actions.btn("undo", label="Undo", on_click=self.undo, disabled=not targets)
        self._render_outcome(ctx, panel)
        if description is not None and len(targets) == 1:
            history = refinement_history(ctx.dataset[targets[0]], ctx.panel.state.get("field"))
            if history:
                panel.md(_history_markdown(history), name="history")
        panel.md("#### Boxes: re-run the field's prompts", name="boxes_title")
        for kind in ("negative",) if boxes_mode else ("negative", "positive"):
            self._render_boxes(ctx, panel, kind)
        box_actions = panel.h_stack("box_actions", gap=1)
        box_actions.btn(
            "refine", label="Refine with boxes", variant="contained", on_click=self.refine, disabled=not targets
        )
        box_actions.btn("clear_boxes", label="Clear boxes", on_click=self.clear_boxes)
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

    def _render_points(self, ctx, panel) -> None:
        """The click refinement: the object, the points it would use, where they come from."""
        state = ctx.panel.state
        panel.md("#### Points: refine one detection", name="points_title")
        self._render_object_and_points(ctx, panel)
        problem = clicks_field_problem(ctx.dataset)
        if problem:
            panel.md(f"{problem}: set it up to draw clicks in the sample's Annotate tab.", name="clicks_setup_md")
            panel.btn("setup_click_drawing", label="Set up click drawing", on_click=self.setup_click_drawing)
        choices = types.Dropdown(label="Clicks drawn in (a Polylines or Keypoints field)")
        for name in click_fields(ctx.dataset):
            choices.add_choice(name, label=name)
        panel.enum("points_field", choices.values(), view=choices, default=state.get("points_field"))
        for kind in ("positive", "negative"):
            panel.str(
                f"{kind}_points",
                label=f"{kind.capitalize()} points in pixels (optional)",
                description="x, y per point, points separated by ';'",
                default=state.get(f"{kind}_points"),
            )
        row = panel.h_stack("point_actions", gap=1)
        row.btn("refine_points", label="Refine with points", variant="contained", on_click=self.refine_points)
        row.btn("clear_points", label="Clear points", on_click=self.clear_points)

    def _render_object_and_points(self, ctx, panel) -> None:
        """Which detection a click refinement would refine, and with which points (or why none)."""
        state = ctx.panel.state
        field_name = state.get("field")
        try:
            objects, point_labels = resolve_click_selection(ctx.dataset, ctx.selected_labels, field_name, strict=False)
            spec = self._point_spec(state, point_labels)
            try:
                target = choose_object(objects, state.get("point_target"), field_name, ctx.current_sample)
            except RefineError as error:  # no object yet: the points may be drawn first
                panel.view("point_object", types.Notice(label=str(error)))
                if ctx.current_sample:
                    values, sources = clicks_of_sample(ctx.dataset, ctx.current_sample, spec)
                    panel.md(_points_markdown(values, sources), name="point_summary")
                return
            plan = plan_clicks(ctx.dataset, field_name, target, spec)
        except RefineError as error:
            panel.view("point_problem", types.Warning(label=str(error)))
            return
        detection = plan.detection
        panel.md(f"**Object**: `{detection.label}` (detection `{detection.id}`)", name="point_object")
        panel.md(_points_markdown(plan.point_labels, plan.sources), name="point_summary")

    def _render_boxes(self, ctx, panel, kind: str) -> None:
        """The inputs of one kind of box: selected labels, a field, typed pixel boxes."""
        state = ctx.panel.state
        n_selected = len(ctx.selected_labels or ())
        title = "Negative boxes (not this)" if kind == "negative" else "Positive examples (more like this)"
        panel.md(f"**{title}**\n\n{_labels_markdown(state.get(f'{kind}_labels') or [])}", name=f"{kind}_header")
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
    def _render_outcome(ctx, panel) -> None:
        """What the last refinement did, and the message."""
        state = ctx.panel.state
        if state.get("result"):
            lines = "\n".join(f"- {line}" for line in state.get("result").splitlines())
            panel.md(
                f"#### Last refinement (proposal in `{preview_field_name(state.get('field'))}`)\n{lines}",
                name="result_md",
            )
        message = state.get("message")
        if message:
            view = {"error": types.Error, "success": types.Success}.get(message.get("kind"), types.Notice)
            panel.view("message", view(label=message.get("text")))

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _targets(ctx) -> list[str]:
        return target_sample_ids(ctx.current_sample, ctx.selected)

    @staticmethod
    def _remember_object(ctx) -> None:
        """One selected detection of the SAM3 field becomes the object to refine with points, and
        stays so while the curator draws points in the annotation mode (which selects nothing)."""
        field_name = ctx.panel.state.get("field")
        objects = [s for s in ctx.selected_labels or () if is_object_selection(s, field_name)]
        if len(objects) == 1:
            chosen, _ = resolve_click_selection(ctx.dataset, objects, field_name, strict=False)
            if chosen:
                ctx.panel.state.set("point_target", chosen[0])

    @staticmethod
    def _point_spec(state, point_labels: list[dict]) -> PointSpec:
        return PointSpec(
            labels=point_labels,
            field=state.get("points_field") or None,
            positive_px=parse_pixel_points(state.get("positive_points"), "positive point"),
            negative_px=parse_pixel_points(state.get("negative_points"), "negative point"),
        )

    @staticmethod
    def _box_spec(state, kind: str) -> BoxSpec:
        return BoxSpec(
            labels=state.get(f"{kind}_labels") or [],
            field=state.get(f"{kind}_field") or None,
            pixel_boxes=parse_pixel_boxes(state.get(f"{kind}_boxes")),
        )

    @_showing_errors
    def _use_selected(self, ctx, kind: str):
        if not ctx.selected_labels:
            return self._show(ctx, "error", f"No labels selected: click the detections to use as {kind}s first")
        chosen = resolve_selected_labels(ctx.dataset, ctx.selected_labels)
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


def _points_markdown(values, sources: list[dict]) -> str:
    """What a click refinement would use: the points by kind, and where they come from."""
    if not len(values):
        return "**Points**: none yet"
    where = {"field": "`{field}`", "label": "selected", "typed": "typed"}
    counts: dict[str, int] = {}
    for source in sources:
        name = where[source["source"]].format(field=source.get("field"))
        counts[name] = counts.get(name, 0) + source["points"]
    origin = ", ".join(f"{name}: {count}" for name, count in counts.items())
    return f"**Points**: {int((values == 1).sum())} positive, {int((values == 0).sum())} negative ({origin})"


def _history_markdown(history: list[dict]) -> str:
    lines = []
    for record in history[-5:]:
        if record.get("kind") == Kind.POINTS:
            labels = record.get("point_labels") or []
            what = (
                f"`{record.get('label')}` with {labels.count(1)} positive and {labels.count(0)} negative point(s), "
                f"from its {record.get('started_from')}"
            )
        else:
            what = (
                f"{len(record.get('negative_boxes') or [])} negative box(es), "
                f"{len(record.get('positive_boxes') or [])} positive"
            )
        lines.append(f"- {record.get('refined_at') or '?'}: **{record.get('status')}**, {what}")
    return "#### Refinements of this sample\n" + "\n".join(lines)


PANELS = [RefineWithNegativeBoxes]
