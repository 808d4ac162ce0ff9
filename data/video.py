"""Video decoding into 1-s chunks (lazily, any container/codec PyAV reads) and MP4 writing.

Chunk k covers [k/fps, (k+1)/fps). Its frame is the one on screen just before the chunk
ends (the last decoded frame with time < end): the newest thing the model has seen when it
decides at the chunk end. A chunk with no frame of its own repeats the previous frame, and
the stream lasts while the last frame is on screen (its time + one frame interval). Times
count from the first decoded frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streampro.errors import UserError

# Pinned x264 settings: one thread and no lookahead make the bytes reproducible.
X264_OPTIONS = {"crf": "18", "preset": "fast", "tune": "zerolatency", "threads": "1"}
TRUNCATION_SLACK_S = 1.0  # decoded end may fall short of the declared duration by this much


class VideoError(UserError):
    """A video that cannot be opened or decoded; the message names the file."""


@dataclass
class Chunk:
    start: float
    end: float
    frame: np.ndarray
    """H x W x 3 uint8 RGB."""


@dataclass
class VideoInfo:
    duration: float
    fps: float
    width: int
    height: int
    codec: str


def _open(path: Path):
    if not path.is_file():
        raise VideoError(f"{path}: video not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot open video: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def _declared_duration(container, stream) -> float | None:
    """The video stream's declared length; the container's only when it has no other stream
    (an audio track may outlast the video)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Container metadata only (no decoding)."""
    path = Path(path)
    container = _open(path)
    try:
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate or 0
        return VideoInfo(
            duration=_declared_duration(container, s) or 0.0,
            fps=float(rate),
            width=s.codec_context.width,
            height=s.codec_context.height,
            codec=s.codec_context.name,
        )
    finally:
        container.close()


def read_chunks(
    path: str | os.PathLike, fps: float = 1.0, *, size: tuple[int, int] | None = None
) -> Iterator[Chunk]:
    """Yield the video's chunks in order, decoding lazily (one frame held at a time).

    size=(width, height) resizes frames in the decoder's scaler (cheap for big videos).
    Raises VideoError naming the file when it cannot be opened, fails mid-stream or ends
    more than TRUNCATION_SLACK_S before its declared duration (a truncated file).
    """

    if not fps > 0:
        raise UserError(f"fps must be > 0, got {fps}")
    path = Path(path)
    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    declared = _declared_duration(container, stream)
    origin: float | None = None
    held = None  # the latest decoded frame (av.VideoFrame) and its time
    held_t = 0.0
    k = 0  # next chunk to yield
    rate = stream.average_rate or stream.guessed_rate
    step = 1.0 / float(rate) if rate else 0.0  # display time of a frame (updated from the stream)
    last_t = -1.0
    try:
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            origin = frame.time if origin is None else origin
            t = frame.time - origin
            # Emit every chunk that ends at or before this frame's time: its frame is `held`.
            while held is not None and t >= (k + 1) / fps:
                yield Chunk(k / fps, (k + 1) / fps, _rgb(held, size))
                k += 1
            step = t - held_t if held is not None and t > held_t else step
            held, held_t, last_t = frame, t, max(last_t, t)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed after {last_t:.2f}s: {e}") from None
    finally:
        container.close()
    if held is None:
        raise VideoError(f"{path}: no decodable frames")
    if declared is not None and last_t + TRUNCATION_SLACK_S < declared:
        raise VideoError(f"{path}: truncated: frames end at {last_t:.2f}s of {declared:.2f}s")
    # The last frame stays on screen for one frame interval: it fills the chunks until then.
    while k / fps < held_t + step - 1e-6 or k / fps <= held_t:
        yield Chunk(k / fps, (k + 1) / fps, _rgb(held, size))
        k += 1


def _rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def count_chunks(path: str | os.PathLike, fps: float = 1.0) -> tuple[int, float]:
    """(chunks, last chunk end) by decoding the whole file (what `data check` does)."""
    n, end = 0, 0.0
    for c in read_chunks(path, fps, size=(16, 16)):
        n, end = n + 1, c.end
    return n, end


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: float,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Encode RGB uint8 frames to a video file atomically (temp file + rename).

    The default (H.264 in MP4, X264_OPTIONS, bitexact muxing) gives identical bytes for
    identical frames. Other codecs (libvpx-vp9, mjpeg, mpeg4 ...) serve the tests.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    opts = dict(X264_OPTIONS if codec == "libx264" and options is None else options or {})
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(tmp), "w", options={"fflags": "+bitexact"})
    try:
        stream = container.add_stream(codec, rate=rate, options=opts)
        assert isinstance(stream, av.VideoStream), f"{codec} is not a video codec"
        stream.pix_fmt = pix_fmt
        first = True
        for arr in frames:
            if first:
                stream.height, stream.width = arr.shape[:2]
                first = False
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    os.replace(tmp, path)
    return path


def chunk_count_for(duration: float, fps: float = 1.0) -> int:
    """Chunks of a video whose frames span [0, duration) (the last partial chunk counts)."""
    return max(1, math.ceil(duration * fps - 1e-9))
