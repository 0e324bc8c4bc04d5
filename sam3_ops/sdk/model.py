"""The FiftyOne ``Model`` that ``dataset.apply_model`` runs: SAM3 through the engine. The one
inference path: ``segment()``, the operators, QA and refinement all run through it.

A ``SupportsGetItem`` + ``TorchModelMixin`` model (not ``SamplesMixin``): FiftyOne's data loader
runs :class:`Sam3GetItem` in its workers, which decodes each image and converts its prompt fields
to pixel boxes; :meth:`Sam3Model.predict_all` sends the whole batch to the engine at once.

A sample that cannot be used (missing or corrupt image, ...) never fails its batch: the loader
hands over an error record, the model logs it, counts it in :attr:`Sam3Model.failures`, and
returns ``None`` for it, so FiftyOne writes nothing to that sample and any value already in the
field stays as it was.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from dataclasses import dataclass, field

import fiftyone as fo
import fiftyone.core.models as fom
import fiftyone.core.utils as fou
import fiftyone.utils.torch as fout
import numpy as np

from ..core.engine import Sam3Engine
from ..core.images import ImageLoadError, load_image
from ..core.queries import FIELD_MODES
from .convert import prompts_from_detections, prompts_from_keypoints, to_detections
from .fields import prompt_label_type
from .runs import RunSummary
from .settings import Sam3Settings

logger = logging.getLogger(__name__)

PROMPT_FIELD = "prompt_field"
NEGATIVE_FIELD = "negative_field"
_PROMPT_KEYS = (PROMPT_FIELD, NEGATIVE_FIELD)
#: the labels of one sample may take at most this many bytes of masks: below MongoDB's 16 MB
#: document limit, leaving room for the rest of the sample
MAX_LABEL_BYTES = 12 * 1024 * 1024


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

    ``required_keys`` are ``filepath`` plus ``prompt_field`` / ``negative_field`` when the run
    reads them, and ``id`` when some samples' prompts are given in memory (``prompt_overrides``:
    ``{sample_id: {"prompt_field": Detections, "negative_field": Detections}}``, which replace
    what the fields hold: a refinement's chosen boxes). Never raises: a problem becomes an error
    record, so one bad sample cannot fail its batch.
    """

    def __init__(self, settings: Sam3Settings, field_mapping=None, prompt_overrides=None):
        self.settings = settings
        self.prompt_overrides = prompt_overrides or {}
        keys = ["filepath"] + [k for k in _PROMPT_KEYS if field_mapping and k in field_mapping]
        self._keys = keys + (["id"] if self.prompt_overrides else [])
        super().__init__(field_mapping=field_mapping)

    @property
    def required_keys(self):
        return self._keys

    def __call__(self, d):
        _die_with_parent()
        filepath = d.get("filepath") or ""
        try:
            image = load_image(filepath, max_pixels=self.settings.max_image_pixels)
            height, width = image.shape[:2]
            values = {key: d.get(key) for key in _PROMPT_KEYS} | self.prompt_overrides.get(d.get("id"), {})
            negatives = _labels_or_none(values[NEGATIVE_FIELD], NEGATIVE_FIELD, "detections")
            if self.settings.mode == "points":
                keypoints = _labels_or_none(values[PROMPT_FIELD], PROMPT_FIELD, "keypoints")
                prompts, prompt_ids, warnings = prompts_from_keypoints(keypoints, negatives, width, height, filepath)
            else:
                detections = _labels_or_none(values[PROMPT_FIELD], PROMPT_FIELD, "detections")
                prompts, prompt_ids, warnings = prompts_from_detections(
                    detections, negatives, width, height, texts=self.settings.prompts, mode=self.settings.mode
                )
            return _Item(filepath, image, prompts, prompt_ids, warnings=warnings)
        except ImageLoadError as error:
            return _Item(filepath, error=str(error))
        except Exception as error:  # a worker must not fail the batch: report it per sample
            return _Item(filepath, error=f"{type(error).__name__}: {error}")


def _labels_or_none(value, key: str, kind: str):
    """``value`` if it is ``None`` or holds ``kind`` (``"detections"``, ``"keypoints"``) labels."""
    if value is None or hasattr(value, kind):
        return value
    raise ValueError(f"{key} must hold {kind.capitalize()}, but this sample's value is a {type(value).__name__}")


_PR_SET_PDEATHSIG = 1
_parent_watch_pid: int | None = None


