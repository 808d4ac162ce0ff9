"""A small client of the Serve API (`streampro serve`): what the evaluator uses and users import.

    from streampro.client import StreamSession
    with StreamSession("http://127.0.0.1:8000", "tell me when the ball bounces") as s:
        for t, frame in enumerate(frames):              # H x W x 3 uint8 arrays, 1 per second
            d = s.push_frame(t, t + 1, frame)            # {"time", "decision", "text"}

A threshold-decoded policy also answers each decision's "p_response" and "threshold" (null in
sample mode); `decision_probs()` gives them in the predictions file's format.

`AsyncStreamSession` is the same over asyncio (many sessions at once). Errors raise
`ServeError` with the HTTP status and the API's error code. A 429 (over an in-flight limit)
or a 503 at capacity, both with Retry-After, is retried after the larger of Retry-After and
an exponential backoff (capped, with jitter), up to `Backoff.tries` attempts in all; then
`ServeError` says how many tries it gave up after. Nothing waits unbounded: each attempt has
the HTTP timeout, each pause the backoff's cap.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import httpx
import numpy as np
from PIL import Image

TOKEN_ENV = "STREAMPRO_SERVE_TOKEN"
Observer = Callable[[str, int, float], None]
"""Called after every HTTP attempt with its URL path, status and seconds (`bench serve`)."""


@dataclass(frozen=True)
class Backoff:
    """How a client retries a 429 or a 503 that carries Retry-After."""

    tries: int = 8
    """HTTP attempts in all before ServeError (>= 1)."""
    base_s: float = 0.25
    """The first pause; it doubles each try (unless Retry-After asks for more)."""
    cap_s: float = 8.0
    """The longest pause before jitter (Retry-After above it is cut to it)."""
    jitter: float = 0.5
    """Each pause is lengthened by up to this fraction, at random (clients spread out)."""

    def __post_init__(self) -> None:
        if self.tries < 1 or self.base_s < 0 or self.cap_s < self.base_s or self.jitter < 0:
            raise ValueError(f"bad backoff {self}")

    def delay(self, attempt: int, retry_after: float, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based): never below Retry-After
        (up to the cap), at most cap_s * (1 + jitter)."""
        wait = min(self.cap_s, max(retry_after, self.base_s * 2**attempt))
        return wait * (1.0 + self.jitter * rng.random())


def _gave_up(r: httpx.Response, tries: int) -> ServeError:
    e = _error_of(r)
    return ServeError(e.status, e.code, f"{e.message} (gave up after {tries} tries)")


class ServeError(RuntimeError):
    """An error answer of the API: status, code and message as the server sent them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def encode_png(frame) -> str:
    """H x W x 3 uint8 -> base64 PNG (lossless: the server sees these exact pixels)."""

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def frame_chunk(start: float, end: float, frame=None, *, codes=None, image: str = "") -> dict:
    """One chunk of the API: a frame (array), a ready base64 image, or codec codes."""
    c: dict[str, Any] = {"start": float(start), "end": float(end)}
    if codes is not None:
        c["codes"] = [int(x) for x in codes]
    else:
        c["image"] = image or encode_png(frame)
    return c


def decision_probs(decisions: list[dict]) -> dict:
    """{"decisions": [{"time", "p_response"}, ...]} of a threshold-decoded stream (the local
    threshold path's predictions format), {} when any decision carries no p (sample mode)."""
    if not decisions or any(d.get("p_response") is None for d in decisions):
        return {}
    return {"decisions": [{"time": d["time"], "p_response": d["p_response"]} for d in decisions]}


def _headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _error_of(r: httpx.Response) -> ServeError:
    try:
        err = r.json()["error"]
        code, msg = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):  # e.g. Serve's proxy: a plain-text 429/503
        code, msg = "http_error", r.text[:200]
    return ServeError(r.status_code, code, msg)


