"""This repository as a FiftyOne model-zoo source: what the four functions of the repository's root
``__init__.py`` hand off to (``download_model``, ``load_model``, ``resolve_input``,
``parse_parameters``, FiftyOne's remote-zoo interface; the models are listed in ``manifest.json``).

- :func:`load_model` is :func:`sam3_ops.load_model` on the zoo's download: the same model, every
  setting of :class:`~sam3_ops.sdk.settings.Sam3Settings` as a keyword, validated there.
- :func:`download_model` fetches ``facebook/sam3`` with
  :func:`~sam3_ops.core.checkpoint.download_checkpoint` (token: ``HF_TOKEN`` or the stored
  ``hf auth login``), so its errors are the demo's and the loaders'.
- :func:`resolve_input` / :func:`parse_parameters`: the settings form of FiftyOne's "Apply zoo model"
  operator, built from the segment operators' own inputs and checked by their own rule.

Where the weights go: FiftyOne counts a model as downloaded when the file at its ``model_path``
exists, or, for a path named like an archive (``x.tar``), when the directory without the extension
(``x``) does. A checkpoint is a directory, so the manifest names the image model ``sam3.tar`` and
the video model ``sam3.zip``: both are the one directory ``sam3`` (``facebook/sam3`` holds every
head), downloaded once; ``delete_zoo_model`` of either removes it (nothing is extracted).
"""

from __future__ import annotations

import os
import shutil

import fiftyone.operators.types as types

from ..core.checkpoint import DEFAULT_MODEL, download_checkpoint
from ..core.queries import FIELD_MODES, TRACKER_MODES
from ..sdk.fields import frame_field_name, is_video_collection
from ..sdk.segment import load_model as load_sam3
from ..sdk.settings import MEDIA_MODES, applies
from .forms import device_input, flag
from .segment_forms import (
    DEFAULTS,
    auto_inputs,
    dedup_inputs,
    flag_form,
    multimask_input,
    prompt_field_input,
    prompt_table_input,
    prompts_input,
    settings_values,
    threshold_inputs,
    video_inputs,
)

#: the zoo's model names (manifest.json's ``base_name``) -> the media they segment
MODELS = {"sam3-ops/sam3-image-torch": "image", "sam3-ops/sam3-video-torch": "video"}
#: the key under which FiftyOne's "Apply zoo model" operator nests a remote model's form
FORM_KEY = "remote_params"
_MODE_LABELS = {
    "text": ("Text prompts", "Every instance of each prompt"),
    "boxes": ("Boxes", "One mask per box of a Detections field"),
    "exemplars": ("Find all similar", "The boxes of a Detections field are examples; find every similar object"),
    "points": ("Points", "One mask per keypoint object of a Keypoints field (sam_labels: 1 positive, 0 negative)"),
    "auto": ("Segment everything", "A grid of point prompts, no prompts needed"),
}


def media_type(model_name: str) -> str:
    """``"image"`` or ``"video"``: what the zoo model ``model_name`` segments.

    Raises:
        ValueError: ``model_name`` is not one of this source's models (listing them)
    """
    base_name = model_name.rsplit("@", 1)[0]  # "name@version" is the zoo's syntax for a version
    if base_name not in MODELS:
        raise ValueError(f"{model_name!r} is not a model of this source; its models are {', '.join(MODELS)}")
    return MODELS[base_name]


def checkpoint_dir(model_path: str) -> str:
    """The checkpoint directory of a zoo ``model_path`` (``.../sam3.tar`` -> ``.../sam3``)."""
    root, ext = os.path.splitext(os.fspath(model_path))
    return root if ext in (".tar", ".zip") else os.fspath(model_path)


def download_model(model_name: str, model_path: str) -> None:
    """Downloads ``facebook/sam3`` (config, safetensors, processor and tokenizer files) into the
    zoo's model directory, :func:`checkpoint_dir` of ``model_path``. The token is ``HF_TOKEN`` or the
    stored ``hf auth login`` (the model is gated: accept its licence on the hub first).

    The files go into a hidden ``.<name>.partial`` directory first (a retry resumes it) and are
    moved into place only once complete, so an interrupted download never counts as downloaded.

    Raises:
        ValueError: ``model_name`` is not one of this source's models
        ModelLoadError: hub unreachable, no token or licence, token refused, not found, not a SAM3
            checkpoint, files missing (the message says which)
    """
    media_type(model_name)
    target = checkpoint_dir(model_path)
    partial = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.partial")
    download_checkpoint(DEFAULT_MODEL, local_dir=partial, token=None)
    if os.path.isdir(target):  # a forced re-download replaces the old copy
        shutil.rmtree(target)
    os.replace(partial, target)