def _die_with_parent() -> None:
    """In a data-loader worker (Linux), asks the kernel to kill this process when its parent dies.

    A SIGKILLed ``apply_model`` cannot shut its loader workers down, and they would stay alive
    (blocked, holding their memory) indefinitely. Set once per worker process, on its first item.
    """
    global _parent_watch_pid
    if _parent_watch_pid == os.getpid() or not hasattr(os, "getppid"):
        return
    import torch.utils.data

    if torch.utils.data.get_worker_info() is None:  # the main process itself (num_workers=0)
        return
    _parent_watch_pid = os.getpid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker's own parent check applies
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class CountsMark:
    """Where a model's counts stood at some moment (:meth:`Sam3ModelBase.mark`)."""

    processed: int = 0
    detections: int = 0
    failures: int = 0


class Sam3ModelBase:
    """What the SAM3 FiftyOne models share (images and videos alike): the settings as FiftyOne's
    ``config`` (no logits or embeddings: FiftyOne's defaults) and the counts of their runs' summaries:
    ``failures`` (the samples skipped, with reasons: :class:`Failure`), ``num_processed`` (samples,
    or videos) and ``num_detections``.

    The counts add up over every run of the model (``apply_model`` calls, or an operator's chunks of
    one run); one ``segment`` call reports its own share: :meth:`summary` ``since`` a :meth:`mark`
    taken when it began.
    """

    settings: Sam3Settings
    engine: object

    @property
    def config(self) -> Sam3Settings:
        """The settings (FiftyOne's name for a model's configuration)."""
        return self.settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.settings.mode!r}, prompts={self.settings.labels!r}, engine={self.engine!r})"

    def _start_counts(self) -> None:
        self.failures: list[Failure] = []
        self.num_processed = 0
        self.num_detections = 0

    def mark(self) -> CountsMark:
        """Where the counts stand now: ``summary(since=mark)`` counts only what came after."""
        return CountsMark(self.num_processed, self.num_detections, len(self.failures))

    def fail(self, filepath: str | None, reason: str) -> None:
        """Records (and logs) a sample that was skipped."""
        logger.warning("Skipping %s: %s", filepath or "<no filepath>", reason)
        self.failures.append(Failure(filepath, reason))

    def counts(self, since: CountsMark | None = None) -> RunSummary:
        """Samples processed, detections written, samples skipped and why: every run of the model's,
        or (``since``) those after a :meth:`mark`."""
        since = since or CountsMark()
        failures = self.failures[since.failures :]
        return RunSummary(
            self.num_processed - since.processed,
            self.num_detections - since.detections,
            len(failures),
            [{"filepath": f.filepath, "reason": f.reason} for f in failures],
        )

    def summary(self, since: CountsMark | None = None) -> dict:
        """:meth:`counts` as a dict, for a report."""
        return self.counts(since).to_dict()


