"""The fault run of `bench serve`: one engine replica is killed in the middle of a load.

Sessions stream as in the other runs (bench/serve_load.py) for serve.bench_duration_s; at
half time one PolicyEngine replica is killed (`ray.kill`, as a crash). Requests in flight on
it fail inside the ingress, which commits nothing and answers 503 with Retry-After; the
client retries, and the session goes on from the SessionStore's log on the other replica
(Serve starts a replacement). Afterwards every stream is replayed in a fresh session, and
its decisions are compared with the ones served under the fault: decisions are greedy
(serve.temperature=0), so a session that recovered correctly decides exactly as its replay.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from streampro.actors.serve.deploy import engine_replicas, kill_engine_replica
from streampro.bench.serve_load import (
    QUESTION,
    Record,
    Stream,
    chunk,
    frames_png,
    run_load,
    summary,
)
from streampro.client import AsyncStreamSession
from streampro.config import ServeConfig

REPLAYS_AT_ONCE = 4  # replay streams concurrently, well under the in-flight limits
RECOVERY_TIMEOUT_S = 300.0  # a replacement engine replica starts in well under this


def _key(d: dict) -> tuple:
    return (d["time"], d["decision"], d["text"], d["raw"])


async def _replay(
    http: httpx.AsyncClient, url: str, token: str | None, st: Stream, batch: int
) -> list[dict]:
    """The decisions of a fresh session fed the chunks `st` got decisions for."""
    frames = frames_png()
    s = await AsyncStreamSession.open(url, QUESTION, http=http, token=token)
    out: list[dict] = []
    try:
        n = len(st.decisions)
        for i in range(0, n, batch):
            out += await s.push(
                [chunk(k, st.frames[k], frames) for k in range(i, min(n, i + batch))]
            )
    finally:
        await s.close()
    return out


async def _replay_all(
    url: str, token: str | None, streams: list[Stream], batch: int
) -> list[list[dict]]:
    gate = asyncio.Semaphore(REPLAYS_AT_ONCE)
    async with httpx.AsyncClient(timeout=300.0) as http:

        async def one(st: Stream) -> list[dict]:
            async with gate:
                return await _replay(http, url, token, st, batch)

        return await asyncio.gather(*(one(st) for st in streams))


async def _load_with_kill(
    url: str, app: str, sessions: int, duration_s: float, token: str | None, rec: Record
) -> tuple[float, float, str]:
    """The load, with one engine replica killed at half time: (wall s, kill time, name)."""
    load = asyncio.create_task(run_load(url, sessions, duration_s, token, rec))
    await asyncio.sleep(duration_s / 2)
    killed_at = time.monotonic()
    name = await asyncio.to_thread(kill_engine_replica, app)
    return await load, killed_at, name


def _wait_replicas(app: str, n: int, since: float) -> float | None:
    """Seconds from `since` until `app` has `n` live engine replicas again (None: timed out)."""
    while time.monotonic() - since < RECOVERY_TIMEOUT_S:
        if len(engine_replicas(app)) >= n:
            return time.monotonic() - since
        time.sleep(1.0)
    return None


def fault_run(
    url: str, app: str, sessions: int, duration_s: float, token: str | None, s: ServeConfig
) -> dict[str, Any]:
    """Load, kill, recovery and replay: counts and the comparison, as JSON."""
    rec = Record()
    wall, killed_at, name = asyncio.run(_load_with_kill(url, app, sessions, duration_s, token, rec))
    back_s = _wait_replicas(app, s.min_replicas, killed_at)
    streams = [st for st in rec.streams if st.decisions]
    replays = asyncio.run(_replay_all(url, token, streams, s.max_chunks_per_request))
    after = differ = differ_after = 0
    kinds: Counter[str] = Counter()
    raws: set[str] = set()  # the decisions vary: their equality to the replay says something
    for st, ref in zip(streams, replays):
        for d, t, r in zip(st.decisions, st.at, ref):
            bad = _key(d) != _key(r)
            differ += bad
            if t > killed_at:
                after += 1
                differ_after += bad
                kinds[d["decision"]] += 1
                raws.add(d["raw"])
    decided = sum(len(st.decisions) for st in streams)
    out = {
        **summary(rec, sessions, wall),
        "killed_replica": name,
        "killed_at_s": round(duration_s / 2, 3),
        "replica_replaced_after_s": None if back_s is None else round(back_s, 1),
        "requests_failed": sum(rec.status.values()),
        "requests_retried_5xx": sum(v for k, v in rec.attempts.items() if k >= 500),
        "replayed_decisions": sum(len(r) for r in replays),
        "decisions_compared": decided,
        "decisions_after_kill": after,
        "differ_from_replay": differ,
        "differ_from_replay_after_kill": differ_after,
        "kinds_after_kill": dict(sorted(kinds.items())),
        "distinct_raw_after_kill": len(raws),
    }
    print(
        f"fault, {sessions} sessions: killed {name} at {duration_s / 2:.0f} s, "
        f"failed {out['requests_failed']}, 5xx retried {out['requests_retried_5xx']}, "
        f"{after} decisions after the kill, {differ_after} differ from the replay "
        f"({differ} of {decided} in all), replica back after {out['replica_replaced_after_s']} s",
        flush=True,
    )
    return out
