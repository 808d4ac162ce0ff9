"""Autoscaling on one machine (Ray's fake multi-node provider, autoscaler v2): rollout-like
actors that do not fit start rollout nodes; once killed, the idle nodes are removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_fake_cluster_config_has_one_node_type_per_role():
    from streampro.cluster.autoscale import fake_cluster_config

    cfg = fake_cluster_config(
        head_cpus=1,
        node_types={"rollout-node": {"CPU": 1, "rollout": 1}},
        max_workers=3,
        idle_timeout_s=3.0,
        gcs_address="1.2.3.4:5",
    )
    node = cfg["available_node_types"]["rollout-node"]
    assert node["resources"]["rollout"] == 1 and node["max_workers"] == 3
    assert cfg["idle_timeout_minutes"] == pytest.approx(0.05)
    assert cfg["provider"]["gcs_address"] == "1.2.3.4:5"


@pytest.mark.slow
def test_rollout_actors_scale_the_rollout_group_up_and_down(tmp_path):
    out = tmp_path / "autoscale.json"
    r = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "bench", "autoscale", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    # two actors of 1 CPU + {"rollout": 0.001}: the head (no rollout resource) cannot host
    # them and each 1-CPU rollout node holds one, so exactly two rollout nodes start
    assert res["peak"] == {"rollout": 2, "learner": 0, "reward": 0, "serve": 0}
    assert res["actor_nodes"] == 2
    assert res["final"]["rollout"] == 0  # idle nodes removed after the actors died
    counts = [p["rollout"] for p in res["timeline"]]
    top = counts.index(2)
    assert counts[0] == 0 and counts[: top + 1] == sorted(counts[: top + 1])  # up, then ...
    assert counts[top:] == sorted(counts[top:], reverse=True)  # ... down
    assert all(p["reward"] == 0 for p in res["timeline"])  # no demand, no reward nodes
