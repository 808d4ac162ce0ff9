"""Decode + encode a manifest's videos once, and cache the result in Parquet.

Cache file: `{cache_dir}/{key}.parquet`, one row per chunk, with columns start, end (float64)
and, for the patch codec, codes (list<uint16>); for the image codec, frame (PNG bytes of the
resized frame, lossless). key = sha256 of the video bytes + codec params + the cache format
version. Samples sharing a video share its entry; a changed video gets a new key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from streampro.data.codec import ImageCodec, PatchTokenCodec
from streampro.data.parallel import ordered_map
from streampro.data.schema import Sample, load_manifest
from streampro.data.video import VideoError, probe, read_chunks
from streampro.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding or the codec changes, so old entries are not reused
DECODE_SIZE = 256  # frames are shrunk to at most this many pixels a side before patching


@dataclass
class EncodedSample:
    sample: Sample
    times: list[tuple[float, float]]
    """(start, end) of each chunk."""
    codes: list[list[int]]
    """The patch codec's codes of each chunk's frame (one list per chunk; empty lists with the
    image codec)."""
    frames: list[np.ndarray] | None = None
    """The image codec's resized frame of each chunk ([h, w, 3] uint8); None with patches."""


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


Codec = PatchTokenCodec | ImageCodec


def codec_params(codec: Codec) -> dict:
    """What determines a codec's output (part of the cache key)."""
    if isinstance(codec, ImageCodec):
        return {"codec": "image", "max_pixels": codec.max_pixels, "factor": codec.factor}
    return {"grid": codec.grid, "codebook": codec.codebook_size, "size": DECODE_SIZE}


def cache_key(video_digest: str, *, fps: float, codec: Codec) -> str:
    params = json.dumps({"v": CACHE_VERSION, "fps": fps, **codec_params(codec)}, sort_keys=True)
    return hashlib.sha256(f"{video_digest}:{params}".encode()).hexdigest()[:32]


def _decode_size(path: Path, grid: int) -> tuple[int, int] | None:
    """Shrink big frames in the decoder (patch means barely change; decoding gets cheaper)."""

    info = probe(path)
    scale = DECODE_SIZE / max(info.width, info.height)
    if scale >= 1:
        return None
    w = max(grid, round(info.width * scale / 2) * 2)
    h = max(grid, round(info.height * scale / 2) * 2)
    return w, h


# One video's chunks: (times, patch codes per chunk, resized frames or None)
Entry = tuple[list[tuple[float, float]], list[list[int]], list[np.ndarray] | None]


def encode_video(path: str | os.PathLike, codec: Codec, *, fps: float) -> Entry:
    """(chunk times, codes per chunk, frames per chunk) of one video, for either codec."""
    path = Path(path)
    times: list[tuple[float, float]] = []
    out: list = []
    size = _decode_size(path, codec.grid) if isinstance(codec, PatchTokenCodec) else None
    for c in read_chunks(path, fps, size=size):
        times.append((c.start, c.end))
        if isinstance(codec, ImageCodec):
            out.append(codec.encode(c.frame))
        else:
            out.append(codec.encode_batch(c.frame[None])[0].tolist())
    if isinstance(codec, ImageCodec):
        return times, [[] for _ in times], out
    return times, out, None


def _png(frame: np.ndarray) -> bytes:

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _read_cache(path: Path) -> Entry | None:
    try:
        t = pq.read_table(path).to_pydict()
    except (pa.ArrowException, OSError, ValueError):  # missing or corrupt entry: rebuild it
        return None
    times = list(zip(t["start"], t["end"]))
    if "frame" in t:
        return times, [[] for _ in times], [_unpng(b) for b in t["frame"]]
    return times, t["codes"], None


def _write_cache(path: Path, entry: Entry) -> None:
    times, codes, frames = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {
        "start": pa.array([s for s, _ in times], pa.float64()),
        "end": pa.array([e for _, e in times], pa.float64()),
    }
    if frames is not None:
        cols["frame"] = pa.array([_png(f) for f in frames], pa.binary())
    else:
        cols["codes"] = pa.array(codes, pa.list_(pa.uint16()))
    table = pa.table(cols)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _clip(entry: Entry, duration: float | None) -> Entry:
    """Drop chunks that start at or after the sample's declared duration."""
    times, codes, frames = entry
    if duration is None:
        return entry
    n = sum(1 for s, _ in times if s < duration - 1e-6)
    return times[:n], codes[:n], (frames[:n] if frames is not None else None)


def encode_manifest(
    manifest_path: str | os.PathLike,
    *,
    fps: float,
    codec: Codec,
    cache_dir: str | os.PathLike,
    skip_bad: bool = False,
    progress: bool = True,
    workers: int = 0,
) -> list[EncodedSample]:
    """Every sample of a manifest with its chunks encoded by `codec` (decoded once, cached),
    each distinct video in one of `workers` processes (0 = one per CPU).

    With skip_bad, invalid rows and undecodable videos are skipped, counted and logged;
    otherwise the first such problem raises (ManifestError lists all invalid rows).
    """

    manifest_path = Path(manifest_path)
    samples, problems = load_manifest(manifest_path, skip_bad=skip_bad)
    paths = dict.fromkeys(s.video_path(manifest_path.parent) for s in samples)
    # Each video: its cached entry, its error, or a (video, cache file) job for the workers;
    # the cache file is keyed by a digest of the video's bytes, computed once, here.
    by_video: dict[Path, Entry | str | None] = {}
    todo: list[tuple[Path, Path]] = []
    for p in paths:
        if not p.is_file():
            by_video[p] = f"{p}: video not found"
            continue
        file = Path(cache_dir) / f"{cache_key(file_digest(p), fps=fps, codec=codec)}.parquet"
        by_video[p] = _read_cache(file) if file.is_file() else None
        if by_video[p] is None:
            todo.append((p, file))
    encoded = ordered_map(
        partial(_encoded_or_error, codec=codec, fps=fps),
        todo,
        workers=workers,
        desc=f"encode {manifest_path.name}",
        progress=progress and bool(todo),
    )
    by_video.update(zip((p for p, _ in todo), encoded))
    out: list[EncodedSample] = []
    bad_videos: list[str] = []
    for s in samples:
        entry = by_video[s.video_path(manifest_path.parent)]
        if isinstance(entry, str):  # the video's VideoError message
            if not skip_bad:
                raise UserError(f"{manifest_path}: sample {s.id!r}: {entry}")
            bad_videos.append(f"{s.id}: {entry}")
            continue
        assert entry is not None  # every uncached video was encoded above
        times, codes, frames = _clip(entry, s.duration)
        out.append(EncodedSample(sample=s, times=times, codes=codes, frames=frames))
    skipped = len(samples) - len(out)
    if problems or skipped:
        log.warning(
            "%s: skipped %d invalid row(s) and %d sample(s) with bad videos: %s",
            manifest_path,
            len({p.split(": ", 1)[0] for p in problems}),
            skipped,
            "; ".join(bad_videos[:5]),
        )
    return out


def _encoded_or_error(job: tuple[Path, Path], *, codec: Codec, fps: float) -> Entry | str:
    """Decode and encode a (video, cache file) job into the cache; its VideoError message
    instead of raising, so one bad file does not stop a pool and skip_bad can count it."""
    path, file = job
    try:
        entry = encode_video(path, codec, fps=fps)
    except VideoError as e:
        return str(e)
    _write_cache(file, entry)
    return entry
