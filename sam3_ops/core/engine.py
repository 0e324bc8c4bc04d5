"""The SAM3 engine: owns the model, the processor and the device; runs batches of images.

Knows torch, transformers and numpy only (never fiftyone), so the speed benchmark runs where
fiftyone is absent.

How a batch runs (:meth:`Sam3Engine.segment`):

1. the images are resized and normalised once by transformers' image processor;
2. the vision encoder runs ONCE per image (or not at all, for an image whose features are in the
   small LRU cache that interactive refinement uses);
3. each image's prompts become queries (:func:`sam3_ops.core.queries.build_queries`); the vision
   features are expanded over the queries (an index along the batch), and the queries run through
   the prompt/decoder heads in chunks of ``max_queries_per_forward``;
4. text features are computed once per distinct prompt string per engine and cached;
5. scores are filtered BEFORE any mask is upsampled; each kept mask is upsampled only over its own
   box (the crop FiftyOne stores), thresholded on the device, and all crops of the batch come back
   to the host in one copy.

An engine never changes after it is built: what it loads depends only on its checkpoint, device
and ``compile``; everything a run chooses (mode, thresholds, mask size) is an argument of
:meth:`Sam3Engine.segment` (:class:`SegmentOptions`). So one engine serves every caller of a
process (:mod:`sam3_ops.core.pool`). One lock guards the lazy loading, both caches and the
forward passes: a device is a serial resource, and concurrent callers queue per batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from .checkpoint import DEFAULT_MODEL, LazyEngine, lazy_model, load_model, load_tracker
from .masks import crop_box, logit, mask_shape, memory_groups, upsample_crops, written_areas
from .nms import mask_nms, written_nms
from .queries import MAX_TEXT_TOKENS, MODES, TRACKER_MODES, ImagePrompts, Query, build_queries, grid_points

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentOptions:
    """What one call of :meth:`Sam3Engine.segment` computes (validated by the settings layer).

    Attributes:
        mode: one of :data:`~sam3_ops.core.queries.MODES`
        threshold: keep detector hits scoring above this (a text prompt may carry its own);
            tracker modes keep one mask per prompt whatever its score
        mask_threshold: a pixel is in the mask where its probability exceeds this
        max_mask_size: the longest side of a returned mask; larger boxes get a mask scaled down to
            it (SAM3 predicts masks at 288 x 288: nothing real is lost); ``None`` for no limit
        multimask: tracker modes: ``None`` (one mask per prompt), ``"best"`` (the most confident of
            three) or ``"all"`` (three hits per prompt, ranked)
        nms_iou: drop the lower-scoring of two hits of an image whose masks overlap with IoU above
            this (``None``: no de-duplication)
        nms_per_label: de-duplicate only hits with the same label
        nms_containment: also drop a hit whose mask lies inside a higher-scoring one by more than
            this fraction of its own area (``None``: no containment rule)
        max_detections: keep at most this many hits per image, the highest-scoring (``None``: all)
        min_area: drop hits whose mask covers less than this fraction of the image

    The last five hold on the masks as returned (each over its box, counted in image pixels:
    :mod:`sam3_ops.core.masks`): pruned on the low-resolution masks, then checked exactly.
        points_per_side: ``auto``: the grid of point prompts is this many points a side
        pred_iou_threshold, stability_threshold: ``auto``: keep masks whose predicted IoU and
            stability score reach these
        auto_label: ``auto``: the label of every hit
    """

    mode: str = "text"
    threshold: float = 0.5
    mask_threshold: float = 0.5
    max_mask_size: int | None = 2048
    multimask: str | None = None
    nms_iou: float | None = None
    nms_per_label: bool = False
    nms_containment: float | None = None
    max_detections: int | None = None
    min_area: float = 0.0
    points_per_side: int = 32
    pred_iou_threshold: float = 0.88
    stability_threshold: float = 0.95
    auto_label: str = "object"

    def head(self) -> str:
        """The head this mode runs on: ``"tracker"`` or ``"detector"``."""
        return "tracker" if self.mode in TRACKER_MODES else "detector"


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
        mask_rank: ``(N,)`` with ``multimask="all"``, the rank of each of a prompt's three masks by
            predicted IoU (0 = the most confident), else -1
        low_res_logits: with ``keep_logits``, each hit's low-resolution mask logits (float16, on
            the CPU: what a refinement passes back as ``input_masks``), else ``None``
    """

    image_size: tuple[int, int]
    labels: list = field(default_factory=list)
    prompt_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    masks: list = field(default_factory=list)
    mask_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    low_res_logits: list | None = None

    def __len__(self) -> int:
        return len(self.labels)


