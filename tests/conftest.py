"""Shared fixtures: one local Ray and one tiny policy per test session (they are slow to start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    """The default tiny policy, built once into a session cache folder."""
    from streampro.config import PolicyConfig
    from streampro.tiny import policy_path

    cfg = PolicyConfig(cache_dir=str(tmp_path_factory.mktemp("models")))
    return policy_path(cfg)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray shared by every test that needs one (started once: it costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,  # logical CPUs: more actors than cores, as tests are small
            include_dashboard=False,
            namespace="streampro-tests",
            log_to_driver=False,
            runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
                                      "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()
