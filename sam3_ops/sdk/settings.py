"""The one settings object: everything that decides what a SAM3 run writes, validated in one place.

:class:`Sam3Settings` is immutable and round-trips through a plain dict (:meth:`~Sam3Settings.to_dict`
/ :meth:`~Sam3Settings.from_dict`), which is what a run record stores. ``load_model``,
``segment``, the operators, the panel, QA and the demo all build it the same way, and its
validation is the only validation: the SDK raises the first problem
(:class:`SettingsError`, a ``ValueError``; a bad checkpoint path raises
:class:`~sam3_ops.core.checkpoint.ModelLoadError`), a form flags every problem on its own input
(:meth:`Sam3Settings.problems`).

Prompts may be strings or dicts ``{"text": ..., "label": ..., "threshold": ...}``: ``label``
defaults to the text, ``threshold`` to the run's.

Which settings apply to which mode and medium is one table, :data:`APPLIES`: the validation refuses
a setting given on a medium it does not apply to (:func:`media_problem`: image-only settings on
videos, ``direction`` / ``max_objects`` on images), the forms offer each setting in its modes, the
video path refuses by it. (Over ~600 lines because every rule about a setting lives here: the
settings, their table and the run options, checked by the same helpers.)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.checkpoint import DEFAULT_MODEL, ModelLoadError, validate_model_path
from ..core.engine import SegmentOptions
from ..core.images import DEFAULT_MAX_PIXELS
from ..core.queries import FIELD_MODES, MODES, MULTIMASK, TRACKER_MODES, TextPrompt, normalize_text_prompts

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SettingsError(ValueError):
    """A setting that cannot be used; ``field`` names it (for a form to flag its input)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def is_number(value) -> bool:
    """Whether ``value`` is a real, finite number (``True``/``False`` are not numbers here; text
    such as ``"0.5"`` is not a number either: a form or a config file converts it first)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value) -> bool:
    """Whether ``value`` is a whole number (an ``int``, numpy's included; not a bool, not ``2.0``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's bool is neither


def unit_interval_problem(value, name: str) -> str | None:
    """Why ``value`` is not a number in ``[0, 1]``, or ``None`` if it is (every threshold's rule)."""
    if not is_number(value) or not 0 <= value <= 1:
        return f"{name} must be a number in [0, 1], not {value!r}"
    return None


def normalize_prompts(prompts, mode: str) -> tuple[TextPrompt, ...]:
    """Checks and normalises ``prompts`` for ``mode``: one :class:`TextPrompt` per distinct text.

    A single string (or dict) is one prompt; white space is collapsed; a repeated text is dropped
    with a warning (its first occurrence kept). ``text`` mode needs at least one prompt,
    ``exemplars`` takes any number, ``boxes`` takes none.

    Raises:
        SettingsError: naming the entry and the problem
    """
    try:  # the core's rules, images' and videos' alike
        cleaned = normalize_text_prompts(prompts, at_least_one=mode == "text", drop_duplicates=True)
    except ValueError as error:
        raise SettingsError("prompts", str(error)) from None
    if mode in TRACKER_MODES and cleaned:
        raise SettingsError(
            "prompts",
            f"mode={mode!r} takes no text prompts (each prompt object gets its own mask); use mode='exemplars' "
            "to combine boxes with text",
        )
    return tuple(cleaned)


#: ``auto`` mode runs points_per_side² point prompts on each image: 128 is 16,384 (SAM's automatic
#: mask generator uses 32 or 64); a larger grid would not fail, it would run for hours an image
MAX_POINTS_PER_SIDE = 128
_GRID_WHY = " (auto mode runs points_per_side squared point prompts on each image; SAM's default is 32)"

# -- each setting's rule -------------------------------------------------------------------------------


def as_model_path(value) -> str:
    """``value`` as a model path string (a ``str`` or an ``os.PathLike``), its type checked here so
    a wrong one is named rather than failing inside ``os.fspath``.

    Raises:
        SettingsError: ``value`` is neither
    """
    if not isinstance(value, str | os.PathLike):
        raise SettingsError(
            "model_path",
            f"model_path must be a hub id (e.g. 'facebook/sam3') or a local directory, not {type(value).__name__} "
            f"{value!r}",
        )
    path = os.fspath(value)
    if not isinstance(path, str):  # a PathLike of bytes
        raise SettingsError("model_path", f"model_path must be text, not {type(path).__name__} {path!r}")
    return path


def _check_mode(mode, values):
    if mode not in MODES:
        values["mode"] = "exemplars"  # the most permissive, so later checks still run
        raise SettingsError("mode", f"Unknown mode {mode!r}; the valid modes are {', '.join(MODES)}")
    return mode


def _check_unit(name):
    def check(value, values):
        problem = unit_interval_problem(value, name)
        if problem:
            raise SettingsError(name, problem)
        return float(value)

    return check


def _check_max_mask_size(size, values):
    if size is not None and (not is_whole(size) or size < 1):
        raise SettingsError(
            "max_mask_size", f"max_mask_size must be a whole number of pixels >= 1 or None, not {size!r}"
        )
    return None if size is None else int(size)


def _check_max_image_pixels(pixels, values):
    pixels = DEFAULT_MAX_PIXELS if pixels is None else pixels
    if not is_whole(pixels) or pixels < 1:
        raise SettingsError("max_image_pixels", f"max_image_pixels must be a whole number >= 1, not {pixels!r}")
    return int(pixels)


def _check_name(name):
    def check(value, values):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise SettingsError(name, f"{name} must be a non-empty name or None, not {value!r}")
        if name == "negative_field" and value and value == values.get("prompt_field"):
            raise SettingsError(name, "negative_field must differ from prompt_field")
        return value or None

    return check


def _check_device(device, values) -> str | None:
    # the format only: a run recorded on a GPU machine stays readable on a CPU one (whether this
    # machine has the device is checked when an engine is built: core.checkpoint.device_problem)
    if device is None or device == "auto":
        return None
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise SettingsError("device", f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', not {device!r}")
    return device


def _check_bool(name):
    def check(value, values):
        if not isinstance(value, bool):
            raise SettingsError(name, f"{name} must be True or False, not {value!r}")
        return value

    return check


def _check_count(name, optional: bool, low: int = 1, high: int | None = None, why: str = ""):
    """A whole number from ``low`` (to ``high``), or ``None`` when ``optional``."""

    def check(value, values):
        if value is None and optional:
            return None
        if not is_whole(value) or value < low or (high is not None and value > high):
            allowed = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
            allowed += why + (" or None" if optional else "")
            raise SettingsError(name, f"{name} must be {allowed}, not {value!r}")
        return int(value)

    return check


def _check_fraction(name, optional: bool, open_zero: bool = True):
    """A number in (0, 1] (or [0, 1) with ``open_zero=False``), or ``None`` when ``optional``."""

    def check(value, values):
        if value is None and optional:
            return None
        # the type first: "0.5" > 0 would raise a TypeError that names nothing
        inside = is_number(value) and ((0 < value <= 1) if open_zero else (0 <= value < 1))
        if not inside:
            interval = "(0, 1]" if open_zero else "[0, 1)"
            raise SettingsError(
                name, f"{name} must be a number in {interval}{' or None' if optional else ''}, not {value!r}"
            )
        return float(value)

    return check


def _check_choice(name, choices):
    def check(value, values):
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise SettingsError(name, f"{name} must be one of {shown}, not {value!r}")
        return value

    return check


def _check_multimask(value, values):
    value = _check_choice("multimask", MULTIMASK)(value, values)
    if value is not None and not applies("multimask", values["mode"]):
        modes = " and ".join(repr(mode) for mode in APPLIES["multimask"].modes)
        raise SettingsError("multimask", f"multimask applies to the {modes} modes, not {values['mode']!r}")
    return value


def _check_nms_iou(value, values):
    value = _check_fraction("nms_iou", optional=True)(value, values)
    return 0.7 if value is None and values["mode"] == "auto" else value  # segment everything: always de-duplicated


def _check_label(value, values):
    if not isinstance(value, str) or not value.strip():
        raise SettingsError("auto_label", f"auto_label must be non-blank text, not {value!r}")
    return value.strip()


#: each setting's rule, in dependency order (the prompts' rule reads the mode)
_CHECKS = (
    ("model_path", lambda value, values: validate_model_path(as_model_path(value))),
    ("mode", _check_mode),
    ("prompts", lambda value, values: normalize_prompts(value, values["mode"])),
    ("threshold", lambda value, values: None if value is None else _check_unit("threshold")(value, values)),
    ("mask_threshold", _check_unit("mask_threshold")),
    ("max_mask_size", _check_max_mask_size),
    ("max_image_pixels", _check_max_image_pixels),
    ("device", _check_device),
    ("compile", _check_bool("compile")),
    ("prompt_field", _check_name("prompt_field")),
    ("negative_field", _check_name("negative_field")),
    ("mask_dir", _check_name("mask_dir")),
    ("multimask", _check_multimask),
    ("nms_iou", _check_nms_iou),
    ("nms_per_label", _check_bool("nms_per_label")),
    ("nms_containment", _check_fraction("nms_containment", optional=True)),
    ("max_detections", _check_count("max_detections", optional=True)),
    ("min_area", _check_fraction("min_area", optional=False, open_zero=False)),
    ("points_per_side", _check_count("points_per_side", optional=False, high=MAX_POINTS_PER_SIDE, why=_GRID_WHY)),
    ("pred_iou_threshold", _check_unit("pred_iou_threshold")),
    ("stability_threshold", _check_unit("stability_threshold")),
    ("auto_label", _check_label),
    ("direction", _check_choice("direction", ("forward", "backward", "both"))),
    ("max_objects", _check_count("max_objects", optional=False)),
)


def _normalize(values: dict, checks, problems: dict | None = None) -> dict:
    """Every value of ``values`` checked and normalised by its rule in ``checks``. Raises the first
    problem, or, given a ``problems`` dict, records every problem there by name and carries on."""
    for name, check in checks:
        try:
            values[name] = check(values[name], values)
        except (SettingsError, ModelLoadError) as error:
            if problems is None:
                raise
            problems.setdefault(name, str(error))
    return values


class _Checked:
    """What :class:`Sam3Settings` and :class:`RunOptions` share: each field is checked and normalised
    by its rule in the class's ``_rules`` (``(name, check)`` pairs) when an instance is built."""

    _rules = ()

    def __post_init__(self):
        # shallow: values read back from the database may be mongoengine lists, which asdict cannot copy
        normalized = _normalize({name: getattr(self, name) for name in self.names()}, self._rules)
        for name, value in normalized.items():
            object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> list[str]:
        """The names of every field."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def _check_all(cls, values: Mapping) -> tuple[dict, dict[str, str]]:
        """``values`` (missing ones take their defaults) normalised, and each problem by name."""
        defaults, problems = cls._defaults(), {}
        normalized = _normalize(defaults | {k: v for k, v in values.items() if k in defaults}, cls._rules, problems)
        return normalized, problems

    @classmethod
    def problems(cls, values: Mapping) -> dict[str, str]:
        """Every problem of ``values`` (missing ones take their defaults), by name; ``{}`` if they
        are valid. For forms, which flag each problem on its input; the SDK raises the first instead."""
        return cls._check_all(values)[1]


#: the engine's defaults: the settings it shares with :class:`Sam3Settings` default to them (one source)
_ENGINE = SegmentOptions()


@dataclass(frozen=True)
class Sam3Settings(_Checked):
    """What a SAM3 run writes, and how: the settings of :func:`sam3_ops.load_model` and
    :func:`sam3_ops.segment`.

    Attributes:
        model_path: hub id or local checkpoint directory
        mode: ``"text"``, ``"boxes"``, ``"exemplars"``, ``"points"`` or ``"auto"``
        prompts: the text prompts (:class:`~sam3_ops.core.queries.TextPrompt`)
        threshold: the score threshold of prompts without their own (``boxes`` mode writes one mask
            per box whatever its score; ``confidence`` holds the predicted mask IoU); ``None``: the
            model's own default, what plain transformers uses: 0.5 for images (``SegmentOptions``),
            the checkpoint's ``new_det_thresh`` for videos (0.7 for facebook/sam3)
        mask_threshold: the probability above which a pixel is in a mask
        max_mask_size: the longest side of a stored mask (``None``: no limit); larger boxes get a mask
            scaled down to it (FiftyOne stretches masks over their boxes; SAM3's are 288 x 288)
        max_image_pixels: larger images are refused before decoding
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"`` or ``None`` (the best available)
        compile: ``torch.compile`` the image encoder (long GPU runs)
        prompt_field: the field holding prompt boxes (``boxes``, ``exemplars``: ``Detections``) or
            points (``points``: ``Keypoints``)
        negative_field: the field holding negative boxes
        mask_dir: where masks go as PNG files (``mask_path``) when a sample's labels would exceed
            MongoDB's 16 MB document limit (``None``: ``<fo.config.default_dataset_dir>/sam3_masks``);
            to keep every mask on disk, pass ``output_dir=`` to ``apply_model``
        multimask: ``boxes`` / ``points``: ``None`` (one mask per prompt), ``"best"`` (the most
            confident of three) or ``"all"`` (three Detections per prompt, ``mask_rank`` 0-2)
        nms_iou: drop the lower-scoring of two hits of a sample whose written masks overlap with
            IoU above this (``None``: off; ``auto`` mode uses 0.7 when off)
        nms_per_label: de-duplicate only hits with the same label
        nms_containment: also drop a hit whose written mask lies inside a higher-scoring one's by
            more than this fraction of its own area (``None``: off)
        max_detections: write at most this many hits per sample, the highest-scoring of those the
            other rules keep (``None``: all)
        min_area: drop hits whose written mask covers less than this fraction of the image
        (These four hold on the masks as written: see the README's "De-duplication and limits".)
        points_per_side: ``auto``: the grid of point prompts has this many points a side (1 to 128)
        pred_iou_threshold, stability_threshold: ``auto``: keep masks whose predicted IoU and
            stability score reach these
        auto_label: ``auto``: the label every hit gets
        direction: videos with prompts on chosen frames: propagate ``"forward"``, ``"backward"``
            or ``"both"``
        max_objects: videos: track at most this many objects (a warning says how many were dropped)
    """

    model_path: str = DEFAULT_MODEL
    mode: str = _ENGINE.mode
    prompts: tuple[TextPrompt, ...] = ()
    threshold: float | None = None
    mask_threshold: float = _ENGINE.mask_threshold
    max_mask_size: int | None = _ENGINE.max_mask_size
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    device: str | None = None
    compile: bool = False
    prompt_field: str | None = None
    negative_field: str | None = None
    mask_dir: str | None = None
    multimask: str | None = _ENGINE.multimask
    nms_iou: float | None = _ENGINE.nms_iou
    nms_per_label: bool = _ENGINE.nms_per_label
    nms_containment: float | None = _ENGINE.nms_containment
    max_detections: int | None = _ENGINE.max_detections
    min_area: float = _ENGINE.min_area
    points_per_side: int = _ENGINE.points_per_side
    pred_iou_threshold: float = _ENGINE.pred_iou_threshold
    stability_threshold: float = _ENGINE.stability_threshold
    auto_label: str = _ENGINE.auto_label
    direction: str = "forward"
    max_objects: int = 50

    _rules = _CHECKS

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping) -> Sam3Settings:
        """Settings from a plain dict (as :meth:`to_dict` writes it); unknown keys are an error."""
        cls.check_names(values)
        return cls(**values)

    @classmethod
    def check_names(cls, values: Mapping) -> None:
        """Checks that every key of ``values`` is a setting (a misspelt one is named, rather than
        a ``TypeError`` from the constructor); a run option given here is pointed to where it goes.

        Raises:
            SettingsError: naming the first unknown key
        """
        unknown = sorted(set(values) - set(cls.names()))
        if not unknown:
            return
        run_options = [name for name in unknown if name in RunOptions.names()]
        if run_options:
            raise SettingsError(
                run_options[0],
                f"{run_options[0]} is a run option, not a setting of the model: give it to sam3_ops.segment(...) "
                "or dataset.apply_model(...)",
            )
        raise SettingsError(unknown[0], f"unknown settings {unknown}; known: {', '.join(cls.names())}")

    @classmethod
    def problems(cls, values: Mapping, media: str | None = None) -> dict[str, str]:
        """Every problem of ``values`` (settings; missing ones take their defaults), by setting name,
        for forms; with ``media``, also what does not apply there (:func:`media_problem`)."""
        normalized, problems = cls._check_all(values)
        if media is not None:
            for name, message in _media_problems(normalized, media).items():
                problems.setdefault(name, message)
        return problems

    def replace(self, **changes) -> Sam3Settings:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # -- using ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A plain, JSON-serialisable dict; ``Sam3Settings.from_dict(s.to_dict()) == s``."""
        values = dataclasses.asdict(self)
        values["prompts"] = [
            p.text
            if p.label is None and p.threshold is None
            else {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
            for p in self.prompts
        ]
        return values

    def segment_options(self) -> SegmentOptions:
        """The engine's per-call options for these settings."""
        names = {f.name for f in dataclasses.fields(SegmentOptions)}
        options = {name: getattr(self, name) for name in names}
        if options["threshold"] is None:  # the image model's own default: SegmentOptions'
            del options["threshold"]
        return SegmentOptions(**options)

    @property
    def labels(self) -> list[str]:
        """The labels the text prompts write, in order, each once."""
        return list(dict.fromkeys(p.name for p in self.prompts))


# -- which settings apply where ----------------------------------------------------------------------

#: the media a run segments
MEDIA = ("image", "video")
#: the modes that run on videos
VIDEO_MODES = ("text", "boxes", "points")
#: the modes that run on each medium
MEDIA_MODES = {"image": MODES, "video": VIDEO_MODES}


@dataclass(frozen=True)
class Scope:
    """Where a setting applies: in these modes, on these media."""

    modes: tuple[str, ...] = MODES
    media: tuple[str, ...] = MEDIA


_DEDUP_MODES = ("text", "exemplars", "auto")
_IMAGE = ("image",)
#: which settings apply to which modes and media, the one table (see the module docstring; ``multimask``
#: is also refused outside its modes). A setting not listed applies in every mode on both media.
APPLIES: dict[str, Scope] = {
    "prompt_field": Scope(FIELD_MODES),
    "negative_field": Scope(FIELD_MODES, _IMAGE),
    "multimask": Scope(("boxes", "points"), _IMAGE),
    "nms_iou": Scope(_DEDUP_MODES, _IMAGE),
    "nms_per_label": Scope(("text", "exemplars"), _IMAGE),
    "nms_containment": Scope(_DEDUP_MODES, _IMAGE),
    "max_detections": Scope(_DEDUP_MODES, _IMAGE),
    "min_area": Scope(_DEDUP_MODES, _IMAGE),
    "points_per_side": Scope(("auto",), _IMAGE),
    "pred_iou_threshold": Scope(("auto",), _IMAGE),
    "stability_threshold": Scope(("auto",), _IMAGE),
    "auto_label": Scope(("auto",), _IMAGE),
    "direction": Scope(("boxes", "points"), ("video",)),  # text tracking runs forward from frame 0
    "max_objects": Scope(VIDEO_MODES, ("video",)),
}


def applies(name: str, mode: str | None = None, media: str | None = None) -> bool:
    """Whether the setting ``name`` applies in ``mode`` on ``media`` (``None``: any)."""
    scope = APPLIES.get(name, Scope())
    return (mode is None or mode in scope.modes) and (media is None or media in scope.media)


def _media_problems(values: Mapping, media: str) -> dict[str, str]:
    """The problems of the normalised settings ``values`` on ``media``, by setting name: the mode,
    then every setting given (not at its default) that does not apply there."""
    if media not in MEDIA:
        raise ValueError(f"media must be one of {', '.join(MEDIA)}, not {media!r}")
    if values["mode"] not in MEDIA_MODES[media]:
        modes = ", ".join(MEDIA_MODES[media])
        return {"mode": f"mode={values['mode']!r} does not run on {media}s; the {media} modes are {modes}"}
    defaults = Sam3Settings._defaults()
    given = [name for name in APPLIES if not applies(name, media=media) and values[name] != defaults[name]]
    if not given:
        return {}
    where = "images" if media == "video" else "videos"
    message = (
        f"{', '.join(given)} apply to {where} only; leave {'it' if len(given) == 1 else 'them'} unset for {media}s"
    )
    if "max_detections" in given:  # the images' per-sample cap has a video counterpart of another meaning
        message += "; on videos, max_objects caps the objects tracked at once"
    if "max_objects" in given:
        message += "; on images, max_detections caps the hits written per sample"
    return {name: message for name in given}


def media_problem(settings: Sam3Settings, media: str) -> SettingsError | None:
    """Why ``settings`` cannot run on ``media`` (``"image"`` or ``"video"``), naming the setting
    (:data:`APPLIES`), or ``None``: a mode that does not run there, or a setting given that does
    not apply there. A setting at its default counts as not given, so a run record of either
    medium, which stores every setting, runs again unchanged."""
    problems = _media_problems(settings.to_dict(), media)
    if not problems:
        return None
    name, message = next(iter(problems.items()))
    return SettingsError(name, message)


def check_media(settings: Sam3Settings, media: str) -> None:
    """Raises :func:`media_problem`'s :class:`SettingsError`, if ``settings`` cannot run on ``media``."""
    problem = media_problem(settings, media)
    if problem:
        raise problem


# -- how a run goes: segment()'s run options ------------------------------------------------------

#: images per forward pass when the caller does not say
DEFAULT_BATCH_SIZE = 8
#: at most this many shards per run (a shard is one delegated operation)
MAX_SHARDS = 1000


def _check_optional_path(name):
    def check(value, values):
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike) or not isinstance(os.fspath(value), str) or not os.fspath(value):
            raise SettingsError(name, f"{name} must be a directory path or None, not {value!r}")
        return os.fspath(value)

    return check


def _check_token(value, values):
    if value is not None and not isinstance(value, str):  # the type only: a token's value is never shown
        raise SettingsError("token", f"token must be text (a Hugging Face token) or None, not {type(value).__name__}")
    return value or None


def _check_progress(value, values):
    if value is not None and not isinstance(value, bool) and not callable(value):
        raise SettingsError("progress", f"progress must be True, False, None or a callback, not {value!r}")
    return value


_SHARDS_WHY = " (the delegated operations to split the run into, e.g. one or a few per GPU)"

#: each run option's rule
_RUN_CHECKS = (
    ("batch_size", _check_count("batch_size", optional=False)),
    ("num_workers", _check_count("num_workers", optional=True, low=0)),
    ("skip_failures", _check_bool("skip_failures")),
    ("only_missing", _check_bool("only_missing")),
    ("record", _check_bool("record")),
    ("reuse", _check_bool("reuse")),
    ("shards", _check_count("shards", optional=True, high=MAX_SHARDS, why=_SHARDS_WHY)),
    ("output_dir", _check_optional_path("output_dir")),
    ("token", _check_token),
    ("progress", _check_progress),
)


@dataclass(frozen=True)
class RunOptions(_Checked):
    """How a run goes, as opposed to what it writes (:class:`Sam3Settings`): the options of
    :func:`sam3_ops.segment` besides the settings, checked by the same rules, before anything is
    written (:class:`SettingsError` naming the option; :meth:`problems` for forms).

    Attributes:
        batch_size: images per forward pass (>= 1)
        num_workers: data-loader workers (>= 0), ``None`` for FiftyOne's default
        skip_failures: log and skip a sample that fails, rather than stop
        only_missing: segment only the samples without a value in the field (resume)
        record: record the run on the dataset
        reuse: run on the process's pooled engine
        shards: split the run into this many delegated operations (1 to :data:`MAX_SHARDS`), or ``None``
        output_dir: where ``apply_model`` writes masks as files, or ``None``
        token: a Hugging Face token (never stored, never shown), or ``None``
        progress: ``apply_model``'s progress: ``True``, ``False``, ``None`` or a callback
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int | None = None
    skip_failures: bool = True
    only_missing: bool = False
    record: bool = True
    reuse: bool = True
    shards: int | None = None
    output_dir: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    progress: object = dataclasses.field(default=None, repr=False)

    _rules = _RUN_CHECKS


def check_shards(value) -> int:
    """``value`` as a number of shards (the rule of :attr:`RunOptions.shards`).

    Raises:
        SettingsError: ``value`` is not a whole number from 1 to :data:`MAX_SHARDS`
    """
    return _check_count("shards", optional=False, high=MAX_SHARDS, why=_SHARDS_WHY)(value, {})
