"""The SDK's entry points: :func:`load_model` (a model for ``dataset.apply_model``) and
:func:`segment` (apply_model + checks + the run record, in one call). The operators, QA, the
refinement panel and the demo call these; there is no other way in.

This module is the top of the SDK: it checks what it is given (the collection, the run options,
:class:`~sam3_ops.sdk.settings.RunOptions`) and dispatches over media and execution: images in this
process (:mod:`~sam3_ops.sdk.images`), videos (:mod:`~sam3_ops.sdk.video`), sharded runs
(:mod:`~sam3_ops.sdk.shards`). Those modules never import this one.
"""

from __future__ import annotations

import os

from fiftyone.core.collections import SampleCollection

from ..core.checkpoint import DEFAULT_MODEL
from .images import IMAGES, build_engine, check_prompt_fields, without_image_results
from .media import resolve_settings, segment_in_process
from .model import Sam3Model
from .runs import SegmentResult
from .settings import DEFAULT_BATCH_SIZE, RunOptions, Sam3Settings, as_model_path, check_media
from .shards import segment_sharded
from .video import VIDEOS, Sam3VideoModel, without_video_results

#: names other modules import from here (defined in the modules below it)
__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SegmentResult",
    "build_engine",
    "check_prompt_fields",
    "load_model",
    "segment",
    "split_options",
    "without_results",
]


def load_model(
    model_path: str | os.PathLike = DEFAULT_MODEL,
    mode: str = "text",
    prompts=None,
    *,
    token: str | None = None,
    reuse: bool = False,
    cache_features: bool = False,
    media_type: str = "image",
    **settings,
) -> Sam3Model:
    """Loads SAM3 as a FiftyOne model for ``dataset.apply_model(...)``.

    Args:
        model_path ("facebook/sam3"): a hub id, or a local directory in the ``save_pretrained``
            layout (``sam3_ops.testing.build_tiny_checkpoint`` writes a tiny one)
        mode ("text"): ``"text"`` (every instance of each prompt), ``"boxes"`` (one mask per box of
            ``prompt_field``), ``"exemplars"`` (``prompt_field`` boxes as visual examples),
            ``"points"`` (one mask per keypoint object of a ``Keypoints`` ``prompt_field``; per-point
            ``sam_labels`` 1/0) or ``"auto"`` (segment everything: a grid of point prompts)
        prompts (None): text prompts: strings, or dicts ``{"text", "label", "threshold"}`` (the
            label the hits get, default the text; a threshold of its own, default ``threshold``).
            Required in ``text`` mode, optional in ``exemplars``, not allowed in ``boxes``
        token (None): a Hugging Face token, used to load and not kept; ``None`` reads ``HF_TOKEN``
        reuse (False): share one in-memory engine per ``(model_path, device, compile)`` in this process
        cache_features (False): keep the last images' vision features (re-running one image skips
            its image encoder) and the written masks' low-resolution logits (a prompt keypoint with
            ``sam3_refines=<detection id>`` then refines that mask rather than restarting)
        media_type ("image"): ``"video"`` for a :class:`~sam3_ops.sdk.video.Sam3VideoModel`, which
            tracks through each video of a video dataset (modes ``text``, ``boxes``, ``points``;
            settings ``direction``, ``max_objects``) and writes frame-level ``Detections``
        **settings: the rest of :class:`~sam3_ops.sdk.settings.Sam3Settings`, each described there
            (the README's settings table gives the defaults): ``threshold``, ``mask_threshold``,
            ``device``, ``max_image_pixels``, ``max_mask_size``, ``mask_dir``, ``compile``, the prompt
            fields (``prompt_field``, ``negative_field``, if not given to ``apply_model``), ``multimask``,
            de-duplication and limits (``nms_iou``, ``nms_per_label``, ``nms_containment``,
            ``max_detections``, ``min_area``) and ``auto`` mode's (``points_per_side``,
            ``pred_iou_threshold``, ``stability_threshold``, ``auto_label``)

    Returns:
        a :class:`~sam3_ops.sdk.model.Sam3Model`

    Raises:
        ValueError: a bad setting (:class:`~sam3_ops.sdk.settings.SettingsError`, naming it)
        ModelLoadError: the checkpoint does not exist, cannot be reached, or is incomplete
    """
    model_path = as_model_path(model_path)  # a wrong type is named here, before the other settings
    Sam3Settings.check_names(settings)
    if media_type not in ("image", "video"):
        raise ValueError(f"media_type must be 'image' or 'video', not {media_type!r}")
    resolved = Sam3Settings(model_path=model_path, mode=mode, prompts=prompts, **settings)
    check_media(resolved, media_type)  # a setting of the other medium given: named, not ignored
    if media_type == "video":  # tracks through each video (apply_model's route for video models)
        return Sam3VideoModel(resolved, engine=build_engine(resolved, token, reuse, media_type="video"))
    engine = build_engine(resolved, token, reuse, cache_features)
    return Sam3Model(resolved, engine=engine, cache_features=cache_features)


