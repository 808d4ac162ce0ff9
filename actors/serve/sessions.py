"""Where the Serve application keeps its sessions, and the pure helpers the ingress uses.

A session's context is stored as its *log* in the `SessionStore` deployment: the question,
and per step the chunk (start, end, frame codes) and the decision the policy generated. Any
ingress replica continues any session: it replays the log into a `StreamEpisode` (the same
dialogue code as rollout, including its window) and keeps that episode cached, so a
session's next chunk only costs the log entries it has not seen. An ingress replica can thus
restart or scale without losing a session; the store itself is one replica (its restart
loses the open sessions, which then get 404).

Image codec (VLM policies): a step also holds its frame, resized by the codec, as lossless
PNG bytes, and the frame's placeholder size. Only the frames a context can still hold are
kept: those of the last `keep_frames` (= data.window_turns) steps; older steps keep their
placeholder size alone (their turns left every future window, so a replay needs no pixels
for them). A session's frames thus cost at most window_turns PNGs, however long it runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from ray import serve


class Entry(NamedTuple):
    """One step of a session's log: the chunk and the decision the policy generated."""

    start: float
    end: float
    codes: list[int]
    """Patch codec: the frame's codes ([] with the image codec)."""
    ids: list[int]
    """The generated token ids."""
    logprobs: list[float]
    png: bytes | None = None
    """Image codec: the codec-resized frame as PNG; None once the step left every window."""
    image_tokens: int = 0
    """Image codec: the frame's placeholder pads in the dialogue."""
    p: float | None = None
    """decode.mode=threshold: the calibrated P(`</Response>`) the decision was made on (a
    replay re-runs `fire` over these, so any ingress replica resumes the decoder's state)."""


class ImageError(ValueError):
    """An image the server cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _open_rgb(b64: str, *, max_pixels: int, draft: Callable[[int, int], tuple[int, int]]):
    """base64 PNG/JPEG -> (RGB PIL image, original (w, h)). The size is checked before any
    pixel is decoded, and a JPEG is decoded straight at a reduced scale (`draft(w, h)`: the
    smallest (w, h) the caller needs), so a huge image costs little."""

    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(400, "bad_image", "chunk.image: not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise ImageError(
                    400, "bad_image", f"chunk.image: expected PNG or JPEG, got {im.format}"
                )
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(
                    413, "image_too_large", f"chunk.image: {w}x{h} is over {max_pixels} pixels"
                )
            if im.format == "JPEG":
                im.draft("RGB", draft(w, h))
            return im.convert("RGB"), (w, h)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageError(
            400, "bad_image", f"chunk.image: undecodable ({type(e).__name__})"
        ) from None


def decode_image(b64: str, *, max_pixels: int, budget: int):
    """base64 PNG/JPEG -> H x W x 3 uint8, at most `budget` pixels a side (patch codec).
    Runs in a worker thread."""

    rgb, _ = _open_rgb(b64, max_pixels=max_pixels, draft=lambda w, h: (budget, budget))
    scale = budget / max(rgb.size)
    if scale < 1:  # the codec's budget: the same size rule as data.encode's decoder
        size = tuple(max(2, round(d * scale / 2) * 2) for d in rgb.size)
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def decode_frame(b64: str, *, max_pixels: int, codec: Any):
    """base64 PNG/JPEG -> the frame as the image codec makes it for training ([h, w, 3] uint8,
    `codec.encode`: data/codec.py ImageCodec). A PNG goes through `codec.encode` as decoded,
    so the pixels equal the training pipeline's on the same frame; a JPEG is drafted down to
    no less than the codec's size for its original dimensions, then resized to exactly that
    size (the same rule; JPEG is lossy anyway). Runs in a worker thread."""

    def target(w: int, h: int) -> tuple[int, int]:
        th, tw = codec.size_for(h, w)
        return tw, th

    rgb, (w, h) = _open_rgb(b64, max_pixels=max_pixels, draft=target)
    if rgb.size != (w, h):  # a drafted JPEG: finish at the size of the original's rule
        return np.asarray(rgb.resize(target(w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
    return codec.encode(np.asarray(rgb, dtype=np.uint8))


def png_bytes(frame) -> bytes:
    """[h, w, 3] uint8 -> PNG (lossless): how a step's frame is kept and sent to the engine."""

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Record:
    question: str
    query_time: float
    index: int
    entries: list[Entry] = field(default_factory=list)
    last_end: float = 0.0
    touched: float = field(default_factory=time.monotonic)
    framed: int = 0  # entries before this one hold no frame (dropped or never had one)


