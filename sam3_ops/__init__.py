"""sam3_ops: SAM3 (Segment Anything 3) for dataset curation in FiftyOne.

The public API::

    import sam3_ops

    model = sam3_ops.load_model("facebook/sam3", mode="text", prompts=["cat", "dog"])
    dataset.apply_model(model, label_field="sam3", batch_size=8, num_workers=4)

    boxes = sam3_ops.load_model("facebook/sam3", mode="boxes")
    dataset.apply_model(boxes, label_field="gt_masks", prompt_field="ground_truth")

Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import os
import threading

__all__ = [
    "load_model",
    "get_engine",
    "without_results",
    "review_annotations",
    "upgrade_boxes_to_masks",
    "restore_field",
    "accept_reviewed",
    "Sam3Engine",
    "Sam3Model",
    "ModelLoadError",
    "DEFAULT_MODEL",
    "MODES",
]
__version__ = "0.1.0"

DEFAULT_MODEL = "facebook/sam3"
MODES = ("text", "boxes", "exemplars")

_engines: dict = {}
_engines_lock = threading.Lock()


def get_engine(model_path: str | os.PathLike = DEFAULT_MODEL, device: str | None = None, token: str | None = None):
    """The process-wide :class:`~sam3_ops.engine.Sam3Engine` for ``(model_path, device)``.

    Loaded weights stay in memory, so a second run (an App operator run again, the panel) does
    not load them again.
    """
    from .engine import Sam3Engine, resolve_device, validate_model_path

    key = (validate_model_path(model_path), str(resolve_device(device)))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = Sam3Engine(key[0], device=key[1], token=token, feature_cache_size=8)
            _engines[key] = engine
        return engine


def load_model(
    model_path: str | os.PathLike = DEFAULT_MODEL,
    mode: str = "text",
    prompts=None,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    device: str | None = None,
    token: str | None = None,
    reuse: bool = False,
    max_image_pixels: int | None = None,
    max_mask_size: int | None = 2048,
    mask_dir: str | None = None,
    compile: bool = False,
):
    """Loads SAM3 as a FiftyOne model for ``dataset.apply_model(...)``.

    Args:
        model_path ("facebook/sam3"): a hub id, or a local directory in the ``save_pretrained``
            layout (``sam3_ops.testing.build_tiny_checkpoint`` writes a tiny one)
        mode ("text"): ``"text"`` (every instance of each prompt), ``"boxes"`` (one mask per box of
            ``prompt_field``) or ``"exemplars"`` (``prompt_field`` boxes as visual examples)
        prompts (None): text prompts; each hit's label is its prompt. Required in ``text`` mode,
            optional in ``exemplars``, not allowed in ``boxes``
        threshold (0.5): the score above which a detector hit is kept (``boxes`` mode writes one
            mask per box whatever its score; ``confidence`` holds the predicted mask IoU)
        mask_threshold (0.5): the probability above which a pixel is in a mask
        device (None): ``"cuda"``, ``"mps"``, ``"cpu"``, or ``None`` for the best available
        token (None): a Hugging Face token; ``None`` reads ``HF_TOKEN``
        reuse (False): share one in-memory engine per ``(model_path, device)`` across calls
        max_image_pixels (None): refuse images larger than this many pixels (default ~268 M)
        max_mask_size (2048): the longest side of a stored mask; larger boxes get a mask scaled
            down to it (FiftyOne stretches masks over their boxes; SAM3's masks are 288 x 288)
        mask_dir (None): where masks go as PNG files (``mask_path``) when a sample's labels would
            exceed MongoDB's 16 MB document limit; default ``<fo.config.default_dataset_dir>/sam3_masks``.
            To keep every mask on disk, pass ``output_dir=`` to ``apply_model``
        compile (False): ``torch.compile`` the image encoder (long GPU runs; not with ``reuse``)

    Returns:
        a :class:`~sam3_ops.model.Sam3Model`

    Raises:
        ValueError: bad ``mode``, ``prompts`` or thresholds
        ModelLoadError: the checkpoint does not exist, cannot be reached, or is incomplete
    """
    from .engine import Sam3Engine
    from .images import DEFAULT_MAX_PIXELS
    from .model import Sam3Config, Sam3Model

    config = Sam3Config(
        model_path=os.fspath(model_path),
        mode=mode,
        prompts=prompts,
        threshold=threshold,
        mask_threshold=mask_threshold,
        device=device,
        max_image_pixels=max_image_pixels or DEFAULT_MAX_PIXELS,
        mask_dir=mask_dir,
    )
    if reuse and compile:
        raise ValueError("compile=True needs an engine of its own: pass reuse=False")
    engine = (
        get_engine(model_path, device, token)
        if reuse
        else Sam3Engine(model_path, device=device, token=token, compile=compile)
    )
    engine.max_mask_size = max_mask_size
    engine.load(mode)  # fail now, with a clear message, rather than on every batch of a long run
    return Sam3Model(config, engine=engine)


def without_results(samples, label_field: str):
    """The samples of ``samples`` that have no value in ``label_field`` yet: resume an interrupted
    run with ``sam3_ops.without_results(dataset, "sam3").apply_model(model, label_field="sam3")``.
    Samples that were segmented (even with no hits: an empty ``Detections``) are not redone."""
    return samples.exists(label_field, False)


def __getattr__(name):
    if name in ("Sam3Engine", "ModelLoadError"):
        from . import engine

        return getattr(engine, name)
    if name in ("review_annotations", "upgrade_boxes_to_masks", "restore_field", "accept_reviewed"):
        from . import qa

        return getattr(qa, name)
    if name == "Sam3Model":
        from .model import Sam3Model

        return Sam3Model
    raise AttributeError(f"module 'sam3_ops' has no attribute {name!r}")
