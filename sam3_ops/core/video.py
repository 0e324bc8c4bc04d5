"""SAM3 on videos: every instance of a concept tracked with a stable id (text prompts), or chosen
objects tracked from boxes and points on chosen frames; frames streamed in, results streamed out.
torch + transformers + numpy only (never fiftyone).

Two runs, on transformers' own video models:

- :meth:`Sam3VideoEngine.track_text` (``Sam3VideoModel``): all text prompts in ONE pass over the
  video (the vision encoder runs once per frame, each prompt's detector head once per frame); every
  detected object becomes a tracked instance whose id never changes. Each prompt may carry its own
  label and score threshold.
- :meth:`Sam3VideoEngine.track_prompts` (``Sam3TrackerVideoModel``): each box / points prompt
  becomes one tracked instance, with the prompt's id and label, propagated forward, backward or both
  from the frame(s) it was given on.

Both are generators yielding one :class:`FrameResult` per frame as soon as it is final, so the
caller writes as it goes.

Memory: what transformers' video session keeps, and what this module keeps of it
--------------------------------------------------------------------------------
transformers' ``Sam3VideoInferenceSession`` / ``Sam3TrackerVideoInferenceSession`` are built to
hold a whole video: ``init_video_session(video=...)`` preprocesses every frame up front (3 x 1008 x
1008 float32, 12 MB a frame), and every frame processed leaves behind, per tracked object, its
outputs: the memory features (64 x 72 x 72), the low-res mask (288 x 288), the full-size mask logits
(``high_res_masks``, 1008 x 1008 float32: 4 MB) and the object pointer; plus user inputs and
per-frame bookkeeping (tracker scores, suppressed ids, hotstart lists, which the text model
deep-copies on every frame: time quadratic in the video's length). A 10-minute 30 fps video with
10 objects would keep ~700 GB. Nothing there is ever freed.

What the model reads back (``Sam3TrackerVideoModel._prepare_memory_conditioned_features``):
memory features of the ``num_maskmem - 1`` (6) previous frames and of at most
``max_cond_frame_num`` (4) conditioning frames, object pointers of the
``max_object_pointers_in_encoder - 1`` (15) previous frames and of every conditioning frame, the
vision features of the current frame only, and ``num_frames`` only through
``min(num_frames, max_object_pointers_in_encoder)``. So here:

- frames are decoded and preprocessed one at a time and given to the session as the model reaches
  them (``add_new_frame``), then dropped; ``num_frames`` is the count known so far, read at least
  ``max_object_pointers_in_encoder`` frames ahead, which gives the same ``min`` (the only use);
- after each frame (:func:`prune_session`): non-conditioning outputs older than
  ``max(num_maskmem, max_object_pointers_in_encoder) - 1`` frames are deleted (never read again);
  ``high_res_masks`` and ``pred_masks`` are deleted from every processed frame (read only while
  that frame is processed); conditioning frames keep their entry and object pointer (transformers
  attends to the pointers of ALL conditioning frames: a few KB each), but their memory features are
  deleted once they can no longer be selected (outside the ``max_cond_frame_num`` most recent and
  the ``num_maskmem`` window); inputs and the per-frame bookkeeping of processed frames are deleted,
  and the text model's hotstart lists are cut to the length its tests look at
  (``len(...) >= hotstart_unmatch_thresh``);

none of which the model reads again, so results are identical to the plain transformers loop
(``tests/test_video_core.py`` checks parity on videos longer than the window). What still grows:
one pointer per conditioning frame per object (text mode re-conditions every
``recondition_every_nth_frame`` frames on confident matches) and a few integers per object ever
seen; both tiny next to a frame. Note: Meta's SAM2/SAM3 attend to the pointers of the SELECTED
conditioning frames only; transformers (5.23) to all of them; this module keeps transformers'.

Other bounds: the text model holds its outputs ``hotstart_delay`` (15) frames before they are final
(transformers' own behaviour, kept for parity); ``max_objects`` caps the tracked objects (new
detections beyond it are dropped, with a warning); masks are upsampled only over each object's box
(never at full frame size for every object); bf16 autocast on GPUs with bf16 units (sm80+).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import LazyEngine, lazy_model, load_model
from .masks import logit, mask_shape, memory_groups, upsample_crops
from .queries import TextPrompt, check_probability, normalize_text_prompts
from .video_io import VideoReader

logger = logging.getLogger(__name__)

DIRECTIONS = ("forward", "backward", "both")
#: upsampling budget (float elements) per group of masks
_UPSAMPLE_BUDGET = 32 * 2**20


@dataclass(frozen=True)
class VideoPrompt:
    """One object to track, given on one frame by a box and/or points, in pixels of the frame.

    The same ``prompt_id`` on several frames is the same object, re-prompted (each such frame
    conditions the tracker again).

    Attributes:
        frame_number: the frame the prompt is on, 1-based (FiftyOne's frame numbers)
        prompt_id: the id of the tracked instance (any hashable: int, str)
        label: its label
        box_xyxy (None): ``(x0, y0, x1, y1)`` pixel box around the object
        points (None): ``[(x, y), ...]`` pixel points
        point_labels (None): per point, 1 (on the object) or 0 (not on it); default all 1
    """

    frame_number: int
    prompt_id: object
    label: str
    box_xyxy: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] | None = None
    point_labels: tuple[int, ...] | None = None


@dataclass
class FrameResult:
    """The tracked instances on one frame.

    Attributes:
        frame_number: 1-based, as FiftyOne numbers frames
        image_size: ``(height, width)`` in pixels
        object_ids: per instance, its id, constant across frames: SAM3's object id (an int from 0)
            for text prompts, the prompt's ``prompt_id`` for box / point prompts
        labels: per instance, its label
        scores: ``(N,)`` float32 in [0, 1]: for text prompts the detection score the object was
            found with (constant, as transformers reports it); for box / point prompts the
            tracker's probability that the object is present on this frame
        boxes_xyxy: ``(N, 4)`` float32 pixel boxes on whole pixels, covering the mask's pixels
        masks: ``N`` bool arrays, mask ``i`` covering exactly box ``i`` (scaled down to
            ``max_mask_size`` if larger)
    """

    frame_number: int
    image_size: tuple[int, int]
    object_ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    masks: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.object_ids)


class Sam3VideoEngine(LazyEngine):
    """Loads SAM3's video models lazily and tracks objects through videos, streaming.

    Args:
        model_path ("facebook/sam3"): hub id or local ``save_pretrained`` directory (a
            ``sam3_video`` checkpoint)
        device (None): ``"cuda"``, ``"mps"``, ``"cpu"``, or ``None`` for the best available

    An engine holds no per-video state: every run has its own session, so one engine serves
    concurrent runs, whose frames queue on the lock.
    """

    _text_model = None
    _tracker_model = None
    text_model = lazy_model("_text_model", "``Sam3VideoModel`` (detector + tracker), loaded on first use.")
    tracker_model = lazy_model(
        "_tracker_model", "``Sam3TrackerVideoModel`` (box and point prompts), loaded on first use."
    )

    # -- loading ------------------------------------------------------------------------------

    def load(self, mode: str = "text", token: str | None = None) -> Sam3VideoEngine:
        """Loads the processor and the model ``mode`` needs, if not loaded yet (to fail early).

        Args:
            mode ("text"): ``"text"`` (``Sam3VideoModel``) or ``"prompts"`` (``Sam3TrackerVideoModel``)
            token (None): Hugging Face token for this load only (``None``: the environment's)

        Raises:
            ModelLoadError: if the checkpoint cannot be loaded or lacks any weight
        """
        if mode not in ("text", "prompts"):
            raise ValueError(f"Unknown video mode {mode!r}; the valid modes are text, prompts")
        self._ensure("_processor", token)
        self._ensure("_text_model" if mode == "text" else "_tracker_model", token)
        return self

    def _load(self, attribute: str, token: str | None):
        from transformers import Sam3TrackerVideoModel, Sam3VideoModel

        if attribute == "_text_model":
            return load_model(Sam3VideoModel, "video", self.model_path, token).to(self.device)
        return load_model(Sam3TrackerVideoModel, "tracker-video", self.model_path, token).to(self.device)

    # -- text prompts -------------------------------------------------------------------------

    def track_text(
        self,
        frames: Iterable[np.ndarray],
        prompts: Sequence[str | dict | TextPrompt],
        *,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        max_objects: int = 50,
        max_mask_size: int | None = 2048,
    ) -> Iterator[FrameResult]:
        """Finds every instance of each text prompt on every frame and tracks it with a stable id,
        all prompts in one pass; yields one :class:`FrameResult` per frame, in order.

        A frame's result comes out ``hotstart_delay`` (15) frames after the frame went in: SAM3
        holds them back to remove tracks that turn out to be spurious (transformers' behaviour).

        Args:
            frames: RGB uint8 ``(H, W, 3)`` frames of one video, in order (e.g. the frames of
                :meth:`VideoReader.frames`, without the indices); read lazily, one at a time
            prompts: strings, ``{"text", "label", "threshold"}`` dicts, or :class:`TextPrompt`;
                distinct texts
            threshold (None): for prompts without their own: a detection starts a tracked
                object when its score reaches this (transformers' ``new_det_thresh``; its
                ``score_threshold_detection`` is lowered to it if above), and an instance is
                reported only if the score it was detected with reaches it. ``None``: the
                checkpoint's own thresholds (``new_det_thresh`` 0.7, ``score_threshold_detection``
                0.5 for facebook/sam3) and no score filter: exactly what transformers' video loop
                reports (which, on a frame where nothing is tracked yet, starts an object from every
                detection above ``score_threshold_detection``). The model runs with the lowest
                threshold of all prompts; an instance of a prompt with a higher one is tracked (it
                counts towards ``max_objects``) but reported only if its score reaches that one.
            mask_threshold (0.5): a pixel is in the mask where its probability exceeds this
            max_objects (50): the most objects tracked at once; new detections beyond it are
                dropped (the highest scores are kept) and a warning says so
            max_mask_size (2048): the longest side of a returned mask; ``None`` for no limit

        Raises:
            ValueError: on invalid prompts or options (at the call, before any frame is read)
            ModelLoadError: if the model cannot be loaded
        """
        text_prompts = normalize_text_prompts(prompts)
        if max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {max_objects}")
        check_probability("mask_threshold", mask_threshold)
        if threshold is not None:
            check_probability("threshold", threshold)
        model = self.text_model
        given = [p.threshold if p.threshold is not None else threshold for p in text_prompts]
        effective = [float(model.new_det_thresh) if t is None else float(t) for t in given]
        lowest = min(effective)
        # the score filter of each prompt's instances: where a threshold was given, or where the model
        # runs below the prompt's (another prompt's is lower); none for a prompt at the checkpoint's
        # own settings, which reports exactly what transformers does
        reported = [t if g is not None or t > lowest else None for g, t in zip(given, effective)]
        dropped: list[tuple[int, int]] = []
        run = _run_view(
            model,
            new_det_thresh=lowest,
            score_threshold_detection=min(float(model.score_threshold_detection), lowest),
            max_num_objects=int(max_objects),
        )
        planning = run.run_tracker_update_planning_phase

        def planning_counting_drops(*args, **kwargs):
            plan, metadata = planning(*args, **kwargs)
            if plan["num_obj_dropped_due_to_limit"]:
                dropped.append((kwargs["frame_idx"], plan["num_obj_dropped_due_to_limit"]))
            return plan, metadata

        run.run_tracker_update_planning_phase = planning_counting_drops
        options = _Options(mask_threshold, max_mask_size)
        return self._track_text(run, frames, text_prompts, reported, options, dropped, max_objects)

    def _track_text(self, run, frames, prompts, thresholds, options, dropped, max_objects) -> Iterator[FrameResult]:
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        tracker_config = run.tracker_model.config
        session = None
        pending: deque = deque()  # outputs held back for the hotstart delay
        warned = False
        for index, frame, known in _with_known_count(frames, tracker_config.max_object_pointers_in_encoder):
            frame = _check_frame(frame, None if session is None else (session.video_height, session.video_width))
            if session is None:
                session = _streaming_session(Sam3VideoInferenceSession, frame.shape[:2], self.device)
                self._add_text_prompts(session, [p.text for p in prompts])
            session.frames_known = known
            pixels = self._preprocess(frame)
            with self._lock, torch.inference_mode(), self._autocast():
                session.add_new_frame(pixels, index)
                output = run(inference_session=session, frame_idx=index)
            session.hotstart_removed_obj_ids.update(output.removed_obj_ids)
            prune_session(session, index, reverse=False, model=run)
            if dropped and not warned:
                frame_idx, count = dropped[0]
                logger.warning(
                    "SAM3 video: %d new object(s) on frame %d not tracked: already tracking max_objects=%d "
                    "(the highest-scoring detections are kept); raise max_objects to track more",
                    count,
                    frame_idx + 1,
                    max_objects,
                )
                warned = True
            pending.append(output)
            if run.hotstart_delay <= 0 or len(pending) >= run.hotstart_delay:
                yield self._text_result(session, pending.popleft(), prompts, thresholds, options)
        while pending:
            yield self._text_result(session, pending.popleft(), prompts, thresholds, options)
        if dropped:
            logger.warning(
                "SAM3 video: %d detection(s) on %d frame(s) were not tracked because of max_objects=%d",
                sum(count for _, count in dropped),
                len(dropped),
                max_objects,
            )

    def _add_text_prompts(self, session, texts: list[str]) -> None:
        """``Sam3VideoProcessor.add_text_prompt``, without needing a video processor."""
        tokenizer = self.processor.tokenizer
        for text in texts:
            prompt_id = session.add_prompt(text)
            encoded = tokenizer(text, return_tensors="pt", padding="max_length", max_length=32, truncation=True)
            session.prompt_input_ids[prompt_id] = encoded["input_ids"].to(self.device)
            session.prompt_attention_masks[prompt_id] = encoded["attention_mask"].to(self.device)

    def _text_result(self, session, output, prompts, thresholds, options) -> FrameResult:
        """``Sam3VideoProcessor.postprocess_outputs`` (same instances, boxes, masks and scores), with
        masks upsampled over their boxes only, per-prompt score filters (``thresholds``: per prompt,
        the score an instance needs, ``None`` for none) and labels."""
        height, width = session.video_height, session.video_width
        result = FrameResult(frame_number=output.frame_idx + 1, image_size=(height, width))
        hidden = set(output.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)

        def reported(obj_id) -> bool:
            if obj_id in hidden:
                return False
            needed = thresholds[session.obj_id_to_prompt_id[obj_id]]
            return needed is None or output.obj_id_to_score[obj_id] >= needed

        object_ids = [obj_id for obj_id in sorted(output.obj_id_to_mask) if reported(obj_id)]
        if not object_ids:
            return result
        low_res = torch.cat([output.obj_id_to_mask[obj_id] for obj_id in object_ids])
        crops = _upsampled_crops(low_res, (height, width), logit(options.mask_threshold))
        kept = [i for i, crop in enumerate(crops) if crop is not None]
        object_ids = [object_ids[i] for i in kept]
        crops = [crops[i] for i in kept]
        groups = [session.obj_id_to_prompt_id[obj_id] for obj_id in object_ids]
        priorities = np.array([output.obj_id_to_tracker_score.get(obj_id, 0.0) for obj_id in object_ids], np.float32)
        masks = _non_overlapping(crops, groups, priorities)
        result.object_ids = list(object_ids)
        result.labels = [prompts[group].label or prompts[group].text for group in groups]
        result.scores = np.array([output.obj_id_to_score[obj_id] for obj_id in object_ids], np.float32)
        result.boxes_xyxy = np.array([box for box, _ in crops], np.float32).reshape(-1, 4)
        result.masks = [_limit_size(mask, options.max_mask_size) for mask in masks]
        return result

    # -- box and point prompts ----------------------------------------------------------------

    def track_prompts(
        self,
        video: VideoReader | str | os.PathLike,
        prompts: Sequence[VideoPrompt],
        direction: str = "forward",
        *,
        mask_threshold: float = 0.5,
        max_mask_size: int | None = 2048,
    ) -> Iterator[FrameResult]:
        """Tracks each prompted object from the frame(s) it was prompted on; yields one
        :class:`FrameResult` per frame, as each frame is done.

        ``forward``: from the first prompted frame to the end, in order; ``backward``: from the last
        prompted frame to frame 1, in reverse; ``both``: forward, then backward from the first
        prompted frame. An object joins the pass when the pass reaches its prompt's frame. The two
        directions of ``both`` are independent passes (each starts from the prompts alone); on the
        frames between the first and last prompted frame an object's instance comes from the
        forward pass once that pass has reached it, else from the backward pass (those frames are
        held until the backward pass has passed them: memory grows with that span, not with the
        video). An instance is reported on a frame when its mask is not empty.

        Args:
            video: a :class:`VideoReader` or a video file path
            prompts: the :class:`VideoPrompt` of each object (several per object to re-prompt it)
            direction ("forward"): ``"forward"``, ``"backward"`` or ``"both"``
            mask_threshold (0.5): a pixel is in the mask where its probability exceeds this
            max_mask_size (2048): the longest side of a returned mask; ``None`` for no limit

        Raises:
            VideoLoadError: if the video cannot be read
            ValueError: on invalid prompts or options (at the call, before any frame is read)
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"Unknown direction {direction!r}; the valid directions are {', '.join(DIRECTIONS)}")
        check_probability("mask_threshold", mask_threshold)
        reader = video if isinstance(video, VideoReader) else VideoReader(video)
        prompts = validate_video_prompts(prompts, reader.frame_count)
        self._ensure("_tracker_model")  # load before the first frame: fail early
        options = _Options(mask_threshold, max_mask_size)
        return self._track_prompts(reader, prompts, direction, options)

    def _track_prompts(self, reader: VideoReader, prompts, direction, options) -> Iterator[FrameResult]:
        first_frame = {}  # prompt id -> the first frame (index) it is prompted on
        for prompt in prompts:
            index = prompt.frame_number - 1
            first_frame[prompt.prompt_id] = min(index, first_frame.get(prompt.prompt_id, index))
        first, last = min(first_frame.values()), max(p.frame_number - 1 for p in prompts)
        if direction != "both":
            backward = direction == "backward"
            yield from self._prompt_pass(reader, prompts, last if backward else first, backward, options)
            return
        held = {}  # frames in [first, last]: the forward pass's result, completed by the backward pass
        for result in self._prompt_pass(reader, prompts, first, reverse=False, options=options):
            if result.frame_number - 1 < last:
                held[result.frame_number - 1] = result
            else:  # every object has joined the forward pass here
                yield result
        for result in self._prompt_pass(reader, prompts, last, reverse=True, options=options):
            index = result.frame_number - 1
            if index == last:
                continue
            backward_only = [i for i, obj in enumerate(result.object_ids) if first_frame[obj] > index]
            yield _merge(held.pop(index, None), _subset(result, backward_only))

    def _prompt_pass(self, reader: VideoReader, prompts, start: int, reverse: bool, options) -> Iterator[FrameResult]:
        """One session, one direction: frames from ``start`` to the end (or to frame 0 when
        ``reverse``), each prompt's object joining at its frame."""
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoInferenceSession

        model = self.tracker_model
        session = _streaming_session(Sam3TrackerVideoInferenceSession, reader.image_size, self.device)
        session.frames_known = reader.frame_count  # only min(count, max_object_pointers) is read
        by_frame: dict[int, list[VideoPrompt]] = {}
        for prompt in prompts:
            by_frame.setdefault(prompt.frame_number - 1, []).append(prompt)
        object_index = {prompt_id: i for i, prompt_id in enumerate(dict.fromkeys(p.prompt_id for p in prompts))}
        labels = {p.prompt_id: p.label for p in prompts}
        prompt_ids = {i: prompt_id for prompt_id, i in object_index.items()}
        frames = reader.frames_reversed(start) if reverse else reader.frames(start)
        for index, frame in frames:
            pixels = self._preprocess(frame)
            with self._lock, torch.inference_mode(), self._autocast():
                session.add_new_frame(pixels, index)
                if index in by_frame:
                    self._add_box_point_inputs(session, index, by_frame[index], object_index)
                if session.get_obj_num() == 0:
                    continue
                output = model(inference_session=session, frame_idx=index, reverse=reverse)
            prune_session(session, index, reverse=reverse, model=model)
            ids = [prompt_ids[obj_id] for obj_id in output.object_ids]
            scores = torch.sigmoid(output.object_score_logits.float().reshape(len(ids), -1)[:, 0])
            yield _prompt_result(index, reader.image_size, output.pred_masks[:, 0], ids, labels, scores, options)

    def _add_box_point_inputs(self, session, frame_idx: int, prompts: list[VideoPrompt], object_index: dict) -> None:
        """``Sam3TrackerVideoProcessor.add_inputs_to_inference_session``, one object at a time (so
        objects with different numbers of points need no padding): a box becomes two points labelled
        2 and 3, before the object's points; pixel coordinates are scaled to the model's input size."""
        target = self.processor.image_processor.size["height"]
        height, width = session.video_height, session.video_width
        for prompt in prompts:
            coordinates, point_labels = [], []
            if prompt.box_xyxy is not None:
                x0, y0, x1, y1 = prompt.box_xyxy
                coordinates += [[x0, y0], [x1, y1]]
                point_labels += [2, 3]
            if prompt.points:
                coordinates += [list(point) for point in prompt.points]
                point_labels += list(prompt.point_labels or [1] * len(prompt.points))
            coords = torch.tensor(coordinates, dtype=torch.float32).reshape(1, 1, -1, 2)
            coords[..., 0] = coords[..., 0] * (target / width)
            coords[..., 1] = coords[..., 1] * (target / height)
            obj_idx = session.obj_id_to_idx(object_index[prompt.prompt_id])
            inputs = {"point_coords": coords, "point_labels": torch.tensor(point_labels).reshape(1, 1, -1)}
            session.add_point_inputs(obj_idx, frame_idx, inputs)
            session.remove_mask_inputs(obj_idx, frame_idx)
        session.obj_with_new_inputs = [object_index[prompt.prompt_id] for prompt in prompts]

    # -- shared -------------------------------------------------------------------------------

    def _preprocess(self, frame: np.ndarray) -> torch.Tensor:
        """One frame resized and normalised by the checkpoint's image processor, on the device."""
        processed = self.processor.image_processor(images=[frame], return_tensors="pt", device=self.device)
        return processed["pixel_values"][0]


# -- sessions and their pruning ---------------------------------------------------------------


class _StreamingFrames:
    """Mixin for transformers' video sessions: frames are added one at a time and dropped once
    processed, so ``num_frames`` is the number of frames known so far (``frames_known``), not the
    number stored. transformers reads it only as ``min(num_frames, max_object_pointers_in_encoder)``
    and as a bound of frames it looks up (see the module docstring)."""

    frames_known = 0

    @property
    def num_frames(self) -> int:
        return self.frames_known


_STREAMING_CLASSES: dict = {}


def _streaming_session(session_class, size: tuple[int, int], device):
    """A new ``session_class`` (with :class:`_StreamingFrames` mixed in: one class per session
    class) for frames of ``size`` ``(height, width)``, everything on ``device``."""
    if session_class not in _STREAMING_CLASSES:
        name = f"Streaming{session_class.__name__}"
        _STREAMING_CLASSES[session_class] = type(name, (_StreamingFrames, session_class), {})
    return _STREAMING_CLASSES[session_class](
        video_height=size[0],
        video_width=size[1],
        inference_device=device,
        inference_state_device=device,
        video_storage_device=device,
        dtype=torch.float32,
    )


def prune_session(session, frame_idx: int, reverse: bool, model) -> None:
    """Deletes from a transformers video session everything the model will not read again, once
    frame ``frame_idx`` is processed (the module docstring says what and why). Results do not change.

    Args:
        session: a ``Sam3VideoInferenceSession`` or ``Sam3TrackerVideoInferenceSession``
        frame_idx: the frame just processed (0-based)
        reverse: whether frames are processed in decreasing order
        model: the ``Sam3VideoModel`` or ``Sam3TrackerVideoModel`` running the session
    """
    tracker = getattr(model, "tracker_model", model)
    config = tracker.config
    keep_outputs = max(config.num_maskmem, config.max_object_pointers_in_encoder) - 1
    max_cond = config.max_cond_frame_num

    def age(t: int) -> int:  # how many frames ago, in processing order
        return (t - frame_idx) if reverse else (frame_idx - t)

    if session.processed_frames:
        session.processed_frames.clear()
    for obj_idx, outputs in session.output_dict_per_obj.items():
        non_cond, cond = outputs["non_cond_frame_outputs"], outputs["cond_frame_outputs"]
        for t in [t for t in non_cond if age(t) >= keep_outputs]:
            del non_cond[t]
        # the conditioning frames that can still be selected: the most recent max_cond ones
        selectable = set(cond) if max_cond < 0 else set(sorted(cond, key=age)[:max_cond])
        for t, stored in [*non_cond.items(), *cond.items()]:
            stored.pop("high_res_masks", None)
            stored.pop("pred_masks", None)
            if t in cond and t not in selectable and age(t) >= config.num_maskmem - 1:
                stored.pop("maskmem_features", None)
                stored.pop("maskmem_pos_enc", None)
        session.frames_tracked_per_obj[obj_idx].clear()
        session.point_inputs_per_obj[obj_idx].clear()
        session.mask_inputs_per_obj[obj_idx].clear()
    if hasattr(session, "obj_id_to_tracker_score_frame_wise"):  # the text model's bookkeeping
        for per_frame in (session.obj_id_to_tracker_score_frame_wise, session.suppressed_obj_ids):
            for t in [t for t in per_frame if t != frame_idx]:
                del per_frame[t]
        for frames in session.unmatched_frame_inds.values():
            del frames[: -model.hotstart_unmatch_thresh]
        for frames in session.overlap_pair_to_frame_inds.values():
            del frames[: -model.hotstart_dup_thresh]


def session_footprint(session) -> dict[str, int]:
    """What a video session holds, to check that it does not grow with the video's length.

    Returns:
        ``frames``: preprocessed frames stored; ``outputs``: per-object per-frame outputs stored
        (conditioning and not); ``memory_frames``: those still holding memory features;
        ``per_frame_entries``: per-frame inputs and bookkeeping entries; ``tensor_bytes``: bytes of
        all the tensors in them
    """
    tensors: list[torch.Tensor] = []

    def collect(value):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, (dict, list, tuple)):
            for item in value.values() if isinstance(value, dict) else value:
                collect(item)

    outputs = [
        stored
        for per_obj in session.output_dict_per_obj.values()
        for kind in per_obj.values()
        for stored in kind.values()
    ]
    collect(outputs)
    collect(session.processed_frames or {})
    collect(session.point_inputs_per_obj)
    collect(session.mask_inputs_per_obj)
    per_frame = sum(len(d) for d in session.frames_tracked_per_obj.values())
    per_frame += sum(len(d) for d in session.point_inputs_per_obj.values())
    per_frame += sum(len(d) for d in session.mask_inputs_per_obj.values())
    if hasattr(session, "obj_id_to_tracker_score_frame_wise"):
        per_frame += len(session.obj_id_to_tracker_score_frame_wise) + len(session.suppressed_obj_ids)
        per_frame += sum(len(v) for v in session.unmatched_frame_inds.values())
        per_frame += sum(len(v) for v in session.overlap_pair_to_frame_inds.values())
    unique = {id(t): t for t in tensors}.values()
    return {
        "frames": len(session.processed_frames or {}),
        "outputs": len(outputs),
        "memory_frames": sum("maskmem_features" in stored for stored in outputs),
        "per_frame_entries": per_frame,
        "tensor_bytes": int(sum(t.numel() * t.element_size() for t in unique)),
    }


