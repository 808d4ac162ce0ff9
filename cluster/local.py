"""Start or attach Ray: the first thing every command that uses actors does.

- address '' and no RAY_ADDRESS: start a local single-node Ray sized to the machine (or to
  num_cpus/num_gpus), dashboard on 127.0.0.1 only, offering the per-role custom resources.
- address '' with RAY_ADDRESS set (the case inside a job sent by `streampro submit`), 'auto',
  'ray://host:10001' or 'host:6379': attach to that cluster; it provides its own resources.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

try:  # Ray 2.60's token auth lives in a private module: a Ray without it has no token auth
    from ray._private.authentication import authentication_token_setup as _token_auth
except ImportError:
    _token_auth = None

import math
import time

from streampro.cluster.fit import Capacity, check_fit, needed_cpus, role_demands
from streampro.cluster.resources import LOCAL_ROLE_RESOURCES, ROLES
from streampro.config import ClusterConfig, Config
from streampro.errors import UserError

log = logging.getLogger(__name__)

# Environment every local worker gets (actors start in fresh processes).
WORKER_ENV = {
    "DS_ACCELERATOR": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def is_attach(address: str) -> bool:
    """True when `address` (or RAY_ADDRESS, for an empty one) names an existing cluster."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(
    *,
    address: str = "",
    num_cpus: int = 0,
    num_gpus: int = 0,
    dashboard: bool = False,
    namespace: str = "streampro",
    role_resources: dict[str, float] | None = None,
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
) -> None:
    """Start a local Ray or attach to one (see the module doc). A no-op if Ray is already up
    in this process (tests, or a caller that started it), so every command may call it.

    num_cpus/num_gpus 0 = detect. role_resources None = one unit of every role's custom
    resource ({} = none). runtime_env None = the CPU env vars above for local workers.
    """
    if ray.is_initialized():
        return
    if is_attach(address):
        _attach(address, namespace, runtime_env, log_to_driver)
        return
    env = {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}
    ray.init(
        address="local",
        num_cpus=num_cpus or None,
        num_gpus=num_gpus or None,
        resources=dict(LOCAL_ROLE_RESOURCES if role_resources is None else role_resources),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",  # never exposed beyond this machine
        namespace=namespace,
        runtime_env=runtime_env if runtime_env is not None else {"env_vars": env},
        log_to_driver=log_to_driver,
    )


def enable_token_auth_if_available() -> bool:
    """Ray 2.60 token auth: a cluster started with a token (~/.ray/auth_token, RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH) rejects clients that do not send it, and clients only send it when
    RAY_AUTH_MODE=token. Enable it the way `ray start` does, unless RAY_AUTH_MODE is set."""
    if _token_auth is None:
        return False
    return bool(_token_auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def _attach(
    address: str, namespace: str, runtime_env: dict[str, Any] | None, log_to_driver: bool
) -> None:
    enable_token_auth_if_available()
    try:
        ray.init(
            address=address or None,
            namespace=namespace,
            runtime_env=runtime_env,
            log_to_driver=log_to_driver,
        )
    except (ConnectionError, RuntimeError) as e:
        where = address or os.environ.get("RAY_ADDRESS", "")
        raise UserError(
            f"cluster.address={where!r}: cannot connect to Ray: {str(e).splitlines()[0]}"
        ) from None
    missing = [r for r in ROLES if r not in ray.cluster_resources()]
    if missing:
        # Fine under an autoscaler (nodes with them start on demand); otherwise actors wait.
        log.warning(
            "the Ray cluster offers no %s custom resource(s): unless an autoscaler adds "
            "nodes with them, set cluster.role_resources=false",
            ", ".join(missing),
        )


def init_cluster(cfg: Config, stage: str) -> None:
    """Start or attach Ray for `stage` (sft, grpo, train, eval), then make sure its roles fit
    (`cluster.fit`), so a role that cannot be placed stops the job in one line instead of
    hanging. A local Ray of `cluster.num_cpus=0` is sized to the machine or, when the roles
    declare more, to them (they take turns on the cores); attached to a cluster, the check
    waits up to `cluster.placement_timeout_s` for an autoscaler to add nodes."""
    phases = role_demands(cfg, stage)
    c = cfg.cluster
    num_cpus = c.num_cpus
    if not num_cpus and not is_attach(c.address) and not ray.is_initialized():
        num_cpus = max(os.cpu_count() or 1, math.ceil(needed_cpus(phases)))
    init_ray(
        address=c.address,
        num_cpus=num_cpus,
        num_gpus=c.num_gpus,
        dashboard=c.dashboard,
        namespace=c.namespace,
    )
    deadline = time.monotonic() + (c.placement_timeout_s if is_attach(c.address) else 0.0)
    while True:
        try:
            check_fit(phases, capacity(), stage=stage)
            return
        except UserError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def capacity() -> Capacity:
    """What the running Ray offers: totals over its alive nodes, and the largest node."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return Capacity(
        cpus=sum(n.get("CPU", 0.0) for n in nodes),
        gpus=sum(n.get("GPU", 0.0) for n in nodes),
        node_cpus=max((n.get("CPU", 0.0) for n in nodes), default=0.0),
        node_gpus=max((n.get("GPU", 0.0) for n in nodes), default=0.0),
    )


def init_from_config(
    cluster_cfg: ClusterConfig, *, runtime_env: dict[str, Any] | None = None
) -> None:
    """init_ray from a ClusterConfig (the one place that unpacks it)."""
    init_ray(
        address=cluster_cfg.address,
        num_cpus=cluster_cfg.num_cpus,
        num_gpus=cluster_cfg.num_gpus,
        dashboard=cluster_cfg.dashboard,
        namespace=cluster_cfg.namespace,
        runtime_env=runtime_env,
    )
