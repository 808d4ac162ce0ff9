"""Roles that cannot be placed stop a job in one line; each learner rank picks the
accelerator it holds. Pure logic with hand-derived values, plus the CLI as a user runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streampro.cluster.fit import Capacity, RoleDemand, check_fit, needed_cpus, role_demands
from streampro.cluster.local import WORKER_ENV
from streampro.config import LearnerConfig, load_config
from streampro.errors import UserError
from streampro.learners.group import rank_env
from streampro.learners.worker import pick_accelerator

REPO = Path(__file__).resolve().parents[1]
TWO_CPUS = Capacity(cpus=2.0, gpus=0.0, node_cpus=2.0, node_gpus=0.0)


def test_schema_defaults_need_more_cpus_than_two_cores_declare():
    """rollout 1 x 1 CPU + reward 1 x 0.5 + learner 1 x 1 = 2.5 CPUs held at once in GRPO."""
    cfg = load_config(None, [])
    (grpo,) = role_demands(cfg, "grpo")
    assert grpo == [
        RoleDemand("rollout", 1, 1.0, 0.0),
        RoleDemand("reward", 1, 0.5, 0.0),
        RoleDemand("learner", 1, 1.0, 0.0),
    ]
    assert needed_cpus([grpo]) == 2.5
    with pytest.raises(UserError) as e:
        check_fit([grpo], TWO_CPUS, stage="grpo")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("cluster: grpo: learner (1 rank x 1 CPU) does not fit beside rollout")
    assert "2.5 CPU and 0 GPU asked, the cluster has 2 CPU and 0 GPU" in msg


def test_stage_phases_follow_what_runs_at_once():
    cfg = load_config(
        None,
        ["sft.num_cpus=2", "learner.num_ranks=2", "reward.num_actors=0", "rollout.num_actors=2"],
    )
    sft, grpo = role_demands(cfg, "train")  # SFT first (2 ranks x 2 CPUs), then GRPO
    assert sft == [RoleDemand("learner", 2, 2.0, 0.0)]
    assert grpo == [RoleDemand("rollout", 2, 1.0, 0.0), RoleDemand("learner", 2, 1.0, 0.0)]
    assert needed_cpus([sft, grpo]) == 4.0
    assert role_demands(cfg, "eval") == [[RoleDemand("rollout", 2, 1.0, 0.0)]]
    in_process = load_config(None, ["learner.in_process=true"])
    assert [d.role for d in role_demands(in_process, "grpo")[0]] == ["rollout", "reward"]


def test_a_gpu_role_on_a_cluster_without_gpus_is_named():
    cfg = load_config(None, ["learner.num_gpus=1"])
    with pytest.raises(UserError, match=r"^cluster: grpo: learner \(1 rank x 1 CPU \+ 1 GPU\) "):
        check_fit(role_demands(cfg, "grpo"), Capacity(8.0, 0.0, 8.0, 0.0), stage="grpo")
    tp = load_config(None, ["rollout.num_gpus=1", "rollout.tensor_parallel_size=4"])
    assert role_demands(tp, "eval") == [[RoleDemand("rollout", 1, 1.0, 4.0)]]
    with pytest.raises(UserError, match="the largest node has 8 CPU and 2 GPU"):
        check_fit(role_demands(tp, "eval"), Capacity(8.0, 8.0, 8.0, 2.0), stage="eval")
    check_fit(role_demands(tp, "eval"), Capacity(8.0, 8.0, 8.0, 4.0), stage="eval")


def test_accelerator_follows_the_gpus_a_rank_holds():
    assert pick_accelerator(gpus=1, visible_gpus=1) == ("cuda", "nccl")
    assert pick_accelerator(gpus=0.5, visible_gpus=8) == ("cuda", "nccl")
    assert pick_accelerator(gpus=0, visible_gpus=8) == ("cpu", "gloo")  # a CPU rank on a GPU box
    with pytest.raises(UserError, match=r"^learner rank: learner\.num_gpus=1 but this process"):
        pick_accelerator(gpus=1, visible_gpus=0)


def test_local_modes_cpu_default_does_not_reach_a_gpu_rank():
    assert WORKER_ENV["DS_ACCELERATOR"] == "cpu"  # what a local Ray gives every worker
    assert rank_env(LearnerConfig(num_gpus=1))["DS_ACCELERATOR"] == "cuda"  # the rank's own
    assert rank_env(LearnerConfig(num_gpus=0))["DS_ACCELERATOR"] == "cpu"


@pytest.mark.slow
def test_grpo_that_cannot_be_placed_fails_in_one_line_within_a_minute(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streampro.cli",
            "grpo",
            "--config",
            "configs/smoke.yaml",
            "cluster.num_cpus=2",
            f"run.dir={tmp_path / 'run'}",
            f"synth.out={tmp_path / 'synth'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert time.monotonic() - t0 < 60
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "streampro grpo: error:" in line]
    expected = (
        "streampro grpo: error: cluster: grpo: learner (1 rank x 1 CPU) does not fit beside "
        "rollout (1 actor x 1 CPU), reward (1 actor x 0.5 CPU): 2.5 CPU and 0 GPU asked, the "
        "cluster has 2 CPU and 0 GPU (raise cluster.num_cpus / num_gpus, or lower the roles' "
        "num_cpus / num_gpus)"
    )
    assert errors == [expected], r.stderr
    assert "Traceback" not in r.stderr


def test_learner_scores_at_the_engines_precision_unless_told_otherwise():
    from streampro.config import learner_precision, mixed_precision
    from streampro.learners.grpo_loop import check_threshold, rollout_correction

    fp32 = load_config(None, [])
    assert learner_precision(fp32.learner, fp32.policy) == "fp32" and not mixed_precision(fp32)
    assert check_threshold(fp32) == fp32.grpo.logprob_check_max == 1e-3
    assert not rollout_correction(fp32)
    bf16 = load_config(None, ["policy.dtype=bfloat16"])  # auto follows the engines
    assert learner_precision(bf16.learner, bf16.policy) == "bf16" and not mixed_precision(bf16)
    assert check_threshold(bf16) == bf16.grpo.logprob_check_max_bf16 == 5e-2
    mixed = load_config(None, ["learner.precision=bf16"])  # a bf16 learner, fp32 engines
    assert mixed_precision(mixed) and rollout_correction(mixed)
    assert check_threshold(mixed) == 5e-2
    off = load_config(None, ["learner.precision=bf16", "grpo.rollout_correction=none"])
    assert not rollout_correction(off)
    forced = load_config(None, ["grpo.rollout_correction=tis"])
    assert rollout_correction(forced)
    async_mode = load_config(None, ["learner.precision=bf16", "grpo.async_mode=true"])
    assert not rollout_correction(async_mode)  # async already takes vLLM's logprobs as old
    with pytest.raises(UserError, match="grpo.rollout_correction must be one of"):
        load_config(None, ["grpo.rollout_correction=is"])
