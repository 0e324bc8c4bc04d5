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
import threading

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


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` (or ``"auto"``) picks cuda, then mps, then cpu."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")


def available_devices() -> list[str]:
    """The device choices of this machine: ``auto`` first, then cuda / mps where present, then cpu."""
    present = {"cuda": torch.cuda.is_available(), "mps": _mps_available()}
    return ["auto", *(name for name, there in present.items() if there), "cpu"]


def device_problem(device: str | None) -> str | None:
    """Why ``device`` cannot be used on this machine, or ``None`` (``None``/``"auto"`` always can)."""
    if device is None or str(device) == "auto":
        return None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return f"device {device!r} asked for, but this machine has no CUDA GPU"
    if str(device) == "mps" and not _mps_available():
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


class LazyEngine:
    """Base of the image and video engines: a checkpoint and a device, with the processor and models
    loaded on first use (or by the engine's ``load``), once, under the engine's lock.

    A Hugging Face token is an argument of ``load`` only: it is used to load and never stored.
    """

    _processor = None

    def __init__(self, model_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None):
        self.model_path = validate_model_path(model_path)
        self.device = resolve_device(device)
        self.bf16 = uses_bf16(self.device)
        self._lock = threading.RLock()

    def __repr__(self) -> str:  # no token in here, ever
        return f"{type(self).__name__}(model_path={self.model_path!r}, device={str(self.device)!r})"

    def _ensure(self, attribute: str, token: str | None = None):
        """The processor or model held in ``attribute``, loaded once on first use (concurrent first
        users wait for one load)."""
        loaded = getattr(self, attribute)
        if loaded is None:
            with self._lock:
                loaded = getattr(self, attribute)
                if loaded is None:
                    if attribute == "_processor":
                        loaded = load_processor(self.model_path, token)
                    else:
                        loaded = self._load(attribute, token)
                    setattr(self, attribute, loaded)
        return loaded

    def _load(self, attribute: str, token: str | None):
        """The model ``attribute`` holds, loaded from the checkpoint onto the device."""
        raise NotImplementedError

    @property
    def processor(self):
        """The checkpoint's ``Sam3Processor`` (image processor + tokenizer)."""
        return self._ensure("_processor")

    def _autocast(self):
        return autocast(self.bf16)


def lazy_model(attribute: str, doc: str) -> property:
    """An engine's property: the model held in ``attribute``, loaded on first use."""
    return property(lambda engine: engine._ensure(attribute), doc=doc)


def hub_timeout() -> float:
    """Seconds to wait for the hub's answer before calling it unreachable: huggingface_hub's own
    ``HF_HUB_ETAG_TIMEOUT`` (10 s by default). The access check is one request, never retried, so a
    machine without network hears so in seconds, not after minutes of retried HEAD requests."""
    from huggingface_hub import constants

    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", constants.DEFAULT_ETAG_TIMEOUT))


#: the files a hub checkpoint is downloaded with (facebook/sam3 also holds the original ``sam3.pt``,
#: 3.4 GB that transformers never reads)
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.txt")
#: a tokenizer is one of these sets of files (fast tokenizer, or CLIP's slow one)
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: the image processor's settings are in one of these
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
#: the heads that read text prompts (exemplar boxes too are encoded with a text prompt): without
#: tokenizer files transformers builds a 2-token tokenizer and every prompt becomes unknown tokens
TEXT_HEADS = ("Sam3Model", "Sam3VideoModel")
_NO_NETWORK_HELP = (
    "Offline, pass a local checkpoint directory saved with save_pretrained instead (for a smoke test, "
    "`python -m sam3_ops.testing DIR` writes a tiny random one)."
)
#: hub ids already resolved to a local snapshot in this process (the path only: never a token)
_resolved: dict[tuple[str, str | None], str] = {}


def download_checkpoint(model_path: str, local_dir: str | None = None, token: str | None = None) -> str:
    """A local directory holding the SAM3 checkpoint ``model_path``, downloaded if needed; every
    way this can fail is a :class:`ModelLoadError` that says which it is.

    A local directory is checked and returned as is. A hub id is checked with one request to the
    hub (timeout :func:`hub_timeout`, no retries), then downloaded (config, safetensors, processor and
    tokenizer files only) into the Hugging Face cache, or into ``local_dir`` if given. With
    ``HF_HUB_OFFLINE=1``, or when the hub cannot be reached, the local cache is used if it holds the
    checkpoint.

    Args:
        model_path: a hub id (``"facebook/sam3"``) or a local checkpoint directory
        local_dir (None): where to download a hub checkpoint (``None``: the Hugging Face cache)
        token (None): a Hugging Face token for this download only (``None``: ``HF_TOKEN`` or the
            stored ``hf auth login``); never logged, stored or shown

    Raises:
        ModelLoadError: no network / hub unreachable; no token or licence not accepted (gated);
            token refused; not found; not a SAM3 checkpoint; weights corrupt or truncated; files
            missing
    """
    path = validate_model_path(model_path)
    if os.path.isdir(path):
        check_checkpoint_files(path)
        return path
    key = (path, os.fspath(local_dir) if local_dir else None)
    directory = _resolved.get(key)
    if directory is None or not os.path.isdir(directory):
        directory = _fetch(path, key[1], token)
        try:
            validate_model_path(directory)
        except ModelLoadError as error:
            raise ModelLoadError(f"{path!r} on the hub {str(error).split(' ', 1)[1]}") from None
        check_checkpoint_files(directory, name=path)
        _resolved[key] = directory
    return directory


def _fetch(repo_id: str, local_dir: str | None, token: str | None) -> str:
    """``snapshot_download`` of ``repo_id`` after one quick access check, errors classified."""
    from huggingface_hub import constants, snapshot_download

    kwargs = dict(repo_id=repo_id, allow_patterns=list(DOWNLOAD_PATTERNS), local_dir=local_dir, token=token or None)

    def cached() -> str | None:
        try:
            return snapshot_download(**kwargs, local_files_only=True)
        except Exception:  # not (fully) in the cache
            return None

    if constants.HF_HUB_OFFLINE:
        if found := cached():
            return found
        raise ModelLoadError(_offline_message(repo_id, local_dir))
    try:
        _check_access(repo_id, token)
    except _Unreachable as error:
        if found := cached():
            logger.warning("The Hugging Face hub is unreachable (%s); using the cached %s", error, repo_id)
            return found
        raise ModelLoadError(hub_error_message(repo_id, error, token)) from None
    except Exception as error:  # the hub answered no: gated, not found, token refused
        raise ModelLoadError(hub_error_message(repo_id, error, token)) from None
    try:
        return snapshot_download(**kwargs, etag_timeout=hub_timeout())
    except Exception as error:
        raise ModelLoadError(hub_error_message(repo_id, error, token)) from None


def _offline_message(repo_id: str, local_dir: str | None = None) -> str:
    from huggingface_hub import constants

    return (
        f"{repo_id!r} is not in the local Hugging Face cache ({local_dir or constants.HF_HUB_CACHE}) and "
        f"HF_HUB_OFFLINE is set, so the hub is not asked. To download it, unset HF_HUB_OFFLINE where the hub "
        f"can be reached (facebook/sam3 is gated: accept its licence, then `hf auth login` or set HF_TOKEN). "
        f"{_NO_NETWORK_HELP}"
    )


def checkpoint_problem(model_path, token: str | None = None) -> str | None:
    """Why ``model_path`` cannot be loaded, found without downloading or loading any weights (for
    forms); ``None`` if it can. The same classification as :func:`download_checkpoint`: a local
    directory gets its file checks; a hub id is fine if cached, else one access check (bounded by
    :func:`hub_timeout`) says gated, not found, unreachable, ...

    Args:
        model_path: a hub id or a local checkpoint directory
        token (None): a Hugging Face token for the access check only; never logged or shown
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        path = validate_model_path(model_path)
        if os.path.isdir(path):
            check_checkpoint_files(path)
            return None
    except ModelLoadError as error:
        return str(error)
    if path in {repo_id for repo_id, _ in _resolved} or isinstance(try_to_load_from_cache(path, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return _offline_message(path)
    try:
        _check_access(path, token)
    except Exception as error:  # unreachable, gated, not found, token refused
        return hub_error_message(path, error, token)
    return None


class _Unreachable(Exception):
    """The hub did not answer (no network, DNS, proxy, firewall, timeout)."""


def _check_access(repo_id: str, token: str | None) -> None:
    """One request (the hub's ``auth-check``), not retried, bounded by :func:`hub_timeout`: returns if
    this token (or the stored login) may download ``repo_id``; raises huggingface_hub's own errors
    (``GatedRepoError``, ``RepositoryNotFoundError``, ...) or :class:`_Unreachable`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{constants.ENDPOINT}/api/models/{repo_id}/auth-check"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=token or None), timeout=hub_timeout())
    except Exception as error:  # a request that got no answer: transport errors (httpx), DNS, timeouts
        raise _Unreachable(f"{type(error).__name__}: {error}") from error
    if response.status_code >= 500:
        raise _Unreachable(f"HTTP {response.status_code} from {constants.ENDPOINT}")
    hf_raise_for_status(response)


def hub_error_message(repo_id: str, error: BaseException, token: str | None = None) -> str:
    """What a failed hub request means to the user, by cause: hub unreachable; gated (no token, or
    licence not accepted); token refused; not found; anything else with its type. The one place the
    hub's errors are classified (``download_checkpoint`` and the loaders)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import get_token

    has_token = bool(token or get_token())
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError):
        if not has_token:
            why = "no Hugging Face token was given and there is no stored login"
        else:
            why = "the token's account has not accepted its licence (or the request is still pending)"
        return (
            f"{repo_id!r} is a gated model and {why}: accept the licence on "
            f"{constants.ENDPOINT}/{repo_id}, then log in (`hf auth login`) or set the HF_TOKEN environment "
            f"variable (in the App: the plugin secret HF_TOKEN). {_NO_NETWORK_HELP}"
        )
    if status == 401 and has_token and not isinstance(error, RepositoryNotFoundError):
        return f"the hub refused the Hugging Face token for {repo_id!r} (invalid or expired): log in again (`hf auth login`)"
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return (
            f"{repo_id!r} was not found on the Hugging Face hub: check the id (a private repository also "
            f"answers 'not found' to a token that cannot read it). {_NO_NETWORK_HELP}"
        )
    network = isinstance(error, (_Unreachable, LocalEntryNotFoundError)) or (
        not isinstance(error, HfHubHTTPError)
        and (isinstance(error, OSError) or type(error).__module__.startswith(("httpx", "httpcore")))
    )
    if network:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (
            f"the Hugging Face hub ({constants.ENDPOINT}) is unreachable: no network, or a proxy/firewall "
            f"blocks it ({text}); {repo_id!r} is not in the local cache either. {_NO_NETWORK_HELP}"
        )
    return f"Could not download {repo_id!r} from the Hugging Face hub: {type(error).__name__}: {str(error)[:500]}"


def check_checkpoint_files(directory: str, name: str | None = None, head: str | None = None) -> None:
    """Refuses, by name, a checkpoint directory missing what its heads need, before anything runs.

    Every head needs ``config.json`` (checked by :func:`validate_model_path`), complete safetensors
    weights and the image processor's settings; ``head`` in :data:`TEXT_HEADS` (text prompts,
    exemplars, video text tracking) needs the tokenizer's files too.

    Raises:
        ModelLoadError: naming the missing or corrupt file
    """
    name = name or directory
    for shard in _shard_files(directory, name):
        _check_safetensors(os.path.join(directory, shard), name)
    if not any(os.path.isfile(os.path.join(directory, f)) for f in PROCESSOR_FILES):
        raise ModelLoadError(
            f"{name!r} has no image processor settings ({' or '.join(PROCESSOR_FILES)}): save the checkpoint's "
            "Sam3Processor with it (processor.save_pretrained(directory))"
        )
    if head in TEXT_HEADS and not any(
        all(os.path.isfile(os.path.join(directory, f)) for f in files) for files in TOKENIZER_FILES
    ):
        raise ModelLoadError(
            f"{name!r} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt), which text prompts "
            "and exemplars need: without them every prompt would be read as unknown tokens. Save the "
            "checkpoint's Sam3Processor with it (processor.save_pretrained(directory))"
        )


def _shard_files(directory: str, name: str) -> list[str]:
    """The safetensors files of a checkpoint directory: its index's shards, else ``model.safetensors``."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.isfile(index):
        return ["model.safetensors"]
    try:
        with open(index) as handle:
            return sorted(set(json.load(handle)["weight_map"].values()))
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{name!r}: model.safetensors.index.json is unreadable ({error})") from None


def _check_safetensors(path: str, name: str) -> None:
    """Refuses a missing, corrupt or truncated safetensors file, from its header alone."""
    file = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 + header_size or header_size <= 0:
                raise ValueError(f"its header declares {header_size} bytes, the file has {size}")
            header = json.loads(handle.read(header_size))
    except FileNotFoundError:
        raise ModelLoadError(f"{name!r} has no {file} (only safetensors weights are loaded)") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{name!r}: {file} is corrupt or truncated ({error}); download it again") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        raise ModelLoadError(
            f"{name!r}: {file} is truncated: {size} bytes where its header declares {expected}; download it again"
        )


def _from_pretrained(loader, model_path: str, token: str | None, **kwargs):
    """``loader(directory, **kwargs)`` on the checkpoint's local directory (from
    :func:`download_checkpoint`, so hub errors are classified once), after checking it holds the files
    the loader's head needs; every failure is a :class:`ModelLoadError`."""
    directory = download_checkpoint(model_path, token=token)
    owner = getattr(loader, "__self__", None)
    check_checkpoint_files(directory, name=model_path, head=getattr(owner, "__name__", None))
    try:
        return loader(directory, **kwargs)
    except ModelLoadError:
        raise
    except Exception as error:  # a checkpoint transformers cannot read: say what it said
        logger.debug("loading %s failed: %s", model_path, type(error).__name__)
        raise ModelLoadError(
            f"Could not load SAM3 from {model_path!r}: {type(error).__name__}: {str(error)[:500]}"
        ) from None


def load_processor(model_path: str, token: str | None = None):
    """The checkpoint's ``Sam3Processor`` (image processor + tokenizer)."""
    from transformers import Sam3Processor

    return _from_pretrained(Sam3Processor.from_pretrained, model_path, token)


def load_model(model_class, head: str, model_path: str, token: str | None = None):
    """A transformers ``model_class`` (the detector ``Sam3Model``, a video model), every weight from
    the checkpoint (else a :class:`ModelLoadError` naming ``head``), on the CPU, in eval mode."""
    model, info = _from_pretrained(
        model_class.from_pretrained, model_path, token, use_safetensors=True, output_loading_info=True
    )
    fail_on_missing(info.get("missing_keys"), head)
    return model.eval()


def load_tracker(model_path: str, token: str | None = None):
    """The tracker head (``Sam3TrackerModel``), every weight from the checkpoint, whatever its layout."""
    from transformers import Sam3TrackerModel

    # the tracker's own config, given explicitly: read from the sam3_video config.json, transformers
    # would warn "You are using a model of type sam3_video to instantiate a model of type sam3_tracker"
    model, info = _from_pretrained(
        Sam3TrackerModel.from_pretrained,
        model_path,
        token,
        config=tracker_config(download_checkpoint(model_path, token=token)),
        use_safetensors=True,
        output_loading_info=True,
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


def tracker_config(directory: str):
    """The ``Sam3TrackerConfig`` of a local checkpoint: its ``tracker_config`` (a ``sam3_video``
    checkpoint) or the whole config (a ``sam3_tracker`` one)."""
    from transformers import Sam3TrackerConfig

    with open(os.path.join(directory, "config.json")) as handle:
        config = json.load(handle)
    config = config.get("tracker_config") or config
    config.pop("model_type", None)  # sam3_tracker_video's; its fields are the tracker's and more
    return Sam3TrackerConfig(**config)


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

    directory = download_checkpoint(model_path, token=token)  # its files checked
    tensors = {}
    for shard in _shard_files(directory, model_path):
        with safe_open(os.path.join(directory, shard), framework="pt") as handle:
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
