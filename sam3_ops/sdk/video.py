"""SAM3 on video datasets: every instance of a concept tracked through each video (text prompts), or
chosen objects tracked from boxes / points on chosen frames; written as frame-level ``Detections``
(``frames.<label_field>``, FiftyOne's convention), one per tracked instance per frame, its ``index``
the instance's id, constant across frames.

Two doors, one inference path (:meth:`Sam3VideoModel.track`, on
:class:`~sam3_ops.core.video.Sam3VideoEngine`):

- :data:`VIDEOS` (what ``sam3_ops.segment`` does with a video collection, and the App's
  operators): decodes each video with the core's :class:`~sam3_ops.core.video_io.VideoReader`
  and writes its frames as they come out, in chunks of :data:`FRAMES_PER_WRITE`, so memory holds
  a few frames' labels whatever the video's length.
- ``dataset.apply_model(sam3_ops.load_model(..., media_type="video"), label_field=...)``:
  FiftyOne's route for video models (``media_type == "video"``): FiftyOne opens each video and
  calls :meth:`Sam3VideoModel.predict` with its reader; the model decodes the file with the core's
  reader (streaming, exact frame numbers) and returns the video's labels, which FiftyOne merges
  into the frames and saves once per video: that route holds one video's labels in memory (its
  contract), writes no done-marker (so only ``segment`` resumes per video), and a video FiftyOne
  cannot open (missing, corrupt) is skipped and logged by FiftyOne itself, before the model sees
  it (``model.summary()`` does not list it). ``segment`` streams its writes, resumes, and reports
  every video it skipped.

What marks a video as done (resume): the sample-level integer field
``<label_field>_tracks`` (:func:`~sam3_ops.sdk.fields.tracks_field`): the number of instances
tracked in the video, written after its last frame. A video is redone from scratch when it lacks
it: before a video's first frame is written, its marker is unset and ``frames.<label_field>`` is
cleared on all its frames, so a video interrupted half-way is never half-kept. A video that cannot
be read (missing, not a video, corrupt) is skipped before anything is touched (an earlier value
stays); one that fails while being decoded is cleared again and reported.

The settings on videos (the README's table says the same): ``threshold`` not given (``None``) runs
the checkpoint's own detection thresholds with no score filter, so a text run writes exactly what
transformers' video loop gives (``Sam3VideoProcessor`` + ``Sam3VideoModel``); given (the run's or a
prompt's own), every instance written was detected with at least that score (see
:meth:`~sam3_ops.core.video.Sam3VideoEngine.track_text`). ``mask_threshold`` is the images' rule, on
the written masks. ``max_objects`` caps the objects tracked at once (transformers' own cap is 10000);
the image-only settings (:data:`~sam3_ops.sdk.settings.APPLIES`: de-duplication, ``max_detections``, ``min_area``, ...)
are refused by name. A video that decodes fewer frames than it declares (a truncated file, which
ffmpeg decodes as far as it can without an error) fails when its reader reaches the end:
``segment`` clears and reports it like any video that fails half-way; through ``apply_model``,
FiftyOne gets no labels for it (nothing written, an earlier value stays) and ``model.summary()``
lists it.

Prompt objects (``boxes``: a frame-level ``Detections`` field; ``points``: a frame-level
``Keypoints`` field, per-point ``sam_labels`` 1/0): each becomes one tracked instance, its
``index`` the prompt's ``index`` (the same index on several frames is one object, prompted again
there), or for prompts without one a number after the largest given index, in order of frame and
position; its label the prompt's label; ``prompt_id`` the id of its prompt (on its first frame).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.models as fom
import fiftyone.core.utils as fou

from ..core.video import FrameResult, Sam3VideoEngine
from ..core.video_io import VideoLoadError, VideoReader
from .convert import frame_detections, video_prompts
from .fields import (
    ensure_detections_field,
    frame_field_name,
    frame_label_fields,
    output_field_problem,
    root_dataset,
    tracks_field,
)
from .media import Media, build_engine
from .model import PROMPT_FIELD, Sam3ModelBase, fit_in_document
from .settings import VIDEO_MODES, RunOptions, Sam3Settings, SettingsError, check_media, media_problem

logger = logging.getLogger(__name__)

#: frames whose labels :data:`VIDEOS` writes at once (one bulk write)
FRAMES_PER_WRITE = 16
#: ... or fewer, when their masks reach this many bytes
BYTES_PER_WRITE = 64 * 2**20


def video_settings_problem(settings: Sam3Settings) -> SettingsError | None:
    """Why ``settings`` cannot run on videos (naming the setting), or ``None``: the settings'
    table of what applies where (:data:`~sam3_ops.sdk.settings.APPLIES`)."""
    return media_problem(settings, "video")


# -- prompts ----------------------------------------------------------------------------------------


def sample_prompt_frames(sample, prompt_field: str) -> Iterator[tuple[int, object]]:
    """``(frame_number, value)`` of the frames of ``sample`` with a value in ``prompt_field``."""
    for frame_number, frame in sample.frames.items():
        value = frame.get_field(prompt_field) if frame.has_field(prompt_field) else None
        if value is not None:
            yield frame_number, value


class _PrefixVideoLogs(logging.Filter):
    """Names the video in the core's warnings (object cap, ...) logged by this thread."""

    def __init__(self, filepath: str):
        super().__init__()
        self.filepath = filepath
        self.thread = threading.get_ident()

    def filter(self, record):
        if record.thread == self.thread and not getattr(record, "_sam3_video", False):
            record.msg = "%s: " + str(record.msg)
            record.args = (self.filepath, *(record.args or ()))
            record._sam3_video = True
        return True


