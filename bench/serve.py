"""`streampro bench serve`: live sessions against the Serve API on loopback, for a fixed time.

For each level in serve.bench_sessions (default 1, 8, 32), that many sessions stream at once
for serve.bench_duration_s, each pushing one PNG frame per request as soon as its previous
decision is back (a closed loop: the throughput the deployment sustains) and reopening after
STREAM_CHUNKS chunks. Reports chunks/s, p50/p95/p99 decision latency, errors by status and
lost chunks (sent without a decision back). Against serve.bench_endpoint, or a temporary
local deployment of serve.checkpoint (default: the configured policy). JSON + a plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streampro.actors.serve.deploy import local_deployment, resolve_checkpoint
from streampro.client import AsyncStreamSession, ServeError, encode_png
from streampro.config import Config

STREAM_CHUNKS = 120  # a session's length before it closes and a new one opens
FRAME_SIZE = 128  # synth-like frames
N_FRAMES = 16  # distinct frames cycled through (PNG-encoded once)


@dataclass
class Record:
    """What one level's sessions saw, counted together."""

    sent: int = 0
    """Chunks pushed."""
    decided: int = 0
    """Decisions back."""
    lat: list[float] = field(default_factory=list)
    """Seconds of every push that came back."""
    status: Counter[int | str] = field(default_factory=Counter)
    """Errors by HTTP status, or by exception name for a transport failure."""


def _frames(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        encode_png(rng.integers(0, 256, (FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8))
        for _ in range(N_FRAMES)
    ]


async def _session_loop(
    http: httpx.AsyncClient,
    url: str,
    token: str | None,
    frames: list[str],
    deadline: float,
    rec: Record,
) -> None:
    while time.monotonic() < deadline:
        try:
            s = await AsyncStreamSession.open(
                url, "tell me when it changes", http=http, token=token
            )
        except ServeError as e:
            rec.status[e.status] += 1
            continue
        except Exception as e:  # noqa: BLE001 (counted: a transport failure is an error too)
            rec.status[type(e).__name__] += 1
            continue
        k = 0
        while k < STREAM_CHUNKS and time.monotonic() < deadline:
            rec.sent += 1
            t0 = time.perf_counter()
            try:
                out = await s.push([{"start": k, "end": k + 1, "image": frames[k % len(frames)]}])
            except ServeError as e:
                rec.status[e.status] += 1
                break
            except Exception as e:  # noqa: BLE001
                rec.status[type(e).__name__] += 1
                break
            rec.lat.append(time.perf_counter() - t0)
            rec.decided += len(out)
            k += 1
        with contextlib.suppress(Exception):
            await s.close()


async def measure(url: str, sessions: int, duration_s: float, token: str | None) -> dict[str, Any]:
    """One level: `sessions` concurrent streams for `duration_s` seconds."""
    frames = _frames()
    rec = Record()
    limits = httpx.Limits(max_connections=sessions * 2)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        t0 = time.monotonic()
        deadline = t0 + duration_s
        await asyncio.gather(
            *(_session_loop(http, url, token, frames, deadline, rec) for _ in range(sessions))
        )
        wall = time.monotonic() - t0
    lat = np.asarray(rec.lat) * 1000.0
    pct = {f"p{q}_ms": float(np.percentile(lat, q)) if lat.size else None for q in (50, 95, 99)}
    errors = {str(k): v for k, v in sorted(rec.status.items(), key=str)}
    return {
        "sessions": sessions,
        "duration_s": round(wall, 3),
        "chunks_sent": rec.sent,
        "decisions": rec.decided,
        "chunks_per_s": rec.decided / wall if wall > 0 else 0.0,
        **pct,
        "errors": errors,
        "errors_5xx": sum(v for k, v in rec.status.items() if str(k).startswith("5")),
        "lost_chunks": rec.sent - rec.decided,
    }


def _plot(levels: list[dict[str, Any]], out: Path) -> None:
    import matplotlib  # lazy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [lv["sessions"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(n, [lv["chunks_per_s"] for lv in levels], "o-")
    a.set_xlabel("concurrent sessions")
    a.set_ylabel("chunks / s")
    for q in (50, 95, 99):
        b.plot(n, [lv[f"p{q}_ms"] or 0 for lv in levels], "o-", label=f"p{q}")
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("decision latency, ms")
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run(cfg: Config, out: str) -> dict[str, Any]:
    """Every level of serve.bench_sessions; the plot goes beside the JSON (same name, .png)."""
    s = cfg.serve
    token = s.auth_token or os.environ.get(s.auth_token_env, "") or None
    where: AbstractContextManager[str]
    if s.bench_endpoint:
        where = contextlib.nullcontext(s.bench_endpoint)
    else:
        where = local_deployment(cfg, resolve_checkpoint(cfg, None))
    levels = []
    with where as url:
        for n in s.bench_sessions:
            lv = asyncio.run(measure(url, int(n), s.bench_duration_s, token))
            print(
                f"{n:3d} sessions: {lv['chunks_per_s']:.1f} chunks/s, "
                f"p50/p95/p99 {lv['p50_ms'] or 0:.0f}/{lv['p95_ms'] or 0:.0f}/"
                f"{lv['p99_ms'] or 0:.0f} ms, 5xx {lv['errors_5xx']}, lost {lv['lost_chunks']}",
                flush=True,
            )
            levels.append(lv)
    plot = Path(out).with_suffix(".png")
    _plot(levels, plot)
    return {
        "endpoint": s.bench_endpoint or "local",
        "engine": s.engine,
        "duration_s": s.bench_duration_s,
        "stream_chunks": STREAM_CHUNKS,
        "frame": f"{FRAME_SIZE}x{FRAME_SIZE} PNG",
        "levels": levels,
        "plot": str(plot),
        "cpus": os.cpu_count(),
    }
