"""`streampro bench serve`: live sessions against the Serve API on loopback, for a fixed time.

The runs of serve.bench_runs, each serve.bench_duration_s long, on one deployment (against
serve.bench_endpoint, or a temporary local deployment of serve.checkpoint, default the
configured policy). Sessions are closed loops (bench/serve_load.py): one PNG frame per
request as soon as the previous decision is back.

- levels: serve.bench_sessions (default 1, 8, 32) sessions at once: chunks/s, p50/p95/p99
  latency, errors by status, lost and reordered chunks. JSON + a plot.
- overload: 2 x serve.max_inflight sessions, twice what the deployment admits at once: the
  admitted requests' latency, the share of 429 answers (the client backs off and retries),
  5xx answers, lost and reordered chunks.
- fault: serve.bench_fault_sessions sessions; one engine replica is killed halfway
  (bench/serve_fault.py): failed requests, recovery, and every decision against a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from streampro.actors.serve.deploy import local_deployment, resolve_checkpoint
from streampro.bench.serve_fault import fault_run
from streampro.bench.serve_load import (
    FRAME_SIZE,
    STREAM_CHUNKS,
    Record,
    run_load,
    summary,
)
from streampro.config import Config
from streampro.errors import UserError


def measure(url: str, sessions: int, duration_s: float, token: str | None) -> dict[str, Any]:
    """One level: `sessions` concurrent streams for `duration_s` seconds."""
    rec = Record()
    wall = asyncio.run(run_load(url, sessions, duration_s, token, rec))
    return summary(rec, sessions, wall)


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


def _line(name: str, lv: dict[str, Any]) -> str:
    return (
        f"{name}: {lv['chunks_per_s']:.1f} chunks/s, p50/p95/p99 {lv['p50_ms'] or 0:.0f}/"
        f"{lv['p95_ms'] or 0:.0f}/{lv['p99_ms'] or 0:.0f} ms, 429 share {lv['share_429']:.2f}, "
        f"5xx {lv['answers_5xx']}, lost {lv['lost_chunks']}, reordered {lv['reordered_chunks']}"
    )


def run(cfg: Config, out: str) -> dict[str, Any]:
    """The runs of serve.bench_runs on one deployment; the levels' plot goes beside the JSON
    (same name, .png)."""
    s = cfg.serve
    token = s.auth_token or os.environ.get(s.auth_token_env, "") or None
    if "fault" in s.bench_runs and (s.bench_endpoint or s.min_replicas < 2):
        raise UserError(
            "bench serve: the fault run kills an engine replica of a local deployment: "
            "leave serve.bench_endpoint empty and set serve.min_replicas >= 2"
        )
    where: AbstractContextManager[str]
    if s.bench_endpoint:
        where = contextlib.nullcontext(s.bench_endpoint)
    else:
        where = local_deployment(cfg, resolve_checkpoint(cfg, None))
    result: dict[str, Any] = {
        "endpoint": s.bench_endpoint or "local",
        "engine": s.engine,
        "engine_replicas": s.min_replicas,
        "duration_s": s.bench_duration_s,
        "stream_chunks": STREAM_CHUNKS,
        "frame": f"{FRAME_SIZE}x{FRAME_SIZE} PNG",
        "max_inflight": s.max_inflight,
        "max_session_inflight": s.max_session_inflight,
        "cpus": os.cpu_count(),
    }
    with where as url:
        for name in s.bench_runs:
            if name == "levels":
                result["levels"] = [
                    measure(url, int(n), s.bench_duration_s, token) for n in s.bench_sessions
                ]
                for lv in result["levels"]:
                    print(_line(f"{lv['sessions']:3d} sessions", lv), flush=True)
            elif name == "overload":
                # closed-loop sessions hold one request each: max_inflight is what it admits
                lv = measure(url, 2 * s.max_inflight, s.bench_duration_s, token)
                print(_line(f"overload, {lv['sessions']} sessions", lv), flush=True)
                result["overload"] = lv
            else:
                app = url.rstrip("/").rsplit("/", 1)[-1]
                result["fault"] = fault_run(
                    url, app, s.bench_fault_sessions, s.bench_duration_s, token, s
                )
    if "levels" in result:
        result["plot"] = str(Path(out).with_suffix(".png"))
        _plot(result["levels"], Path(result["plot"]))
    return result
