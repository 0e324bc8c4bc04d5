"""Images as a :class:`~sam3_ops.sdk.media.Media`: :data:`IMAGES` segments an image collection in this
process through ``apply_model``; :func:`~sam3_ops.sdk.segment.segment` dispatches here for images
(videos: :mod:`~sam3_ops.sdk.video`; sharded runs: :mod:`~sam3_ops.sdk.shards`, whose shards run this).
Also the checks an image run makes (:func:`check_image_run`).
"""

from __future__ import annotations

from .fields import check_label_field, ensure_detections_field, output_field_problem, prompt_label_type
from .media import Media, build_engine
from .model import Sam3Model
from .settings import RunOptions, Sam3Settings, check_media


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
    check_media(settings, "image")
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


class ImageMedia(Media):
    """Images: segmented in batches through ``apply_model`` (data-loader workers decode, the model
    runs a batch at a time, FiftyOne writes each batch)."""

    name = "image"
    model_fields = ("prompt_field", "negative_field")

    def prepare(self, samples, label_field: str, settings: Sam3Settings, run: RunOptions) -> Sam3Settings:
        check_image_run(samples, label_field, settings)
        return settings

    def load(self, settings: Sam3Settings, run: RunOptions) -> Sam3Model:
        return Sam3Model(settings, engine=build_engine(settings, run.token, run.reuse))

    def pending(self, samples, label_field: str):
        return without_image_results(samples, label_field)

    def segment(self, target, label_field: str, model, settings: Sam3Settings, run: RunOptions) -> None:
        # prompt fields chosen for a given model's run go to apply_model, as it allows
        fields = {
            name: getattr(settings, name)
            for name in self.model_fields
            if getattr(settings, name) and getattr(settings, name) != getattr(model.settings, name)
        }
        target.apply_model(
            model,
            label_field=label_field,
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            skip_failures=run.skip_failures,
            progress=run.progress,
            output_dir=run.output_dir,
            **fields,
        )

    def declare(self, samples, label_field: str) -> None:
        ensure_detections_field(samples, label_field)


#: the image medium of :func:`~sam3_ops.sdk.media.segment_in_process`
IMAGES = ImageMedia()