@dataclass
class VideoTrack:
    """One video's tracking, iterated frame by frame: ``(frame_number, fo.Detections)`` as they are
    written (masks too large for their document moved to files: :func:`~sam3_ops.sdk.model.fit_in_document`).

    Attributes:
        filepath: the video
        frame_count: its number of frames
        detections: Detections yielded so far
        instances: the indexes of the instances seen so far
    """

    filepath: str
    frame_count: int
    _results: Iterator[FrameResult] | None
    _prompt_ids: dict | None = None
    mask_dir: str | None = None
    detections: int = 0
    instances: set = field(default_factory=set)

    def __iter__(self) -> Iterator[tuple[int, fol.Detections]]:
        if self._results is None:
            return
        core_logger = logging.getLogger("sam3_ops.core.video")
        prefix = _PrefixVideoLogs(self.filepath)
        core_logger.addFilter(prefix)
        try:
            for result in self._results:
                where = f"{self.filepath}, frame {result.frame_number}"
                labels = fit_in_document(frame_detections(result, self._prompt_ids), self.mask_dir, where)
                self.detections += len(labels.detections)
                self.instances.update(result.object_ids)
                yield result.frame_number, labels
        finally:
            core_logger.removeFilter(prefix)
            close = getattr(self._results, "close", None)
            if close is not None:
                close()


# -- the model --------------------------------------------------------------------------------------