class Sam3Engine(LazyEngine):
    """Loads SAM3 once and runs batches of images with their prompts.

    Args:
        model_path ("facebook/sam3"): hub id or local ``save_pretrained`` directory
        device (None): ``"cuda"``, ``"mps"``, ``"cpu"``, or ``None`` for the best available
        compile (False): ``torch.compile`` the vision encoder of each head as it loads (the bulk
            of the compute; worth it for long GPU runs, costs a warm-up per new batch shape)
        feature_cache_size (0): how many images' vision features to keep for re-runs on the same
            image (refinement); keyed by the ``image_keys`` given to :meth:`segment`
        max_queries_per_forward (32): queries (image x prompt pairs) per decoder forward; bounds
            memory when images have many prompts
        mask_cache_size (0): how many hits' low-resolution mask logits to keep (for refinement:
            :meth:`remember_masks`, and a query's ``mask_key`` reads them back as ``input_masks``)
    """

    _detector = None
    _tracker = None
    detector = lazy_model("_detector", "The ``Sam3Model`` (text and exemplar prompts), loaded on first use.")
    tracker = lazy_model("_tracker", "The ``Sam3TrackerModel`` (boxes), loaded on first use, every weight checked.")

    def __init__(
        self,
        model_path: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        compile: bool = False,
        feature_cache_size: int = 0,
        max_queries_per_forward: int = 32,
        mask_cache_size: int = 0,
    ):
        super().__init__(model_path, device)
        self.compile = bool(compile)
        self.feature_cache_size = int(feature_cache_size)
        self.max_queries_per_forward = max(1, int(max_queries_per_forward))
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._feature_cache: OrderedDict = OrderedDict()
        self.mask_cache_size = int(mask_cache_size)
        self._mask_cache: OrderedDict = OrderedDict()

    # -- loading ------------------------------------------------------------------------------

    def load(self, mode: str, token: str | None = None) -> Sam3Engine:
        """Loads the processor and the head ``mode`` needs, if not loaded yet (to fail early, before
        a long run). ``token`` (``None``: the environment's ``HF_TOKEN`` or a cached login) is used
        for this load only."""
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; the valid modes are {', '.join(MODES)}")
        self._ensure("_processor", token)
        self._ensure("_tracker" if SegmentOptions(mode).head() == "tracker" else "_detector", token)
        return self

    def _load(self, attribute: str, token: str | None):
        if attribute == "_tracker":
            return self._prepare(load_tracker(self.model_path, token))
        from transformers import Sam3Model

        return self._prepare(load_model(Sam3Model, "detector", self.model_path, token))

    def _prepare(self, model):
        model = model.to(self.device).eval()
        if self.compile:
            model.vision_encoder = torch.compile(model.vision_encoder)
        return model

    # -- running ------------------------------------------------------------------------------

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
        with self._lock:
            new = [text for text in dict.fromkeys(texts) if text not in self._text_cache]
            if new:
                self._encode_texts(new)
            embeds = torch.cat([self._text_cache[text][0] for text in texts])
            mask = torch.cat([self._text_cache[text][1] for text in texts])
        return embeds, mask

    def _encode_texts(self, texts: list[str]) -> None:
        tokenizer = self.processor.tokenizer
        encoded = tokenizer(
            texts, padding="max_length", max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt"
        )
        for text in texts:
            if len(tokenizer(text)["input_ids"]) > MAX_TEXT_TOKENS:
                logger.warning("Prompt %r is longer than SAM3's %d tokens; its end is ignored", text, MAX_TEXT_TOKENS)
        with torch.inference_mode(), self._autocast():
            output = self.detector.get_text_features(
                input_ids=encoded["input_ids"].to(self.device), attention_mask=encoded["attention_mask"].to(self.device)
            )
        for i, text in enumerate(texts):
            # clone: a slice would keep the whole batch's features alive as long as the cache
            self._text_cache[text] = (
                output.pooler_output[i : i + 1].clone(),
                encoded["attention_mask"][i : i + 1].to(self.device),
            )

    def _vision_features(self, head: str, images, image_keys) -> list:
        """Per image, its feature tuple (each tensor with batch 1); the encoder runs on cache misses only."""
        keys = list(image_keys) if image_keys is not None and self.feature_cache_size > 0 else [None] * len(images)
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
            # .to: a no-op where the processor resized on the device
            pixel_values = self.preprocess([images[i] for i in todo]).to(self.device)
            with torch.inference_mode(), self._autocast():
                if head == "detector":
                    output = self.detector.get_vision_features(pixel_values=pixel_values)
                    levels = (output.fpn_hidden_states, output.fpn_position_encoding)
                    per_image = [
                        tuple(tuple(t[j : j + 1] for t in level) for level in levels) for j in range(len(todo))
                    ]
                else:
                    embeddings = self.tracker.get_image_embeddings(pixel_values)
                    per_image = [tuple(t[j : j + 1] for t in embeddings) for j in range(len(todo))]
            for j, i in enumerate(todo):
                features[i] = per_image[j]
                if keys[i] is not None:
                    # cloned out of the batch: a slice would keep the whole batch's features alive
                    with torch.inference_mode():
                        cached = per_image[j] if len(todo) == 1 else _clone(per_image[j])
                    self._feature_cache[(head, keys[i])] = features[i] = cached
                    while len(self._feature_cache) > self.feature_cache_size:
                        self._feature_cache.popitem(last=False)
        return features

    def clear_cache(self) -> None:
        """Forgets cached vision features and mask logits (text features are kept: they do not
        depend on images)."""
        with self._lock:
            self._feature_cache.clear()
            self._mask_cache.clear()

    def remember_masks(self, logits_by_key: dict) -> None:
        """Keeps low-resolution mask logits under hashable keys (the newest ``mask_cache_size``), for
        a later query with that ``mask_key`` to refine rather than restart."""
        if self.mask_cache_size <= 0:
            return
        with self._lock:
            for key, logits in logits_by_key.items():
                self._mask_cache[key] = logits
                self._mask_cache.move_to_end(key)
            while len(self._mask_cache) > self.mask_cache_size:
                self._mask_cache.popitem(last=False)

    def cached_mask(self, key) -> torch.Tensor | None:
        """The low-resolution logits kept under ``key``, or ``None``."""
        if key is None:
            return None
        with self._lock:
            logits = self._mask_cache.get(key)
            if logits is not None:
                self._mask_cache.move_to_end(key)
            return logits

    def segment(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[ImagePrompts] | None = None,
        options: SegmentOptions | None = None,
        image_keys: Sequence[Hashable] | None = None,
        keep_logits: bool = False,
        **overrides,
    ) -> list[ImageSegmentation]:
        """Segments a batch of images, each with its own prompts.

        Args:
            images: RGB uint8 ``(H, W, 3)`` arrays, any sizes
            prompts (None): one :class:`~sam3_ops.core.queries.ImagePrompts` per image (pixel
                boxes, already sanitised); ``None`` for none (``auto`` mode)
            options (None): a :class:`SegmentOptions` (default: text mode, threshold 0.5)
            image_keys (None): hashable identities of the images, to reuse cached vision features
                (needs ``feature_cache_size > 0``)
            keep_logits (False): return each hit's low-resolution mask logits too
            **overrides: fields of :class:`SegmentOptions` to change, e.g. ``mode="boxes"``

        Returns:
            one :class:`ImageSegmentation` per image, in order

        On CUDA out-of-memory the batch is halved and retried (down to one image).
        """
        options = dataclasses.replace(options or SegmentOptions(), **overrides)
        if options.mode not in MODES:
            raise ValueError(f"Unknown mode {options.mode!r}; the valid modes are {', '.join(MODES)}")
        prompts = [ImagePrompts() for _ in images] if prompts is None else list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt sets")
        if not len(images):
            return []
        try:
            with self._lock:
                return self._segment(images, prompts, options, image_keys, keep_logits)
        except torch.OutOfMemoryError:
            if len(images) == 1:
                raise
        # retried here, not inside ``except``: the exception's traceback holds the failed attempt's
        # frames, and with them its activations; they are released only when the block is left
        half = len(images) // 2
        logger.warning(
            "Out of device memory on a batch of %d images; retrying as %d + %d", len(images), half, len(images) - half
        )
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        keys = list(image_keys) if image_keys is not None else None
        first = self.segment(images[:half], prompts[:half], options, keys and keys[:half], keep_logits)
        return first + self.segment(images[half:], prompts[half:], options, keys and keys[half:], keep_logits)

    def _segment(self, images, prompts, options: SegmentOptions, image_keys, keep_logits: bool):
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        queries = self._queries(prompts, sizes, options)
        results = [_HitCollector(options, size, keep_logits) for size in sizes]
        if queries:
            head = options.head()
            features = self._vision_features(head, images, image_keys)
            run = self._run_detector if head == "detector" else self._run_tracker
            for chunk in self._chunks(queries, head):
                run(chunk, features, sizes, options, results)
        return _finish(results)

    @staticmethod
    def _queries(prompts, sizes, options: SegmentOptions) -> list[tuple[int, Query]]:
        """Every (image index, query) of a batch; ``auto`` mode lays its grid of single points."""
        if options.mode != "auto":
            return [
                (i, q)
                for i, image_prompts in enumerate(prompts)
                for q in build_queries(options.mode, image_prompts, options.threshold)
            ]
        queries = []
        empty = np.zeros((0, 4), np.float32)
        for i, (height, width) in enumerate(sizes):
            for point in grid_points(options.points_per_side, width, height):
                queries.append((i, Query(options.auto_label, None, empty, empty, point[None], np.ones(1, np.int64))))
        return queries

    def _chunks(self, queries, head: str):
        """Chunks of at most ``max_queries_per_forward`` queries. The tracker takes a box, and a
        previous mask, for every query of a forward or for none: its chunks are uniform in both."""
        groups = {}
        for item in queries:
            key = ()
            if head == "tracker":
                has_mask = self.cached_mask(item[1].mask_key) is not None
                key = (len(item[1].positive_boxes) > 0 and not has_mask, has_mask)
            groups.setdefault(key, []).append(item)
        step = self.max_queries_per_forward
        for group in groups.values():
            for start in range(0, len(group), step):
                yield group[start : start + step]

    def _run_detector(self, chunk, features, sizes, options: SegmentOptions, results):
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
                text_embeds=SimpleNamespace(pooler_output=text_embeds),  # all Sam3Model.forward reads of it
                attention_mask=text_mask,
                input_boxes=boxes,
                input_boxes_labels=box_labels,
            )
            scores = output.pred_logits.float().sigmoid()
            if output.presence_logits is not None:
                scores = scores * output.presence_logits.float().sigmoid()
            # each query its own threshold (a prompt may carry one); every kept hit of the chunk at
            # once: one device-to-host copy, not several per query
            thresholds = torch.tensor([query.threshold for _, query in chunk], device=scores.device, dtype=scores.dtype)
            rows, columns = torch.nonzero(scores > thresholds[:, None], as_tuple=True)
            if not len(rows):
                return
            scale = torch.tensor(
                [[sizes[i][1], sizes[i][0]] * 2 for i in image_index], device=scores.device, dtype=torch.float32
            )
            boxes_px = output.pred_boxes[rows, columns].float() * scale[rows]
            kept = torch.cat([rows[:, None].float(), scores[rows, columns, None], boxes_px], 1).cpu().numpy()
            probabilities = output.pred_masks[rows, columns].float().sigmoid()
            # nonzero is row-major: each query's hits are one contiguous run
            query_rows, starts, counts = np.unique(kept[:, 0].astype(np.int64), return_index=True, return_counts=True)
            for row, start, count in zip(query_rows, starts, counts):
                i, query = chunk[row]
                hits = slice(start, start + count)
                results[i].add(
                    query,
                    kept[hits, 1],
                    kept[hits, 2:],
                    probabilities[hits],
                    options.mask_threshold,
                    probabilities=True,
                )

    def _run_tracker(self, chunk, features, sizes, options: SegmentOptions, results):
        image_index = [i for i, _ in chunk]
        embeddings = [torch.cat(level) for level in zip(*(features[i] for i in image_index))]
        target = self.tracker.prompt_encoder.input_image_size
        scales = np.array([[target / sizes[i][1], target / sizes[i][0]] for i in image_index], np.float32)
        previous = [self.cached_mask(query.mask_key) for _, query in chunk]
        input_boxes = None
        # an object being refined has its previous mask; its box is only the fallback for a mask
        # that is no longer cached (a box would stop a click from growing the mask past it)
        if len(chunk[0][1].positive_boxes) and previous[0] is None:
            boxes = np.stack([query.positive_boxes[0] for _, query in chunk]) * np.tile(scales, 2)
            input_boxes = torch.from_numpy(boxes[:, None]).to(self.device)
        points, point_labels = _tracker_points(chunk, scales, self.device)
        input_masks = torch.stack(previous)[:, None].to(self.device, torch.float32) if previous[0] is not None else None
        several = options.multimask is not None or options.mode == "auto"
        with torch.inference_mode(), self._autocast():
            output = self.tracker(
                image_embeddings=embeddings,
                input_boxes=input_boxes,
                input_points=points,
                input_labels=point_labels,
                input_masks=input_masks,
                multimask_output=several,
            )
            iou = output.iou_scores[:, 0].float().clamp(0, 1)  # (n, k): k = 3 masks, or 1
            logits = output.pred_masks[:, 0].float()  # (n, k, h, w)
            choice = _choose_masks(iou, logits, options)
            iou = iou.cpu().numpy()
            threshold = logit(options.mask_threshold)
            for row, (i, query) in enumerate(chunk):
                picked, ranks = choice[row]
                if not len(picked):
                    continue
                # boxes mode: the mask is cut to its prompt box; points and auto: a tight box
                boxes = np.repeat(query.positive_boxes[:1], len(picked), 0) if options.mode == "boxes" else None
                # threshold logits: transformers' tracker post-processing interpolates logits
                results[i].add(query, iou[row, picked], boxes, logits[row, picked], threshold, ranks=ranks)


