"""Ray Serve application of a policy: live streams over HTTP, one decision per chunk.

Three deployments (the API itself is in serve_api.py):

    StreamIngress  xN   HTTP /v1 + the browser page; validates, decodes images in threads
    SessionStore   x1   every session's log (question, chunks, decisions); expires idle ones
    PolicyEngine   xM   vLLM (or transformers 'hf'): a prompt in, one decision out; autoscaled

Ingress replicas are interchangeable: each replays a session's log from the store into a
`StreamEpisode` (the rollout's dialogue code, windowed as configured), so any replica
continues any session. VLM policies (data.codec=image) get each frame resized by the data
pipeline's `ImageCodec`; the log keeps the frames a window can still hold (PNG), and each
engine request carries its context's frames (actors/serve/ingress.py, serve_sessions.py). A session's engine requests carry its id as Serve's multiplexed model
id, so they return to the engine replica whose prefix cache holds the session.

    streampro serve --checkpoint DIR [--port P]     # or the RayService in cluster/kuberay/

Settings come from the Config alone: `serve_app(cfg, checkpoint)` hands the ingress
`cfg.serve` and `cfg.data` themselves; the RayService's `build_app(args)` reads its `args` as
config sections (`{"serve": {...}, "data": {...}}`) merged onto the same schema.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import ray
from ray import serve
from ray.serve.config import BackpressureConfig
from transformers import AutoConfig

from streampro.actors.api import WorkerSpec
from streampro.actors.serve.api import StreamIngress
from streampro.actors.serve.engine import PolicyEngine, hf_refuses_vlm
from streampro.actors.serve.limits import replica_share
from streampro.actors.serve.sessions import SessionStore
from streampro.cluster.local import init_from_config, is_attach
from streampro.cluster.resources import actor_options
from streampro.config import Config, ConfigError, load_config
from streampro.errors import UserError
from streampro.hf_policy import is_vlm, resolve_policy
from streampro.timeouts import free_port

APP_NAME = "streampro"
INGRESS_ONGOING = 1024  # requests an ingress replica takes at least (sessions, health, chunks)
_STARTED: dict[str, int | None] = {"port": None}  # Serve started by local_deployment


class Deployment(Protocol):
    """What `@serve.deployment` makes of a class (Ray Serve's own type is not visible here)."""

    def options(self, **options: Any) -> Deployment: ...
    def bind(self, *args: Any, **kwargs: Any) -> Any: ...


def deployment(cls: type) -> Deployment:
    """A class decorated with `@serve.deployment`, seen as the deployment it became."""
    return cast(Deployment, cls)


def _engine_app(cfg: Config, checkpoint: str) -> Any:
    s, r = cfg.serve, cfg.rollout
    lo, hi = s.min_replicas, max(s.max_replicas, s.min_replicas)
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
    return (
        deployment(PolicyEngine)
        .options(
            ray_actor_options=actor_options(
                "serve", num_cpus=s.num_cpus, num_gpus=s.num_gpus, custom=cfg.cluster.role_resources
            ),
            max_ongoing_requests=r.max_num_seqs,
            **scaling,
        )
        .bind(WorkerSpec.of(cfg, checkpoint), engine=s.engine)
    )


def check_checkpoint(cfg: Config, checkpoint: str) -> None:
    """The policy folder against the codec and engine, in one line before any deployment: the
    image codec needs a VLM, the 'hf' engine a text model. A folder this process cannot see
    (a RayService path on the cluster) is left to the replicas."""
    if not (Path(checkpoint) / "config.json").is_file():
        return

    vlm = is_vlm(AutoConfig.from_pretrained(checkpoint))
    if cfg.data.codec == "image" and not vlm:
        raise UserError(
            f"--checkpoint {checkpoint}: a text model, but data.codec=image needs a "
            "vision-language policy (use data.codec=patch)"
        )
    if vlm and cfg.serve.engine == "hf":
        raise UserError(hf_refuses_vlm(checkpoint))


def serve_app(cfg: Config, checkpoint: str) -> Any:
    """The Serve application of a policy folder under a Config (the one place that reads it):
    the ingress takes `cfg.serve` and `cfg.data` themselves, the engines their flat knobs."""

    s = cfg.serve
    check_checkpoint(cfg, checkpoint)
    if cfg.decode.response_bias:  # a baseline for scoring, not a way to serve a policy
        raise ConfigError(
            "decode.response_bias is an evaluation baseline (streampro eval, train's "
            "decode.bias_sweep); Serve does not apply it: set it to 0"
        )
    store = (
        deployment(SessionStore)
        .options(ray_actor_options={"num_cpus": 0.1})
        .bind(
            max_sessions=s.max_sessions,
            ttl_s=s.session_ttl_s,
            expire_every_s=s.expire_every_s,
            keep_frames=cfg.data.window_turns,  # the most frames a context holds
        )
    )
    # Serve's own queue in front of the ingress is bounded too (429, Retry-After); each
    # replica takes more requests than its in-flight share, so our own 429 answers first.
    share = replica_share(s.max_inflight, s.ingress_replicas)
    return (
        deployment(StreamIngress)
        .options(
            num_replicas=s.ingress_replicas,
            ray_actor_options={"num_cpus": 0.1},
            max_ongoing_requests=max(INGRESS_ONGOING, 2 * share),
            max_queued_requests=s.max_queued_requests,
            backpressure_config=BackpressureConfig(status_code=429, retry_after_s=s.retry_after_s),
        )
        .bind(
            _engine_app(cfg, checkpoint),
            store,
            s,
            cfg.data,
            model_path=checkpoint,
            max_answer_tokens=cfg.rollout.max_answer_tokens,
            seed=cfg.run.seed,
            decode=cfg.decode,  # the checkpoint's streampro_decode.json wins (Ingress)
        )
    )


def config_from_args(args: dict[str, Any]) -> Config:
    """A Config from the RayService's `args`: config sections as in a YAML file, e.g.
    {"serve": {"checkpoint": DIR, "ingress_replicas": 2}, "data": {"window_turns": 200}},
    merged onto the schema (an unknown key or a bad value is a one-line ConfigError)."""
    overrides: list[str] = []

    def walk(key: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{key}.{k}", v)
        else:  # JSON is YAML: the dotlist parser reads the value back with its type
            overrides.append(f"{key}={json.dumps(node)}")

    if not isinstance(args, dict):
        raise ConfigError(f"serve app args: expected config sections, got {type(args).__name__}")
    for k, v in args.items():
        walk(str(k), v)
    sections = {k: v for k, v in args.items() if isinstance(v, dict)}
    checkpoint = sections.get("serve", {}).get("checkpoint")
    if checkpoint and "name_or_path" not in sections.get("policy", {}):
        # the served policy is the checkpoint (so data.codec=image passes the VLM check)
        overrides.insert(0, f"policy.name_or_path={json.dumps(checkpoint)}")
    try:
        return load_config(None, overrides)
    except ConfigError as e:
        raise ConfigError(f"serve app args: {str(e).removeprefix('overrides: ')}") from None


def build_app(args: dict[str, Any]) -> Any:
    """The RayService's `import_path` builder: `args` are config sections (config_from_args)
    and must name serve.checkpoint, the policy's HF folder as the cluster sees it."""
    cfg = config_from_args(args)
    if not cfg.serve.checkpoint:
        raise ConfigError("serve app args: serve.checkpoint (HF folder of the policy) is required")
    return serve_app(cfg, cfg.serve.checkpoint)


def resolve_checkpoint(cfg: Config, checkpoint: str | None) -> str:
    """--checkpoint, else serve.checkpoint, else the configured policy; must be an HF folder."""

    d = cfg.data
    path = checkpoint or cfg.serve.checkpoint
    if not path:
        path = resolve_policy(
            cfg.policy, seed=cfg.run.seed, codebook_size=d.codebook_size, patch_grid=d.patch_grid
        )
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"--checkpoint {path}: not a Hugging Face model folder (no config.json)")
    return str(Path(path).resolve())


@contextlib.contextmanager
def local_deployment(cfg: Config, checkpoint: str) -> Iterator[str]:
    """Deploy the app on the local Ray (started if needed) for the block; yields its base URL.

    When Serve already runs in this Ray (a test, a notebook) the app is added beside the
    others under its own name and route prefix; otherwise Serve starts on a free loopback
    port. The app is deleted on exit."""

    app = serve_app(cfg, checkpoint)  # config errors before Ray starts
    init_from_config(cfg.cluster)
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


def engine_replicas(app: str) -> list[str]:
    """The actor names of an application's live PolicyEngine replicas (namespace 'serve')."""
    prefix = f"SERVE_REPLICA::{app}#PolicyEngine#"  # ReplicaID.to_full_id_str in Ray Serve
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"] for a in named if a["namespace"] == "serve" and a["name"].startswith(prefix)
    )


def kill_engine_replica(app: str) -> str:
    """Kill one engine replica of `app` as a crash would (Serve then starts a new one);
    returns its actor name."""
    names = engine_replicas(app)
    if not names:
        raise UserError(f"serve app {app}: no PolicyEngine replica to kill")
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def _serve_port() -> int | None:
    """The HTTP port of the Serve instance this process started, if it still runs."""

    return _STARTED["port"] if ray.is_initialized() else None


def main(cfg: Config, args: argparse.Namespace) -> int:
    """`streampro serve`: deploy on the local Ray (or cluster.address) and serve until Ctrl-C."""

    checkpoint = resolve_checkpoint(cfg, args.checkpoint)
    port = args.port if getattr(args, "port", None) else cfg.serve.port
    app = serve_app(cfg, checkpoint)
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
