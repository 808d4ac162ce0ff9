"""Ray Serve deployment of a policy: live streams over HTTP, one decision per chunk.

    POST   /sessions              {"question", "query_time"}            -> {"id"}
    POST   /sessions/{id}/chunk   {"start", "end", "codes" | "frame"}    -> {"decision", "text", "time", "raw"}
    DELETE /sessions/{id}                                                -> {"id", "steps", "responses"}

`frame` is a base64 PNG/JPEG that the server encodes with PatchTokenCodec; `codes` are the
codec's indices directly. Two deployments: `StreamPolicy` (the HTTP ingress) keeps each
session's stream context (a `StreamEpisode`, the same dialogue code as rollout and SFT) and
`PolicyEngine` replicas (one vLLM engine, or transformers in the CPU-light 'hf' mode) are
stateless, so they autoscale without losing sessions.

    streampro serve [--checkpoint DIR] [--detach]    # or the RayService in cluster/kuberay/
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import itertools
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import RayError

from streampro.actors.episode import (
    Chunk,
    StreamEpisode,
    max_decision_tokens,
    request_seed,
    stop_token_ids,
)
from streampro.errors import UserError

APP_NAME = "streampro"
EPS = 1e-6

# Arguments of `build_app` (the RayService's serveConfigV2 `args`) and their defaults.
APP_ARGS: dict[str, Any] = {
    "checkpoint": "",
    "engine": "vllm",
    "dtype": "float32",
    "window_turns": 200,
    "max_answer_tokens": 24,
    "patch_grid": 4,
    "codebook_size": 64,
    "temperature": 0.0,
    "seed": 0,
    "min_replicas": 1,
    "max_replicas": 1,
    "num_cpus": 1.0,
    "num_gpus": 0.0,
    "role_resources": True,
    "kv_cache_gb": 1.0,
    "gpu_memory_utilization": 0.5,
    "enforce_eager": True,
    "max_num_seqs": 256,
    "max_sessions": 1024,
    "session_ttl_s": 3600.0,
}


class _HFDecider:
    """transformers, one decision at a time (CPU-light mode; no vLLM needed)."""

    def __init__(self, model_path: str, *, dtype: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype)
        ).eval()
        self.stop_ids = set(stop_token_ids(AutoTokenizer.from_pretrained(model_path)))
        self.lock = threading.Lock()  # one forward at a time: the cores are shared anyway

    def decide(
        self, prompt: list[int], *, max_tokens: int, temperature: float, seed: int
    ) -> tuple[list[int], list[float]]:
        import torch
        from transformers import DynamicCache

        from streampro.actors.hf_loop import sample_token

        gen = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        lps: list[float] = []
        with self.lock, torch.inference_mode():
            cache, x, past = DynamicCache(), prompt, 0
            while True:
                inp = torch.tensor([x])  # [1, T]
                pos = torch.arange(past, past + len(x))[None]  # [1, T]
                out = self.model(
                    input_ids=inp, position_ids=pos, past_key_values=cache, use_cache=True
                )
                logits, cache, past = out.logits[0, -1], out.past_key_values, past + len(x)  # [V]
                tok = sample_token(logits, temperature=temperature, top_p=1.0, generator=gen)
                ids.append(tok)
                lps.append(float(torch.log_softmax(logits.float(), dim=-1)[tok]))
                if tok in self.stop_ids or len(ids) >= max_tokens:
                    return ids, lps
                x = [tok]


@serve.deployment(name="PolicyEngine")
class PolicyEngine:
    """Stateless: a prompt in, one decision (generated ids + logprobs) out."""

    def __init__(
        self,
        model_path: str,
        *,
        engine: str = "vllm",
        dtype: str = "float32",
        kv_cache_gb: float = 1.0,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = True,
        max_num_seqs: int = 256,
        seed: int = 0,
    ) -> None:
        self.engine = engine
        if engine == "vllm":
            from streampro.actors.engine import DecisionEngine

            self._vllm = DecisionEngine(
                model_path,
                dtype=dtype,
                kv_cache_gb=kv_cache_gb,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                max_num_seqs=max_num_seqs,
                seed=seed,
            )
            from transformers import AutoTokenizer

            self._stop = stop_token_ids(AutoTokenizer.from_pretrained(model_path))
        else:
            self._hf = _HFDecider(model_path, dtype=dtype)

    async def decide(
        self, prompt: list[int], *, max_tokens: int, temperature: float, seed: int
    ) -> tuple[list[int], list[float]]:
        if self.engine == "vllm":
            from streampro.actors.engine import decision_params

            params = decision_params(
                stop_ids=self._stop,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=1.0,
                seed=seed,
            )
            d = await self._vllm.decide(prompt, params)
            return d.token_ids, d.logprobs
        return await asyncio.to_thread(
            self._hf.decide, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
        )


class NewSession(BaseModel):
    question: str = Field(min_length=1, description="the user's question")
    query_time: float = Field(0.0, ge=0, description="stream second at which it was asked")


class ChunkIn(BaseModel):
    start: float = Field(ge=0, description="chunk start, seconds")
    end: float = Field(description="chunk end, seconds (> start)")
    codes: list[int] | None = Field(None, description="PatchTokenCodec indices of the frame")
    frame: str | None = Field(None, description="the frame as a base64 PNG or JPEG")


@dataclass
class _Session:
    episode: StreamEpisode
    index: int  # feeds request seeds
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_end: float = 0.0
    touched: float = field(default_factory=time.monotonic)


# serve.ingress pickles the app when the class is decorated: helpers must exist before it.
api = FastAPI(title="StreamPro policy", description=__doc__.splitlines()[0])


def _bad(where: str, msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=f"{where}: {msg}")


def _decode_image(b64: str):
    """base64 PNG/JPEG -> HxWx3 uint8."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(b64, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise _bad("chunk.frame", f"expected PNG or JPEG, got {im.format}")
            return np.asarray(im.convert("RGB"))
    except (binascii.Error, UnidentifiedImageError, OSError) as e:
        raise _bad("chunk.frame", f"not a base64 PNG/JPEG image ({type(e).__name__})") from None