# -- prompts ----------------------------------------------------------------------------------


def validate_video_prompts(prompts: Sequence[VideoPrompt], frame_count: int) -> list[VideoPrompt]:
    """Checks box / point prompts against a video of ``frame_count`` frames.

    Raises:
        ValueError: saying which prompt is invalid and why (frame outside the video, no box and no
            points, a degenerate box, points and labels of different lengths, labels other than 0
            and 1, one object prompted twice on a frame, or with two labels)
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("track_prompts needs at least one prompt")
    seen, labels = set(), {}
    for prompt in prompts:
        if not isinstance(prompt, VideoPrompt):
            raise ValueError(f"Prompts must be VideoPrompt instances; got {type(prompt).__name__}")
        name = f"prompt {prompt.prompt_id!r} on frame {prompt.frame_number}"
        if not 1 <= int(prompt.frame_number) <= frame_count:
            raise ValueError(f"{name}: frame numbers run from 1 to {frame_count} in this video")
        if (prompt.frame_number, prompt.prompt_id) in seen:
            raise ValueError(f"{name}: the object has two prompts on this frame; give one with all its points")
        seen.add((prompt.frame_number, prompt.prompt_id))
        if labels.setdefault(prompt.prompt_id, prompt.label) != prompt.label:
            raise ValueError(f"{name}: labelled {prompt.label!r} here but {labels[prompt.prompt_id]!r} elsewhere")
        if prompt.box_xyxy is None and not prompt.points:
            raise ValueError(f"{name}: needs a box or points")
        if prompt.box_xyxy is not None:
            box = np.asarray(prompt.box_xyxy, dtype=float)
            if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"{name}: the box must be finite pixel (x0, y0, x1, y1) with x1 > x0, y1 > y0; got {prompt.box_xyxy}"
                )
        if prompt.points:
            points = np.asarray(prompt.points, dtype=float)
            if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
                raise ValueError(f"{name}: points must be finite pixel (x, y) pairs; got {prompt.points}")
            if prompt.point_labels is not None and (
                len(prompt.point_labels) != len(points) or set(prompt.point_labels) - {0, 1}
            ):
                raise ValueError(f"{name}: needs one label per point, each 1 (on the object) or 0 (not on it)")
    return prompts


def _check_frame(frame, size: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"Video frames must be RGB uint8 arrays (H, W, 3); got {frame.dtype} {frame.shape}")
    if size is not None and frame.shape[:2] != tuple(size):
        raise ValueError(f"All frames of a video must have one size; got {frame.shape[:2]} after {tuple(size)}")
    return frame if frame.flags.writeable else frame.copy()


def _with_known_count(frames: Iterable[np.ndarray], ahead: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(index, frame, frames_known)``, reading ``ahead`` frames in advance, so that
    ``min(frames_known, ahead)`` always equals ``min(total frames, ahead)``."""
    buffer: deque = deque()
    known = 0
    for frame in frames:
        buffer.append(frame)
        known += 1
        if len(buffer) > ahead:
            yield known - len(buffer), buffer.popleft(), known
    while buffer:
        yield known - len(buffer), buffer.popleft(), known