def without_results(samples, label_field: str):
    """The samples of ``samples`` that have no value in ``label_field`` yet: resume an interrupted
    run with ``sam3_ops.without_results(dataset, "sam3").apply_model(model, label_field="sam3")``.
    Samples that were segmented (even with no hits: an empty ``Detections``) are not redone. On a
    video collection: the videos not marked done (see :mod:`sam3_ops.sdk.video`)."""
    if getattr(samples, "media_type", None) == "video":
        return without_video_results(samples, label_field)
    return without_image_results(samples, label_field)


def split_options(options: dict) -> tuple[dict, dict]:
    """``options`` split into settings (:class:`~sam3_ops.sdk.settings.Sam3Settings` names) and run
    options (everything else: ``token``, ``batch_size``, ``num_workers``, ``progress``, ...)."""
    names = set(Sam3Settings.names())
    return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}


# The one-call SDK entry point, in apply_model's terms: its run options are apply_model's keywords
# (checked together as RunOptions), its settings Sam3Settings'; hence more than eight parameters.
def segment(
    samples,
    label_field: str = "sam3",
    *,
    token: str | None = None,
    reuse: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    skip_failures: bool = True,
    progress=None,
    only_missing: bool = False,
    output_dir: str | None = None,
    record: bool = True,
    model: Sam3Model | None = None,
    shards: int | None = None,
    **settings,
) -> SegmentResult:
    """Segments ``samples`` with SAM3 into ``label_field`` and records the run: the one-call SDK entry point.

    ``sam3_ops.segment(dataset, "sam3", prompts=["cat", "dog"])`` is
    ``dataset.apply_model(sam3_ops.load_model(prompts=["cat", "dog"]), label_field="sam3")`` plus
    the checks a curator expects before a long run and a run record on FiftyOne's runs framework
    (``dataset.get_run_info("sam3_sam3")``) holding every setting, so the field can be refined and
    re-run exactly.

    Args:
        samples: a dataset or view; on a video collection each video is tracked and
            ``frames.<label_field>`` written, streamed, per video (:data:`~sam3_ops.sdk.video.VIDEOS`)
        label_field ("sam3"): the ``Detections`` field to write (an existing field of another type is
            never overwritten; an existing ``Detections`` field is replaced on ``samples``)
        token (None): a Hugging Face token, used to load and not kept; ``None`` reads ``HF_TOKEN``
        reuse (True): run on this process's pooled engine for the checkpoint (weights loaded once)
        batch_size (8), num_workers (None), skip_failures (True), progress (None), output_dir (None):
            as for ``apply_model``
        only_missing (False): segment only the samples without a value in ``label_field`` (resume)
        record (True): record the run on the dataset
        model (None): a model from :func:`load_model` to run, instead of building one from
            ``settings`` (then only ``prompt_field`` / ``negative_field`` may be given)
        shards (None): split the run into this many delegated operations on FiftyOne's queue, run
            by ``fiftyone delegated launch`` workers (one per GPU, any machine on the database):
            returns at once with the queued run (:mod:`~sam3_ops.sdk.shards`)
        **settings: :class:`~sam3_ops.sdk.settings.Sam3Settings` (``model_path``, ``mode``,
            ``prompts``, ``threshold``, ``prompt_field``, ...; see :func:`load_model`)

    Returns:
        a :class:`SegmentResult`; with ``shards``, a :class:`~sam3_ops.sdk.shards.ShardedRun`

    Raises:
        ValueError: ``samples`` is not a dataset or view (a ``Sample``, say); a bad setting or run
            option (:class:`~sam3_ops.sdk.settings.SettingsError`, naming it, raised before anything
            is written); a bad output or prompt field
        ModelLoadError: the checkpoint cannot be loaded
    """
    if not isinstance(samples, SampleCollection):
        raise ValueError(
            f"segment needs a dataset or a view, not a {type(samples).__name__}: to segment one sample, "
            "pass dataset.select(sample.id)"
        )
    if model is not None and not isinstance(model, Sam3Model | Sam3VideoModel):
        raise ValueError(f"model must be a model from sam3_ops.load_model, not {type(model).__name__}")
    # every run option checked before anything is written (the settings are checked by each route,
    # as its first step, by Sam3Settings)
    Sam3Settings.check_names(settings)
    run = RunOptions(
        batch_size=batch_size,
        num_workers=num_workers,
        skip_failures=skip_failures,
        only_missing=only_missing,
        record=record,
        reuse=reuse,
        shards=shards,
        output_dir=output_dir,
        token=token,
        progress=progress,
    )
    if run.shards is not None:  # queued, one delegated operation per shard
        return segment_sharded(samples, label_field, run, model=model, **settings)
    media = VIDEOS if samples.media_type == "video" else IMAGES  # videos: tracked, streamed per video
    return segment_in_process(media, samples, label_field, run, resolve_settings(media, model, settings), model)
