"""The FiftyOne ``Model`` that ``dataset.apply_model`` runs: SAM3 through :class:`Sam3Engine`.

A ``SupportsGetItem`` + ``TorchModelMixin`` model (not ``SamplesMixin``): FiftyOne's data loader
runs :class:`Sam3GetItem` in its workers, which decodes each image and converts its prompt fields
to pixel boxes; :meth:`Sam3Model.predict_all` sends the whole batch to the engine at once.

A sample that cannot be used (missing or corrupt image, ...) never fails its batch: the loader
hands over an error record, the model logs it, counts it in :attr:`Sam3Model.failures`, and
returns ``None`` for it, so FiftyOne writes nothing to that sample and any value already in the
field stays as it was.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import fiftyone as fo
import fiftyone.core.models as fom
import fiftyone.core.utils as fou
import fiftyone.utils.torch as fout

from .convert import prompts_from_detections, to_detections
from .engine import DEFAULT_MODEL, Sam3Engine
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from .prompts import is_finite_number, validate_mode, validate_prompts

logger = logging.getLogger(__name__)

PROMPT_FIELD = "prompt_field"
NEGATIVE_FIELD = "negative_field"


@dataclass
class Sam3Config:
    """What a :class:`Sam3Model` runs: see :func:`sam3_ops.load_model` for each setting."""

    model_path: str = DEFAULT_MODEL
    mode: str = "text"
    prompts: tuple[str, ...] = ()
    threshold: float = 0.5
    mask_threshold: float = 0.5
    device: str | None = None
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS
    #: where masks go when a sample's labels would not fit in a MongoDB document
    mask_dir: str | None = None
    max_label_bytes: int = 12 * 1024 * 1024  # below MongoDB's 16 MB, leaving room for the rest

    def __post_init__(self):
        validate_mode(self.mode)
        self.prompts = validate_prompts(self.prompts, self.mode)
        for name in ("threshold", "mask_threshold"):
            value = getattr(self, name)
            if not is_finite_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], not {value!r}")


@dataclass
class Failure:
    """A sample the model could not segment, and why."""

    filepath: str
    reason: str


@dataclass
class _Item:
    """What a loader worker hands to :meth:`Sam3Model.predict_all` for one sample."""

    filepath: str
    image: object = None
    prompts: object = None
    prompt_ids: list = field(default_factory=list)
    error: str | None = None
    warnings: list = field(default_factory=list)  # logged in the main process, not the worker


class Sam3GetItem(fout.GetItem):
    """Loads one sample for SAM3, in a data-loader worker: the image and its prompt boxes.

    ``required_keys`` are ``filepath`` plus ``prompt_field`` / ``negative_field`` when the caller
    maps them (``apply_model(..., prompt_field="ground_truth")``). Never raises: a problem becomes
    an error record, so one bad sample cannot fail its batch.
    """

    def __init__(self, config: Sam3Config, field_mapping=None):
        self.config = config
        self._keys = ["filepath"] + [k for k in (PROMPT_FIELD, NEGATIVE_FIELD) if field_mapping and k in field_mapping]
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self):
        return self._keys

    def __call__(self, d):
        filepath = d.get("filepath") or ""
        try:
            image = load_image(filepath, max_pixels=self.config.max_image_pixels)
            height, width = image.shape[:2]
            prompts, prompt_ids, warnings = prompts_from_detections(
                _detections_or_none(d.get(PROMPT_FIELD), PROMPT_FIELD),
                _detections_or_none(d.get(NEGATIVE_FIELD), NEGATIVE_FIELD),
                width,
                height,
                texts=self.config.prompts,
                mode=self.config.mode,
            )
            return _Item(filepath, image, prompts, prompt_ids, warnings=warnings)
        except ImageLoadError as error:
            return _Item(filepath, error=str(error))
        except Exception as error:  # a worker must not fail the batch: report it per sample
            return _Item(filepath, error=f"{type(error).__name__}: {error}")


def _detections_or_none(value, key):
    if value is None or hasattr(value, "detections"):
        return value
    raise ValueError(f"{key} must hold Detections, but this sample's value is a {type(value).__name__}")


class Sam3Model(fom.Model, fom.SupportsGetItem, fom.TorchModelMixin):
    """SAM3 as a FiftyOne model for ``apply_model``; build it with :func:`sam3_ops.load_model`.

    Attributes:
        failures: the samples skipped so far, with reasons (:class:`Failure`)
        num_processed, num_detections: counts of samples segmented and detections produced
    """

    def __init__(self, config: Sam3Config, engine: Sam3Engine | None = None, token: str | None = None):
        self.config = config
        self.engine = engine or Sam3Engine(config.model_path, device=config.device, token=token)
        self._preprocess = False
        self.failures: list[Failure] = []
        self.num_processed = 0
        self.num_detections = 0

    def __repr__(self) -> str:
        return f"Sam3Model(mode={self.config.mode!r}, prompts={list(self.config.prompts)!r}, engine={self.engine!r})"

    # -- the Model interface --------------------------------------------------------------------

    @property
    def media_type(self):
        return "image"

    @property
    def has_logits(self):
        return False

    @property
    def has_embeddings(self):
        return False

    @property
    def ragged_batches(self):
        # False so that FiftyOne honours batch_size; images of any sizes still pass, because
        # collate_fn hands the batch over as a list
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def has_collate_fn(self):
        return True

    @staticmethod
    def collate_fn(batch):
        return list(batch)

    @property
    def _using_gpu(self):
        return self.engine.device.type == "cuda"

    def build_get_item(self, field_mapping=None):
        if self.config.mode in ("boxes", "exemplars") and not (field_mapping and PROMPT_FIELD in field_mapping):
            raise ValueError(
                f"mode={self.config.mode!r} needs the boxes to prompt with: "
                "apply_model(model, label_field=..., prompt_field='<a Detections field>')"
            )
        return Sam3GetItem(self.config, field_mapping=field_mapping)

    def predict(self, arg):
        """Segments one image: a path, an RGB uint8 array, or an item from :class:`Sam3GetItem`."""
        return self.predict_all([arg])[0]

    def predict_all(self, args):
        """Segments a batch; returns one ``fo.Detections`` per input, or ``None`` for a failure."""
        items = [_as_item(arg, self.config) for arg in args]
        good = [item for item in items if item.error is None]
        for item in items:
            if item.error is not None:
                self._fail(item, item.error)
            for warning in item.warnings:
                logger.warning("%s: %s", item.filepath, warning)
            item.warnings = []
        outputs: dict[int, object] = {}
        failure = None
        if good:
            try:
                segmentations = self.engine.segment(
                    [item.image for item in good],
                    [item.prompts for item in good],
                    mode=self.config.mode,
                    threshold=self.config.threshold,
                    mask_threshold=self.config.mask_threshold,
                )
                for item, segmentation in zip(good, segmentations):
                    labels = to_detections(segmentation, item.prompt_ids)
                    outputs[id(item)] = self._fit_in_document(labels, item.filepath)
            except Exception as error:
                # the message only: the exception's traceback would hold the failed batch's device memory
                failure = f"{type(error).__name__}: {error}"
        if failure is not None:
            if len(good) == 1:
                self._fail(good[0], failure)
            else:
                # find the culprit(s): one sample at a time, so the rest are written
                logger.warning("A batch of %d failed (%s); retrying its samples one by one", len(good), failure)
                for item in good:
                    outputs[id(item)] = self.predict_all([item])[0]
                return [outputs.get(id(item)) for item in items]
        for labels in outputs.values():
            if labels is not None:
                self.num_processed += 1
                self.num_detections += len(labels.detections)
        return [outputs.get(id(item)) for item in items]

    def _fit_in_document(self, labels, filepath: str):
        """Moves the masks to PNG files (``mask_path``) when the labels would not fit in the
        sample's MongoDB document (16 MB); FiftyOne's convention for on-disk masks."""
        size = stored_mask_bytes(labels, self.config.max_label_bytes)
        if size <= self.config.max_label_bytes:
            return labels
        mask_dir = self.config.mask_dir or os.path.join(fo.config.default_dataset_dir, "sam3_masks")
        logger.warning(
            "%s: %d masks take %.1f MB, too much for one database document; writing them as PNG files under %s",
            filepath,
            len(labels.detections),
            size / 2**20,
            mask_dir,
        )
        os.makedirs(mask_dir, exist_ok=True)
        for detection in labels.detections:
            if detection.mask is not None:
                detection.export_mask(os.path.join(mask_dir, f"{detection.id}.png"), update=True)
        return labels

    def _fail(self, item: _Item, reason: str) -> None:
        logger.warning("Skipping %s: %s", item.filepath or "<no filepath>", reason)
        self.failures.append(Failure(item.filepath, reason))

    def summary(self) -> dict:
        """Counts for a report: samples processed, detections written, samples skipped and why."""
        return {
            "samples_processed": self.num_processed,
            "detections": self.num_detections,
            "samples_skipped": len(self.failures),
            "skipped": [{"filepath": f.filepath, "reason": f.reason} for f in self.failures],
        }


def stored_mask_bytes(labels, limit: int) -> int:
    """The bytes the masks of ``labels`` take in the database: their raw size when that is under
    ``limit`` (cheap), else their size as FiftyOne stores them (compressed)."""
    masks = [d.mask for d in labels.detections if d.mask is not None]
    raw = sum(mask.size for mask in masks)
    if raw <= limit:
        return raw
    return sum(len(fou.serialize_numpy_array(mask)) for mask in masks)


def _as_item(arg, config: Sam3Config) -> _Item:
    if isinstance(arg, _Item):
        return arg
    if isinstance(arg, str):
        return Sam3GetItem(config)({"filepath": arg})
    import numpy as np

    image = np.asarray(arg)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return _Item("<array>", error=f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    prompts, ids, _ = prompts_from_detections(None, None, image.shape[1], image.shape[0], config.prompts, config.mode)
    return _Item("<array>", image, prompts, ids)