class Sam3VideoModel(Sam3ModelBase, fom.Model, fom.SamplesMixin):
    """SAM3 as a FiftyOne video model: tracks through each video; build it with
    ``sam3_ops.load_model(..., media_type="video")``.

    ``dataset.apply_model(model, label_field="sam3")`` (``prompt_field="boxes"`` for a frame-level
    prompt field) writes ``frames.sam3``; :data:`VIDEOS` runs the same :meth:`track` with
    streamed writes and resume.

    Args:
        settings: the :class:`~sam3_ops.sdk.settings.Sam3Settings` of the run (mode ``text``,
            ``boxes`` or ``points``)
        engine (None): the :class:`~sam3_ops.core.video.Sam3VideoEngine` to run on (``None``: a new one)

    Raises:
        ValueError: settings that do not run on videos
    """

    def __init__(self, settings: Sam3Settings, engine: Sam3VideoEngine | None = None):
        fom.SamplesMixin.__init__(self)
        check_media(settings, "video")
        self.settings = settings
        self.engine = engine or Sam3VideoEngine(settings.model_path, device=settings.device)
        self._start_counts()

    @property
    def media_type(self):
        return "video"

    @property
    def needs_fields(self):
        """The fields FiftyOne loads for :meth:`predict`: the frame-level prompt field, if any."""
        fields = dict(self._fields)
        if self.settings.prompt_field and PROMPT_FIELD not in fields:
            fields[PROMPT_FIELD] = "frames." + frame_field_name(self.settings.prompt_field)
        return fields

    @needs_fields.setter
    def needs_fields(self, fields):
        fields = dict(fields or {})
        unknown = set(fields) - {PROMPT_FIELD}
        if unknown:
            raise ValueError(f"a SAM3 video model reads only prompt_field from apply_model, not {sorted(unknown)}")
        self._fields = {key: "frames." + frame_field_name(value) for key, value in fields.items() if value}

    @property
    def prompt_field(self) -> str | None:
        """The frame-level prompt field (without ``frames.``), ``None`` in text mode."""
        value = self.needs_fields.get(PROMPT_FIELD)
        return frame_field_name(value) if value else None

    # -- the one inference path -----------------------------------------------------------------

    def track(self, filepath: str, prompt_frames: Iterable[tuple[int, object]] | None = None) -> VideoTrack:
        """Starts tracking one video; iterate the result for ``(frame_number, fo.Detections)``,
        frame by frame as each is final (text: in order; prompts: per ``direction``).

        Args:
            filepath: the video file
            prompt_frames (None): ``(frame_number, Detections or Keypoints)`` of the frames with
                prompts (``boxes`` / ``points`` modes)

        Raises:
            VideoLoadError: the video cannot be read (missing, not a video, corrupt, too large)
            ValueError: unusable prompts (the message says which)
        """
        settings = self.settings
        reader = VideoReader(filepath)
        height, width = reader.image_size
        if width * height > settings.max_image_pixels:
            raise VideoLoadError(
                f"cannot read video {filepath!r}: its frames have {width * height} pixels, "
                f"over the limit of {settings.max_image_pixels} (max_image_pixels)"
            )
        masks = {"mask_threshold": settings.mask_threshold, "max_mask_size": settings.max_mask_size}
        if settings.mode == "text":
            prompts = [{"text": p.text, "label": p.label, "threshold": p.threshold} for p in settings.prompts]
            frames = (frame for _, frame in reader.frames())
            results = self.engine.track_text(
                frames, prompts, threshold=settings.threshold, max_objects=settings.max_objects, **masks
            )
            return VideoTrack(filepath, reader.frame_count, results, mask_dir=settings.mask_dir)
        prompts, prompt_ids, warnings = video_prompts(
            prompt_frames or (), settings.mode, width, height, settings.max_objects
        )
        for warning in warnings:
            logger.warning("%s: %s", filepath, warning)
        if not prompts:
            return VideoTrack(filepath, reader.frame_count, None, prompt_ids, settings.mask_dir)
        results = self.engine.track_prompts(reader, prompts, settings.direction, **masks)
        return VideoTrack(filepath, reader.frame_count, results, prompt_ids, settings.mask_dir)

    def count(self, track: VideoTrack) -> None:
        """Counts a video tracked to its end."""
        self.num_processed += 1
        self.num_detections += track.detections

    # -- the Model interface (apply_model) --------------------------------------------------------

    def predict(self, arg, sample=None):
        """Tracks one video: ``arg`` is FiftyOne's video reader (only its path is read: the core's
        reader decodes), a :class:`~sam3_ops.core.video_io.VideoReader` or a path; ``sample`` gives
        the prompt field's frames. Returns ``{frame_number: fo.Detections}``, or ``None`` for a
        video that cannot be tracked (logged and counted, nothing written)."""
        filepath = _video_path(arg)
        try:
            if sample is not None and sample.has_field("support"):
                raise ValueError("clip views are not supported: run on the videos themselves")
            prompt_frames = None
            if self.prompt_field and sample is not None:
                prompt_frames = list(sample_prompt_frames(sample, self.prompt_field))
            track = self.track(filepath, prompt_frames)
            labels = dict(track)
        except Exception as error:  # one video must not stop the run: reported per video
            self.fail(filepath, _reason(error))
            return None
        self.count(track)
        return labels or None

    def predict_all(self, args, samples=None):
        samples = samples if samples is not None else [None] * len(args)
        return [self.predict(arg, sample=sample) for arg, sample in zip(args, samples)]


