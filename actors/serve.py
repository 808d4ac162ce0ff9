"""Ray Serve application of a policy: live streams over HTTP, one decision per chunk.

Three deployments (the API itself is in serve_api.py):

    StreamIngress  xN   HTTP /v1 + the browser page; validates, decodes images in threads
    SessionStore   x1   every session's log (question, chunks, decisions); expires idle ones
    PolicyEngine   xM   vLLM (or transformers 'hf'): a prompt in, one decision out; autoscaled

Ingress replicas are interchangeable: each replays a session's log from the store into a
`StreamEpisode` (the rollout's dialogue code, windowed as configured), so any replica
continues any session. A session's engine requests carry its id as Serve's multiplexed model
id, so they return to the engine replica whose prefix cache holds the session.

    streampro serve --checkpoint DIR [--port P]     # or the RayService in cluster/kuberay/
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import serve

from streampro.errors import UserError

APP_NAME = "streampro"
_STARTED: dict[str, int | None] = {"port": None}  # Serve started by local_deployment

# Arguments of `build_app` (the RayService's serveConfigV2 `args`) and their defaults.
APP_ARGS: dict[str, Any] = {
    "checkpoint": "",
    "engine": "vllm",
    "dtype": "float32",
    "window_turns": 200,
    "window_slide": 0,
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
    "ingress_replicas": 1,
    "max_sessions": 1024,
    "max_inflight": 64,
    "session_ttl_s": 3600.0,
    "expire_every_s": 10.0,
    "retry_after_s": 1,
    "max_body_bytes": 8 << 20,
    "max_chunks_per_request": 64,
    "max_image_pixels": 4096 * 4096,
    "max_question_chars": 2000,
    "decode_threads": 4,
    "auth_token": "",
    "auth_token_env": "STREAMPRO_SERVE_TOKEN",
}


def _engine_app(a: dict[str, Any]) -> Any:
    from streampro.actors.serve_engine import PolicyEngine
    from streampro.cluster.resources import actor_options

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
    return PolicyEngine.options(
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


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application (also the RayService's `import_path` builder); args: APP_ARGS."""
    from streampro.actors.serve_api import StreamIngress
    from streampro.actors.serve_ingress import IngressSettings
    from streampro.actors.serve_sessions import SessionStore

    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise ValueError(f"unknown app argument(s) {unknown}; known: {sorted(APP_ARGS)}")
    a = {k: type(v)(args[k]) if k in args else v for k, v in APP_ARGS.items()}
    if not a["checkpoint"]:
        raise ValueError("app argument 'checkpoint' (HF folder of the policy) is required")
    if a["engine"] not in ("vllm", "hf"):
        raise ValueError(f"engine must be 'vllm' or 'hf', got {a['engine']!r}")
    if a["ingress_replicas"] < 1 or a["max_sessions"] < 1 or a["max_inflight"] < 1:
        raise ValueError("ingress_replicas, max_sessions and max_inflight must be >= 1")
    store = SessionStore.options(ray_actor_options={"num_cpus": 0.1}).bind(
        max_sessions=a["max_sessions"],
        ttl_s=a["session_ttl_s"],
        expire_every_s=a["expire_every_s"],
    )
    fields = set(IngressSettings.__dataclass_fields__)
    settings = IngressSettings(
        model_path=a["checkpoint"],
        max_cached=a["max_sessions"],
        ttl_s=a["session_ttl_s"],
        **{k: v for k, v in a.items() if k in fields},
    )
    return StreamIngress.options(
        num_replicas=a["ingress_replicas"], ray_actor_options={"num_cpus": 0.1}
    ).bind(_engine_app(a), store, settings)


def app_args(cfg: Any, checkpoint: str) -> dict[str, Any]:
    """build_app arguments from a Config (the one place that unpacks it)."""
    s, r = cfg.serve, cfg.rollout
    return {
        "checkpoint": checkpoint,
        "engine": s.engine,
        "dtype": cfg.policy.dtype,
        "window_turns": cfg.data.window_turns,
        "window_slide": int(getattr(cfg.data, "window_slide", 0) or 0),
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
        "ingress_replicas": s.ingress_replicas,
        "max_sessions": s.max_sessions,
        "max_inflight": s.max_inflight,
        "session_ttl_s": s.session_ttl_s,
        "expire_every_s": s.expire_every_s,
        "retry_after_s": s.retry_after_s,
        "max_body_bytes": s.max_body_bytes,
        "max_chunks_per_request": s.max_chunks_per_request,
        "max_image_pixels": s.max_image_pixels,
        "max_question_chars": s.max_question_chars,
        "decode_threads": s.decode_threads,
        "auth_token": s.auth_token,
        "auth_token_env": s.auth_token_env,
    }


def resolve_checkpoint(cfg: Any, checkpoint: str | None) -> str:
    """--checkpoint, else serve.checkpoint, else the configured policy; must be an HF folder."""
    from streampro.hf_policy import resolve_policy

    if cfg.data.codec != "patch":
        raise UserError(f"data.codec={cfg.data.codec!r}: serving supports the 'patch' codec only")
    path = checkpoint or cfg.serve.checkpoint or resolve_policy(cfg.policy, seed=cfg.run.seed)
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"--checkpoint {path}: not a Hugging Face model folder (no config.json)")
    return str(Path(path).resolve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_deployment(cfg: Any, checkpoint: str, *, overrides: dict | None = None) -> Iterator[str]:
    """Deploy the app on the local Ray (started if needed) for the block; yields its base URL.

    When Serve already runs in this Ray (a test, a notebook) the app is added beside the
    others under its own name and route prefix; otherwise Serve starts on a free loopback
    port. The app is deleted on exit."""
    from streampro.cluster.local import init_from_config

    init_from_config(cfg.cluster)
    try:
        app = build_app({**app_args(cfg, checkpoint), **(overrides or {})})
    except ValueError as e:
        raise UserError(f"serve: {e}") from None
    name = f"streampro-{uuid.uuid4().hex[:8]}"
    port = _serve_port()
    if port is None:
        port = _STARTED["port"] = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        serve.delete(name)


def _serve_port() -> int | None:
    """The HTTP port of the Serve instance this process started, if it still runs."""
    import ray

    return _STARTED["port"] if ray.is_initialized() else None


def main(cfg: Any, args: argparse.Namespace) -> int:
    """`streampro serve`: deploy on the local Ray (or cluster.address) and serve until Ctrl-C."""
    from streampro.cluster.local import init_from_config, is_attach

    checkpoint = resolve_checkpoint(cfg, args.checkpoint)
    port = args.port if getattr(args, "port", None) else cfg.serve.port
    try:
        app = build_app(app_args(cfg, checkpoint))
    except ValueError as e:
        raise UserError(f"serve: {e}") from None
    init_from_config(cfg.cluster)
    serve.start(http_options={"host": cfg.serve.host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{cfg.serve.host}:{port}"
    print(f"serving {checkpoint} at {url}/v1 (page: {url}/ui/, docs: {url}/docs)", flush=True)
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
