"""The HTTP side of the Serve application: the /v1 API, its errors, and the browser page.

    POST   /v1/sessions               {"question", "query_time"}        -> 201 {"session_id"}
    POST   /v1/sessions/{id}/chunks   {"chunks": [{"start", "end", "image" | "codes"}]}
                                      -> 200 {"decisions": [{"time", "decision", "text",
                                                             "raw", "context_tokens",
                                                             "p_response", "threshold"}]}
    DELETE /v1/sessions/{id}                                             -> 204
    GET    /healthz, /openapi.json, /docs, /ui/ (the browser page)

Every error is `{"error": {"code", "message"}}` (see ERROR_STATUS); `StreamIngress` keeps
serving after each. Ingress replicas are interchangeable: contexts live in the SessionStore.
Decisions follow the effective decoder (the checkpoint's streampro_decode.json, else
cfg.decode): decode.mode=threshold gives each its calibrated P(`</Response>`) and the
threshold; sample mode leaves both null. GET /healthz names the decoder too.
A VLM policy (data.codec=image) takes frames as images only ("codes" is a 422); a text
policy takes either. GET /healthz names the codec, so a client can pre-resize frames.
"""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from streampro.actors.serve.ingress import GUARD, ApiError, Ingress, auth_enabled, configure_guard
from streampro.config import DataConfig, DecodeConfig, ServeConfig

STATIC = Path(__file__).resolve().parent / "static"


def error_response(status: int, code: str, message: str, retry_after: int = 0) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


class NewSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, description="the user's question")
    query_time: float = Field(
        0.0, ge=0, le=1e7, allow_inf_nan=False, description="stream second it was asked at"
    )


class ChunkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: float = Field(ge=0, le=1e7, allow_inf_nan=False, description="chunk start, s")
    end: float = Field(gt=0, le=1e7, allow_inf_nan=False, description="chunk end, s (> start)")
    image: str | None = Field(None, description="the frame as a base64 PNG or JPEG")
    codes: list[int] | None = Field(
        None, description="or the patch codec's codes of the frame (text policies only)"
    )


class ChunksIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunks: list[ChunkIn] = Field(min_length=1, description="chunks in stream order")


class Decision(BaseModel):
    time: float = Field(description="stream second of the decision (the chunk's end)")
    decision: str = Field(description="'silence', 'response' or 'invalid'")
    text: str = Field(description="the response text ('' unless a response)")
    raw: str = Field(description="the generated tokens as text, special tokens included")
    context_tokens: int = Field(
        description="prompt tokens the decision was sampled after: the session's windowed "
        "context (data.window_turns), bounded however long the stream runs"
    )
    p_response: float | None = Field(
        None,
        description="decode.mode=threshold: the calibrated P(</Response>) the decision was made "
        "on, sigmoid(l_r - l_s - decode.shift); null in sample mode",
    )
    threshold: float | None = Field(
        None, description="decode.mode=threshold: the threshold in use; null in sample mode"
    )


class Decisions(BaseModel):
    decisions: list[Decision]


class Created(BaseModel):
    session_id: str


api = FastAPI(
    title="StreamPro policy",
    version="1",
    description="Live-stream sessions: push chunks, get one decision per chunk.",
)


@api.exception_handler(ApiError)
async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
    return error_response(e.status, e.code, e.message, e.retry_after)


@api.exception_handler(RequestValidationError)
async def _invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
    errs = e.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") in ("json_invalid", "json_type") or (
        first.get("loc") == ("body",) and first.get("type") == "model_attributes_type"
    ):
        return error_response(400, "bad_json", f"body: {first.get('msg')}")
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return error_response(422, "invalid_field", f"{loc}: {first.get('msg')}{more}")


@api.exception_handler(StarletteHTTPException)
async def _http(_req: Request, e: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail))


@api.middleware("http")
async def _guard(request: Request, call_next):
    """Body limit (413) before anything is parsed, then the bearer token (401) on /v1."""
    limit = GUARD.serve.max_body_bytes
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > limit):
        return error_response(413, "body_too_large", f"body of {size} bytes: limit {limit}")
    if size is None and request.method in ("POST", "PUT", "PATCH"):
        body = await request.body()  # chunked upload: cached for the route after this
        if len(body) > limit:
            return error_response(413, "body_too_large", f"body over {limit} bytes")
    token = GUARD.token
    if token and "/v1/" in request.url.path + "/":  # under any route prefix
        got = request.headers.get("authorization", "")
        ok = got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode())
        if not ok:
            return error_response(401, "unauthorized", "missing or wrong bearer token")
    return await call_next(request)


api.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")


@serve.deployment(name="StreamIngress")
@serve.ingress(api)
class StreamIngress:
    """HTTP front: validates, decodes images off the loop, runs a session's chunks in order."""

    def __init__(
        self,
        engine: Any,
        store: Any,
        serve_cfg: ServeConfig,
        data: DataConfig,
        *,
        model_path: str,
        max_answer_tokens: int,
        seed: int,
        decode: DecodeConfig | None = None,
    ) -> None:
        configure_guard(serve_cfg)
        self.core = Ingress(
            engine,
            store,
            serve_cfg,
            data,
            model_path=model_path,
            max_answer_tokens=max_answer_tokens,
            seed=seed,
            pool=ThreadPoolExecutor(max(1, serve_cfg.decode_threads)),
            decode=decode,
        )
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.unique_id if ctx else "local"

    def _headers(self, response: Response) -> None:
        response.headers["X-Streampro-Replica"] = self.replica

    @api.get("/", include_in_schema=False)
    async def root(self) -> RedirectResponse:
        return RedirectResponse("ui/")

    @api.get("/healthz")
    async def healthz(self, response: Response) -> dict:
        self._headers(response)
        return {"ok": True, "auth": auth_enabled(), **await self.core.stats()}

    @api.post("/v1/sessions", status_code=201, response_model=Created)
    async def create(self, body: NewSession, response: Response) -> dict:
        self._headers(response)
        return await self.core.create(body.question, body.query_time)

    @api.post("/v1/sessions/{sid}/chunks", response_model=Decisions)
    async def chunks(self, sid: str, body: ChunksIn, response: Response) -> dict:
        self._headers(response)
        return {"decisions": await self.core.chunks(sid, body.chunks)}

    @api.delete("/v1/sessions/{sid}", status_code=204)
    async def close(self, sid: str) -> Response:
        await self.core.close(sid)
        return Response(status_code=204, headers={"X-Streampro-Replica": self.replica})
