"""What an ingress replica does per request, apart from HTTP: sessions, images, decisions.

A session's chunks run one request at a time and in order (a per-session lock); images are
decoded in a thread pool before that lock, so a slow decode blocks nobody. The context is the
session's log in the SessionStore replayed into a cached `StreamEpisode`, windowed by
`data.window_turns` / `data.window_slide` exactly as rollout windows it; a request commits
its steps to the log only when all its chunks are decided (compare-and-set on the step
count), so a failure leaves the session as it was and the request can be retried.

The ingress takes its config sections themselves (`ServeConfig`, and `DataConfig` for the
window and the codec) plus the few plain values other sections decide: the resolved model
folder, rollout.max_answer_tokens and run.seed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayError

from streampro.actors.episode import Chunk, StreamEpisode, max_decision_tokens, request_seed
from streampro.actors.serve_sessions import ImageError, decode_image
from streampro.config import DataConfig, ServeConfig

EPS = 1e-6


@dataclass
class ReplicaGuard:
    """What the HTTP middleware (serve_api._guard) of this replica process checks: the serve
    section it was configured with and the bearer token resolved from it (config or env)."""

    serve: ServeConfig = field(default_factory=ServeConfig)
    token: str = ""


# Set through `configure_guard`: the ingress class is shipped to the replica by value, so an
# object it referenced directly would be a copy, while this module is imported there by name.
GUARD = ReplicaGuard()


def configure_guard(serve: ServeConfig) -> None:
    GUARD.serve = serve
    GUARD.token = serve.auth_token or os.environ.get(serve.auth_token_env, "")


def auth_enabled() -> bool:
    return bool(GUARD.token)


class ApiError(Exception):
    """An HTTP error with a machine-readable code; Retry-After sent when retry_after > 0."""

    def __init__(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass
class _Local:
    """This replica's replay of a session's log (a cache: the store has the truth)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    episode: StreamEpisode | None = None
    n: int = 0  # log steps replayed into `episode`
    index: int = 0  # the session's number (feeds request seeds)
    touched: float = field(default_factory=time.monotonic)


