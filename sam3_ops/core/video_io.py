"""Streaming video decoding with ffmpeg: probe a file, then read its frames one at a time, from any
frame, forwards or backwards, never holding the whole video. numpy + the standard library only
(never fiftyone, torch or transformers).

Why the ffmpeg command-line tools (``ffprobe``, ``ffmpeg -f rawvideo -pix_fmt rgb24 -``) and not
PyAV: FiftyOne's video datasets already require them (Debian package ``ffmpeg``), so video support
adds no Python dependency, and a pipe reads a frame in one ``readinto``. What PyAV would offer
(seeking) is done with ffmpeg's own exact seek (``-ss`` before ``-i``), checked
(:meth:`VideoReader._decode_from`). Every frame is decoded as it is stored (``-fps_mode
passthrough``: no frame is duplicated or dropped to make the rate constant). ffmpeg decodes a truncated file as far as it can and exits without an error: a read that ends
before the frame count the file declares raises :class:`VideoLoadError`, so a partial video is
never taken for a whole one.

Frames are numbered from 0 here (``index``); FiftyOne's frame numbers are ``index + 1``.

Usage::

    reader = VideoReader("clip.mp4")              # probes; raises VideoLoadError if unreadable
    for index, frame in reader.frames():          # RGB uint8 (H, W, 3), one at a time
        ...
    for index, frame in reader.frames_reversed(start=120):   # 120, 119, ..., 0 (chunked seeks)
        ...
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

logger = logging.getLogger(__name__)

#: the most decoded frames that :meth:`VideoReader.frames_reversed` holds at once, in bytes
REVERSE_CHUNK_BYTES = 128 * 2**20


class VideoLoadError(RuntimeError):
    """A video cannot be read: missing, not a video, corrupt, or without frames. The caller skips the
    video and reports it; the message says which file and why."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reads from a file's first video stream.

    Attributes:
        path: the file
        frame_count: the number of frames (the container's count, else the number of packets)
        fps: the average frame rate (frames per second; 0.0 if the file does not say)
        width: the width of a decoded frame in pixels (after the stream's rotation, if any)
        height: the height of a decoded frame in pixels (after the stream's rotation, if any)
    """

    path: str
    frame_count: int
    fps: float
    width: int
    height: int

    @property
    def frame_bytes(self) -> int:
        """The size of one decoded RGB frame in bytes."""
        return self.width * self.height * 3


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(
            f"{name} is not installed or not on the PATH; SAM3 video support needs ffmpeg's command-line tools "
            "(Debian/Ubuntu: `apt-get install ffmpeg`; macOS: `brew install ffmpeg`)"
        )
    return found


def _run_ffprobe(path: str, *args: str) -> dict:
    command = [_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", *args, "-of", "json", path]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise VideoLoadError(f"cannot read video {path!r}: ffprobe did not finish within 600 s") from None
    if completed.returncode != 0:
        reason = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "ffprobe failed"
        raise VideoLoadError(f"cannot read video {path!r}: {reason}")
    try:
        return json.loads(completed.stdout or "{}")
    except ValueError:
        raise VideoLoadError(f"cannot read video {path!r}: ffprobe printed no readable description") from None


def _count_packets(path: str) -> int:
    """The video packets the container really holds (demuxed, not decoded): its frame count when it
    declares none, and fewer than it declares only when the file was cut short."""
    counted = _run_ffprobe(path, "-count_packets", "-show_entries", "stream=nb_read_packets")
    return int(((counted.get("streams") or [{}])[0]).get("nb_read_packets") or 0)


def _rotation(stream: dict) -> int:
    """The stream's display rotation in degrees (display matrix side data, else the legacy tag)."""
    for side_data in stream.get("side_data_list", []) or []:
        if "rotation" in side_data:
            return int(float(side_data["rotation"]))
    return int(float((stream.get("tags") or {}).get("rotate", 0) or 0))


def _rate(text: str | None) -> float:
    try:
        rate = Fraction(text or "0/1")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(rate) if rate > 0 else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Reads a video's frame count, frame rate and frame size with ``ffprobe`` (no decoding).

    Args:
        path: the video file

    Returns:
        its :class:`VideoInfo`

    Raises:
        VideoLoadError: if the file is missing, is not a video, cannot be parsed, or has no frames
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoLoadError(f"cannot read video {path!r}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoLoadError(f"cannot read video {path!r}: the file is empty")
    entries = "stream=width,height,nb_frames,avg_frame_rate,r_frame_rate:stream_side_data=rotation:stream_tags=rotate"
    streams = _run_ffprobe(path, "-show_entries", entries).get("streams") or []
    if not streams:
        raise VideoLoadError(f"cannot read video {path!r}: it has no video stream")
    stream = streams[0]
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoLoadError(f"cannot read video {path!r}: its video stream has no frame size")
    if _rotation(stream) % 180 != 0:
        width, height = height, width  # ffmpeg rotates decoded frames upright
    frame_count = int(stream.get("nb_frames") or 0) if str(stream.get("nb_frames", "")).isdigit() else 0
    if frame_count <= 0:  # containers without a frame count (mkv, webm, ts): count packets, no decoding
        frame_count = _count_packets(path)
    if frame_count <= 0:
        raise VideoLoadError(f"cannot read video {path!r}: it has no frames")
    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    return VideoInfo(path=path, frame_count=frame_count, fps=fps, width=width, height=height)


class VideoReader:
    """Decodes a video's frames on demand, as RGB uint8 arrays ``(height, width, 3)``.

    Nothing is decoded ahead: a frame is read from ffmpeg's pipe when the caller asks for it, so a
    reader holds one frame (one chunk when reading backwards) whatever the video's length. Each
    iterator runs its own ffmpeg process, ended when the iterator finishes or is closed.

    Args:
        path: the video file
        info (None): its :class:`VideoInfo` if already probed

    Raises:
        VideoLoadError: if the file cannot be probed (see :func:`probe_video`)
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None):
        self.path = os.fspath(path)
        self.info = info if info is not None else probe_video(self.path)
        self._frame_times: list[float] | None = None

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, frames={self.info.frame_count}, size={self.info.width}x{self.info.height})"

    @property
    def frame_count(self) -> int:
        """The number of frames the probe found."""
        return self.info.frame_count

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of a frame in pixels."""
        return self.info.height, self.info.width

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(index, frame)`` for frames ``start`` to ``stop - 1`` (default: to the end), in order.

        Args:
            start (0): the first frame's index (0-based); decoding starts at the keyframe before it
            stop (None): the index after the last frame, ``None`` for the end of the video

        Raises:
            VideoLoadError: if ffmpeg fails, the video ends within a frame, or packets are missing
                (a truncated file decodes fewer frames than :attr:`frame_count`), after the last
                frame that could be decoded. A whole file that shows fewer frames than it declares
                (an edit list) is read to its end, with a warning.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        count = None if stop is None else max(0, stop - start)
        if count == 0:
            return
        expected = (self.frame_count if stop is None else min(stop, self.frame_count)) - start
        decoded = 0
        for offset, frame in enumerate(self._decode_from(start, count)):
            decoded += 1
            yield start + offset, frame
        if decoded < expected:
            if _count_packets(self.path) < self.frame_count:
                raise VideoLoadError(
                    f"cannot decode video {self.path!r}: it declares {self.frame_count} frames, but decoding "
                    f"stopped after {start + decoded} (the file is truncated or corrupt)"
                )
            # every packet is there: an edit list (a clip cut without re-encoding) hides some, so
            # the container declares more frames than a player shows. The file is whole.
            logger.warning(
                "video %r declares %d frames but shows %d (an edit list hides the rest); read to its end",
                self.path,
                self.frame_count,
                start + decoded,
            )

    def frames_reversed(
        self, start: int, stop: int = 0, chunk_frames: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(index, frame)`` for frames ``start``, ``start - 1``, ... down to ``stop``.

        The range is decoded forwards in chunks of ``chunk_frames`` frames (one seek each), last chunk
        first, and each chunk is yielded in reverse: memory holds one chunk, never the whole range.

        Args:
            start: the first frame yielded (the highest index)
            stop (0): the last frame yielded (the lowest index)
            chunk_frames (None): frames per chunk; ``None``: as many as fit in
                :data:`REVERSE_CHUNK_BYTES`, at least 8 and at most 64

        Raises:
            VideoLoadError: if ffmpeg fails, or a chunk comes back short (a corrupt video)
        """
        if not 0 <= stop <= start:
            raise ValueError(f"frames_reversed needs 0 <= stop <= start, got start={start}, stop={stop}")
        if chunk_frames is None:
            chunk_frames = min(64, max(8, REVERSE_CHUNK_BYTES // self.info.frame_bytes))
        high = start + 1
        while high > stop:
            low = max(stop, high - chunk_frames)
            chunk = [frame for _, frame in self.frames(low, high)]
            if len(chunk) != high - low:
                raise VideoLoadError(
                    f"cannot read video {self.path!r}: frames {low}..{high - 1} came back as {len(chunk)} frames "
                    "(the video is shorter than probed, or corrupt)"
                )
            for offset in range(len(chunk) - 1, -1, -1):
                yield low + offset, chunk[offset]
                chunk[offset] = None  # let each frame go as soon as it is consumed
            high = low

    def _timestamps(self) -> list[float]:
        """Every frame's timestamp in seconds from the file's start, in display order: the
        timestamps ffmpeg itself gives decoded frames (``best_effort_timestamp``), which are what its
        exact seek compares against. Read once per reader, by a decoding pass of ffprobe (container
        timestamps are not enough: with B-frames and variable frame rates they can disagree)."""
        if self._frame_times is None:
            described = _run_ffprobe(
                self.path, "-show_entries", "frame=best_effort_timestamp_time,pts_time:format=start_time"
            )
            start = float((described.get("format") or {}).get("start_time") or 0.0)
            times = []
            for frame in described.get("frames") or []:
                stamp = frame.get("best_effort_timestamp_time", frame.get("pts_time"))
                times.append(float(stamp) - start if stamp not in (None, "N/A") else float("nan"))
            self._frame_times = times
        return self._frame_times

    def _decode_from(self, start: int, count: int | None) -> Iterator[np.ndarray]:
        """Frames ``start``, ``start + 1``, ... (``count`` of them, or to the end).

        ffmpeg's exact seek is aimed halfway between the frame's timestamp and its predecessor's,
        and checked: ffmpeg reports the timestamp of the first frame it outputs (``showinfo``),
        which must be frame ``start``'s. Containers without an index (MPEG-TS) can land late; then
        the seek is retried further back, frames before ``start`` are read and dropped, and as a
        last resort decoding starts at the beginning of the file.
        """
        times = self._timestamps() if start > 0 else []
        if start > 0 and start >= len(times):
            raise VideoLoadError(
                f"cannot read video {self.path!r}: frame {start} is past its last frame ({len(times) - 1})"
            )
        back = 0
        while True:
            target = max(0, start - back)
            seek = None
            if target > 0 and not (np.isnan(times[target - 1]) or np.isnan(times[target])):
                seek = (times[target - 1] + times[target]) / 2
            report: dict = {}
            # after a failed seek, where ffmpeg lands is unknown: no frame limit, the caller closes
            frames = self._decode(seek, count if back == 0 else None, report)
            landed = next(frames, None)
            index = 0 if seek is None else self._landed_index(seek, report.get("first_time"))
            if landed is None or index is None or index > start:
                frames.close()
                if seek is None:
                    raise VideoLoadError(f"cannot read video {self.path!r} from frame {start}: it ended before it")
                logger.debug("seek to frame %d of %s landed at %s; retrying from further back", start, self.path, index)
                back = max(16, back * 4)
                continue
            for _ in range(start - index):  # frames before start that the seek kept
                landed = next(frames, None)
                if landed is None:
                    raise VideoLoadError(f"cannot read video {self.path!r} from frame {start}: it ended before it")
            try:
                yield landed
                yield from itertools.islice(frames, None if count is None else count - 1)
            finally:
                frames.close()
            return

    def _landed_index(self, seek: float, reported: float | None) -> int | None:
        """The index of the first frame a seek yielded, from the time ffmpeg reported for it
        (seconds after ``seek``); ``None`` if no frame has that timestamp."""
        if reported is None:
            return None
        times = np.asarray(self._timestamps())
        index = int(np.nanargmin(np.abs(times - (seek + reported))))
        gaps = np.diff(times[~np.isnan(times)])
        tolerance = max(1e-4, float(np.min(gaps)) / 4) if len(gaps) else 1e-4
        return index if abs(times[index] - (seek + reported)) <= tolerance else None

    def _decode(self, seek: float | None, count: int | None, report: dict | None = None) -> Iterator[np.ndarray]:
        """Runs ffmpeg and yields its frames until ``count`` frames or the end of the video. When
        seeking, ffmpeg's ``showinfo`` reports the first frame's timestamp (seconds after ``seek``),
        stored in ``report["first_time"]`` before that frame is yielded."""
        command = [_tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "info" if seek is not None else "error"]
        if seek is not None:
            command += ["-ss", f"{seek:.6f}"]
        command += ["-i", self.path, "-map", "0:v:0", "-fps_mode", "passthrough"]
        if seek is not None:
            command += ["-vf", "showinfo"]
        if count is not None:
            command += ["-frames:v", str(count)]
        command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        height, width = self.image_size
        frame_bytes = self.info.frame_bytes
        # stderr to a file, not a pipe: a chatty ffmpeg must never block on a full pipe
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, bufsize=0)
            try:
                produced = 0
                while count is None or produced < count:
                    buffer = bytearray(frame_bytes)
                    filled = _read_into(process.stdout, buffer)
                    if filled == 0:
                        break
                    if filled < frame_bytes:
                        raise VideoLoadError(
                            f"cannot read video {self.path!r}: frame {produced} ended after {filled} of {frame_bytes} bytes"
                        )
                    if produced == 0 and seek is not None and report is not None:
                        report["first_time"] = _first_showinfo_time(errors)
                    produced += 1
                    yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
                finished_early = count is not None and produced == count
            finally:
                if process.poll() is None:
                    process.kill()
                process.stdout.close()
                returncode = process.wait()
            if not finished_early and returncode != 0:
                errors.seek(0)
                lines = [line for line in errors.read().decode(errors="replace").splitlines() if "showinfo" not in line]
                reason = lines[-1].strip() if lines else f"ffmpeg exited with status {returncode}"
                raise VideoLoadError(f"cannot decode video {self.path!r}: {reason}")


_SHOWINFO_FIRST = re.compile(rb"Parsed_showinfo[^\]]*\]\s*n:\s*0\s+pts:\s*\S+\s+pts_time:\s*(-?[0-9.eE+-]+)")


def _first_showinfo_time(log, timeout: float = 5.0) -> float | None:
    """The ``pts_time`` of frame 0 in an ffmpeg log file being written (``showinfo`` logs a frame
    before ffmpeg writes it out, so it is there once the frame has been read)."""
    deadline = time.monotonic() + timeout
    while True:
        log.seek(0)
        found = _SHOWINFO_FIRST.search(log.read())
        if found or time.monotonic() > deadline:
            return float(found.group(1)) if found else None
        time.sleep(0.01)


def _read_into(stream, buffer: bytearray) -> int:
    """Fills ``buffer`` from ``stream``; returns the bytes read (fewer only at the end of the stream)."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return filled