class Sam3Model(Sam3ModelBase, fom.Model, fom.SupportsGetItem, fom.TorchModelMixin):
    """SAM3 as a FiftyOne model for ``apply_model``; build it with :func:`sam3_ops.load_model`.

    Args:
        settings: the :class:`~sam3_ops.sdk.settings.Sam3Settings` of the run
        engine (None): the :class:`~sam3_ops.core.engine.Sam3Engine` to run on (``None``: a new one)
        cache_features (False): for interactive use: key each image by its filepath so that the
            engine's feature cache (pooled engines keep 8 images) spares the image encoder on a
            re-run of the same image, and keep each written detection's mask logits (pooled
            engines keep 256) so that refining it with points starts from its mask
        prompt_overrides (None): prompts given in memory for some samples (see :class:`Sam3GetItem`)
    """

    def __init__(
        self,
        settings: Sam3Settings,
        engine: Sam3Engine | None = None,
        cache_features: bool = False,
        prompt_overrides=None,
    ):
        self.settings = settings
        self.engine = engine or Sam3Engine(settings.model_path, device=settings.device, compile=settings.compile)
        self.cache_features = cache_features
        self.prompt_overrides = dict(prompt_overrides or {})
        self._options = settings.segment_options()
        self._preprocess = False
        self._start_counts()

    # -- the Model interface --------------------------------------------------------------------

    @property
    def media_type(self):
        return "image"

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

    def prompt_fields(self, field_mapping=None) -> dict:
        """The prompt fields the run reads: the settings' own, then what ``apply_model`` was given."""
        mapping = {key: getattr(self.settings, key) for key in _PROMPT_KEYS if getattr(self.settings, key)}
        return mapping | dict(field_mapping or {})

    def build_get_item(self, field_mapping=None):
        mapping = self.prompt_fields(field_mapping)
        if self.settings.mode in FIELD_MODES and PROMPT_FIELD not in mapping and not self.prompt_overrides:
            what = "points" if self.settings.mode == "points" else "boxes"
            raise ValueError(
                f"mode={self.settings.mode!r} needs the {what} to prompt with: apply_model(model, label_field=..., "
                f"prompt_field='<a {prompt_label_type(self.settings.mode).__name__} field>')"
            )
        return Sam3GetItem(self.settings, field_mapping=mapping, prompt_overrides=self.prompt_overrides)

    def predict(self, arg):
        """Segments one image: a path, an RGB uint8 array, or an item from :class:`Sam3GetItem`."""
        return self.predict_all([arg])[0]

    def predict_all(self, args):
        """Segments a batch; returns one ``fo.Detections`` per input, or ``None`` for a failure."""
        items = [_as_item(arg, self.settings) for arg in args]
        good = [item for item in items if item.error is None]
        for item in items:
            if item.error is not None:
                self.fail(item.filepath, item.error)
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
                    self._options,
                    image_keys=[item.filepath for item in good] if self.cache_features else None,
                    keep_logits=self.cache_features,
                )
                for item, segmentation in zip(good, segmentations):
                    labels = to_detections(segmentation, item.prompt_ids)
                    self._remember_masks(item.filepath, labels, segmentation)
                    outputs[id(item)] = fit_in_document(labels, self.settings.mask_dir, item.filepath)
            except Exception as error:
                # the message only: the exception's traceback would hold the failed batch's device memory
                failure = f"{type(error).__name__}: {error}"
        if failure is not None and len(good) > 1:
            # find the culprit(s): one sample at a time, so the rest are written
            logger.warning("A batch of %d failed (%s); retrying its samples one by one", len(good), failure)
            return [None if item.error is not None else self.predict_all([item])[0] for item in items]
        if failure is not None:
            self.fail(good[0].filepath, failure)
        for labels in outputs.values():
            if labels is not None:
                self.num_processed += 1
                self.num_detections += len(labels.detections)
        return [outputs.get(id(item)) for item in items]

    def _remember_masks(self, filepath: str, labels, segmentation) -> None:
        """Interactive runs: keeps each written detection's low-resolution logits in the engine,
        under ``(filepath, detection id)``, so that refining it starts from its mask."""
        if segmentation.low_res_logits is not None:
            self.engine.remember_masks(
                {(filepath, d.id): logits for d, logits in zip(labels.detections, segmentation.low_res_logits)}
            )

    def has_cached_mask(self, filepath: str, detection_id: str) -> bool:
        """Whether the low-resolution logits of a detection written under ``filepath`` by an
        interactive run are still in the engine: refining it with points starts from its mask."""
        return self.engine.cached_mask((filepath, str(detection_id))) is not None


def fit_in_document(labels, mask_dir: str | None, where: str):
    """Moves the masks of ``labels`` to PNG files (``mask_path``, under ``mask_dir`` or
    ``<default_dataset_dir>/sam3_masks``) when they would not fit in their MongoDB document (16 MB):
    FiftyOne's convention for on-disk masks. ``where`` (a filepath, and a frame) is logged."""
    size = stored_mask_bytes(labels, MAX_LABEL_BYTES)
    if size <= MAX_LABEL_BYTES:
        return labels
    mask_dir = mask_dir or os.path.join(fo.config.default_dataset_dir, "sam3_masks")
    logger.warning(
        "%s: %d masks take %.1f MB, too much for one database document; writing them as PNG files under %s",
        where,
        len(labels.detections),
        size / 2**20,
        mask_dir,
    )
    os.makedirs(mask_dir, exist_ok=True)
    for detection in labels.detections:
        if detection.mask is not None:
            detection.export_mask(os.path.join(mask_dir, f"{detection.id}.png"), update=True)
    return labels


def stored_mask_bytes(labels, limit: int) -> int:
    """The bytes the masks of ``labels`` take in the database: their raw size when that is under
    ``limit`` (cheap), else their size as FiftyOne stores them (compressed)."""
    masks = [d.mask for d in labels.detections if d.mask is not None]
    raw = sum(mask.size for mask in masks)
    if raw <= limit:
        return raw
    return sum(len(fou.serialize_numpy_array(mask)) for mask in masks)


def _as_item(arg, settings: Sam3Settings) -> _Item:
    if isinstance(arg, _Item):
        return arg
    if isinstance(arg, str):
        return Sam3GetItem(settings)({"filepath": arg})
    image = np.asarray(arg)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return _Item("<array>", error=f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    prompts, ids, _ = prompts_from_detections(
        None, None, image.shape[1], image.shape[0], settings.prompts, settings.mode
    )
    return _Item("<array>", image, prompts, ids)