class Ingress:
    """One ingress replica's sessions: `serve` caps and limits, `data` window and codec."""

    def __init__(
        self,
        engine: Any,
        store: Any,
        serve: ServeConfig,
        data: DataConfig,
        *,
        model_path: str,
        max_answer_tokens: int,
        seed: int,
        pool: Executor,
    ) -> None:
        from transformers import AutoTokenizer

        from streampro.data.codec import PatchTokenCodec
        from streampro.data.encode import DECODE_SIZE

        self.engine, self.store, self.pool = engine, store, pool
        self.s, self.data, self.seed = serve, data, seed
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.codec = PatchTokenCodec(grid=data.patch_grid, codebook_size=data.codebook_size)
        self.budget = DECODE_SIZE
        self.max_tokens = max_decision_tokens(max_answer_tokens)
        self.local: OrderedDict[str, _Local] = OrderedDict()
        self.inflight = 0

    def _busy(self, what: str) -> ApiError:
        return ApiError(503, "at_capacity", what, retry_after=self.s.retry_after_s)

    def new_episode(self, sid: str, question: str, query_time: float) -> StreamEpisode:
        """A session's dialogue, windowed by data.window_turns/window_slide as in rollout."""
        return StreamEpisode(
            self.tokenizer,
            sample_id=sid,
            question=question,
            query_time=query_time,
            window_turns=self.data.window_turns,
            window_slide=self.data.window_slide,
        )

    async def stats(self) -> dict[str, int]:
        return {"inflight": self.inflight, "cached": len(self.local), **await self._store("stats")}

    async def _store(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.store, method).remote(*args)
        except RayError as e:
            raise self._busy(f"session store unavailable: {type(e).__name__}") from None

    async def create(self, question: str, query_time: float) -> dict:
        if len(question) > self.s.max_question_chars:
            raise ApiError(
                422,
                "invalid_field",
                f"question: {len(question)} characters, at most {self.s.max_question_chars}",
            )
        r = await self._store("create", question, float(query_time))
        if "error" in r:
            raise self._busy(r["error"])
        return {"session_id": r["session_id"]}

    async def close(self, sid: str) -> None:
        self.local.pop(sid, None)
        if await self._store("close", sid) is None:
            raise _unknown(sid)

    def _check(self, chunks: list) -> None:
        """Field checks (422) and order within the request (409), before any work."""
        if len(chunks) > self.s.max_chunks_per_request:
            raise ApiError(
                422,
                "invalid_field",
                f"chunks: {len(chunks)} in one request, at most {self.s.max_chunks_per_request}",
            )
        n, k = self.codec.tokens_per_frame, self.codec.codebook_size
        for i, c in enumerate(chunks):
            where = f"chunks[{i}]"
            if c.end <= c.start:
                raise ApiError(422, "invalid_field", f"{where}.end: {c.end:g} <= start {c.start:g}")
            if (c.codes is None) == (c.image is None):
                raise ApiError(422, "invalid_field", f"{where}: give exactly one of image, codes")
            if c.codes is not None and len(c.codes) != n:
                raise ApiError(
                    422, "invalid_field", f"{where}.codes: expected {n}, got {len(c.codes)}"
                )
            if c.codes is not None and not all(0 <= x < k for x in c.codes):
                raise ApiError(422, "invalid_field", f"{where}.codes: outside [0, {k})")
            if i and c.start < chunks[i - 1].end - EPS:
                raise ApiError(409, "time_backwards", f"{where}.start {c.start:g} < previous end")

    async def _codes(self, chunks: list) -> list[list[int]]:
        loop = asyncio.get_running_loop()

        def encode(b64: str) -> list[int]:  # in the pool: decode, downscale, patch codes
            frame = decode_image(b64, max_pixels=self.s.max_image_pixels, budget=self.budget)
            return self.codec.encode(frame)

        jobs = [
            loop.run_in_executor(self.pool, encode, c.image) if c.image is not None else None
            for c in chunks
        ]
        out = []
        for c, job in zip(chunks, jobs):
            try:
                out.append(list(c.codes) if job is None else await job)
            except ImageError as e:
                raise ApiError(e.status, e.code, str(e)) from None
        return out

    async def chunks(self, sid: str, chunks: list) -> list[dict]:
        self._check(chunks)
        if self.inflight >= self.s.max_inflight:
            raise self._busy(f"{self.inflight} requests in progress on this replica")
        self.inflight += 1
        try:
            codes = await self._codes(chunks)
            local = self.local.get(sid)
            if local is None:
                local = self.local[sid] = _Local()
                self._evict()
            self.local.move_to_end(sid)
            async with local.lock:
                return await self._decide(sid, local, chunks, codes)
        finally:
            self.inflight -= 1

    def _evict(self) -> None:
        """Drop cached replays beyond serve.max_sessions or idle past serve.session_ttl_s
        (oldest first: the cache is in least-recently-used order). The store keeps the
        sessions themselves; a dropped replay is rebuilt from the log when needed."""
        now = time.monotonic()
        while self.local:
            sid, oldest = next(iter(self.local.items()))
            fits = len(self.local) <= self.s.max_sessions
            if fits and now - oldest.touched <= self.s.session_ttl_s:
                break
            if oldest.lock.locked():  # in use right now: keep it
                self.local.move_to_end(sid)
                break
            del self.local[sid]

    async def _sync(self, sid: str, local: _Local) -> float:
        """Replay the log steps this replica has not seen; returns the last chunk end."""
        rec = await self._store("read", sid, local.n if local.episode else 0)
        if rec is not None and rec["entries"] is None:  # the log is shorter than ours: rebuild
            local.episode = None
            rec = await self._store("read", sid, 0)
        if rec is None:
            self.local.pop(sid, None)
            raise _unknown(sid)
        if local.episode is None:
            local.episode = self.new_episode(sid, rec["question"], rec["query_time"])
            local.n, local.index = 0, rec["index"]
        for start, end, codes, ids, lps in rec["entries"]:
            local.episode.add_chunk(Chunk(start, end, codes))
            local.episode.add_decision(ids, lps)
        local.n = rec["n"]
        local.touched = time.monotonic()
        return rec["last_end"]

    async def _decide(self, sid: str, local: _Local, chunks: list, codes: list) -> list[dict]:
        last_end = await self._sync(sid, local)
        if local.n and chunks[0].start < last_end - EPS:
            raise ApiError(
                409,
                "time_backwards",
                f"chunks[0].start {chunks[0].start:g} is before the previous chunk's end "
                f"{last_end:g}",
            )
        ep, n0, new, out = local.episode, local.n, [], []
        engine = self.engine.options(multiplexed_model_id=sid)  # prefix-cache affinity
        try:
            for c, cc in zip(chunks, codes):
                step_i = len(ep.steps)
                prompt = ep.add_chunk(Chunk(c.start, c.end, cc))
                ids, lps = await engine.decide.remote(
                    prompt,
                    max_tokens=self.max_tokens,
                    temperature=self.s.temperature,
                    seed=request_seed(self.seed, local.index, 0, step_i),
                )
                step = ep.add_decision(ids, lps)
                new.append((c.start, c.end, cc, list(ids), list(lps)))
                out.append(
                    {
                        "time": step.time,
                        "decision": step.decision,
                        "text": step.text,
                        "raw": step.raw,
                        "context_tokens": len(prompt),
                    }
                )
        except (RayError, RuntimeError) as e:  # nothing committed: the client may retry
            self.local.pop(sid, None)
            raise self._busy(f"the engine failed: {type(e).__name__}: {e}") from None
        res = await self._store("append", sid, n0, new)
        if res != "ok":
            self.local.pop(sid, None)
            if res == "missing":
                raise _unknown(sid)
            raise ApiError(409, "conflict", f"session {sid} advanced in another request")
        local.n = n0 + len(new)
        return out


def _unknown(sid: str) -> ApiError:
    return ApiError(
        404, "unknown_session", f"session {sid}: unknown (closed, expired or never opened)"
    )
