"""Decode + tokenise a manifest's videos once, and cache the frame codes in Parquet.

Cache file: `{cache_dir}/{key}.parquet` with columns start, end (float64) and codes
(list<uint16>), one row per chunk; key = sha256 of the video bytes + codec params + the
cache format version. Samples sharing a video share its entry; a changed video gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streampro.data.codec import PatchTokenCodec
from streampro.data.schema import Sample, load_manifest
from streampro.data.video import VideoError, read_chunks
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
    """The patch codec's codes of each chunk's frame (one list per chunk)."""


def file_digest(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_key(video_digest: str, *, fps: float, grid: int, codebook_size: int) -> str:
    params = json.dumps(
        {
            "v": CACHE_VERSION,
            "fps": fps,
            "grid": grid,
            "codebook": codebook_size,
            "size": DECODE_SIZE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(f"{video_digest}:{params}".encode()).hexdigest()[:32]


def _decode_size(path: Path, grid: int) -> tuple[int, int] | None:
    """Shrink big frames in the decoder (patch means barely change; decoding gets cheaper)."""
    from streampro.data.video import probe

    info = probe(path)
    scale = DECODE_SIZE / max(info.width, info.height)
    if scale >= 1:
        return None
    w = max(grid, round(info.width * scale / 2) * 2)
    h = max(grid, round(info.height * scale / 2) * 2)
    return w, h


def encode_video(
    path: str | os.PathLike, codec: PatchTokenCodec, *, fps: float
) -> tuple[list[tuple[float, float]], np.ndarray]:
    """(chunk times, [n_chunks, tokens_per_frame] codes) of one video."""
    path = Path(path)
    times, frames = [], []
    size = _decode_size(path, codec.grid)
    for c in read_chunks(path, fps, size=size):
        times.append((c.start, c.end))
        frames.append(codec.encode_batch(c.frame[None])[0])
    return times, np.stack(frames).astype(np.int64)


def _read_cache(path: Path) -> tuple[list[tuple[float, float]], list[list[int]]] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path).to_pydict()
    except (pa.ArrowException, OSError, ValueError):  # missing or corrupt entry: rebuild it
        return None
    return list(zip(t["start"], t["end"])), t["codes"]


def _write_cache(path: Path, times: list[tuple[float, float]], codes: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "start": pa.array([s for s, _ in times], pa.float64()),
            "end": pa.array([e for _, e in times], pa.float64()),
            "codes": pa.array(codes.tolist(), pa.list_(pa.uint16())),
        }
    )
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _clip(times: list[tuple[float, float]], codes: list[list[int]], duration: float | None):
    """Drop chunks that start at or after the sample's declared duration."""
    if duration is None:
        return times, codes
    n = sum(1 for s, _ in times if s < duration - 1e-6)
    return times[:n], codes[:n]


def encode_manifest(
    manifest_path: str | os.PathLike,
    *,
    fps: float,
    grid: int,
    codebook_size: int,
    cache_dir: str | os.PathLike,
    skip_bad: bool = False,
    progress: bool = True,
) -> list[EncodedSample]:
    """Every sample of a manifest with its chunks' frame codes (decoded once, then cached).

    With skip_bad, invalid rows and undecodable videos are skipped, counted and logged;
    otherwise the first such problem raises (ManifestError lists all invalid rows).
    """
    from tqdm import tqdm

    manifest_path = Path(manifest_path)
    samples, problems = load_manifest(manifest_path, skip_bad=skip_bad)
    codec = PatchTokenCodec(grid=grid, codebook_size=codebook_size)
    cache_dir = Path(cache_dir)
    by_video: dict[Path, tuple[list, list] | None] = {}
    out: list[EncodedSample] = []
    bad_videos: list[str] = []
    for s in tqdm(samples, desc=f"encode {manifest_path.name}", disable=not progress, leave=False):
        vpath = s.video_path(manifest_path.parent)
        if vpath not in by_video:
            try:
                by_video[vpath] = _encoded_video(vpath, codec, fps=fps, cache_dir=cache_dir)
            except VideoError as e:
                if not skip_bad:
                    raise UserError(f"{manifest_path}: sample {s.id!r}: {e}") from None
                by_video[vpath] = None
                bad_videos.append(f"{s.id}: {e}")
        entry = by_video[vpath]
        if entry is None:
            continue
        times, codes = _clip(*entry, s.duration)
        out.append(EncodedSample(sample=s, times=times, codes=codes))
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


def _encoded_video(path: Path, codec: PatchTokenCodec, *, fps: float, cache_dir: Path):
    if not path.is_file():
        raise VideoError(f"{path}: video not found")
    key = cache_key(file_digest(path), fps=fps, grid=codec.grid, codebook_size=codec.codebook_size)
    entry = cache_dir / f"{key}.parquet"
    cached = _read_cache(entry) if entry.is_file() else None
    if cached is not None:
        return cached
    times, codes = encode_video(path, codec, fps=fps)
    _write_cache(entry, times, codes)
    return times, codes.tolist()