@serve.deployment(name="StreamPolicy")
@serve.ingress(api)
class StreamPolicy:
    """HTTP ingress holding the sessions' stream contexts; decisions come from PolicyEngine."""

    def __init__(
        self,
        engine: Any,
        *,
        model_path: str,
        window_turns: int = 200,
        max_answer_tokens: int = 24,
        patch_grid: int = 4,
        codebook_size: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        max_sessions: int = 1024,
        session_ttl_s: float = 3600.0,
    ) -> None:
        from transformers import AutoTokenizer

        from streampro.data.codec import PatchTokenCodec

        self.engine = engine  # DeploymentHandle of PolicyEngine
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.codec = PatchTokenCodec(grid=patch_grid, codebook_size=codebook_size)
        self.window_turns, self.max_tokens = window_turns, max_decision_tokens(max_answer_tokens)
        self.temperature, self.seed = temperature, seed
        self.max_sessions, self.ttl = max_sessions, session_ttl_s
        self.sessions: dict[str, _Session] = {}
        self._count = itertools.count()

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v.touched > self.ttl]:
            del self.sessions[sid]

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True, "sessions": len(self.sessions)}

    @api.post("/sessions")
    async def create(self, body: NewSession) -> dict:
        self._expire()
        if len(self.sessions) >= self.max_sessions:
            raise HTTPException(503, f"{self.max_sessions} sessions open: close one first")
        sid = uuid.uuid4().hex
        ep = StreamEpisode(
            self.tokenizer,
            sample_id=sid,
            question=body.question,
            query_time=body.query_time,
            window_turns=self.window_turns,
        )
        self.sessions[sid] = _Session(ep, next(self._count))
        return {"id": sid}

    def _session(self, sid: str) -> _Session:
        s = self.sessions.get(sid)
        if s is None:
            raise HTTPException(404, f"session {sid}: unknown (closed, expired or never opened)")
        s.touched = time.monotonic()
        return s

    def _codes(self, body: ChunkIn) -> list[int]:
        if (body.codes is None) == (body.frame is None):
            raise _bad("chunk", "give exactly one of 'codes' and 'frame'")
        if body.frame is not None:
            return self.codec.encode(_decode_image(body.frame))
        n, k = self.codec.tokens_per_frame, self.codec.codebook_size
        if len(body.codes) != n:
            raise _bad(
                "chunk.codes",
                f"expected {n} codes (grid {self.codec.grid}^2), got {len(body.codes)}",
            )
        bad = [c for c in body.codes if not 0 <= c < k]
        if bad:
            raise _bad("chunk.codes", f"code {bad[0]} outside the codebook [0, {k})")
        return list(body.codes)

    @api.post("/sessions/{sid}/chunk")
    async def chunk(self, sid: str, body: ChunkIn) -> dict:
        s = self._session(sid)
        if body.end <= body.start:
            raise _bad("chunk.end", f"{body.end:g} must be after start {body.start:g}")
        codes = self._codes(body)
        async with s.lock:  # one chunk at a time per stream, in order
            if body.start < s.last_end - EPS:
                raise _bad(
                    "chunk.start",
                    f"{body.start:g} is before the previous chunk's end {s.last_end:g}",
                )
            step_i = len(s.episode.steps)
            prompt = s.episode.add_chunk(Chunk(body.start, body.end, codes))
            try:
                ids, lps = await self.engine.decide.remote(
                    prompt,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    seed=request_seed(self.seed, s.index, 0, step_i),
                )
            except (RayError, RuntimeError) as e:  # the stream cannot continue without it
                self.sessions.pop(sid, None)
                raise HTTPException(503, f"session {sid} closed: the engine failed: {e}") from None
            step = s.episode.add_decision(ids, lps)
            s.last_end = body.end
        return {"decision": step.decision, "text": step.text, "time": step.time, "raw": step.raw}

    @api.delete("/sessions/{sid}")
    async def close(self, sid: str) -> dict:
        s = self._session(sid)
        del self.sessions[sid]
        steps = s.episode.steps
        return {
            "id": sid,
            "steps": len(steps),
            "responses": [
                {"time": x.time, "text": x.text} for x in steps if x.decision == "response"
            ],
        }


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application (also the RayService's `import_path` builder); args: APP_ARGS."""
    from streampro.cluster.resources import actor_options

    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"unknown app argument(s) {unknown}; known: {sorted(APP_ARGS)}")
    a = {k: type(v)(args[k]) if k in args else v for k, v in APP_ARGS.items()}
    if not a["checkpoint"]:
        raise ValueError("app argument 'checkpoint' (HF folder of the policy) is required")
    if a["engine"] not in ("vllm", "hf"):
        raise ValueError(f"engine must be 'vllm' or 'hf', got {a['engine']!r}")
    lo, hi = a["min_replicas"], max(a["max_replicas"], a["min_replicas"])
    scaling: dict[str, Any] = (
        {"num_replicas": lo}
        if lo == hi
        else {
            "autoscaling_config": {
                "min_replicas": lo,
                "max_replicas": hi,
                "target_ongoing_requests": 16,
            }
        }
    )
    engine = PolicyEngine.options(
        ray_actor_options=actor_options(
            "serve", num_cpus=a["num_cpus"], num_gpus=a["num_gpus"], custom=a["role_resources"]
        ),
        max_ongoing_requests=a["max_num_seqs"],
        **scaling,
    ).bind(
        a["checkpoint"],
        engine=a["engine"],
        dtype=a["dtype"],
        kv_cache_gb=a["kv_cache_gb"],
        gpu_memory_utilization=a["gpu_memory_utilization"],
        enforce_eager=a["enforce_eager"],
        max_num_seqs=a["max_num_seqs"],
        seed=a["seed"],
    )
    return StreamPolicy.options(num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
        engine,
        model_path=a["checkpoint"],
        window_turns=a["window_turns"],
        max_answer_tokens=a["max_answer_tokens"],
        patch_grid=a["patch_grid"],
        codebook_size=a["codebook_size"],
        temperature=a["temperature"],
        seed=a["seed"],
        max_sessions=a["max_sessions"],
        session_ttl_s=a["session_ttl_s"],
    )