def _choose_masks(iou: torch.Tensor, logits: torch.Tensor, options: SegmentOptions) -> list:
    """Per query, the indices of the masks to keep among the tracker's ``k`` and their ranks:
    the single mask, the most confident of three (``best``), all three ranked (``all``), or, in
    ``auto`` mode, those of the three whose predicted IoU and stability pass."""
    k = iou.shape[1]
    if k == 1:
        return [([0], None)] * len(iou)
    if options.multimask == "best":
        return [([int(best)], None) for best in iou.argmax(1).tolist()]
    if options.multimask == "all":
        order = torch.argsort(iou, dim=1, descending=True, stable=True).tolist()
        return [(row, list(range(k))) for row in order]
    # auto: SAM's automatic mask generator keeps each of the three that is confident and stable
    threshold = logit(options.mask_threshold)
    inner = (logits > threshold + 1.0).flatten(2).sum(-1).float()
    outer = (logits > threshold - 1.0).flatten(2).sum(-1).float()
    stability = torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))
    passed = (iou >= options.pred_iou_threshold) & (stability >= options.stability_threshold)
    return [(torch.nonzero(row).flatten().tolist(), None) for row in passed.cpu()]


def _clone(nested):
    """A copy of a (nested) tuple of tensors that owns its memory."""
    return tuple(_clone(t) if isinstance(t, tuple) else t.clone() for t in nested)


