"""Videos as frames: read a video with PyAV and turn it into images with their times.

Contract:

* A video is a path (``str`` / ``PathLike``), raw bytes, or a base64 ``data:video/...`` URL; :func:`is_video`
  says whether a source is one (a path by its extension, :data:`VIDEO_EXTENSIONS`; a data URL by its
  ``video/`` type). Anything PyAV (FFmpeg) decodes is read: mp4, mov, mkv, webm, avi...
* :func:`sample_times` spreads ``n`` times uniformly over a video: the midpoints of ``n`` equal spans
  (``(i + 0.5) * duration / n``), so neither the first black frame nor the last one is favoured;
  :func:`interval_times` is every ``k`` seconds from 0 (what the image index stores).
* The frame *at* time ``t`` is the frame on screen then: the last one whose presentation time is at or
  before ``t`` (the first frame for any earlier ``t``). :func:`read_frames` returns one :class:`Frame`
  (``time``: the asked time, ``shown``: that frame's own time, ``image``: RGB ``PIL.Image``) per asked time.
* The duration is the container's (or the stream's), else the last frame's time plus one frame.
* A video that is missing, empty, not a video, corrupt, without a video stream, over
  ``VideoOptions.max_bytes`` or whose frames are over ``InputLimits.max_image_pixels`` raises
  :class:`VideoError` (an :class:`vlm.errors.ImageError`, so a ``ValueError``) naming the file.
* :func:`video_parts` turns a video into chat content parts for one multi-image prompt: a line naming the
  video, its duration and the frames, then ``"Frame i at T s:"`` before each frame's image.
  :func:`expand_videos` replaces every ``{"type": "video", "video": SRC[, "frames": N]}`` part of chat
  messages with those parts (``VLM.chat`` and ``VLM.ask`` call it).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from PIL import Image

from .config import InputLimits
from .errors import ImageError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp", ".ogv")
VideoInput = Union[str, os.PathLike, bytes, bytearray]


class VideoError(ImageError):
    """A video that is missing, unreadable, corrupt, empty or too large. The message names it."""


@dataclass(frozen=True)
class VideoOptions:
    """How videos become prompts: ``frames`` sampled uniformly per video (each one image of the prompt, so at
    most ``InputLimits.max_images`` in all), ``max_bytes`` per video."""

    frames: int = 4
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"video frames must be at least 1, got {self.frames}")
        if self.max_bytes < 1:
            raise ValueError(f"video max_bytes must be positive, got {self.max_bytes}")


@dataclass(frozen=True)
class Frame:
    time: float         # the time asked for, seconds from the start
    shown: float        # the presentation time of the frame on screen then
    image: Image.Image  # RGB


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    width: int
    height: int
    fps: float | None


def is_video(source) -> bool:
    """A path with a video extension, or a ``data:video/...`` URL."""
    if isinstance(source, str) and source.startswith("data:"):
        return source[5:].lower().startswith("video/")
    if isinstance(source, (str, os.PathLike)):
        return Path(source).suffix.lower() in VIDEO_EXTENSIONS
    return False


def describe(source: VideoInput, index: int | None = None) -> str:
    """How errors name a video: its path, else "video #i" / "the video"."""
    if isinstance(source, (str, os.PathLike)) and not str(source).startswith("data:"):
        return f"video {source}"
    return f"video #{index}" if index is not None else "the video"


def _bytes(source: VideoInput, options: VideoOptions, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header or not payload:
            raise VideoError(f"{name}: a data URL must be base64-encoded (data:video/mp4;base64,...)")
        if len(payload) * 3 // 4 > options.max_bytes + 3:
            raise VideoError(f"{name} is over the {options.max_bytes}-byte limit")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise VideoError(f"{name}: the data URL is not valid base64 ({exc})") from None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise VideoError(f"{name} not found" if not path.exists() else f"{name} is not a file")
        if path.stat().st_size > options.max_bytes:
            raise VideoError(f"{name} is {path.stat().st_size} bytes; the limit is {options.max_bytes}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise VideoError(f"{name} cannot be read: {exc.strerror or exc}") from None
    else:
        raise VideoError(f"{name}: expected a path, bytes or a data: URL, got {type(source).__name__}")
    if not data:
        raise VideoError(f"{name} is empty (0 bytes)")
    if len(data) > options.max_bytes:
        raise VideoError(f"{name} is {len(data)} bytes; the limit is {options.max_bytes}")
    return data


def read_video_bytes(source: VideoInput, options: VideoOptions | None = None, name: str | None = None) -> bytes:
    """The encoded bytes of a path, data URL or bytes object (checked: present, not empty, under the limit)."""
    return _bytes(source, options or VideoOptions(), name or describe(source))


class _Reader:
    """An open container with its first video stream; every FFmpeg failure becomes a VideoError naming it."""

    def __init__(self, data: bytes, name: str, limits: InputLimits):
        import av

        self.name, self.limits = name, limits
        try:
            self.container = av.open(io.BytesIO(data), mode="r")
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise VideoError(f"{name} is not a readable video ({_why(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{name} has no video stream")
        self.stream = self.container.streams.video[0]
        ctx = self.stream.codec_context
        if ctx.width and ctx.height and ctx.width * ctx.height > limits.max_image_pixels:
            self.container.close()
            raise VideoError(f"{name}: frames are {ctx.width}x{ctx.height} = {ctx.width * ctx.height} pixels; "
                             f"the limit is {limits.max_image_pixels}")

    def frames(self):
        """(time in s, av.VideoFrame) in presentation order."""
        import av

        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is None and frame.time is None:
                    continue
                yield float(frame.time if frame.time is not None else frame.pts * self.stream.time_base), frame
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise VideoError(f"{self.name} is corrupt: decoding failed ({_why(exc)})") from None

    def container_duration(self) -> float | None:
        if self.stream.duration and self.stream.time_base:
            return float(self.stream.duration * self.stream.time_base)
        if self.container.duration:
            import av

            return self.container.duration / av.time_base
        return None

    def fps(self) -> float | None:
        rate = self.stream.average_rate or self.stream.guessed_rate
        return float(rate) if rate else None

    def close(self) -> None:
        self.container.close()


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _open(source: VideoInput, options: VideoOptions | None, limits: InputLimits | None, index: int | None,
          name: str | None = None):
    name = name or describe(source, index)
    return _Reader(_bytes(source, options or VideoOptions(), name), name, limits or InputLimits())


def probe(source: VideoInput, options: VideoOptions | None = None, limits: InputLimits | None = None,
          name: str | None = None) -> VideoInfo:
    """Duration (s), frame size and rate; the duration is decoded for when the container does not say.
    ``name``: how errors name the video (default: its path, else "the video")."""
    reader = _open(source, options, limits, None, name)
    try:
        duration = reader.container_duration()
        size = (reader.stream.codec_context.width, reader.stream.codec_context.height)
        if not duration:
            last = None
            for last, _ in reader.frames():
                pass
            if last is None:
                raise VideoError(f"{reader.name} has no frames")
            duration = last + 1 / (reader.fps() or 25.0)
        return VideoInfo(duration=float(duration), width=size[0], height=size[1], fps=reader.fps())
    finally:
        reader.close()


def sample_times(duration: float, n: int) -> list[float]:
    """``n`` times spread uniformly over ``duration`` seconds: the midpoints of ``n`` equal spans."""
    if n < 1:
        raise ValueError(f"the number of frames must be at least 1, got {n}")
    if duration <= 0:
        return [0.0] * n
    return [(i + 0.5) * duration / n for i in range(n)]


def interval_times(duration: float, every: float) -> list[float]:
    """``0, every, 2 * every, ...`` up to (not including) ``duration``; at least ``[0.0]``."""
    if every <= 0:
        raise ValueError(f"the frame interval must be positive, got {every}")
    count = max(1, int(duration / every - 1e-9) + 1) if duration > 0 else 1
    return [round(i * every, 6) for i in range(count)]


def iter_frames(source: VideoInput, times, options: VideoOptions | None = None, limits: InputLimits | None = None,
                index: int | None = None, name: str | None = None):
    """:class:`Frame` at each of ``times`` (ascending seconds), yielded as the video is decoded (one pass, only
    the frames asked for are converted to images, so a long video is never held in memory)."""
    times = [float(t) for t in times]
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError("iter_frames needs ascending times")
    if not times:
        return
    reader = _open(source, options, limits, index, name)
    converted: dict[int, Image.Image] = {}

    def frame(t: float, shown: float, av_frame) -> Frame:
        if id(av_frame) not in converted:
            converted.clear()  # one picture kept: the frame now on screen
            converted[id(av_frame)] = av_frame.to_image().convert("RGB")
        return Frame(time=t, shown=shown, image=converted[id(av_frame)])

    try:
        previous, k = None, 0
        for when, av_frame in reader.frames():
            # every asked time before this frame's shows the previous frame (this one, if it is the first)
            while k < len(times) and times[k] < when - 1e-6:
                yield frame(times[k], *(previous or (when, av_frame)))
                k += 1
            if k == len(times):
                return
            previous = (when, av_frame)
        if previous is None:
            raise VideoError(f"{reader.name} has no frames")
        while k < len(times):  # at or after the last frame: the last frame
            yield frame(times[k], *previous)
            k += 1
    finally:
        reader.close()


def read_frames(source: VideoInput, times, options: VideoOptions | None = None, limits: InputLimits | None = None,
                index: int | None = None) -> list[Frame]:
    """One :class:`Frame` per time in ``times`` (seconds; any order, repeats allowed): the frame on screen then."""
    times = [float(t) for t in times]
    order = sorted(range(len(times)), key=lambda i: times[i])
    found = list(iter_frames(source, [times[i] for i in order], options, limits, index))
    out: list[Frame | None] = [None] * len(times)
    for i, f in zip(order, found):
        out[i] = f
    return out


def sample_frames(source: VideoInput, n: int = 4, options: VideoOptions | None = None,
                  limits: InputLimits | None = None) -> tuple[VideoInfo, list[Frame]]:
    """The video's info and ``n`` frames at :func:`sample_times`."""
    info = probe(source, options, limits)
    return info, read_frames(source, sample_times(info.duration, n), options, limits)


