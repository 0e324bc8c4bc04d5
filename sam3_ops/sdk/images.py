"""The image run: an image collection segmented in this process through ``apply_model``, its run
recorded. :func:`~sam3_ops.sdk.segment.segment` dispatches here for images (videos go to
:mod:`~sam3_ops.sdk.video`, sharded runs to :mod:`~sam3_ops.sdk.shards`, whose shards run this).
"""

from __future__ import annotations

from ..core.checkpoint import device_problem
from ..core.engine import Sam3Engine
from ..core.pool import POOLED_FEATURE_CACHE_SIZE, POOLED_MASK_CACHE_SIZE, get_engine
from .fields import check_label_field, ensure_detections_field, output_field_problem, prompt_label_type
from .model import Sam3Model
from .runs import SegmentResult, finish_run, record_run, run_key
from .settings import RunOptions, Sam3Settings, SettingsError, media_problem


def build_engine(
    settings: Sam3Settings, token: str | None = None, reuse: bool = True, cache_features: bool = False
) -> Sam3Engine:
    """The engine for ``settings`` (the pooled one with ``reuse``), its heads for the mode loaded now
    (a clear error before a long run rather than on every batch). ``token`` is used to load only.
    A new engine gets the pool's feature and mask caches with ``cache_features`` (pooled ones have them).

    Raises:
        SettingsError: the settings' device is not on this machine
        ModelLoadError: the checkpoint cannot be loaded
    """
    problem = device_problem(settings.device)
    if problem:
        raise SettingsError("device", problem)
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


def without_image_results(samples, label_field: str):
    """The samples of the image collection ``samples`` with no value in ``label_field`` yet (an
    empty ``Detections``, a sample segmented with no hits, counts as a value)."""
    return samples.exists(label_field, False)


def check_image_run(samples, label_field: str, settings: Sam3Settings) -> None:
    """Everything an image run checks before it writes: the settings apply to images (a video
    setting given is named, not ignored), ``label_field`` can be written (never a prompt field),
    and the prompt fields exist with the right type.

    Raises:
        SettingsError: a setting that does not apply to images
        ValueError: a bad output or prompt field
    """
    problem = media_problem(settings, "image")
    if problem:
        raise problem
    reserved = tuple(name for name in (settings.prompt_field, settings.negative_field) if name)
    problem = output_field_problem(samples, label_field, overwrite=True, reserved=reserved)
    if problem:
        raise ValueError(problem)
    check_prompt_fields(samples, settings)


def check_prompt_fields(samples, settings: Sam3Settings) -> None:
    """Checks that the prompt fields of ``settings`` are fields of ``samples`` of the right type:
    ``Keypoints`` for the prompt field in ``points`` mode, ``Detections`` otherwise.

    Raises:
        ValueError: naming the field and the fields of the right type there are
    """
    if settings.prompt_field:
        check_label_field(samples, settings.prompt_field, prompt_label_type(settings.mode), what="prompt_field")
    if settings.negative_field:
        check_label_field(samples, settings.negative_field, what="negative_field")


def segment_images(
    samples, label_field: str, run: RunOptions, model: Sam3Model | None = None, **settings
) -> SegmentResult:
    """Segments the image collection ``samples`` into ``label_field`` in this process: every check
    first, then the run record (an interrupted run leaves its provenance and resumes with it), then
    ``apply_model``, then the summary (of this call: a given model that ran before counts only
    what this call segmented). ``run.shards`` is ignored (the caller dispatched).

    Args:
        samples: an image dataset or view
        label_field: the ``Detections`` field to write
        run: the run options, validated
        model (None): a model from :func:`~sam3_ops.sdk.segment.load_model`, instead of ``settings``
            (then only ``prompt_field`` / ``negative_field`` may be given)
        **settings: :class:`~sam3_ops.sdk.settings.Sam3Settings`

    Raises:
        ValueError: a bad setting, output field or prompt field; both a model and settings
        ModelLoadError: the checkpoint cannot be loaded
    """
    # a given model's prompt fields may still be chosen here, as apply_model allows
    fields = {k: settings.pop(k) for k in ("prompt_field", "negative_field") if k in settings} if model else {}
    if model is not None and settings:
        raise ValueError(f"give either a model or settings ({', '.join(sorted(settings))}), not both")
    resolved = model.settings.replace(**fields) if model is not None else Sam3Settings(**settings)
    check_image_run(samples, label_field, resolved)
    model = model or Sam3Model(resolved, engine=build_engine(resolved, run.token, run.reuse))
    if run.record:  # before the run: an interrupted run leaves its provenance, and resumes with it
        record_run(samples, label_field, resolved)
    target = without_image_results(samples, label_field) if run.only_missing else samples
    start = model.mark()  # a model that ran before reports this call's counts only
    if len(target):
        target.apply_model(
            model,
            label_field=label_field,
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            skip_failures=run.skip_failures,
            progress=run.progress,
            output_dir=run.output_dir,
            **{key: value for key, value in fields.items() if value},
        )
    ensure_detections_field(samples, label_field)
    summary = model.summary(since=start)
    if run.record:
        finish_run(samples, label_field, resolved, summary)
    return SegmentResult(label_field, run_key(label_field) if run.record else None, **summary)