class _HitCollector:
    """One image's candidate hits, kept as low-resolution maps on the device until :meth:`resolve`
    filters them (empty, too small, duplicates, over the limit) and upsamples only the survivors."""

    #: the most float elements one batched upsampling holds, output and intermediates (64 M = 256 MB)
    element_budget = 64 * 1024 * 1024

    def __init__(self, options: SegmentOptions, size: tuple[int, int], keep_logits: bool = False):
        self.options, self.size, self.keep_logits = options, size, keep_logits
        self.labels, self.prompt_index, self.ranks, self.scores, self.boxes = [], [], [], [], []
        self.maps, self.thresholds, self.probabilities = [], [], []

    def add(
        self, query: Query, scores, boxes_px, maps: torch.Tensor, threshold: float, probabilities=False, ranks=None
    ):
        """Adds hits: scores, pixel boxes (``None``: tight around each mask) and low-res maps
        ``(n, h, w)`` (probabilities, or logits) with the value above which a pixel is in the mask."""
        n = len(scores)
        self.labels += [query.label] * n
        self.prompt_index += [query.prompt_index] * n
        self.ranks += list(ranks) if ranks is not None else [-1] * n
        self.scores += [float(score) for score in scores]
        self.boxes += list(boxes_px) if boxes_px is not None else [None] * n
        self.maps.append(maps)
        self.thresholds += [threshold] * n
        self.probabilities += [probabilities] * n

    def resolve(self) -> dict:
        """Filters the candidates and upsamples the survivors' masks over their boxes (on the device).

        Without a rule (``min_area``, ``nms_iou``, ``nms_containment``, ``max_detections``) every
        non-empty candidate is written. With one, the low-resolution masks prune first
        (:meth:`_prune`), then :meth:`_check_written` applies the rules exactly to the masks as
        they will be written."""
        if not self.scores:
            return {"keep": [], "crops": [], "masks": [], "logits": None}
        maps = torch.cat(self.maps)
        foreground = maps > torch.tensor(self.thresholds, device=maps.device)[:, None, None]
        candidates = self._prune(foreground)
        options = self.options
        rules = (options.min_area, options.nms_iou, options.nms_containment, options.max_detections)
        if rules == (0, None, None, None):
            keep = candidates
            crops, masks = self._write(maps, foreground, keep)
        else:
            keep, crops, masks = self._check_written(maps, foreground, candidates)
        logits = None
        if self.keep_logits and keep:
            low_res = maps[keep]
            as_logits = [
                torch.logit(low_res[k], eps=1e-6) if self.probabilities[i] else low_res[k] for k, i in enumerate(keep)
            ]
            logits = [t.to("cpu", torch.float16) for t in as_logits]
        return {"keep": keep, "crops": crops, "masks": masks, "logits": logits}

    def _write(self, maps: torch.Tensor, foreground: torch.Tensor, index: list[int]) -> tuple[list, list]:
        """The crops and masks written for candidates ``index``: each map upsampled over its box
        (or, without a box, a box around its low-res mask, then cut tight around the upsampled
        mask), at most ``max_mask_size`` a side; ``None`` for a box-less mask left empty."""
        height, width = self.size
        coarse = _coarse_boxes(foreground[index], width, height) if index else []
        boxes = [self.boxes[i] if self.boxes[i] is not None else coarse[k] for k, i in enumerate(index)]
        crops = [crop_box(box, width, height) for box in boxes]
        shapes = [mask_shape(crop, self.options.max_mask_size) for crop in crops]
        masks = [None] * len(index)
        low_res = maps[index] if index else maps[:0]
        for group in memory_groups(shapes, self.element_budget, tuple(maps.shape[-2:])):
            upsampled = upsample_crops(low_res[group], [crops[k] for k in group], self.size, [shapes[k] for k in group])
            for j, k in enumerate(group):
                mask_height, mask_width = shapes[k]
                masks[k] = upsampled[j, :mask_height, :mask_width] > self.thresholds[index[k]]
        for k, i in enumerate(index):
            if self.boxes[i] is None:
                masks[k], crops[k] = _tighten(masks[k], crops[k])
        return crops, masks

    def _prune(self, foreground: torch.Tensor) -> list[int]:
        """The candidates left by the cheap pass on the low-resolution masks, in order: not empty
        where the box comes from the mask, at least ``min_area``, not a duplicate (``nms_iou``,
        ``nms_containment``). ``max_detections`` waits for the exact pass."""
        options = self.options
        n, h, w = foreground.shape
        areas = foreground.flatten(1).sum(1)
        keep = torch.ones(n, dtype=torch.bool, device=foreground.device)
        needs_pixels = torch.tensor([box is None for box in self.boxes], device=foreground.device)
        keep &= ~needs_pixels | (areas > 0)
        if options.min_area > 0:
            keep &= areas >= options.min_area * h * w
        index = torch.nonzero(keep).flatten()
        scores = torch.tensor(self.scores, device=foreground.device)
        if len(index) > 1 and (options.nms_iou is not None or options.nms_containment is not None):
            labels = [self.labels[i] for i in index.tolist()] if options.nms_per_label else None
            boxes = _coarse_boxes(foreground[index], w, h, margin=0)
            survivors = mask_nms(
                foreground[index], scores[index], options.nms_iou, options.nms_containment, labels, torch.tensor(boxes)
            )
            index = index[survivors.to(index.device)]
        return index.tolist()

    def _check_written(self, maps: torch.Tensor, foreground: torch.Tensor, candidates: list[int]) -> tuple:
        """The rules, exactly, on the masks as written (each over its box, in image pixels:
        :mod:`sam3_ops.core.masks`), in the README's order: ``min_area``, then greedy NMS (highest
        score first), then ``max_detections``, the first that many survivors.

        The candidates are written in rounds, highest score first, only as many as are still
        missing: with ``max_detections`` a run upsamples as many masks as it keeps when nothing
        fails the exact check, and one more per hit that does. Returns ``(keep, crops, masks)``."""
        options = self.options
        height, width = self.size
        limit = options.max_detections
        # the order of the greedy pass: highest score first, ties in candidate order (stable)
        order = sorted(candidates, key=lambda i: -self.scores[i])
        nms = options.nms_iou is not None or options.nms_containment is not None
        kept, crops, masks, areas = [], [], [], []
        start = 0
        while start < len(order) and (limit is None or len(kept) < limit):
            batch = order[start : start + (len(order) if limit is None else limit - len(kept))]
            start += len(batch)
            batch_crops, batch_masks = self._write(maps, foreground, batch)
            alive = [k for k, mask in enumerate(batch_masks) if mask is not None]
            batch_areas = written_areas([batch_crops[k] for k in alive], [batch_masks[k] for k in alive])
            new = [k for k, area in zip(alive, batch_areas.tolist()) if area >= options.min_area * height * width]
            area_of = dict(zip(alive, batch_areas.tolist()))
            decided = len(kept)
            kept += [batch[k] for k in new]
            crops += [batch_crops[k] for k in new]
            masks += [batch_masks[k] for k in new]
            areas += [area_of[k] for k in new]
            if nms:
                labels = [self.labels[i] for i in kept] if options.nms_per_label else None
                survivors = written_nms(
                    np.asarray(crops),
                    masks,
                    np.asarray(areas),
                    options.nms_iou,
                    options.nms_containment,
                    labels,
                    decided,
                )
                chosen = list(range(decided)) + survivors
                kept, crops, masks, areas = ([values[k] for k in chosen] for values in (kept, crops, masks, areas))
        # written in candidate order, as without rules
        ranked = sorted(range(len(kept)), key=lambda k: kept[k])
        return [kept[k] for k in ranked], [crops[k] for k in ranked], [masks[k] for k in ranked]