# -- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    mask_threshold: float
    max_mask_size: int | None


def _run_view(model, **attributes):
    """A shallow copy of ``model`` sharing its weights, with per-run ``attributes`` (thresholds,
    object cap) set on the copy: transformers' video models read them from ``self``, and a shared
    (pooled) model must never be changed by one run."""
    view = copy.copy(model)
    for name, value in attributes.items():
        setattr(view, name, value)
    return view


def _bilinear_sources(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel of a bilinear resize ``in_size -> out_size`` (``align_corners=False``),
    the two input pixels it reads (the arithmetic of ``F.interpolate`` and :mod:`.masks`)."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    return lower, np.minimum(lower + 1, in_size - 1)


def _upsampled_crops(low_res: torch.Tensor, size: tuple[int, int], cut: float) -> list:
    """Each low-res mask logit map ``(N, h, w)`` thresholded at ``cut`` at image ``size``, without
    ever building a full-size map: per object ``((x0, y0, x1, y1), mask)`` with the tight box of its
    pixels (exclusive corners) and the bool mask over that box; ``None`` for an empty mask.

    A bilinear value is a convex combination of the input pixels it reads, so it can exceed ``cut``
    only where one of them does: each map is upsampled (:func:`~.masks.upsample_crops`) only over the
    output pixels that read a low-res pixel above ``cut``, which holds all its mask pixels.
    """
    height, width = size
    positive = low_res > cut
    rows_any = positive.any(dim=2).cpu().numpy()
    cols_any = positive.any(dim=1).cpu().numpy()
    row_lower, row_upper = _bilinear_sources(height, low_res.shape[-2])
    col_lower, col_upper = _bilinear_sources(width, low_res.shape[-1])
    regions, todo = [], []
    for i in range(len(low_res)):
        rows, cols = np.flatnonzero(rows_any[i]), np.flatnonzero(cols_any[i])
        if len(rows) == 0:
            continue
        ys = np.flatnonzero((row_upper >= rows[0]) & (row_lower <= rows[-1]))
        xs = np.flatnonzero((col_upper >= cols[0]) & (col_lower <= cols[-1]))
        regions.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))
        todo.append(i)
    crops: list = [None] * len(low_res)
    shapes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in regions]
    for group in memory_groups(shapes, _UPSAMPLE_BUDGET, tuple(low_res.shape[-2:])):
        indices = torch.tensor([todo[g] for g in group], device=low_res.device)
        values = upsample_crops(low_res[indices], [regions[g] for g in group], size)
        inside = (values > cut).cpu().numpy()
        for k, g in enumerate(group):
            x0, y0, x1, y1 = regions[g]
            mask = inside[k, : y1 - y0, : x1 - x0]
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows) == 0:
                continue
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
            crops[todo[g]] = (box, mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy())
    return crops