def _raise_for(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise _error_of(r)


def _retry_after(r: httpx.Response) -> float | None:
    if r.status_code in (429, 503) and "retry-after" in r.headers:
        try:
            return max(0.0, float(r.headers["retry-after"]))
        except ValueError:
            return 1.0
    return None


class _Retry:
    """One session's retry policy: what to do with each HTTP answer."""

    def __init__(self, backoff: Backoff | None, observe: Observer | None) -> None:
        self.backoff = backoff or Backoff()
        self.observe = observe
        self.rng = random.Random()

    def pause(self, r: httpx.Response, attempt: int, seconds: float) -> float | None:
        """Seconds to wait before retrying, or None when `r` is the answer (an error raises)."""
        if self.observe is not None:
            self.observe(r.request.url.path, r.status_code, seconds)
        wait = _retry_after(r)
        if wait is None:
            _raise_for(r)
            return None
        if attempt + 1 >= self.backoff.tries:
            raise _gave_up(r, self.backoff.tries)
        return self.backoff.delay(attempt, wait, self.rng)


class StreamSession:
    """One live stream: open (POST /v1/sessions), push chunks, close (DELETE)."""

    def __init__(
        self,
        url: str,
        question: str,
        *,
        query_time: float = 0.0,
        token: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
        backoff: Backoff | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = _Retry(backoff, observe)
        self._own = client is None
        self.http = client or httpx.Client(timeout=timeout_s)
        self.headers = _headers(token)
        body = {"question": question, "query_time": float(query_time)}
        self.id: str = self._call("POST", "/v1/sessions", body)["session_id"]
        self.decisions: list[dict] = []

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.retry.backoff.tries):
            t0 = time.perf_counter()
            r = self.http.request(method, self.url + path, json=body, headers=self.headers)
            wait = self.retry.pause(r, attempt, time.perf_counter() - t0)
            if wait is None:
                return r.json() if r.content else None
            time.sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")

    def push(self, chunks: list[dict]) -> list[dict]:
        """Chunks (see `frame_chunk`) in stream order -> one decision per chunk."""
        out = self._call("POST", f"/v1/sessions/{self.id}/chunks", {"chunks": chunks})
        self.decisions += out["decisions"]
        return out["decisions"]

    def push_frame(self, start: float, end: float, frame=None, *, codes=None) -> dict:
        return self.push([frame_chunk(start, end, frame, codes=codes)])[0]

    def responses(self) -> list[dict]:
        """The responses so far in the scorer's format ({"time", "text"})."""
        return [
            {"time": d["time"], "text": d["text"]}
            for d in self.decisions
            if d["decision"] == "response"
        ]

    def decision_probs(self) -> dict:
        """Every decision's calibrated p so far (see `decision_probs`)."""
        return decision_probs(self.decisions)

    def close(self) -> None:
        try:
            self._call("DELETE", f"/v1/sessions/{self.id}")
        finally:
            if self._own:
                self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamSession:
    """`StreamSession` over asyncio; `await AsyncStreamSession.open(...)` to start one."""

    def __init__(
        self, url: str, http: httpx.AsyncClient, headers: dict[str, str], retry: _Retry
    ) -> None:
        self.url, self.http, self.headers, self.retry = url.rstrip("/"), http, headers, retry
        self.id = ""
        self.decisions: list[dict] = []

    @classmethod
    async def open(
        cls,
        url: str,
        question: str,
        *,
        http: httpx.AsyncClient,
        query_time: float = 0.0,
        token: str | None = None,
        backoff: Backoff | None = None,
        observe: Observer | None = None,
    ) -> AsyncStreamSession:
        s = cls(url, http, _headers(token), _Retry(backoff, observe))
        body = {"question": question, "query_time": float(query_time)}
        s.id = (await s._call("POST", "/v1/sessions", body))["session_id"]
        return s

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.retry.backoff.tries):
            t0 = time.perf_counter()
            r = await self.http.request(method, self.url + path, json=body, headers=self.headers)
            wait = self.retry.pause(r, attempt, time.perf_counter() - t0)
            if wait is None:
                return r.json() if r.content else None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last try returns or raises")

    async def push(self, chunks: list[dict]) -> list[dict]:
        out = await self._call("POST", f"/v1/sessions/{self.id}/chunks", {"chunks": chunks})
        self.decisions += out["decisions"]
        return out["decisions"]

    def responses(self) -> list[dict]:
        return [
            {"time": d["time"], "text": d["text"]}
            for d in self.decisions
            if d["decision"] == "response"
        ]

    def decision_probs(self) -> dict:
        return decision_probs(self.decisions)

    async def close(self) -> None:
        await self._call("DELETE", f"/v1/sessions/{self.id}")
