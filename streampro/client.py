"""A small client of the Serve API (`streampro serve`): what the evaluator uses and users import.

    from streampro.client import StreamSession
    with StreamSession("http://127.0.0.1:8000", "tell me when the ball bounces") as s:
        for t, frame in enumerate(frames):              # H x W x 3 uint8 arrays, 1 per second
            d = s.push_frame(t, t + 1, frame)            # {"time", "decision", "text"}

`AsyncStreamSession` is the same over asyncio (many sessions at once). Errors raise
`ServeError` with the HTTP status and the API's error code; a 503 at capacity is retried
after its Retry-After, a few times, before it raises.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from typing import Any, Self

import httpx
import numpy as np
from PIL import Image

TOKEN_ENV = "STREAMPRO_SERVE_TOKEN"
RETRIES_AT_CAPACITY = 5


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


def _headers(token: str | None) -> dict[str, str]:
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        code, msg = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, msg = "http_error", r.text[:200]
    raise ServeError(r.status_code, code, msg)


def _retry_after(r: httpx.Response) -> float | None:
    if r.status_code in (429, 503) and "retry-after" in r.headers:
        try:
            return max(0.0, float(r.headers["retry-after"]))
        except ValueError:
            return 1.0
    return None


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
    ) -> None:
        self.url = url.rstrip("/")
        self._own = client is None
        self.http = client or httpx.Client(timeout=timeout_s)
        self.headers = _headers(token)
        body = {"question": question, "query_time": float(query_time)}
        self.id: str = self._call("POST", "/v1/sessions", body)["session_id"]
        self.decisions: list[dict] = []

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(RETRIES_AT_CAPACITY + 1):
            r = self.http.request(method, self.url + path, json=body, headers=self.headers)
            wait = _retry_after(r)
            if wait is None or attempt == RETRIES_AT_CAPACITY:
                _raise_for(r)
                return r.json() if r.content else None
            time.sleep(wait)
        raise AssertionError("unreachable")

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

    def __init__(self, url: str, http: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.url, self.http, self.headers = url.rstrip("/"), http, headers
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
    ) -> AsyncStreamSession:
        s = cls(url, http, _headers(token))
        body = {"question": question, "query_time": float(query_time)}
        s.id = (await s._call("POST", "/v1/sessions", body))["session_id"]
        return s

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(RETRIES_AT_CAPACITY + 1):
            r = await self.http.request(method, self.url + path, json=body, headers=self.headers)
            wait = _retry_after(r)
            if wait is None or attempt == RETRIES_AT_CAPACITY:
                _raise_for(r)
                return r.json() if r.content else None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

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

    async def close(self) -> None:
        await self._call("DELETE", f"/v1/sessions/{self.id}")
