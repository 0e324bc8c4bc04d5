"""Checkpoints and devices: which SAM3 checkpoint, where it runs, and loading its heads completely.

torch + transformers only (never fiftyone). One ``sam3_video`` checkpoint holds every head:

- the detector (``Sam3Model``: text prompts, exemplar boxes);
- the tracker (``Sam3TrackerModel``: boxes, points, mask refinement), which shares the detector's
  ViT backbone and has a neck of its own;
- the video models (``Sam3VideoModel``, ``Sam3TrackerVideoModel``).

Every layout that ``Sam3VideoModel.from_pretrained`` loads is accepted: the hub's
(``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*``) and the one transformers'
own ``save_pretrained`` writes (``tracker_model.tracker_model.*``). transformers renames the
tracker's keys only for the hub layout and otherwise leaves them randomly initialised with a mere
warning, so every head is loaded with ``output_loading_info=True`` and missing weights are mapped
here or refused loudly. Only safetensors are read; remote code is never trusted.

The Hugging Face token is an argument of each load and is never stored, logged or shown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/sam3"
_SAM3_MODEL_TYPES = ("sam3_video", "sam3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# sam3_video checkpoint keys -> Sam3TrackerModel keys. "tracker_model." may appear once (the hub's
# layout) or twice (what Sam3VideoModel.save_pretrained writes): every repetition is stripped.
_TRACKER_KEY_MAP = (
    ("detector_model.vision_encoder.backbone.", "vision_encoder.backbone."),
    ("tracker_neck.", "vision_encoder.neck."),
)
_TRACKER_PREFIX = "tracker_model."


class ModelLoadError(RuntimeError):
    """The SAM3 checkpoint cannot be found, reached, or loaded completely."""


def login_help(model_path: str) -> str:
    """How to get access to a checkpoint (the message a user sees when loading fails)."""
    return (
        f"Could not load SAM3 from {model_path!r}. facebook/sam3 is a gated model: accept its "
        "licence on the Hugging Face hub, then log in (`hf auth login`) or set the HF_TOKEN "
        "environment variable (in the App: the plugin secret HF_TOKEN). Offline, pass a local "
        "checkpoint directory saved with save_pretrained instead (for a smoke test, "
        "`python -m sam3_ops.testing DIR` writes a tiny random one)."
    )


def validate_model_path(model_path: str | os.PathLike) -> str:
    """Checks that ``model_path`` is a hub id or a local SAM3 checkpoint directory; returns it
    normalised (``~`` expanded).

    Refused: remote URLs, paths containing ``..``, paths that do not exist, and directories that
    hold no SAM3 ``config.json``.

    Raises:
        ModelLoadError: saying which of those it is
    """
    path = os.fspath(model_path).strip() if model_path is not None else ""
    if not path:
        raise ModelLoadError("model path is empty; give a hub id such as 'facebook/sam3' or a local directory")
    if "://" in path:
        raise ModelLoadError(f"refusing remote URL {path!r}: give a hub id (e.g. 'facebook/sam3') or a local directory")
    if ".." in re.split(r"[\\/]", path):
        raise ModelLoadError(f"refusing model path with '..': {path!r}; give the directory's real path")
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        config_path = os.path.join(expanded, "config.json")
        try:
            with open(config_path) as handle:
                model_type = json.load(handle).get("model_type")
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"{path!r} is not a SAM3 checkpoint: no readable config.json ({error})") from None
        if model_type not in _SAM3_MODEL_TYPES:
            raise ModelLoadError(
                f"{path!r} is not a SAM3 checkpoint: its model_type is {model_type!r}, expected one of "
                f"{', '.join(_SAM3_MODEL_TYPES)}"
            )
        return expanded
    looks_like_path = path.startswith(("/", "./", "~", "\\")) or os.sep in path.strip("/").replace("/", "", 1)
    if looks_like_path or os.path.exists(expanded) or not _HUB_ID.match(path):
        raise ModelLoadError(f"model directory does not exist: {path!r}")
    return path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` (or ``"auto"``) picks cuda, then mps, then cpu."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[str]:
    """The device choices of this machine: ``auto`` first, then cuda / mps where present, then cpu."""
    devices = ["auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def device_problem(device: str | None) -> str | None:
    """Why ``device`` cannot be used on this machine, or ``None`` (``None``/``"auto"`` always can)."""
    if device is None or str(device) == "auto":
        return None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return f"device {device!r} asked for, but this machine has no CUDA GPU"
    if str(device) == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        return "device 'mps' asked for, but Apple MPS is not available here"
    return None


def uses_bf16(device: torch.device) -> bool:
    """Whether SAM3 runs under bf16 autocast on ``device``: CUDA GPUs with bf16 units (sm80+).

    Older GPUs (T4, V100) only emulate bf16, slower than float32, and cuDNN has no bf16
    convolutions there. No TF32 switch either: under bf16 autocast every matmul already runs in
    bf16, the float32 matmuls left (mask upsampling) are meant to be exact, and the flag would
    change the user's other float32 code in the process.
    """
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def autocast(bf16: bool):
    """The context SAM3's forward passes run in: bf16 autocast where :func:`uses_bf16` says so."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def load_once(owner, attribute: str, lock, load):
    """``owner.<attribute>``: set to ``load()`` on first use, once, under ``lock`` (the engines'
    lazily loaded processor and heads; concurrent first users wait for one load)."""
    loaded = getattr(owner, attribute)
    if loaded is None:
        with lock:
            loaded = getattr(owner, attribute)
            if loaded is None:
                loaded = load()
                setattr(owner, attribute, loaded)
    return loaded


