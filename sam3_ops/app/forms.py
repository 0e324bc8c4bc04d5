"""What every operator and the panel share: the operator configuration, the token secret, flagging a
form input, the common inputs (target, model, device, label fields) and running on the App's terms.

Forms never validate settings or run options themselves: they hand their values to
:meth:`~sam3_ops.sdk.settings.Sam3Settings.problems` (:func:`flag_settings`) or
:meth:`~sam3_ops.sdk.settings.RunOptions.problems` (:func:`flag_run_options`) and flag each
problem on its input, with the message the SDK raises for it.
"""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from ..core.checkpoint import DEFAULT_MODEL, available_devices, checkpoint_problem
from ..sdk.fields import label_fields
from ..sdk.settings import RunOptions, Sam3Settings

TOKEN_SECRET = "HF_TOKEN"
# model paths whose hub repository answered (or whose files are cached): not asked again
_REACHABLE_MODELS: set[str] = set()


def operator_config(name: str, label: str, description: str, generator: bool = False, **options) -> foo.OperatorConfig:
    """The configuration every sam3_ops operator shares: dynamic forms, immediate or delegated runs
    (``options``: more :class:`~fiftyone.operators.OperatorConfig` keywords; they may turn either off)."""
    options = {"allow_immediate_execution": True, "allow_delegated_execution": True, **options}
    return foo.OperatorConfig(
        name=name, label=label, description=description, dynamic=True, execute_as_generator=generator, **options
    )


class FormOperator(foo.Operator):
    """An operator of this plugin: its configuration (:func:`operator_config`) from class attributes
    and its form (:meth:`form`), titled with its label. Subclasses set them and write ``execute``."""

    #: the operator's name, its label (the title of its form) and description
    NAME: str = ""
    LABEL: str = ""
    DESCRIPTION: str = ""
    #: more :func:`operator_config` keywords
    OPTIONS: dict = {}

    @property
    def config(self):
        return operator_config(self.NAME, self.LABEL, self.DESCRIPTION, **self.OPTIONS)

    def form(self, ctx, inputs) -> None:
        """Adds the form's inputs to ``inputs``."""

    def resolve_input(self, ctx):
        inputs = types.Object()
        self.form(ctx, inputs)
        return types.Property(inputs, view=types.View(label=self.LABEL))


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


def flag(prop, message: str) -> None:
    """Marks a form input as invalid with ``message`` (the App shows it under the input)."""
    prop.invalid = True
    prop.error_message = message


def flag_settings(values: dict, props: dict) -> dict[str, str]:
    """Flags each settings problem of ``values`` on its input in ``props`` (:func:`flag_problems`)."""
    return flag_problems(Sam3Settings.problems(values), props)


def flag_run_options(values: dict, props: dict) -> dict[str, str]:
    """Flags each problem of the run options ``values`` (``batch_size``, ``shards``, ...; the rule
    and message :func:`sam3_ops.segment` raises) on its input in ``props`` (:func:`flag_problems`)."""
    return flag_problems(RunOptions.problems(values), props)


def flag_problems(problems: dict[str, str], props: dict) -> dict[str, str]:
    """Flags each problem (input name -> message) on its input in ``props`` (input name -> prop),
    unless the form flagged that input already; returns the problems."""
    for name, message in problems.items():
        if name in props and not getattr(props[name], "invalid", False):
            flag(props[name], message)
    return problems


def target_input(ctx, inputs, action: str = "Segment") -> None:
    """The target chooser (dataset, view or selected samples); an empty target is flagged."""
    prop = inputs.view_target(ctx, action_description=action)
    if len(ctx.target_view()) == 0:
        message = "The target has no samples: choose the dataset, a view with samples, or select samples"
        flag(prop, message)
        inputs.view("empty_target", types.Error(label="Nothing to segment", description=message))