def frame_at(source: VideoInput, time: float, options: VideoOptions | None = None,
             limits: InputLimits | None = None) -> Image.Image:
    """The RGB frame on screen at ``time`` seconds."""
    return read_frames(source, [time], options, limits)[0].image


def _seconds(t: float) -> str:
    return f"{t:.1f} s"


def video_parts(source: VideoInput, frames: int | None = None, options: VideoOptions | None = None,
                limits: InputLimits | None = None) -> list[dict]:
    """Chat content parts for a video: a line naming it (duration, frames), then "Frame i at T s:" + image."""
    options = options or VideoOptions()
    n = options.frames if frames is None else int(frames)
    info, sampled = sample_frames(source, n, options, limits)
    label = f"Video {Path(source).name}" if isinstance(source, (str, os.PathLike)) and not str(source).startswith(
        "data:") else "A video"
    parts = [{"type": "text", "text": f"{label} ({_seconds(info.duration)} long), {n} frame"
              f"{'s' if n != 1 else ''} sampled uniformly:"}]
    for i, frame in enumerate(sampled, 1):
        parts += [{"type": "text", "text": f"Frame {i} at {_seconds(frame.time)}:"},
                  {"type": "image", "image": frame.image}]
    return parts


def expand_videos(messages: list[dict], options: VideoOptions | None = None,
                  limits: InputLimits | None = None) -> list[dict]:
    """``messages`` with each ``{"type": "video", "video": SRC[, "frames": N]}`` part replaced by
    :func:`video_parts` (other messages and parts unchanged; nothing copied when there is no video)."""
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and isinstance(m.get("content"), list)
            and any(isinstance(p, dict) and p.get("type") == "video" for p in m["content"]) for m in messages):
        return messages
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            out.append(m)
            continue
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "video":
                if p.get("video") is None:
                    raise VideoError("a video part has no 'video' (a path, bytes or data: URL)")
                parts += video_parts(p["video"], p.get("frames"), options, limits)
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    return out


def video_turn(video: VideoInput, question: str, frames: int | None = None) -> list[dict]:
    """One user message: the video (as :func:`video_parts`), then the question."""
    part = {"type": "video", "video": video}
    if frames is not None:
        part["frames"] = frames
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]