def _video_path(arg) -> str:
    if isinstance(arg, VideoReader):
        return arg.path
    if isinstance(arg, str | os.PathLike):
        return os.fspath(arg)
    path = getattr(arg, "inpath", None)  # eta's FFmpegVideoReader, which FiftyOne passes
    if isinstance(path, str):
        return path
    raise TypeError(f"expected a video path or reader, got {type(arg).__name__}")


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, VideoLoadError | ValueError) else f"{type(error).__name__}: {error}"


# -- segment() on videos ----------------------------------------------------------------------------


def without_video_results(samples, label_field: str):
    """The videos of ``samples`` not done yet for ``label_field`` (no ``<label_field>_tracks``, which
    :data:`VIDEOS` writes; after a plain ``apply_model`` run, every video)."""
    marker = tracks_field(frame_field_name(label_field))
    if not root_dataset(samples).has_sample_field(marker):
        return samples
    return samples.exists(marker, False)


class _FrameWriter:
    """Writes one video's frame labels in chunks; the marker last. ``start`` unsets the marker and
    clears the field on every frame of the video first, so that an interrupted video is redone
    cleanly."""

    def __init__(self, dataset, sample_id: str, label_field: str, output_dir: str | None = None):
        self.dataset = dataset
        self.sample_id = sample_id
        self.label_field = label_field
        self.marker = tracks_field(label_field)
        self.output_dir = output_dir
        self.sample = None
        self.pending = 0
        self.pending_bytes = 0

    def start(self) -> None:
        sample = self.dataset[self.sample_id]
        if sample.get_field(self.marker) is not None:
            sample[self.marker] = None
            sample.save()
        self._clear()
        self.sample = sample

    def write(self, frame_number: int, labels: fol.Detections) -> None:
        if self.output_dir:
            for detection in labels.detections:
                if detection.mask is not None:
                    path = os.path.join(self.output_dir, self.sample_id, f"{frame_number:06d}-{detection.id}.png")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    detection.export_mask(path, update=True)
        self.sample.frames[frame_number][self.label_field] = labels
        self.pending += 1
        self.pending_bytes += sum(d.mask.size for d in labels.detections if d.mask is not None)
        if self.pending >= FRAMES_PER_WRITE or self.pending_bytes >= BYTES_PER_WRITE:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.sample.frames.save()
            self.pending = self.pending_bytes = 0

    def finish(self, instances: int) -> None:
        self.flush()
        self.sample[self.marker] = instances
        self.sample.save()

    def discard(self) -> None:
        """After a failure: drops what is pending and clears what was written."""
        if self.sample is not None:
            self.sample.frames.reload()
        self._clear()

    def _clear(self) -> None:
        self.dataset.select(self.sample_id).clear_frame_field(self.label_field)


def check_video_prompt_field(samples, settings: Sam3Settings) -> str | None:
    """The frame-level prompt field of a ``boxes`` / ``points`` run (without ``frames.``), checked.

    Raises:
        ValueError: no prompt field, or not a frame-level field of the mode's label type
    """
    if settings.mode == "text":
        return None
    kind = fol.Detections if settings.mode == "boxes" else fol.Keypoints
    if not settings.prompt_field:
        raise ValueError(
            f"mode={settings.mode!r} needs a frame-level {kind.__name__} field of prompts: prompt_field='<field>'"
        )
    name = frame_field_name(settings.prompt_field)
    choices = frame_label_fields(samples, kind)
    if name not in choices:
        listing = ", ".join(f"'frames.{choice}'" for choice in choices) or "none"
        held = samples.get_field(f"frames.{name}")
        what = (
            "does not exist" if held is None else f"holds {getattr(held, 'document_type', type(held)).__name__} values"
        )
        raise ValueError(
            f"prompt_field 'frames.{name}' {what}; {settings.mode} mode reads a frame-level {kind.__name__} field, "
            f"and the {kind.__name__} frame fields are: {listing}"
        )
    return name


