"""Autoscaling shown on one machine with Ray's fake multi-node provider.

The provider Ray's own autoscaler tests use starts each "node" as a real raylet on this machine.
`FakeAutoscalingCluster` starts such a head (own temp dir, free ports, its own process group,
so it never touches another Ray here; `ray stop` would stop them all) with one worker type per
role, like the KubeRay worker groups. `autoscale_demo` then creates rollout-like actors that
request the "rollout" resource: the head cannot host them, so the autoscaler starts rollout
nodes; once the actors are killed the idle nodes are removed. Node counts are recorded.

    streampro bench autoscale --out runs/bench-autoscale.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import ray
from ray._private import services
from ray.actor import ActorHandle

from streampro.cluster.resources import ROLES, actor_options
from streampro.config import Config
from streampro.timeouts import free_ports

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's fixed head id (autoscaler v2)
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def fake_cluster_config(
    *,
    head_cpus: int,
    node_types: dict[str, dict[str, float]],
    max_workers: int,
    idle_timeout_s: float,
    gcs_address: str,
) -> dict[str, Any]:
    """Cluster-launcher config for the fake provider: node type name -> its resources."""
    types: dict[str, Any] = {
        "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    }
    for name, res in node_types.items():
        types[name] = {
            "resources": {"object_store_memory": 100 * (1 << 20), **res},
            "node_config": {},
            "min_workers": 0,
            "max_workers": max_workers,
        }
    return {
        "cluster_name": "streampro-fake",
        "max_workers": max_workers * len(node_types),
        # "external" + the fake provider's class: Ray 2.60's wheel lacks the example.yaml that
        # type "fake_multinode" loads its defaults from; the provider itself is the same.
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    """A head with autoscaler v2 and the fake provider; worker types = one per role."""

    def __init__(
        self,
        *,
        head_cpus: int = 1,
        node_cpus: float = 1.0,
        max_nodes_per_role: int = 3,
        idle_timeout_s: float = 3.0,
        roles: tuple[str, ...] = ("rollout", "reward"),
    ) -> None:
        self.ip: str = services.get_node_ip_address()
        # the head's daemons listen on every interface: free there, not only on loopback
        self.gcs_port, self.dash_port, *self._ports = free_ports(8, host="0.0.0.0")
        self.address = f"{self.ip}:{self.gcs_port}"
        self.temp_dir = tempfile.mkdtemp(prefix="spr-as-", dir="/tmp")  # short: unix sockets
        node_types = {f"{r}-node": {"CPU": node_cpus, r: 1.0} for r in roles}
        self.config = fake_cluster_config(
            head_cpus=head_cpus,
            node_types=node_types,
            max_workers=max_nodes_per_role,
            idle_timeout_s=idle_timeout_s,
            gcs_address=self.address,
        )
        self._pgid: int | None = None

    def start(self) -> Self:
        cfg_path = Path(self.temp_dir) / "autoscaler.json"
        cfg_path.write_text(json.dumps(self.config))
        client, agent, agent_grpc, renv, metrics, nm = self._ports
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--autoscaling-config={cfg_path}",
            f"--port={self.gcs_port}",
            f"--num-cpus={self.config['available_node_types']['ray.head.default']['resources']['CPU']}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={renv}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={nm}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # a throwaway cluster of this machine: no token auth, so its fake nodes need none
        env.update(
            RAY_AUTH_MODE="disabled",
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            RAY_enable_autoscaler_v2="1",
            RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
            RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
        )
        proc = subprocess.Popen(
            cmd,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._pgid = proc.pid  # session leader: the head's daemons and the fake nodes stay in it
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed:\n{out[-3000:]}")
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        """Kill the head's process group (SIGTERM, then SIGKILL) and remove its temp dir."""
        if self._pgid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not _signal_group(self._pgid, sig, timeout_s):
                    break
            self._pgid = None
        subprocess.run(["rm", "-rf", self.temp_dir], check=False)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int, timeout_s: float) -> bool:
    """Send sig to the group; True if it is still alive after timeout_s."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


class RolloutLike:
    """Stands in for a rollout actor: the same resource request, no engine."""

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def node_counts() -> dict[str, int]:
    """Alive worker nodes per role (by the role resource they offer) of the connected cluster."""
    counts = {r: 0 for r in ROLES}
    for node in ray.nodes():
        if node["Alive"]:
            for role in ROLES:
                if node["Resources"].get(role):
                    counts[role] += 1
    return counts


def autoscale_demo(
    address: str,
    *,
    num_actors: int = 2,
    actor_cpus: float = 1.0,
    timeout_s: float = 180.0,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Connect to `address`, scale the rollout group up with pending actors and back down.

    Returns the node-count timeline ({"t", "phase", role: count}) and a summary.
    """
    ray.init(address=address, namespace="streampro-autoscale", log_to_driver=False)
    t0 = time.monotonic()
    timeline: list[dict[str, Any]] = []

    def sample(phase: str) -> dict[str, int]:
        counts = node_counts()
        last = timeline[-1] if timeline else {}
        if last.get("phase") != phase or any(last.get(r) != c for r, c in counts.items()):
            timeline.append({"t": round(time.monotonic() - t0, 2), "phase": phase, **counts})
        return counts

    try:
        sample("start")
        opts = actor_options("rollout", num_cpus=actor_cpus, custom=True)
        actor_cls = ray.remote(RolloutLike).options(**opts)
        actors: list[ActorHandle] = [actor_cls.remote() for _ in range(num_actors)]
        refs = [a.node_id.remote() for a in actors]
        while len(ray.wait(refs, num_returns=len(refs), timeout=poll_s)[0]) < len(refs):
            sample("scale-up")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"actors not placed after {timeout_s:.0f} s: {timeline[-1]}")
        t_up = time.monotonic() - t0
        peak = sample("placed")
        actor_nodes = sorted(set(ray.get(refs)))
        for a in actors:
            ray.kill(a)
        t_kill = time.monotonic()
        while sample("scale-down")["rollout"] > 0:
            if time.monotonic() - t_kill > timeout_s:
                raise TimeoutError(f"idle rollout nodes not removed after {timeout_s:.0f} s")
            time.sleep(poll_s)
        t_down = time.monotonic() - t_kill
    finally:
        ray.shutdown()
    return {
        "num_actors": num_actors,
        "actor_cpus": actor_cpus,
        "actor_nodes": len(actor_nodes),
        "peak": peak,
        "final": {k: v for k, v in timeline[-1].items() if k in ROLES},
        "seconds_to_place": round(t_up, 2),
        "seconds_to_remove_idle": round(t_down, 2),
        "timeline": timeline,
    }


def run(cfg: Config, out: str) -> dict[str, Any]:
    """`streampro bench autoscale`: the demo on a fresh fake cluster (the CLI writes `out`)."""
    # 10 s idle timeout: with 3 s a freshly started node was once removed before the actor
    # placed on it had started (CI, fresh clone: "actor cancelled before it started running")
    with FakeAutoscalingCluster(
        head_cpus=1, node_cpus=1.0, max_nodes_per_role=3, idle_timeout_s=10.0
    ) as cluster:
        result = autoscale_demo(cluster.address, num_actors=2, actor_cpus=1.0)
    result["cluster"] = {"head_cpus": 1, "node_types": cluster.config["available_node_types"]}
    return result