def _coarse_boxes(foreground: torch.Tensor, width: int, height: int, margin: int = 1) -> np.ndarray:
    """Pixel ``xyxy`` boxes around low-resolution masks ``(n, h, w)``, grown by ``margin`` low-res
    pixels (a mask's upsampled edge may reach into its neighbours), one host copy. An empty mask
    gets the whole image."""
    n, h, w = foreground.shape
    rows, cols = foreground.any(2), foreground.any(1)
    index_h = torch.arange(h, device=foreground.device)
    index_w = torch.arange(w, device=foreground.device)
    y0 = torch.where(rows, index_h, h).min(1).values
    y1 = torch.where(rows, index_h, -1).max(1).values + 1
    x0 = torch.where(cols, index_w, w).min(1).values
    x1 = torch.where(cols, index_w, -1).max(1).values + 1
    low = torch.stack([x0, y0, x1, y1], 1).cpu().numpy().astype(np.float32)
    empty = low[:, 2] <= low[:, 0]
    low[:, :2] -= margin
    low[:, 2:] += margin
    boxes = low * np.array([width / w, height / h, width / w, height / h], np.float32)
    boxes[empty] = [0, 0, width, height]
    return np.clip(boxes, 0, [width, height, width, height])


def _tighten(mask: torch.Tensor, crop) -> tuple:
    """A mask cut to its own pixels' extent and its crop moved to match (a scaled-down mask's rows
    and columns map back to the crop proportionally, never past it); ``(None, None)`` for an empty
    mask."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if not len(rows):
        return None, None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    x0, y0, x1, y1 = crop
    scale_y, scale_x = (y1 - y0) / mask.shape[0], (x1 - x0) / mask.shape[1]
    tight = (
        x0 + int(c0 * scale_x),
        y0 + int(r0 * scale_y),
        # clamped: in floating point, c1 * scale_x for the last column can exceed the crop's width,
        # which would give a box one pixel past the image (clipped when written, the mask not)
        min(x0 + int(np.ceil(c1 * scale_x)), x1),
        min(y0 + int(np.ceil(r1 * scale_y)), y1),
    )
    return mask[r0:r1, c0:c1], tight


def _finish(collectors: list[_HitCollector]) -> list[ImageSegmentation]:
    """Resolves each image's hits and copies every mask crop of the batch to the host at once."""
    resolved = [collector.resolve() for collector in collectors]
    masks = [mask for part in resolved for mask in part["masks"] if mask is not None]
    flat = torch.cat([mask.flatten() for mask in masks]).cpu().numpy() if masks else np.zeros(0, bool)
    offset = 0
    results = []
    for collector, part in zip(collectors, resolved):
        hits = [(k, i) for k, i in enumerate(part["keep"]) if part["masks"][k] is not None]
        host_masks = []
        for k, _ in hits:
            count = part["masks"][k].numel()
            host_masks.append(flat[offset : offset + count].reshape(tuple(part["masks"][k].shape)))
            offset += count
        results.append(
            ImageSegmentation(
                image_size=collector.size,
                labels=[collector.labels[i] for _, i in hits],
                prompt_index=np.asarray([collector.prompt_index[i] for _, i in hits], np.int64),
                scores=np.asarray([collector.scores[i] for _, i in hits], np.float32),
                boxes_xyxy=np.asarray([part["crops"][k] for k, _ in hits], np.float32).reshape(-1, 4),
                masks=host_masks,
                mask_rank=np.asarray([collector.ranks[i] for _, i in hits], np.int64),
                low_res_logits=[part["logits"][k] for k, _ in hits] if part["logits"] is not None else None,
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
        top_left, bottom_right = normalised[:, :2], normalised[:, 2:]
        cxcywh = np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=1)
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


def _tracker_points(chunk, scales, device):
    """The queries' points for the tracker, in its input resolution, ragged counts padded with
    label -10 (which the prompt encoder skips), as transformers' processor pads them."""
    count = max(len(query.points) for _, query in chunk)
    if count == 0:
        return None, None
    points = np.zeros((len(chunk), 1, count, 2), np.float32)
    labels = np.full((len(chunk), 1, count), -10, np.int64)
    for row, (_, query) in enumerate(chunk):
        n = len(query.points)
        points[row, 0, :n] = query.points * scales[row]
        labels[row, 0, :n] = query.point_labels
    return torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device)