class VideoMedia(Media):
    """Videos, each tracked, written frame chunk by frame chunk and marked done (see the module
    docstring; a run's ``samples_processed`` counts videos). A video that fails is skipped and reported
    (``skip_failures``), or stops the run. The tracker takes a video's frames one at a time, in order,
    decoded by the core's reader: ``batch_size`` does not apply and ``num_workers`` is refused."""

    name = "video"
    model_fields = ("prompt_field",)

    def output_field(self, label_field: str) -> str:
        return frame_field_name(label_field)  # "frames." optional

    def prepare(self, samples, label_field: str, settings: Sam3Settings, run: RunOptions) -> Sam3Settings:
        if getattr(samples, "_is_clips", False) or getattr(root_dataset(samples), "_is_clips", False):
            raise ValueError("clip views are not supported: segment the videos themselves (e.g. the clips' dataset)")
        if run.num_workers:
            raise SettingsError(
                "num_workers", "num_workers (decoding processes) applies to images: a video is decoded by its tracker"
            )
        if settings.prompt_field:
            settings = settings.replace(prompt_field=frame_field_name(settings.prompt_field))
        check_media(settings, "video")
        prompt_field = check_video_prompt_field(samples, settings)
        reserved = (prompt_field,) if prompt_field else ()
        problem = output_field_problem(samples, label_field, overwrite=True, reserved=reserved)
        if problem:
            raise ValueError(problem)
        return settings

    def load(self, settings: Sam3Settings, run: RunOptions) -> Sam3VideoModel:
        return Sam3VideoModel(settings, engine=build_engine(settings, run.token, run.reuse, media_type="video"))

    def pending(self, samples, label_field: str):
        return without_video_results(samples, label_field)

    def segment(self, target, label_field: str, model, settings: Sam3Settings, run: RunOptions) -> None:
        dataset = root_dataset(target)
        prompt_field = settings.prompt_field if settings.mode != "text" else None
        prompts_view = target.select_fields(f"frames.{prompt_field}") if prompt_field else None
        ids, paths = target.values(["id", "filepath"])
        with fou.ProgressBar(total=len(ids), progress=run.progress, iters_str="videos") as bar:
            for sample_id, filepath in zip(ids, paths):
                writer = _FrameWriter(dataset, sample_id, label_field, run.output_dir)
                error = _segment_video(model, filepath, writer, prompts_view, prompt_field)
                if error is not None and not run.skip_failures:
                    raise error
                bar.update()

    def declare(self, samples, label_field: str) -> None:
        ensure_video_fields(root_dataset(samples), label_field)


#: the video medium of :func:`~sam3_ops.sdk.media.segment_in_process`
VIDEOS = VideoMedia()


def _segment_video(model, filepath: str, writer: _FrameWriter, prompts_view, prompt_field) -> Exception | None:
    """One video: its prompts read from ``prompts_view``, tracked, written by ``writer`` frame chunk
    by frame chunk, marked done; or skipped (returns the error, after the model recorded it)."""
    try:
        prompt_frames = None
        if prompts_view is not None:
            sample = prompts_view.select(writer.sample_id).first()
            prompt_frames = list(sample_prompt_frames(sample, prompt_field))
        track = model.track(filepath, prompt_frames)
    except Exception as error:  # before anything is written: the video keeps what it had
        model.fail(filepath, _reason(error))
        return error
    try:
        writer.start()
        for frame_number, labels in track:
            writer.write(frame_number, labels)
        writer.finish(len(track.instances))
    except Exception as error:  # a decoding failure half-way: nothing of this video is kept
        try:
            writer.discard()
        finally:
            model.fail(filepath, _reason(error))
        return error
    model.count(track)
    return None


def ensure_video_fields(dataset, label_field: str) -> None:
    """Declares ``frames.<label_field>`` (``Detections``) and the sample-level ``<label_field>_tracks``
    marker (``int``) if the schema lacks them (see
    :func:`~sam3_ops.sdk.fields.ensure_detections_field`)."""
    ensure_detections_field(dataset, label_field)
    marker = tracks_field(label_field)
    if not dataset.has_sample_field(marker):
        dataset.add_sample_field(marker, fof.IntField)


__all__ = [
    "FRAMES_PER_WRITE",
    "Sam3VideoModel",
    "VIDEO_MODES",
    "VideoTrack",
    "without_video_results",
]
