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


def _never_block_in_gc() -> None:
    """A pyzmq context the GC collects blocks forever in term() while any of its sockets is
    still held somewhere (seen in CI, inside gc.collect() mid-session, even with linger 0). A
    collected context closes the sockets it knows with linger 0 and is never terminated: the
    test process leaks its I/O thread instead of hanging."""
    import zmq

    def __del__(self) -> None:
        if getattr(self, "_shadow", False) or self.closed:
            return
        for sock in list(getattr(self, "_sockets", None) or ()):
            try:
                sock.close(linger=0)
            except zmq.ZMQError:
                pass

    zmq.Context.__del__ = __del__


_never_block_in_gc()


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> str:
    """The default tiny policy, built once into a session cache folder."""
    from streampro.config import PolicyConfig
    from streampro.tiny import policy_path

    cfg = PolicyConfig(cache_dir=str(tmp_path_factory.mktemp("models")))
    return policy_path(cfg, seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray shared by every test that needs one (started once: it costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,  # logical CPUs: more actors than cores, as tests are small
            # the per-role custom resources, as cluster.local.init_ray offers them
            resources={"rollout": 1.0, "learner": 1.0, "reward": 1.0, "serve": 1.0},
            include_dashboard=False,
            namespace="streampro-tests",
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "DS_ACCELERATOR": "cpu",
                    "VLLM_CPU_KVCACHE_SPACE": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            },
        )
    yield ray
    ray.shutdown()


# ---- data layer fixtures -------------------------------------------
SMOKE_SYNTH = {"per_task": 1, "width": 64, "height": 64, "min_duration": 20, "max_duration": 24}


@pytest.fixture(scope="session")
def synth_smoke(tmp_path_factory) -> Path:
    """A tiny StreamPro-Synth set, built once: ROOT/{train,val,test}/manifest.{jsonl,parquet}
    + videos/ (one sample per task and split, 64x64, 20-24 s). Returns ROOT."""
    from streampro.config import SynthConfig
    from streampro.data.synth import synth_split

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(out=str(root), **SMOKE_SYNTH)
    for split in ("train", "val", "test"):
        synth_split(cfg, split=split, out=root / split, progress=False)
    return root


@pytest.fixture(scope="session")
def synth_smoke_settings() -> dict:
    """The SynthConfig fields synth_smoke was built with (to rebuild or extend it)."""
    return dict(SMOKE_SYNTH)


# ---- end of data layer fixtures ------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fake autoscaling cluster's test before any test starts the shared local Ray:
    with the session's Ray (and its Serve actors) alive beside it, a freshly started fake node
    lost its actor before it ran (seen twice in CI; the test passes alone)."""
    items.sort(key=lambda it: 0 if it.nodeid.startswith("tests/test_cluster_autoscale.py") else 1)


@pytest.fixture
def learner_spec():
    """`learner_spec(objective, *overrides)`: a LearnerSpec from the schema plus dotlist
    overrides, in fp32 with micro-batches counted in rows (the learner tests' baseline)."""
    from streampro.config import load_config
    from streampro.learners.worker import LearnerSpec

    def make(objective: str, *overrides: str) -> LearnerSpec:
        base = ["learner.precision=fp32", "learner.micro_batch_tokens=0"]
        return LearnerSpec.from_config(load_config(None, [*base, *overrides]), objective=objective)

    return make