def app_args(cfg: Any, checkpoint: str) -> dict[str, Any]:
    """build_app arguments from a Config (the one place that unpacks it)."""
    s, r = cfg.serve, cfg.rollout
    return {
        "checkpoint": checkpoint,
        "engine": s.engine,
        "dtype": cfg.policy.dtype,
        "window_turns": cfg.data.window_turns,
        "max_answer_tokens": r.max_answer_tokens,
        "patch_grid": cfg.data.patch_grid,
        "codebook_size": cfg.data.codebook_size,
        "temperature": s.temperature,
        "seed": cfg.run.seed,
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "num_cpus": s.num_cpus,
        "num_gpus": s.num_gpus,
        "role_resources": cfg.cluster.role_resources,
        "kv_cache_gb": r.kv_cache_gb,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        "enforce_eager": r.enforce_eager,
        "max_num_seqs": r.max_num_seqs,
        "max_sessions": s.max_sessions,
        "session_ttl_s": s.session_ttl_s,
    }


def main(cfg: Any, args: argparse.Namespace) -> int:
    """`streampro serve`: deploy on the local Ray (or cluster.address) and serve until Ctrl-C."""
    from streampro.cluster.local import init_from_config, is_attach
    from streampro.tiny import policy_path

    if cfg.data.codec != "patch":
        raise UserError(f"data.codec={cfg.data.codec!r}: serving supports the 'patch' codec only")
    checkpoint = (
        args.checkpoint
        or cfg.serve.checkpoint
        or policy_path(cfg.policy, codebook_size=cfg.data.codebook_size)
    )
    if not (Path(checkpoint) / "config.json").is_file():
        raise UserError(
            f"--checkpoint {checkpoint}: not a Hugging Face model folder (no config.json)"
        )
    try:
        app = build_app(app_args(cfg, str(Path(checkpoint).resolve())))
    except ValueError as e:
        raise UserError(f"serve: {e}") from None
    init_from_config(cfg.cluster)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    print(f"serving {checkpoint} at http://{cfg.serve.host}:{cfg.serve.port}/sessions", flush=True)
    if args.detach and is_attach(cfg.cluster.address):
        return 0  # the application lives on in the cluster
    if args.detach:
        print(
            "streampro serve: a local Ray ends with this process; serving until Ctrl-C",
            file=sys.stderr,
        )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
        return 0
