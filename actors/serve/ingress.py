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

Frames follow data.codec, as in training. Patch codec: an image becomes the frame's codes
(or the client sends codes). Image codec (VLM policies): an image is decoded and resized by
the same `ImageCodec` the data pipeline uses (pixel budget data.image_max_pixels, sides
multiples of the processor's patch x merge), its placeholder sized by the processor
(`hf_policy.image_token_count`), and kept as lossless PNG bytes: in the `Chunk`, in the
store's log (see serve_sessions) and in each engine request, which carries the frames of
the decision's context. Codes cannot stand for an image: a codes-only chunk is a 422.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayError
from transformers import AutoTokenizer

from streampro import tokens as TOK
from streampro.actors.decode import FireState, calibrated_p, fire, load_tuned
from streampro.actors.episode import Chunk, StreamEpisode, max_decision_tokens, request_seed
from streampro.actors.serve.limits import InflightLimiter, LimitExceeded, replica_share
from streampro.actors.serve.sessions import (
    Entry,
    ImageError,
    decode_frame,
    decode_image,
    png_bytes,
)
from streampro.config import DataConfig, DecodeConfig, ServeConfig
from streampro.data.codec import ImageCodec, PatchTokenCodec, make_codec
from streampro.data.encode import DECODE_SIZE
from streampro.data.window import Window
from streampro.hf_policy import image_factor, image_token_count, load_processor

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
    fire: FireState = field(default_factory=FireState)  # the threshold decoder's memory
    touched: float = field(default_factory=time.monotonic)


class Ingress:
    """One ingress replica's sessions: `serve` caps and limits, `data` window and codec,
    `decode` the decoder (the checkpoint's tuned file, when it has one, wins over it)."""

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
        decode: DecodeConfig | None = None,
    ) -> None:

        self.engine, self.store, self.pool = engine, store, pool
        self.s, self.data, self.seed = serve, data, seed
        # read here, where the folder is visible (a RayService driver may not see it)
        self.decode = load_tuned(model_path, decode or DecodeConfig())
        self.threshold = self.decode.mode == "threshold"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.decision_ids = (  # (`</Response>`, `</Silence>`): the threshold decoder's choices
            int(self.tokenizer.convert_tokens_to_ids(TOK.RESPONSE)),
            int(self.tokenizer.convert_tokens_to_ids(TOK.SILENCE)),
        )
        self.images = data.codec == "image"  # frames reach the policy as images (VLM)
        factor, self.image_tokens = 28, None
        if self.images:  # the pipeline's codec (streampro.data.pipeline.frame_codec), this folder's
            processor = load_processor(model_path)
            factor = image_factor(processor)  # a text folder: one-line UserError
            self.image_tokens = functools.partial(image_token_count, processor)
        self.codec = make_codec(
            data.codec,
            grid=data.patch_grid,
            codebook_size=data.codebook_size,
            max_pixels=data.image_max_pixels,
            factor=factor,
        )
        self.budget = DECODE_SIZE
        self.max_tokens = max_decision_tokens(max_answer_tokens)
        self.local: OrderedDict[str, _Local] = OrderedDict()
        self.limits = InflightLimiter(
            total=replica_share(serve.max_inflight, serve.ingress_replicas),
            per_session=serve.max_session_inflight,
        )

    def _busy(self, what: str) -> ApiError:
        return ApiError(503, "at_capacity", what, retry_after=self.s.retry_after_s)

    def new_episode(self, sid: str, question: str, query_time: float) -> StreamEpisode:
        """A session's dialogue, windowed by data.window_turns/window_slide as in rollout."""
        return StreamEpisode(
            self.tokenizer,
            sample_id=sid,
            question=question,
            query_time=query_time,
            window=Window.from_config(self.data),
        )

    def codec_info(self) -> dict[str, Any]:
        """What a client needs to send frames the server will not resize again: the image
        codec's budget and side factor (its output is a fixed point of `ImageCodec.encode`)."""
        if not isinstance(self.codec, ImageCodec):
            return {"name": "patch", "grid": self.data.patch_grid}
        return {"name": "image", "max_pixels": self.codec.max_pixels, "factor": self.codec.factor}

    def decode_info(self) -> dict[str, Any]:
        """The decoder in use (threshold null in sample mode), for the page's threshold line."""
        d = self.decode
        if not self.threshold:
            return {"mode": d.mode, "threshold": None}
        return {
            "mode": d.mode,
            "threshold": d.threshold,
            "shift": d.shift,
            "integrate": d.integrate,
            "refractory_chunks": d.refractory_chunks,
        }

    async def stats(self) -> dict[str, Any]:
        return {
            "inflight": self.limits.inflight,
            "cached": len(self.local),
            "codec": self.codec_info(),
            "decode": self.decode_info(),
            **await self._store("stats"),
        }

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
        n = getattr(self.codec, "tokens_per_frame", 0)
        k = getattr(self.codec, "codebook_size", 0)
        for i, c in enumerate(chunks):
            where = f"chunks[{i}]"
            if c.end <= c.start:
                raise ApiError(422, "invalid_field", f"{where}.end: {c.end:g} <= start {c.start:g}")
            if (c.codes is None) == (c.image is None):
                raise ApiError(422, "invalid_field", f"{where}: give exactly one of image, codes")
            if self.images and c.codes is not None:
                raise ApiError(
                    422,
                    "invalid_field",
                    f"{where}.codes: this policy reads frames as images (data.codec=image): "
                    "send the frame as a base64 PNG/JPEG 'image'",
                )
            if c.codes is not None and len(c.codes) != n:
                raise ApiError(
                    422, "invalid_field", f"{where}.codes: expected {n}, got {len(c.codes)}"
                )
            if c.codes is not None and not all(0 <= x < k for x in c.codes):
                raise ApiError(422, "invalid_field", f"{where}.codes: outside [0, {k})")
            if i and c.start < chunks[i - 1].end - EPS:
                raise ApiError(409, "time_backwards", f"{where}.start {c.start:g} < previous end")

    def _encode(self, b64: str) -> Chunk:
        """In the pool: decode, downscale to the codec's budget, then codes or the frame."""
        if isinstance(self.codec, PatchTokenCodec):
            frame = decode_image(b64, max_pixels=self.s.max_image_pixels, budget=self.budget)
            return Chunk(0.0, 0.0, self.codec.encode(frame))
        frame = decode_frame(b64, max_pixels=self.s.max_image_pixels, codec=self.codec)
        n = self.image_tokens(*frame.shape[:2]) if self.image_tokens else 0
        return Chunk(0.0, 0.0, [], image=png_bytes(frame), image_tokens=n)

    async def _frames(self, chunks: list) -> list[Chunk]:
        """Each request chunk as the policy sees it (decoded off the event loop)."""
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(self.pool, self._encode, c.image) if c.image is not None else None
            for c in chunks
        ]
        out = []
        for c, job in zip(chunks, jobs):
            try:
                f = Chunk(0.0, 0.0, list(c.codes)) if job is None else await job
            except ImageError as e:
                raise ApiError(e.status, e.code, str(e)) from None
            out.append(Chunk(c.start, c.end, f.codes, f.image, f.image_tokens))
        return out

    async def chunks(self, sid: str, chunks: list) -> list[dict]:
        self._check(chunks)
        try:
            self.limits.acquire(sid)  # refused at once: a bounded queue, never an unbounded one
        except LimitExceeded as e:
            raise ApiError(429, "too_many_requests", e.message, self.s.retry_after_s) from None
        try:
            frames = await self._frames(chunks)
            local = self.local.get(sid)
            if local is None:
                local = self.local[sid] = _Local()
                self._evict()
            self.local.move_to_end(sid)
            async with local.lock:
                return await self._decide(sid, local, frames)
        finally:
            self.limits.release(sid)

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
            local.n, local.index, local.fire = 0, rec["index"], FireState()
        for e in rec["entries"]:
            local.episode.add_chunk(Chunk(e.start, e.end, e.codes, e.png, e.image_tokens))
            local.episode.add_decision(e.ids, e.logprobs)
            local.episode.release_images()  # frames that left the window: the log has no more
            if e.p is not None:  # the same rule on the same p: the state the writer had
                local.fire = self._fire(local.fire, e.p)[1]
        local.n = rec["n"]
        local.touched = time.monotonic()
        return rec["last_end"]

    async def _decide(self, sid: str, local: _Local, chunks: list[Chunk]) -> list[dict]:
        last_end = await self._sync(sid, local)
        if local.n and chunks[0].start < last_end - EPS:
            raise ApiError(
                409,
                "time_backwards",
                f"chunks[0].start {chunks[0].start:g} is before the previous chunk's end "
                f"{last_end:g}",
            )
        ep, n0, new, out = local.episode, local.n, [], []
        assert ep is not None
        engine = self.engine.options(multiplexed_model_id=sid)  # prefix-cache affinity
        state = local.fire
        try:
            for c in chunks:
                step_i = len(ep.steps)
                prompt = ep.add_chunk(c)
                images = ep.context_images()  # the context's frames as PNG (VLM), in order
                if self.threshold:
                    ids, lps, p, state = await self._threshold(engine, prompt, images, state)
                else:
                    p = None
                    ids, lps = await engine.decide.remote(
                        prompt,
                        max_tokens=self.max_tokens,
                        temperature=self.s.temperature,
                        seed=request_seed(self.seed, local.index, 0, step_i),
                        images=images,
                    )
                step = ep.add_decision(ids, lps)
                ep.release_images()
                new.append(
                    Entry(
                        c.start,
                        c.end,
                        list(c.codes),
                        list(ids),
                        list(lps),
                        c.image,
                        c.image_tokens,
                        p,
                    )
                )
                out.append(
                    {
                        "time": step.time,
                        "decision": step.decision,
                        "text": step.text,
                        "raw": step.raw,
                        "context_tokens": len(prompt),
                        "p_response": p,
                        "threshold": self.decode.threshold if self.threshold else None,
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
        local.n, local.fire = n0 + len(new), state
        return out

    def _fire(self, state: FireState, p: float) -> tuple[bool, FireState]:
        d = self.decode
        return fire(
            state, p, threshold=d.threshold, integrate=d.integrate, refractory=d.refractory_chunks
        )

    async def _threshold(
        self, engine: Any, prompt: list[int], images: list, state: FireState
    ) -> tuple[list[int], list[float], float, FireState]:
        """decode.mode=threshold, as rollout's threshold episode decides: the two decision
        tokens' logprobs, p and `fire`; a response's text greedy after `</Response>`.
        Returns (ids, logprobs, p, next state)."""
        r_id, s_id = self.decision_ids
        l_r, l_s = await engine.choice.remote(prompt, (r_id, s_id), images=images)
        p = calibrated_p(l_r, l_s, self.decode.shift)
        respond, state = self._fire(state, p)
        if not respond:
            return [s_id], [float(l_s)], p, state
        ids, lps = await engine.decide.remote(
            [*prompt, r_id],
            max_tokens=self.max_tokens - 1,  # after `</Response>`: text and `<|im_end|>`
            temperature=0.0,
            seed=0,
            images=images,
        )
        return [r_id, *ids], [float(l_r), *lps], p, state


def _unknown(sid: str) -> ApiError:
    return ApiError(
        404, "unknown_session", f"session {sid}: unknown (closed, expired or never opened)"
    )
