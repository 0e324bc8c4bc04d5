"""The engine pool: one :class:`~sam3_ops.core.engine.Sam3Engine` (images) and one
:class:`~sam3_ops.core.video.Sam3VideoEngine` (videos) per set of weights in a process.

An engine is keyed by its kind and what its weights depend on: the checkpoint, the device and
``compile`` (images only). Nothing else: a run's mode, thresholds and mask size are arguments of
each call, and a token is used to load and not kept, so the App's operators, its panel and SDK
calls in one process share loaded weights without changing each other's results.
"""

from __future__ import annotations

import os
import threading

from .checkpoint import DEFAULT_MODEL, resolve_device, validate_model_path
from .engine import Sam3Engine
from .video import Sam3VideoEngine

#: images whose vision features a pooled engine keeps (interactive refinement re-runs one image)
POOLED_FEATURE_CACHE_SIZE = 8
#: hits whose low-resolution mask logits a pooled engine keeps (each click of a refinement starts
#: from the previous mask: 166 KB each at full size)
POOLED_MASK_CACHE_SIZE = 256

_engines: dict[tuple[type, tuple[str, str, bool]], Sam3Engine | Sam3VideoEngine] = {}
_lock = threading.Lock()


def engine_key(
    model_path: str | os.PathLike = DEFAULT_MODEL, device=None, compile: bool = False
) -> tuple[str, str, bool]:
    """What a pooled engine is keyed by: ``(checkpoint, device, compile)``, normalised."""
    return validate_model_path(model_path), str(resolve_device(device)), bool(compile)


def _pooled(kind: type, key: tuple[str, str, bool], **options):
    """The pooled ``kind`` engine for ``key``, created (with ``options``) on first use."""
    with _lock:
        engine = _engines.get((kind, key))
        if engine is None:
            engine = _engines[kind, key] = kind(key[0], device=key[1], **options)
        return engine


def get_engine(model_path: str | os.PathLike = DEFAULT_MODEL, device=None, compile: bool = False) -> Sam3Engine:
    """The process-wide image engine for ``(model_path, device, compile)``, created on first use.

    Loaded weights stay in memory, so a second run (an operator run again, the panel) does not
    load them again. The engine loads its heads lazily; call ``engine.load(mode, token)`` to load
    the ones a mode needs with a token.
    """
    key = engine_key(model_path, device, compile)
    return _pooled(
        Sam3Engine,
        key,
        compile=key[2],
        feature_cache_size=POOLED_FEATURE_CACHE_SIZE,
        mask_cache_size=POOLED_MASK_CACHE_SIZE,
    )


def get_video_engine(model_path: str | os.PathLike = DEFAULT_MODEL, device=None) -> Sam3VideoEngine:
    """The process-wide video engine for ``(model_path, device)``, created on first use (its models
    load lazily: ``engine.load(mode, token)``). Runs never change it: every option is an argument
    of its calls."""
    return _pooled(Sam3VideoEngine, engine_key(model_path, device))


def clear_pool() -> None:
    """Forgets every pooled engine, image and video (their memory is freed once no caller holds them)."""
    with _lock:
        _engines.clear()