def load_model(model_name: str, model_path: str, **kwargs):
    """:func:`sam3_ops.load_model` on the zoo's download of ``facebook/sam3``.

    Args:
        model_name: one of :data:`MODELS` (its media decides ``media_type``)
        model_path: the zoo's path of the model (see :func:`checkpoint_dir`)
        **kwargs: ``mode``, ``prompts`` and every other setting of
            :class:`~sam3_ops.sdk.settings.Sam3Settings` but ``model_path`` (the zoo's download is
            the checkpoint), and ``token``, ``reuse``, ``cache_features``

    Returns:
        a :class:`~sam3_ops.sdk.model.Sam3Model` or :class:`~sam3_ops.sdk.video.Sam3VideoModel`

    Raises:
        ValueError: a bad setting (naming it), or a ``media_type`` other than the model's
        ModelLoadError: the checkpoint is incomplete
    """
    media = media_type(model_name)
    asked = kwargs.pop("media_type", media)
    if asked != media:
        raise ValueError(f"{model_name!r} segments {media}s; media_type={asked!r} is the other zoo model's")
    return load_sam3(checkpoint_dir(model_path), media_type=media, **kwargs)


# -- the App's "Apply zoo model" form ---------------------------------------------------------------


class _FormContext:
    """``ctx`` as the segment operators' input builders read it, with ``params`` the values of this
    form: FiftyOne's zoo operator nests them under :data:`FORM_KEY`."""

    def __init__(self, ctx, params: dict):
        self._ctx = ctx
        self.params = params

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def form_params(ctx) -> dict:
    """This form's values in ``ctx.params`` (nested under :data:`FORM_KEY` by FiftyOne's operator)."""
    values = ctx.params.get(FORM_KEY)
    return dict(values) if isinstance(values, dict) else {}


def resolve_input(model_name: str, ctx) -> types.Property:
    """The settings form of ``model_name`` in FiftyOne's "Apply zoo model" operator: mode, prompts
    (a list and a table), the prompt field of the field modes, thresholds, de-duplication and limits
    (images), the automatic mode's grid, propagation and object cap (videos), device. The inputs are
    the segment operators', each bad value flagged on its input by the same rule
    (:meth:`Sam3Settings.problems <sam3_ops.sdk.settings.Sam3Settings.problems>`)."""
    media = media_type(model_name)
    params = form_params(ctx)
    form_ctx = _FormContext(ctx, params)
    inputs = types.Object()
    video = media == "video"
    if ctx.dataset is not None and is_video_collection(ctx.dataset) != video:
        message = f"{model_name} segments {media}s; this dataset holds {'videos' if not video else 'images'}"
        flag(inputs.str("media_mismatch", required=True, label="Model"), message)
        inputs.view("media_mismatch_error", types.Error(label="Wrong model for this dataset", description=message))
        return types.Property(inputs, view=types.View(label="SAM3 settings"))

    mode_prop, mode = _mode_input(inputs, params, media)
    props = {"mode": mode_prop}
    if mode in ("text", "exemplars"):
        props["prompts"] = prompts_input(
            form_ctx,
            inputs,
            required=mode == "text" and not params.get("prompt_table"),
            description="What to segment: every instance of each prompt gets a mask, e.g. cat, dog",
        )
        if mode == "text":
            props["prompt_table"] = prompt_table_input(inputs)
    prompt_field = None
    if mode in FIELD_MODES:
        props["prompt_field"], prompt_field = prompt_field_input(form_ctx, inputs, mode, video, prefix="")
    if applies("multimask", mode, media):
        props["multimask"] = multimask_input(inputs)
    if mode == "auto":
        props.update(auto_inputs(inputs))
    props.update(threshold_inputs(inputs, score=mode not in TRACKER_MODES, video=video))
    if video:
        props.update(video_inputs(inputs, mode))
    elif applies("nms_iou", mode, media):
        props.update(dedup_inputs(inputs, mode))
    props["device"] = device_input(inputs)
    if mode not in FIELD_MODES or prompt_field:  # no model input: the checkpoint is the zoo's download
        flag_form({**params, "mode": mode, "prompt_field": prompt_field}, mode, props, inputs, media)
    return types.Property(inputs, view=types.View(label="SAM3 settings"))


def parse_parameters(model_name: str, ctx, params: dict) -> None:
    """Turns the form's values (``params``, changed in place) into :func:`load_model`'s keywords,
    read as the segment operators read theirs: prompts split and joined with the table's rows,
    ``device="auto"`` as ``None``, only the settings the chosen mode has."""
    media = media_type(model_name)
    mode = params.get("mode") or DEFAULTS["mode"]
    values = settings_values({**params, "prompt_field": frame_field_name(params.get("prompt_field"))}, mode)
    values.pop("model_path")  # the zoo's download
    if not applies("negative_field", media=media):
        values.pop("negative_field", None)  # not offered there
    params.clear()
    params.update(values)


def _mode_input(inputs, params: dict, media: str):
    choices = types.RadioGroup()
    for mode in MEDIA_MODES[media]:  # the modes each medium runs
        label, description = _MODE_LABELS[mode]
        choices.add_choice(mode, label=label, description=description)
    prop = inputs.enum("mode", choices.values(), default=DEFAULTS["mode"], label="Mode", view=choices)
    mode = params.get("mode") or DEFAULTS["mode"]
    if mode not in MEDIA_MODES[media]:
        flag(prop, f"mode {mode!r} does not run on {media}s; choose one of {', '.join(MEDIA_MODES[media])}")
        mode = DEFAULTS["mode"]
    return prop, mode


__all__ = [
    "FORM_KEY",
    "MODELS",
    "checkpoint_dir",
    "download_model",
    "form_params",
    "load_model",
    "media_type",
    "parse_parameters",
    "resolve_input",
]
