"""The SAM3 engine: owns the model, the processor and the device; runs batches of images.

Knows torch, transformers and numpy only (never fiftyone), so the speed benchmark runs where
fiftyone is absent.

How a batch runs (:meth:`Sam3Engine.segment`):

1. the images are resized and normalised once by transformers' image processor;
2. the vision encoder runs ONCE per image (or not at all, for an image whose features are in the
   small LRU cache that interactive refinement uses);
3. each image's prompts become queries (:func:`sam3_ops.prompts.build_queries`); the vision
   features are expanded over the queries (an index along the batch), and the queries run through
   the prompt/decoder heads in chunks of ``max_queries_per_forward``;
4. text features are computed once per distinct prompt string per engine and cached;
5. scores are filtered BEFORE any mask is upsampled; each kept mask is upsampled only over its own
   box (the crop FiftyOne stores), thresholded on the device, and all crops of the batch come back
   to the host in one copy.

Two heads of the same ``sam3_video`` checkpoint: the detector (``Sam3Model``: ``text`` and
``exemplars`` modes) and the SAM2-style tracker (``Sam3TrackerModel``: ``boxes`` mode), each
loaded on first use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .prompts import MAX_TEXT_TOKENS, ImagePrompts, Query, build_queries, validate_mode

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/sam3"
_SAM3_MODEL_TYPES = ("sam3_video", "sam3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# sam3_video checkpoint keys -> Sam3TrackerModel keys (transformers applies this mapping only to
# checkpoints whose own model_type is sam3_tracker, not to facebook/sam3's sam3_video layout)
_TRACKER_KEY_MAP = (
    ("detector_model.vision_encoder.backbone.", "vision_encoder.backbone."),
    ("tracker_neck.", "vision_encoder.neck."),
    ("tracker_model.", ""),
)


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
    """Checks that ``model_path`` is a hub id or a local SAM3 checkpoint directory.

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
    """``device`` as a ``torch.device``; ``None`` picks cuda, then mps, then cpu."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class ImageSegmentation:
    """SAM3's hits on one image.

    Attributes:
        image_size: ``(height, width)`` in pixels
        labels: the label of each hit (text prompt, the examples' label, or the prompt box's label)
        prompt_index: ``(N,)`` the prompt box each hit answers (``boxes`` mode), else -1
        scores: ``(N,)`` float32 in [0, 1]
        boxes_xyxy: ``(N, 4)`` float32 pixel boxes, on whole pixels, inside the image
        masks: ``N`` bool arrays, mask ``i`` covering exactly box ``i``
    """

    image_size: tuple[int, int]
    labels: list = field(default_factory=list)
    prompt_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    masks: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def crop_box(box_xyxy: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The whole-pixel crop ``(x0, y0, x1, y1)`` covering ``box_xyxy``, inside the image, at least 1 px."""
    x0 = min(max(int(math.floor(box_xyxy[0])), 0), width - 1)
    y0 = min(max(int(math.floor(box_xyxy[1])), 0), height - 1)
    x1 = max(min(int(math.ceil(box_xyxy[2])), width), x0 + 1)
    y1 = max(min(int(math.ceil(box_xyxy[3])), height), y0 + 1)
    return x0, y0, x1, y1