def _non_overlapping(crops: list, groups: list, priorities: np.ndarray) -> list[np.ndarray]:
    """Within each group (prompt), a pixel claimed by several masks stays with the highest priority
    (tracker score; on a tie, the earlier mask), as transformers' video post-processing does; masks
    of priority <= 0 lose every pixel. Boxes are not changed (transformers computes them before)."""
    masks = [mask.copy() if priorities[i] > 0 else np.zeros_like(mask) for i, (_, mask) in enumerate(crops)]
    for i, ((ax0, ay0, ax1, ay1), _) in enumerate(crops):
        for j, ((bx0, by0, bx1, by1), other) in enumerate(crops):
            if i == j or groups[i] != groups[j]:
                continue
            wins = priorities[j] > priorities[i] or (priorities[j] == priorities[i] and j < i)
            x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
            if not wins or x0 >= x1 or y0 >= y1:
                continue
            masks[i][y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] &= ~other[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    return masks


def _limit_size(mask: np.ndarray, max_mask_size: int | None) -> np.ndarray:
    """``mask`` sampled down (nearest pixel) so that neither side exceeds ``max_mask_size``."""
    height, width = mask_shape((0, 0, mask.shape[1], mask.shape[0]), max_mask_size)
    if (height, width) == mask.shape:
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _prompt_result(index, size, low_res, ids, labels, scores, options) -> FrameResult:
    """The non-empty instances of one frame of a box / point prompt pass."""
    crops = _upsampled_crops(low_res, size, logit(options.mask_threshold))
    kept = [i for i, crop in enumerate(crops) if crop is not None]
    scores = scores.cpu().numpy().astype(np.float32)
    return FrameResult(
        frame_number=index + 1,
        image_size=tuple(size),
        object_ids=[ids[i] for i in kept],
        labels=[labels[ids[i]] for i in kept],
        scores=scores[kept],
        boxes_xyxy=np.array([crops[i][0] for i in kept], np.float32).reshape(-1, 4),
        masks=[_limit_size(crops[i][1], options.max_mask_size) for i in kept],
    )


def _subset(result: FrameResult, keep: list[int]) -> FrameResult:
    return FrameResult(
        frame_number=result.frame_number,
        image_size=result.image_size,
        object_ids=[result.object_ids[i] for i in keep],
        labels=[result.labels[i] for i in keep],
        scores=result.scores[keep],
        boxes_xyxy=result.boxes_xyxy[keep].reshape(-1, 4),
        masks=[result.masks[i] for i in keep],
    )


def _merge(first: FrameResult | None, second: FrameResult) -> FrameResult:
    """The instances of ``first`` (may be ``None``) then those of ``second``, on one frame."""
    if first is None:
        return second
    return FrameResult(
        frame_number=second.frame_number,
        image_size=second.image_size,
        object_ids=first.object_ids + second.object_ids,
        labels=first.labels + second.labels,
        scores=np.concatenate([first.scores, second.scores]),
        boxes_xyxy=np.concatenate([first.boxes_xyxy, second.boxes_xyxy]).reshape(-1, 4),
        masks=first.masks + second.masks,
    )


__all__ = [
    "DIRECTIONS",
    "FrameResult",
    "Sam3VideoEngine",
    "TextPrompt",
    "VideoPrompt",
    "normalize_text_prompts",
    "prune_session",
    "session_footprint",
    "validate_video_prompts",
]