def field_choice(
    inputs, name: str, choices: list[str], label: str, description: str = "", default=None, required=True, prefix=""
):
    """A dropdown of field names, each shown after ``prefix``; returns its property."""
    dropdown = types.DropdownView()
    for choice in choices:
        dropdown.add_choice(choice, label=prefix + choice)
    return inputs.enum(
        name, choices, required=required, default=default, label=label, description=description, view=dropdown
    )


def label_field_choice(ctx, inputs, name: str, label: str, label_types, description: str = "", default=None):
    """A dropdown of the dataset's fields holding one of ``label_types``; returns ``(prop, value)``:
    the chosen field, or ``None`` (flagged) when there is none or it is not one of them."""
    fields = sorted({f for label_type in label_types for f in label_fields(ctx.dataset, label_type)})
    kinds = " or ".join(t.__name__ for t in label_types)
    if not fields:
        prop = inputs.str(name, required=True, label=label)
        flag(prop, f"This dataset has no {kinds} field")
        return prop, None
    default = default if default in fields else fields[0]
    prop = field_choice(inputs, name, fields, label, description, default=default)
    value = ctx.params.get(name) or default
    if value not in fields:
        flag(prop, f"{value!r} is not a {kinds} field of this dataset")
        return prop, None
    return prop, value


def model_input(ctx, inputs):
    """The checkpoint input, flagged when it cannot be loaded (checked without loading weights)."""
    prop = inputs.str(
        "model_path",
        default=DEFAULT_MODEL,
        required=True,
        label="Model",
        description="A hub id or a local checkpoint directory (save_pretrained layout)",
    )
    problem = model_problem(ctx.params.get("model_path", DEFAULT_MODEL), hf_token(ctx))
    if problem:
        flag(prop, problem)
    return prop


def device_input(inputs):
    """The device dropdown: the devices this machine has."""
    devices = available_devices()
    return field_choice(inputs, "device", devices, "Device", "'auto' picks cuda, then mps, then cpu", default="auto")


def model_problem(model_path, token: str | None = None) -> str | None:
    """Why ``model_path`` cannot be loaded, found without loading any weights; ``None`` if it can.

    The checkpoint layer's one classification (:func:`~sam3_ops.core.checkpoint.checkpoint_problem`:
    local files checked; a hub id cached, or one bounded access check saying unreachable, gated,
    licence not accepted, token refused or not found). A hub id that answered once is remembered, so
    a form re-resolving on every change asks the hub once.
    """
    if isinstance(model_path, str) and model_path in _REACHABLE_MODELS:
        return None
    problem = checkpoint_problem(model_path, token)
    if problem is None and isinstance(model_path, str) and not os.path.isdir(model_path):
        _REACHABLE_MODELS.add(model_path)
    return problem


def fraction_input(inputs, name: str, **options):
    """A float input between 0 and 1 (``options``: its label, default, ...); returns its property."""
    return inputs.float(name, min=0.0, max=1.0, **options)


def slider():
    """A 0-1 slider view for thresholds."""
    return types.SliderView(componentsProps={"slider": {"min": 0, "max": 1, "step": 0.01}})


def num_workers(ctx) -> int | None:
    """Loader workers for a run: none in the App's server process (it must not fork), FiftyOne's
    default in a delegated worker."""
    return None if ctx.delegated else 0


def delegated_progress(ctx, label: str):
    """The ``progress`` of an SDK call in a delegated run: its progress bar reported as ``label``."""
    return fo.report_progress(lambda bar: ctx.set_progress(progress=bar.progress, label=label), dt=2.0)


def report(ctx, progress: float, label: str) -> None:
    """Progress of a delegated run's stages (immediate runs yield their progress instead)."""
    if ctx.delegated:
        ctx.set_progress(progress=progress, label=label)


def reload_after(ctx) -> None:
    """Reloads the App's dataset after an immediate run (a delegated run has no App to reload)."""
    if not ctx.delegated and ctx.executor is not None:
        ctx.trigger("reload_dataset")


def table_view(columns) -> types.TableView:
    """A table of ``columns``: (key, label) pairs."""
    table = types.TableView()
    for key, label in columns:
        table.add_column(key, label=label)
    return table