def _from_pretrained(loader, model_path: str, token: str | None, **kwargs):
    """``loader(model_path, token=..., **kwargs)`` with every failure as a :class:`ModelLoadError`."""
    try:
        return loader(model_path, token=token or None, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:  # hub/network/gating/format errors all mean the same to a user
        logger.debug("loading %s failed: %s", model_path, type(error).__name__)
        raise ModelLoadError(f"{login_help(model_path)}\nCause: {type(error).__name__}: {error}") from None


def load_processor(model_path: str, token: str | None = None):
    """The checkpoint's ``Sam3Processor`` (image processor + tokenizer)."""
    from transformers import Sam3Processor

    return _from_pretrained(Sam3Processor.from_pretrained, model_path, token)


def load_detector(model_path: str, token: str | None = None):
    """The detector head (``Sam3Model``), every weight from the checkpoint, on the CPU, in eval mode."""
    from transformers import Sam3Model

    model, info = _from_pretrained(
        Sam3Model.from_pretrained, model_path, token, use_safetensors=True, output_loading_info=True
    )
    fail_on_missing(info.get("missing_keys"), "detector")
    return model.eval()


def load_tracker(model_path: str, token: str | None = None):
    """The tracker head (``Sam3TrackerModel``), every weight from the checkpoint, whatever its layout."""
    from transformers import Sam3TrackerModel

    model, info = _from_pretrained(
        Sam3TrackerModel.from_pretrained, model_path, token, use_safetensors=True, output_loading_info=True
    )
    missing = set(info["missing_keys"])
    if missing:
        # the trap: from a sam3_video checkpoint transformers may leave the tracker's weights
        # randomly initialised, with only a warning; map the keys ourselves
        found = read_tensors(model_path, token, lambda key: tracker_key(key) in missing)
        model.load_state_dict({tracker_key(k): v for k, v in found.items()}, strict=False)
        missing -= {tracker_key(k) for k in found}
    fail_on_missing(missing, "tracker")
    return model.eval()


def tracker_key(key: str) -> str | None:
    """The ``Sam3TrackerModel`` name of a ``sam3_video`` checkpoint key, or ``None`` if it has none."""
    for source, target in _TRACKER_KEY_MAP:
        if key.startswith(source):
            return target + key[len(source) :]
    if not key.startswith(_TRACKER_PREFIX):
        return None
    while key.startswith(_TRACKER_PREFIX):
        key = key[len(_TRACKER_PREFIX) :]
    return key


def read_tensors(model_path: str, token: str | None, wanted) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names satisfy ``wanted``, read from its safetensors files."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def resolve(name):
        return _from_pretrained(
            lambda path, token: cached_file(path, name, token=token, _raise_exceptions_for_missing_entries=False),
            model_path,
            token,
        )

    index = resolve("model.safetensors.index.json")
    if index:
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        files = [resolve(shard) for shard in shards]
    else:
        files = [resolve("model.safetensors")]
    tensors = {}
    for path in files:
        if not path:
            raise ModelLoadError(f"{model_path!r} has no model.safetensors (only safetensors weights are loaded)")
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if wanted(key):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def fail_on_missing(missing_keys, head: str) -> None:
    """Raises :class:`ModelLoadError` if any weight of ``head`` is missing from the checkpoint."""
    missing = sorted(missing_keys or ())
    if missing:
        shown = ", ".join(missing[:5])
        raise ModelLoadError(
            f"the SAM3 {head} head is incomplete: {len(missing)} weights are missing from the checkpoint "
            f"(e.g. {shown}); refusing to run with randomly initialised weights"
        )
