"""Where the Serve application keeps its sessions, and the pure helpers the ingress uses.

A session's context is stored as its *log* in the `SessionStore` deployment: the question,
and per step the chunk (start, end, frame codes) and the decision the policy generated. Any
ingress replica continues any session: it replays the log into a `StreamEpisode` (the same
dialogue code as rollout, including its window) and keeps that episode cached, so a
session's next chunk only costs the log entries it has not seen. An ingress replica can thus
restart or scale without losing a session; the store itself is one replica (its restart
loses the open sessions, which then get 404).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve

# One step of a session's log: (start, end, frame codes, generated ids, their logprobs).
Entry = tuple[float, float, list[int], list[int], list[float]]


class ImageError(ValueError):
    """An image the server cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def decode_image(b64: str, *, max_pixels: int, budget: int):
    """base64 PNG/JPEG -> H x W x 3 uint8, at most `budget` pixels a side.

    The size is checked before any pixel is decoded, and a JPEG is decoded straight at a
    reduced scale (`draft`), so a huge image costs little. Runs in a worker thread."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

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
                im.draft("RGB", (budget, budget))
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ImageError(
            400, "bad_image", f"chunk.image: undecodable ({type(e).__name__})"
        ) from None
    scale = budget / max(rgb.size)
    if scale < 1:  # the codec's budget: the same size rule as data.encode's decoder
        size = tuple(max(2, round(d * scale / 2) * 2) for d in rgb.size)
        rgb = rgb.resize(size, Image.BILINEAR)
    return np.asarray(rgb)


@dataclass
class _Record:
    question: str
    query_time: float
    index: int
    entries: list[Entry] = field(default_factory=list)
    last_end: float = 0.0
    touched: float = field(default_factory=time.monotonic)


@serve.deployment(name="SessionStore", num_replicas=1, max_ongoing_requests=4096)
class SessionStore:
    """Every open session's log; sessions idle for `ttl_s` are dropped by a background task."""

    def __init__(self, *, max_sessions: int, ttl_s: float, expire_every_s: float) -> None:
        self.max_sessions, self.ttl, self.every = max_sessions, ttl_s, expire_every_s
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
        r.entries.extend(entries)
        r.last_end = float(entries[-1][1]) if entries else r.last_end
        r.touched = time.monotonic()
        return "ok"

    async def close(self, sid: str) -> int | None:
        """Drop a session; its number of steps (None: unknown)."""
        r = self.sessions.pop(sid, None)
        return None if r is None else len(r.entries)

    async def stats(self) -> dict[str, int]:
        self._start_reaper()
        return {"sessions": len(self.sessions), "created": self.created, "expired": self.expired}