def _bilinear_weights(
    starts: torch.Tensor, stops: torch.Tensor, counts: torch.Tensor, out_size: int, in_size: int, length: int
) -> torch.Tensor:
    """Rows of the 1-D bilinear resampling matrix ``in_size -> out_size`` for ``counts[i]`` output
    samples evenly covering pixels ``starts[i] .. stops[i]``, zero-padded to ``length``:
    shape ``(n, length, in_size)``. With ``counts == stops - starts`` the samples are exactly the
    pixels ``starts[i] .. stops[i] - 1``.

    The arithmetic of ``F.interpolate(mode="bilinear", align_corners=False)``: source coordinate
    ``(y + 0.5) * in / out - 0.5``, clamped at 0, neighbour clamped at the last pixel.
    """
    offsets = torch.arange(length, device=starts.device, dtype=torch.float32)
    step = (stops - starts).float() / counts.float()
    positions = starts[:, None].float() + (offsets[None, :] + 0.5) * step[:, None] - 0.5
    valid = (offsets[None, :] < counts[:, None]).float()
    source = ((positions + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    fraction = source - lower.float()
    weights = torch.zeros(len(starts), length, in_size, device=starts.device)
    weights.scatter_add_(2, lower[..., None], ((1 - fraction) * valid)[..., None])
    weights.scatter_add_(2, upper[..., None], (fraction * valid)[..., None])
    return weights


def mask_shape(crop: tuple[int, int, int, int], max_mask_size: int | None) -> tuple[int, int]:
    """The ``(height, width)`` of the mask stored for ``crop``: the crop's pixels, scaled down so
    that neither side exceeds ``max_mask_size`` (FiftyOne stretches a mask over its box)."""
    x0, y0, x1, y1 = crop
    height, width = y1 - y0, x1 - x0
    if max_mask_size and max(height, width) > max_mask_size:
        scale = max_mask_size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def _upsample_crops(
    low_res: torch.Tensor, crops: Sequence[tuple[int, int, int, int]], size: tuple[int, int], shapes=None
) -> torch.Tensor:
    """Bilinear upsampling of ``n`` low-res maps ``(n, h, w)`` to image ``size``, each evaluated
    over its own crop ``(x0, y0, x1, y1)`` only (at ``shapes[i]`` samples, default the crop's
    pixels); returns ``(n, max height, max width)``, each map in its top-left corner.

    Equals ``F.interpolate(low_res, size, mode="bilinear", align_corners=False)[i, y0:y1, x0:x1]``
    (what transformers' post-processing computes at full size) without building the full maps:
    bilinear resampling is separable, so each crop is ``Wy @ map @ Wx.T``, one batched matmul.
    """
    height, width = size
    device = low_res.device
    boxes = torch.tensor(crops, device=device, dtype=torch.long).reshape(-1, 4)
    if shapes is None:
        shapes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in crops]
    counts = torch.tensor(shapes, device=device, dtype=torch.long).reshape(-1, 2)
    max_height, max_width = (max(column) for column in zip(*shapes))  # from the host: no device sync
    rows = _bilinear_weights(boxes[:, 1], boxes[:, 3], counts[:, 0], height, low_res.shape[-2], max_height)
    cols = _bilinear_weights(boxes[:, 0], boxes[:, 2], counts[:, 1], width, low_res.shape[-1], max_width)
    # float32 even inside the engine's bf16 autocast: the threshold decides on these values
    with torch.autocast(device_type=device.type, enabled=False):
        return rows @ low_res.float() @ cols.transpose(1, 2)


def _memory_groups(shapes: Sequence[tuple[int, int]], budget: int, low_res_shape: tuple[int, int] = (0, 0)) -> list[list[int]]:
    """Splits hits into groups whose upsampling (:func:`_upsample_crops`, padded to the group's
    largest mask) stays within ``budget`` float elements, so one huge mask never multiplies the
    memory of the others: per hit the output ``H x W`` and the intermediates ``H x lh``
    (row weights), ``H x lw`` (rows applied) and ``W x lw`` (column weights), where
    ``low_res_shape = (lh, lw)``. Thin tall masks cost more than their pixels."""
    low_h, low_w = low_res_shape

    def cost(count, h, w):
        return count * (h * w + h * low_h + h * low_w + w * low_w)

    order = sorted(range(len(shapes)), key=lambda i: cost(1, *shapes[i]))
    groups, current, max_h, max_w = [], [], 0, 0
    for i in order:
        h, w = shapes[i]
        new_h, new_w = max(max_h, h), max(max_w, w)
        if current and cost(len(current) + 1, new_h, new_w) > budget:
            groups.append(current)
            current, new_h, new_w = [], h, w
        current.append(i)
        max_h, max_w = new_h, new_w
    if current:
        groups.append(current)
    return groups


class Sam3Engine:
    """Loads SAM3 once and runs batches of images with their prompts.

    Args:
        model_path ("facebook/sam3"): hub id or local ``save_pretrained`` directory
        device (None): ``"cuda"``, ``"mps"``, ``"cpu"``, or ``None`` for the best available
        token (None): Hugging Face token; ``None`` reads ``HF_TOKEN`` (never logged)
        feature_cache_size (0): how many images' vision features to keep for re-runs on the same
            image (refinement); keyed by the ``image_keys`` given to :meth:`segment`
        max_queries_per_forward (32): queries (image x prompt pairs) per decoder forward; bounds
            memory when images have many prompts
        max_mask_size (2048): the longest side of a stored mask, in pixels; larger boxes get a
            mask scaled down to it (SAM3 predicts masks at 288 x 288: nothing real is lost)
        compile (False): ``torch.compile`` the vision encoder of each head as it loads (the bulk
            of the compute; worth it for long GPU runs, costs a warm-up per new batch shape)
    """

    def __init__(
        self,
        model_path: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        token: str | None = None,
        feature_cache_size: int = 0,
        max_queries_per_forward: int = 32,
        max_mask_size: int | None = 2048,
        compile: bool = False,
    ):
        self.model_path = validate_model_path(model_path)
        self.device = resolve_device(device)
        self._token = token if token else os.environ.get("HF_TOKEN") or None
        self.feature_cache_size = int(feature_cache_size)
        self.max_queries_per_forward = max(1, int(max_queries_per_forward))
        self.max_mask_size = max_mask_size
        self.compile = bool(compile)
        self._processor = None
        self._detector = None
        self._tracker = None
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._feature_cache: OrderedDict = OrderedDict()
        # bf16 autocast where the GPU has bf16 units (Ampere, sm80, and later); older GPUs (T4,
        # V100) only emulate bf16, slower than float32, and cuDNN has no bf16 convolutions there.
        # No TF32 switch: under bf16 autocast every matmul and convolution already runs in bf16;
        # the float32 matmuls left are the mask upsampling's, meant to be exact, and the flag
        # would change the user's other float32 code in this process too.
        self.bf16 = self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 8

    def __repr__(self) -> str:  # no token in here, ever
        return f"Sam3Engine(model_path={self.model_path!r}, device={str(self.device)!r})"

    # -- loading ------------------------------------------------------------------------------

    def _load(self, loader, **kwargs):
        try:
            return loader(self.model_path, token=self._token, **kwargs)
        except ModelLoadError:
            raise
        except Exception as error:  # hub/network/gating/format errors all mean the same to a user
            logger.debug("loading %s failed: %s", self.model_path, type(error).__name__)
            raise ModelLoadError(f"{login_help(self.model_path)}\nCause: {type(error).__name__}: {error}") from None

    @property
    def processor(self):
        """The ``Sam3Processor`` (image processor + tokenizer) of the checkpoint."""
        if self._processor is None:
            from transformers import Sam3Processor

            self._processor = self._load(Sam3Processor.from_pretrained)
        return self._processor

    @property
    def detector(self):
        """The ``Sam3Model`` (text and exemplar prompts), loaded on first use."""
        if self._detector is None:
            from transformers import Sam3Model

            model, info = self._load(Sam3Model.from_pretrained, use_safetensors=True, output_loading_info=True)
            _fail_on_missing(info, "detector")
            self._detector = self._prepare(model)
        return self._detector

    @property
    def tracker(self):
        """The ``Sam3TrackerModel`` (one mask per box), loaded on first use, every weight checked."""
        if self._tracker is None:
            from transformers import Sam3TrackerModel

            model, info = self._load(Sam3TrackerModel.from_pretrained, use_safetensors=True, output_loading_info=True)
            missing = set(info["missing_keys"])
            if missing:
                # the trap: from a sam3_video checkpoint transformers leaves the tracker's weights
                # randomly initialised, with only a warning; map the keys ourselves
                found = self._read_tensors(lambda key: _tracker_key(key) in missing)
                model.load_state_dict({_tracker_key(k): v for k, v in found.items()}, strict=False)
                missing -= {_tracker_key(k) for k in found}
            _fail_on_missing({"missing_keys": sorted(missing)}, "tracker")
            self._tracker = self._prepare(model)
        return self._tracker

    def _prepare(self, model):
        model = model.to(self.device).eval()
        if self.compile:
            model.vision_encoder = torch.compile(model.vision_encoder)
        return model

    def load(self, mode: str) -> Sam3Engine:
        """Loads the processor and the head ``mode`` needs now (to fail early, before a long run)."""
        validate_mode(mode)
        _ = self.processor
        _ = self.tracker if mode == "boxes" else self.detector
        return self

    def _read_tensors(self, wanted) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors whose names satisfy ``wanted``, read from its safetensors files."""
        from safetensors import safe_open
        from transformers.utils import cached_file

        def resolve(name):
            return self._load(lambda path, token: cached_file(path, name, token=token, _raise_exceptions_for_missing_entries=False))

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
                raise ModelLoadError(f"{self.model_path!r} has no model.safetensors (only safetensors weights are loaded)")
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    if wanted(key):
                        tensors[key] = handle.get_tensor(key)
        return tensors

    # -- running ------------------------------------------------------------------------------

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    #: the most source pixels resized in one call of the image processor: on a GPU it turns
    #: uint8 images into float32 before resizing (12 bytes a pixel), stacking same-size images
    preprocess_pixel_budget = 64 * 2**20

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resizes and normalises RGB uint8 images of any sizes into one ``(B, 3, S, S)`` batch on the device."""
        # device=: transformers' torchvision backend resizes and normalises on the device (uint8
        # goes over the bus, not a float32 1008x1008 tensor per image); a no-op on the CPU
        runs, run, pixels = [], [], 0
        for image in images:
            size = int(image.shape[0]) * int(image.shape[1])
            if run and pixels + size > self.preprocess_pixel_budget:
                runs.append(run)
                run, pixels = [], 0
            run.append(image)
            pixels += size
        if run:
            runs.append(run)
        processor = self.processor.image_processor
        batches = [processor(images=run, return_tensors="pt", device=self.device)["pixel_values"] for run in runs]
        return batches[0] if len(batches) == 1 else torch.cat(batches)

    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features ``(len(texts), 32, D)`` and their attention mask, each text encoded once."""
        new = [text for text in dict.fromkeys(texts) if text not in self._text_cache]
        if new:
            tokenizer = self.processor.tokenizer
            encoded = tokenizer(
                new, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt"
            )
            for text in new:
                if len(tokenizer(text)["input_ids"]) > MAX_TEXT_TOKENS:
                    logger.warning("Prompt %r is longer than SAM3's %d tokens; its end is ignored", text, MAX_TEXT_TOKENS)
            with torch.inference_mode(), self._autocast():
                output = self.detector.get_text_features(
                    input_ids=encoded["input_ids"].to(self.device),
                    attention_mask=encoded["attention_mask"].to(self.device),
                )
            for i, text in enumerate(new):
                # clone: a slice would keep the whole batch's features alive as long as the cache
                self._text_cache[text] = (output.pooler_output[i : i + 1].clone(), encoded["attention_mask"][i : i + 1].to(self.device))
        embeds = torch.cat([self._text_cache[text][0] for text in texts])
        mask = torch.cat([self._text_cache[text][1] for text in texts])
        return embeds, mask

    def _vision_features(self, head: str, images, image_keys) -> list:
        """Per image, its feature tuple (each tensor with batch 1); the encoder runs on cache misses only."""
        keys = list(image_keys) if image_keys is not None else [None] * len(images)
        features: list = [None] * len(images)
        todo = []
        for i, key in enumerate(keys):
            cached = self._feature_cache.get((head, key)) if key is not None else None
            if cached is not None:
                self._feature_cache.move_to_end((head, key))
                features[i] = cached
            else:
                todo.append(i)
        if todo:
            pixel_values = self.preprocess([images[i] for i in todo]).to(self.device)  # a no-op where the processor resized on the device
            with torch.inference_mode(), self._autocast():
                if head == "detector":
                    output = self.detector.get_vision_features(pixel_values=pixel_values)
                    levels = (output.fpn_hidden_states, output.fpn_position_encoding)
                    per_image = [tuple(tuple(t[j : j + 1] for t in level) for level in levels) for j in range(len(todo))]
                else:
                    embeddings = self.tracker.get_image_embeddings(pixel_values)
                    per_image = [tuple(t[j : j + 1] for t in embeddings) for j in range(len(todo))]
            for j, i in enumerate(todo):
                features[i] = per_image[j]
                if keys[i] is not None and self.feature_cache_size > 0:
                    # cloned out of the batch: a slice would keep the whole batch's features alive
                    with torch.inference_mode():
                        cached = per_image[j] if len(todo) == 1 else _clone(per_image[j])
                    self._feature_cache[(head, keys[i])] = features[i] = cached
                    while len(self._feature_cache) > self.feature_cache_size:
                        self._feature_cache.popitem(last=False)
        return features

    def clear_cache(self) -> None:
        """Forgets cached vision features (text features are kept: they do not depend on images)."""
        self._feature_cache.clear()

    def segment(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[ImagePrompts],
        mode: str = "text",
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        image_keys: Sequence[Hashable] | None = None,
    ) -> list[ImageSegmentation]:
        """Segments a batch of images, each with its own prompts.

        Args:
            images: RGB uint8 ``(H, W, 3)`` arrays, any sizes
            prompts: one :class:`~sam3_ops.prompts.ImagePrompts` per image (pixel boxes, already
                sanitised with :func:`~sam3_ops.prompts.sanitize_boxes`)
            mode ("text"): ``"text"``, ``"boxes"`` or ``"exemplars"``
            threshold (0.5): keep detector hits scoring above this (``boxes`` mode keeps every
                box's mask: the score is the predicted mask IoU)
            mask_threshold (0.5): a pixel is in the mask where its probability exceeds this
            image_keys (None): hashable identities of the images, to reuse cached vision features
                (needs ``feature_cache_size > 0``)

        Returns:
            one :class:`ImageSegmentation` per image, in order

        On CUDA out-of-memory the batch is halved and retried (down to one image).
        """
        validate_mode(mode)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt sets")
        if not len(images):
            return []
        try:
            return self._segment(images, prompts, mode, threshold, mask_threshold, image_keys)
        except torch.OutOfMemoryError:
            if len(images) == 1:
                raise
        # retried here, not inside ``except``: the exception's traceback holds the failed attempt's
        # frames, and with them its activations; they are released only when the block is left
        half = len(images) // 2
        logger.warning("Out of device memory on a batch of %d images; retrying as %d + %d", len(images), half, len(images) - half)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        keys = list(image_keys) if image_keys is not None else None
        return self.segment(images[:half], prompts[:half], mode, threshold, mask_threshold, keys and keys[:half]) + self.segment(
            images[half:], prompts[half:], mode, threshold, mask_threshold, keys and keys[half:]
        )

    def _segment(self, images, prompts, mode, threshold, mask_threshold, image_keys):
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        queries = [(i, query) for i, image_prompts in enumerate(prompts) for query in build_queries(mode, image_prompts)]
        results = [_HitCollector(self.max_mask_size) for _ in images]
        if queries:
            head = "tracker" if mode == "boxes" else "detector"
            features = self._vision_features(head, images, image_keys)
            step = self.max_queries_per_forward
            for start in range(0, len(queries), step):
                chunk = queries[start : start + step]
                if head == "detector":
                    self._run_detector(chunk, features, sizes, threshold, mask_threshold, results)
                else:
                    self._run_tracker(chunk, features, sizes, mask_threshold, results)
        return _finish(results, sizes)

    def _run_detector(self, chunk, features, sizes, threshold, mask_threshold, results):
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        image_index = [i for i, _ in chunk]
        n = len(chunk)
        first_hidden, first_position = features[image_index[0]]
        # the forward reads hidden levels 0..2 and position level 2 (its [:-1], then [-1]); position
        # encodings depend on the shape alone: one image's, broadcast, not n copies (in float32
        # under CUDA autocast, 113 MB per query at 1008 px); the unread last level a placeholder
        hidden = tuple(torch.cat(level) for level in zip(*(features[i][0][:-1] for i in image_index)))
        hidden += (first_hidden[-1].expand(n, *first_hidden[-1].shape[1:]),)
        position = tuple(level.expand(n, *level.shape[1:]) for level in first_position)
        text_embeds, text_mask = self.text_features([query.text for _, query in chunk])
        boxes, box_labels = _detector_boxes(chunk, sizes, self.device)
        with torch.inference_mode(), self._autocast():
            output = self.detector(
                vision_embeds=Sam3VisionEncoderOutput(fpn_hidden_states=hidden, fpn_position_encoding=position),
                text_embeds=_TextEmbeds(text_embeds),
                attention_mask=text_mask,
                input_boxes=boxes,
                input_boxes_labels=box_labels,
            )
            scores = output.pred_logits.float().sigmoid()
            if output.presence_logits is not None:
                scores = scores * output.presence_logits.float().sigmoid()
            # every kept hit of the chunk at once: one device-to-host copy, not several per query
            rows, columns = torch.nonzero(scores > threshold, as_tuple=True)
            if not len(rows):
                return
            scale = torch.tensor([[sizes[i][1], sizes[i][0]] * 2 for i in image_index], device=scores.device, dtype=torch.float32)
            kept = torch.cat([rows[:, None].float(), scores[rows, columns, None], output.pred_boxes[rows, columns].float() * scale[rows]], 1)
            kept = kept.cpu().numpy()
            probabilities = output.pred_masks[rows, columns].float().sigmoid()
            # nonzero is row-major: each query's hits are one contiguous run
            query_rows, starts, counts = np.unique(kept[:, 0].astype(np.int64), return_index=True, return_counts=True)
            for row, start, count in zip(query_rows, starts, counts):
                i, query = chunk[row]
                hits = slice(start, start + count)
                results[i].add(query, kept[hits, 1], kept[hits, 2:], probabilities[hits], sizes[i], mask_threshold)

    def _run_tracker(self, chunk, features, sizes, mask_threshold, results):
        image_index = [i for i, _ in chunk]
        embeddings = [torch.cat(level) for level in zip(*(features[i] for i in image_index))]
        target = self.tracker.prompt_encoder.input_image_size
        scales = np.array([[target / sizes[i][1], target / sizes[i][0]] for i in image_index], np.float32)
        boxes = np.stack([query.positive_boxes[0] for _, query in chunk]) * np.tile(scales, 2)
        input_boxes = torch.from_numpy(boxes[:, None]).to(self.device)
        points, point_labels = _negative_points(chunk, scales, self.device)
        with torch.inference_mode(), self._autocast():
            output = self.tracker(
                image_embeddings=embeddings,
                input_boxes=input_boxes,
                input_points=points,
                input_labels=point_labels,
                multimask_output=False,
            )
            iou = output.iou_scores[:, 0, 0].float().clamp(0, 1).cpu().numpy()
            logit_threshold = _logit(mask_threshold)
            for row, (i, query) in enumerate(chunk):
                box = query.positive_boxes[:1]
                # threshold logits: transformers' tracker post-processing interpolates logits
                results[i].add(query, iou[row : row + 1], box, output.pred_masks[row, 0], sizes[i], logit_threshold)


def _clone(nested):
    """A copy of a (nested) tuple of tensors that owns its memory."""
    return tuple(_clone(t) if isinstance(t, tuple) else t.clone() for t in nested)


class _TextEmbeds:
    """What ``Sam3Model.forward`` reads of ``text_embeds`` (its ``pooler_output``)."""

    def __init__(self, pooler_output: torch.Tensor):
        self.pooler_output = pooler_output


class _HitCollector:
    """Gathers one image's hits; masks stay on the device until :func:`_finish`."""

    #: the most float elements one batched upsampling holds, output and intermediates (64 M = 256 MB)
    element_budget = 64 * 1024 * 1024

    def __init__(self, max_mask_size: int | None):
        self.max_mask_size = max_mask_size
        self.labels, self.prompt_index, self.scores, self.boxes, self.crops = [], [], [], [], []

    def add(self, query: Query, scores, boxes_px, low_res_maps: torch.Tensor, size, threshold):
        """Adds hits: their scores, pixel boxes and low-res mask maps ``(n, h, w)`` (same device)."""
        height, width = size
        crops = [crop_box(box, width, height) for box in boxes_px]
        shapes = [mask_shape(crop, self.max_mask_size) for crop in crops]
        masks = [None] * len(crops)
        for group in _memory_groups(shapes, self.element_budget, tuple(low_res_maps.shape[-2:])):
            upsampled = _upsample_crops(low_res_maps[group], [crops[i] for i in group], size, [shapes[i] for i in group])
            for k, i in enumerate(group):
                mask_height, mask_width = shapes[i]
                masks[i] = upsampled[k, :mask_height, :mask_width] > threshold
        for score, crop, mask in zip(scores, crops, masks):
            self.labels.append(query.label)
            self.prompt_index.append(query.prompt_index)
            self.scores.append(float(score))
            self.boxes.append(crop)
            self.crops.append(mask)


def _finish(collectors: list[_HitCollector], sizes) -> list[ImageSegmentation]:
    """Copies every mask crop of the batch to the host at once and builds the results."""
    crops = [crop for collector in collectors for crop in collector.crops]
    flat = torch.cat([crop.flatten() for crop in crops]).cpu().numpy() if crops else np.zeros(0, bool)
    offset = 0
    results = []
    for collector, size in zip(collectors, sizes):
        masks = []
        for crop in collector.crops:
            count = crop.numel()
            masks.append(flat[offset : offset + count].reshape(tuple(crop.shape)))
            offset += count
        results.append(
            ImageSegmentation(
                image_size=size,
                labels=collector.labels,
                prompt_index=np.asarray(collector.prompt_index, np.int64),
                scores=np.asarray(collector.scores, np.float32),
                boxes_xyxy=np.asarray(collector.boxes, np.float32).reshape(-1, 4),
                masks=masks,
            )
        )
    return results


def _detector_boxes(chunk, sizes, device):
    """Example boxes as the detector takes them: normalised cxcywh, labels 1/0, padding -10."""
    per_query = []
    for i, query in chunk:
        height, width = sizes[i]
        boxes = np.concatenate([query.positive_boxes, query.negative_boxes]).reshape(-1, 4)
        labels = [1] * len(query.positive_boxes) + [0] * len(query.negative_boxes)
        normalised = boxes / np.array([width, height, width, height], np.float32)
        cxcywh = np.stack(
            [
                (normalised[:, 0] + normalised[:, 2]) / 2,
                (normalised[:, 1] + normalised[:, 3]) / 2,
                normalised[:, 2] - normalised[:, 0],
                normalised[:, 3] - normalised[:, 1],
            ],
            axis=1,
        )
        per_query.append((cxcywh, labels))
    count = max(len(labels) for _, labels in per_query)
    if count == 0:
        return None, None
    boxes = np.zeros((len(chunk), count, 4), np.float32)
    labels = np.full((len(chunk), count), -10, np.int64)
    for row, (cxcywh, query_labels) in enumerate(per_query):
        boxes[row, : len(query_labels)] = cxcywh
        labels[row, : len(query_labels)] = query_labels
    return torch.from_numpy(boxes).to(device), torch.from_numpy(labels).to(device)


def _negative_points(chunk, scales, device):
    """Negative points for the tracker, in its input resolution, padded with label -10."""
    count = max(len(query.negative_points) for _, query in chunk)
    if count == 0:
        return None, None
    points = np.zeros((len(chunk), 1, count, 2), np.float32)
    labels = np.full((len(chunk), 1, count), -10, np.int64)
    for row, (_, query) in enumerate(chunk):
        n = len(query.negative_points)
        points[row, 0, :n] = query.negative_points * scales[row]
        labels[row, 0, :n] = 0
    return torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device)


def _logit(probability: float) -> float:
    probability = min(max(float(probability), 1e-6), 1 - 1e-6)
    return math.log(probability / (1 - probability))


def _tracker_key(key: str) -> str | None:
    for source, target in _TRACKER_KEY_MAP:
        if key.startswith(source):
            return target + key[len(source) :]
    return None


def _fail_on_missing(info: dict, head: str) -> None:
    missing = list(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ModelLoadError(
            f"the SAM3 {head} head is incomplete: {len(missing)} weights are missing from the checkpoint "
            f"(e.g. {shown}); refusing to run with randomly initialised weights"
        )
