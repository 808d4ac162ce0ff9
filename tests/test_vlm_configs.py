"""The real-model configs: the paper's settings, one 8-GPU node, and one-line refusals at load
for what they lack (an llm judge without an endpoint; images for a text policy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streampro.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
VLM_CONFIGS = ["configs/qwen2_5_vl_3b.yaml", "configs/qwen3_vl_4b.yaml"]
READY = ["reward.llm_url=http://judge:8000/v1"]


@pytest.mark.parametrize("name", VLM_CONFIGS)
def test_paper_settings_and_one_node_placement(name):
    cfg = load_config(REPO / name, READY)
    assert cfg.sft.lr == 1e-5 and cfg.grpo.lr == 1e-6
    assert (cfg.grpo.batch_samples, cfg.grpo.group_size, cfg.rollout.temperature) == (16, 8, 1.0)
    learner_gpus = cfg.learner.num_ranks * cfg.learner.num_gpus
    rollout_gpus = cfg.rollout.num_actors * cfg.rollout.num_gpus * cfg.rollout.tensor_parallel_size
    assert learner_gpus + rollout_gpus == cfg.cluster.num_gpus == 8
    assert cfg.rollout.block_size % 32 == 0  # vLLM with images needs whole 32-token blocks
    assert cfg.data.codec == "image"
    assert (cfg.reward.acc_judge, cfg.reward.traj_judge) == ("llm", "llm")
    # whole GPUs on each side: NCCL sync, not colocated, not the disk
    assert cfg.rollout.weight_transfer_backend == "nccl" and cfg.cluster.colocate is False


@pytest.mark.parametrize("name", VLM_CONFIGS)
def test_refused_at_load_in_one_line(name, monkeypatch):
    monkeypatch.delenv("STREAMPRO_JUDGE_URL", raising=False)
    with pytest.raises(ConfigError, match="needs reward.llm_url"):
        load_config(REPO / name)
    with pytest.raises(ConfigError, match="needs a vision-language policy"):
        load_config(REPO / name, READY + ["policy.name_or_path=tiny"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(REPO / name, READY + ["rollout.block_size=16"])
    monkeypatch.setenv("STREAMPRO_JUDGE_URL", "http://judge:8000/v1")
    assert load_config(REPO / name).reward.llm_url == "http://judge:8000/v1"


def test_tiny_vl_config_loads_as_shipped():
    cfg = load_config(REPO / "configs/tiny_vl.yaml")
    assert (cfg.policy.name_or_path, cfg.data.codec) == ("tiny-vl", "image")


def test_llm_judge_without_endpoint_fails_before_any_work():
    with pytest.raises(ConfigError, match="reward.llm_url"):
        load_config(None, ["reward.traj_judge=llm"])
    out = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "report", "nowhere", "reward.acc_judge=llm"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "reward.llm_url" in out.stderr


def test_real_vlm_configs_fit_memory_by_default(monkeypatch):
    """The 3B and 4B configs keep the vision tower frozen and checkpoint activations unless a
    user opts out."""
    monkeypatch.setenv("STREAMPRO_JUDGE_URL", "http://127.0.0.1:9")
    for name in ("qwen2_5_vl_3b", "qwen3_vl_4b"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.learner.freeze_vision and cfg.learner.gradient_checkpointing, name
