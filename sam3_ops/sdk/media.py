"""One in-process run for every medium: images and videos are two implementations of :class:`Media`
(:data:`~sam3_ops.sdk.images.IMAGES`, :data:`~sam3_ops.sdk.video.VIDEOS`) on one engine pool
(:func:`build_engine`), and :func:`segment_in_process` is the one flow that runs either: settings
resolved and checked, the model loaded, the run recorded (:class:`~sam3_ops.sdk.runs.Run`), the
samples segmented and written, the summary stored. :func:`~sam3_ops.sdk.segment.segment`
dispatches here, and each shard of a sharded run (:mod:`~sam3_ops.sdk.shards`) runs here too.
"""

from __future__ import annotations

from ..core.checkpoint import device_problem
from ..core.engine import Sam3Engine
from ..core.pool import POOLED_FEATURE_CACHE_SIZE, POOLED_MASK_CACHE_SIZE, get_engine, get_video_engine
from ..core.video import Sam3VideoEngine
from .runs import Run, SegmentResult
from .settings import RunOptions, Sam3Settings, SettingsError


def build_engine(
    settings: Sam3Settings,
    token: str | None = None,
    reuse: bool = True,
    cache_features: bool = False,
    media_type: str = "image",
) -> Sam3Engine | Sam3VideoEngine:
    """The engine for ``settings`` and ``media_type`` (``"image"`` or ``"video"``; the pooled one with
    ``reuse``, :mod:`~sam3_ops.core.pool`), the weights its mode needs loaded now (a clear error before
    a long run rather than on every batch). ``token`` is used to load only. A new image engine gets
    the pool's feature and mask caches with ``cache_features`` (pooled ones have them).

    Raises:
        SettingsError: the settings' device is not on this machine
        ModelLoadError: the checkpoint cannot be loaded
    """
    problem = device_problem(settings.device)
    if problem:
        raise SettingsError("device", problem)
    if media_type == "video":
        engine = get_video_engine(settings.model_path, settings.device) if reuse else None
        engine = engine or Sam3VideoEngine(settings.model_path, device=settings.device)
        return engine.load("text" if settings.mode == "text" else "prompts", token)
    if reuse:
        engine = get_engine(settings.model_path, settings.device, settings.compile)
    else:
        sizes = (POOLED_FEATURE_CACHE_SIZE, POOLED_MASK_CACHE_SIZE) if cache_features else (0, 0)
        engine = Sam3Engine(
            settings.model_path,
            device=settings.device,
            compile=settings.compile,
            feature_cache_size=sizes[0],
            mask_cache_size=sizes[1],
        )
    return engine.load(settings.mode, token)


class Media:
    """What differs between media in a run; everything else is :func:`segment_in_process`'s.

    Attributes:
        name: ``"image"`` or ``"video"`` (the media type of the collections it runs on)
        model_fields: the prompt fields a run given a ready model may still choose
    """

    name = ""
    model_fields: tuple[str, ...] = ()

    def output_field(self, label_field: str) -> str:
        """``label_field`` as this medium writes it."""
        return label_field

    def prepare(self, samples, label_field: str, settings: Sam3Settings, run: RunOptions) -> Sam3Settings:
        """Checks everything before anything is written; returns the settings as the run records them.

        Raises:
            ValueError: a setting or run option that does not apply here, a bad output or prompt field
        """
        raise NotImplementedError

    def load(self, settings: Sam3Settings, run: RunOptions):
        """The model for ``settings``, its weights loaded now (a clear error before a long run)."""
        raise NotImplementedError

    def pending(self, samples, label_field: str):
        """The samples of ``samples`` with no result in ``label_field`` yet (resume)."""
        raise NotImplementedError

    def segment(self, target, label_field: str, model, settings: Sam3Settings, run: RunOptions) -> None:
        """Segments and writes ``target``; the model counts what it processed and skipped."""
        raise NotImplementedError

    def declare(self, samples, label_field: str) -> None:
        """Declares the fields the run writes, if the schema lacks them."""
        raise NotImplementedError


def resolve_settings(media: Media, model, settings: dict) -> Sam3Settings:
    """The settings of a run: ``settings`` (keywords of :class:`~sam3_ops.sdk.settings.Sam3Settings`),
    or a given ``model``'s, with the prompt fields ``media.model_fields`` may still choose.

    Raises:
        ValueError: a bad setting; both a model and other settings
    """
    if model is None:
        return Sam3Settings(**settings)
    fields = {k: v for k, v in settings.items() if k in media.model_fields}
    if len(fields) < len(settings):
        others = sorted(set(settings) - set(fields))
        raise ValueError(f"give either a model or settings ({', '.join(others)}), not both")
    return model.settings.replace(**fields)


def segment_in_process(
    media: Media, samples, label_field: str, run: RunOptions, settings: Sam3Settings, model=None
) -> SegmentResult:
    """Segments ``samples`` into ``label_field`` in this process: every check first, then the run
    record (an interrupted run leaves its provenance, and resumes with it), then the segmentation,
    then the summary (of this call: a given model that ran before counts only what this call
    segmented). ``run.shards`` is ignored (the caller dispatched).

    Args:
        media: :data:`~sam3_ops.sdk.images.IMAGES` or :data:`~sam3_ops.sdk.video.VIDEOS`
        samples: a dataset or view of that medium
        label_field: the ``Detections`` field to write
        run: the run options, validated
        settings: the run's :class:`~sam3_ops.sdk.settings.Sam3Settings` (:func:`resolve_settings`)
        model (None): a model from :func:`~sam3_ops.sdk.segment.load_model` to run (its settings
            with the prompt fields ``settings`` chose), instead of building one

    Raises:
        ValueError: a bad output or prompt field, a setting that does not apply to the medium
        ModelLoadError: the checkpoint cannot be loaded
    """
    label_field = media.output_field(label_field)
    settings = media.prepare(samples, label_field, settings, run)
    model = model or media.load(settings, run)
    media.declare(samples, label_field)
    recorded = Run(samples, label_field, settings, record=run.record).start()
    target = media.pending(samples, label_field) if run.only_missing else samples
    start = model.mark()  # a model that ran before reports this call's counts only
    if len(target):
        media.segment(target, label_field, model, settings, run)
    media.declare(samples, label_field)
    recorded.add(model.counts(since=start))
    return recorded.finish()
