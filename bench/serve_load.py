"""The closed-loop sessions `bench serve` runs: each pushes one PNG frame per request as soon as
its previous decision is back, checks that every chunk's decision came back in order, and
reopens after STREAM_CHUNKS chunks. Every stream's chunks and decisions are kept, so a run
can be replayed (bench/serve_fault.py) and counted (`summary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from streampro.client import AsyncStreamSession, ServeError, encode_png

STREAM_CHUNKS = 120  # a session's length before it closes and a new one opens
FRAME_SIZE = 128  # synth-like frames
N_FRAMES = 16  # distinct frames cycled through (PNG-encoded once)
QUESTION = "tell me when it changes"


@dataclass
class Stream:
    """One session as the bench saw it."""

    frames: list[int] = field(default_factory=list)
    """Frame index of each chunk pushed, in order (chunk k is [k, k+1) s)."""
    decisions: list[dict] = field(default_factory=list)
    """Every decision back, in the order it came."""
    at: list[float] = field(default_factory=list)
    """time.monotonic() when each decision came back."""


@dataclass
class Record:
    """What one run's sessions saw, counted together."""

    lat: list[float] = field(default_factory=list)
    """Seconds of every push that came back, retries included."""
    admitted: list[float] = field(default_factory=list)
    """Seconds of every chunk request answered 200 (the attempt itself)."""
    attempts: Counter[int] = field(default_factory=Counter)
    """Chunk-request HTTP attempts by status, retried ones included."""
    status: Counter[int | str] = field(default_factory=Counter)
    """Failed pushes and opens (the client gave up), by status or exception name."""
    streams: list[Stream] = field(default_factory=list)

    def observe(self, path: str, status: int, seconds: float) -> None:
        if path.endswith("/chunks"):
            self.attempts[status] += 1
            if status == 200:
                self.admitted.append(seconds)


def frames_png(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        encode_png(rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8))
        for _ in range(N_FRAMES)
    ]


def chunk(k: int, frame: int, frames: list[str]) -> dict:
    return {"start": float(k), "end": float(k + 1), "image": frames[frame]}


async def session_loop(
    http: httpx.AsyncClient,
    url: str,
    token: str | None,
    frames: list[str],
    deadline: float,
    rec: Record,
    offset: int,
) -> None:
    """Streams until `deadline`; stream `offset` cycles the frames from its own start."""
    while time.monotonic() < deadline:
        try:
            s = await AsyncStreamSession.open(
                url, QUESTION, http=http, token=token, observe=rec.observe
            )
        except ServeError as e:
            rec.status[e.status] += 1
            continue
        except Exception as e:  # noqa: BLE001 (counted: a transport failure is an error too)
            rec.status[type(e).__name__] += 1
            continue
        st = Stream()
        rec.streams.append(st)
        k = 0
        while k < STREAM_CHUNKS and time.monotonic() < deadline:
            f = (offset * 5 + k) % len(frames)
            st.frames.append(f)
            t0 = time.perf_counter()
            try:
                out = await s.push([chunk(k, f, frames)])
            except ServeError as e:
                rec.status[e.status] += 1
                break
            except Exception as e:  # noqa: BLE001
                rec.status[type(e).__name__] += 1
                break
            rec.lat.append(time.perf_counter() - t0)
            st.decisions += out
            st.at += [time.monotonic()] * len(out)
            k += 1
        with contextlib.suppress(Exception):
            await s.close()


async def run_load(
    url: str, sessions: int, duration_s: float, token: str | None, rec: Record
) -> float:
    """`sessions` concurrent streams for `duration_s`; returns the wall seconds."""
    frames = frames_png()
    limits = httpx.Limits(max_connections=sessions * 2)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        t0 = time.monotonic()
        deadline = t0 + duration_s
        await asyncio.gather(
            *(session_loop(http, url, token, frames, deadline, rec, i) for i in range(sessions))
        )
        return time.monotonic() - t0


def out_of_order(st: Stream) -> int:
    """Decisions of a stream not at their chunk's place (chunk k's decision has time k+1)."""
    return sum(1 for k, d in enumerate(st.decisions) if abs(d["time"] - (k + 1)) > 1e-6)


def _pct(xs: list[float], prefix: str = "") -> dict[str, float | None]:
    a = np.asarray(xs) * 1000.0
    return {
        f"{prefix}p{q}_ms": float(np.percentile(a, q)) if a.size else None for q in (50, 95, 99)
    }


def summary(rec: Record, sessions: int, wall: float) -> dict[str, Any]:
    sent = sum(len(s.frames) for s in rec.streams)
    decided = sum(len(s.decisions) for s in rec.streams)
    tries = sum(rec.attempts.values())
    return {
        "sessions": sessions,
        "duration_s": round(wall, 3),
        "chunks_sent": sent,
        "decisions": decided,
        "chunks_per_s": decided / wall if wall > 0 else 0.0,
        **_pct(rec.lat),
        **_pct(rec.admitted, "admitted_"),
        "attempts": {str(k): v for k, v in sorted(rec.attempts.items())},
        "share_429": rec.attempts[429] / tries if tries else 0.0,
        "errors": {str(k): v for k, v in sorted(rec.status.items(), key=str)},
        "errors_5xx": sum(v for k, v in rec.status.items() if str(k).startswith("5")),
        "answers_5xx": sum(v for k, v in rec.attempts.items() if k >= 500),
        "lost_chunks": sent - decided,
        "reordered_chunks": sum(out_of_order(s) for s in rec.streams),
    }