@serve.deployment(name="SessionStore", num_replicas=1, max_ongoing_requests=4096)
class SessionStore:
    """Every open session's log; sessions idle for `ttl_s` are dropped by a background task."""

    def __init__(
        self, *, max_sessions: int, ttl_s: float, expire_every_s: float, keep_frames: int = 200
    ) -> None:
        self.max_sessions, self.ttl, self.every = max_sessions, ttl_s, expire_every_s
        self.keep_frames = max(1, keep_frames)  # data.window_turns: the most a context holds
        self.sessions: dict[str, _Record] = {}
        self.created = 0
        self.expired = 0
        self._reaper: asyncio.Task | None = None

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.expire()

    def expire(self) -> int:
        now = time.monotonic()
        old = [s for s, r in self.sessions.items() if now - r.touched > self.ttl]
        for sid in old:
            del self.sessions[sid]
        self.expired += len(old)
        return len(old)

    async def create(self, question: str, query_time: float) -> dict[str, Any]:
        self._start_reaper()
        if len(self.sessions) >= self.max_sessions:
            return {"error": f"{self.max_sessions} sessions open: close one or retry later"}
        sid = uuid.uuid4().hex
        self.sessions[sid] = _Record(question, float(query_time), self.created)
        self.created += 1
        return {"session_id": sid}

    async def read(self, sid: str, start: int) -> dict[str, Any] | None:
        """The session's setup and its log from step `start` on (None: unknown)."""
        self._start_reaper()
        r = self.sessions.get(sid)
        if r is None:
            return None
        r.touched = time.monotonic()
        return {
            "question": r.question,
            "query_time": r.query_time,
            "index": r.index,
            "n": len(r.entries),
            "last_end": r.last_end,
            "entries": r.entries[start:] if start <= len(r.entries) else None,
        }

    async def append(self, sid: str, expect: int, entries: list[Entry]) -> str:
        """Add steps if the log still has `expect` steps: 'ok', 'missing' or 'conflict'."""
        r = self.sessions.get(sid)
        if r is None:
            return "missing"
        if len(r.entries) != expect:
            return "conflict"
        r.entries.extend(Entry(*e) for e in entries)
        r.last_end = float(entries[-1][1]) if entries else r.last_end
        r.touched = time.monotonic()
        # A context holds at most keep_frames turns, the newest included: older frames can
        # never be sent again (their placeholder sizes stay for the replay).
        for i in range(r.framed, len(r.entries) - self.keep_frames):
            if r.entries[i].png is not None:
                r.entries[i] = r.entries[i]._replace(png=None)
        r.framed = max(r.framed, len(r.entries) - self.keep_frames)
        return "ok"

    async def close(self, sid: str) -> int | None:
        """Drop a session; its number of steps (None: unknown)."""
        r = self.sessions.pop(sid, None)
        return None if r is None else len(r.entries)

    async def stats(self) -> dict[str, int]:
        self._start_reaper()
        pngs = [e.png for r in self.sessions.values() for e in r.entries[r.framed :] if e.png]
        return {
            "sessions": len(self.sessions),
            "created": self.created,
            "expired": self.expired,
            "frames": len(pngs),  # image codec: PNGs held, at most keep_frames a session
            "frame_bytes": sum(len(p) for p in pngs),
        }
