"""Colocated mode's ordering (actors/colocate.py) and its GRPO hook, with fake engines."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from streampro.actors.api import WorkerSpec
from streampro.actors.colocate import Colocation
from streampro.cluster.plan import Term, colocated_turns
from streampro.config import Config, ConfigError, load_config
from streampro.learners.grpo_loop import GRPOStep, check_colocation


class FakeEngines:
    """Records every verb; `fail` / `block` make one verb raise or hang."""

    def __init__(self, *, fail: str = "", block: str = "") -> None:
        self.calls: list[str] = []
        self.fail, self.block = fail, block
        self.release = threading.Event()

    def _do(self, verb: str) -> None:
        self.calls.append(verb)
        if verb == self.fail:
            raise RuntimeError(f"{verb} broke")
        if verb == self.block:
            self.release.wait(30)  # a peer that never answers (released at teardown)

    def sleep(self, *, level: int) -> None:
        self._do(f"sleep{level}")

    def wake_up(self, *, tags: list[str]) -> None:
        self._do("wake:" + ",".join(tags))

    def sync_weights(self, *, version: int) -> None:
        self._do(f"sync{version}")


def test_wake_order_weights_then_sync_then_kv_cache() -> None:
    e = FakeEngines()
    c = Colocation(e, level=1, timeout_s=5)
    c.sleep()
    assert c.wake(version=3) is True
    assert e.calls == ["sleep1", "wake:weights", "sync3", "wake:kv_cache"]
    assert not c.asleep


@pytest.mark.parametrize(("level", "synced"), [(1, False), (2, True)])
def test_level_two_always_reloads_the_weights(level: int, synced: bool) -> None:
    e = FakeEngines()
    c = Colocation(e, level=level, timeout_s=5)
    c.sleep()
    assert c.wake(version=7, fresh=False) is synced
    middle = ["sync7"] if synced else []
    assert e.calls == [f"sleep{level}", "wake:weights", *middle, "wake:kv_cache"]


def test_failed_sync_raises_and_nothing_runs_after_it() -> None:
    e = FakeEngines(fail="sync1")
    c = Colocation(e, level=2, timeout_s=5)
    c.sleep()
    with pytest.raises(RuntimeError, match="sync1 broke"):
        c.wake(version=1)
    assert e.calls == ["sleep2", "wake:weights", "sync1"]  # the KV cache never woke
    with pytest.raises(RuntimeError, match="sync_weights\\(v1\\) failed earlier"):
        c.sleep()


def test_sync_that_hangs_times_out() -> None:
    e = FakeEngines(block="sync4")
    c = Colocation(e, level=1, timeout_s=0.2)
    c.sleep()
    try:
        with pytest.raises(TimeoutError, match="sync_weights\\(v4\\) did not finish within 0.2"):
            c.wake(version=4)
    finally:
        e.release.set()
    assert c.broken == "sync_weights(v4)"
    assert "wake:kv_cache" not in e.calls


def test_misordered_calls_are_refused() -> None:
    c = Colocation(FakeEngines(), level=1, timeout_s=5)
    with pytest.raises(RuntimeError, match="not asleep"):
        c.wake(version=1)
    c.sleep()
    with pytest.raises(RuntimeError, match="already asleep"):
        c.sleep()
    with pytest.raises(ValueError, match="sleep level must be 1 or 2"):
        Colocation(FakeEngines(), level=3, timeout_s=5)


def _cfg(**over) -> Config:
    cfg = Config()
    for key, value in over.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    return cfg


def test_config_checks() -> None:
    check_colocation(_cfg(cluster__colocate=True))
    check_colocation(_cfg(cluster__colocate=True, rollout__weight_transfer_backend="ipc"))
    with pytest.raises(ConfigError, match="async_mode must be false"):
        check_colocation(_cfg(cluster__colocate=True, grpo__async_mode=True))
    with pytest.raises(ConfigError, match="nccl needs separate GPUs"):
        check_colocation(_cfg(cluster__colocate=True, rollout__weight_transfer_backend="nccl"))
    with pytest.raises(ConfigError, match="set cluster.colocate"):
        check_colocation(_cfg(rollout__weight_transfer_backend="ipc"))


class FakeRollout(FakeEngines):
    def sync_weights(  # type: ignore[override]
        self, *, version: int, source: str, blob: bytes | None = None
    ) -> float:
        self._do(f"load{version}:{source}:{blob!r}")
        return 0.0


class FakeLearner:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.version = 0

    def weights_blob(self, *, dtype: str) -> bytes:
        self.version += 1
        self.calls.append(f"blob:{dtype}")
        return f"w{self.version}".encode()


def test_grpo_publish_stages_in_memory_before_waking_and_loads_between_wakes(
    tmp_path: Path,
) -> None:
    cfg = _cfg(cluster__colocate=True, rollout__sleep_level=2)
    rollout = FakeRollout()
    step = GRPOStep(
        cfg=cfg,
        train=[],
        rollout=rollout,  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        learner=FakeLearner(rollout.calls),  # type: ignore[arg-type]
        cursor=None,  # type: ignore[arg-type]
        run_dir=tmp_path,
        pad_id=0,
    )
    assert step.colocation is not None
    step.colocation.sleep()  # the loop's learner turn
    step.publish(1)
    step.colocation.sleep()
    step.publish(2)
    assert rollout.calls == [
        "sleep2",
        "blob:float32",
        "wake:weights",
        "load1:in-memory:b'w1'",
        "wake:kv_cache",
        "sleep2",
        "blob:float32",
        "wake:weights",
        "load2:in-memory:b'w2'",
        "wake:kv_cache",
    ]
    assert not step.weights_dir.exists()  # no folder: the versions went in memory
    assert set(step.seconds) == {"time/sync_export", "time/sync_load"}


def test_plan_takes_the_larger_turn_not_the_sum() -> None:
    learner = [
        Term("weights", 2.0, ""),
        Term("gradients", 1.0, ""),
        Term("optimizer states", 4.0, ""),
        Term("activations (checkpointed, 10 tokens)", 5.0, ""),
    ]
    engine = [Term("weights", 3.0, ""), Term("KV cache (1 streams x 10 tokens)", 6.0, "")]
    turns = colocated_turns(learner, engine)
    total = {k: sum(t.bytes for t in v) for k, v in turns.items()}
    # learner's turn: its 12; engines' turn: 9 + the learner's resident 7 = 16; not 21
    assert total == {"learner's turn": 12.0, "engines' turn": 16.0}


def test_colocated_engines_start_with_sleep_mode() -> None:
    assert WorkerSpec.of(_cfg(cluster__colocate=True), "policy").sleep_mode
    assert not WorkerSpec.of(_cfg(), "policy").sleep_mode


def test_colocate_is_on_by_default_where_roles_split_gpus() -> None:
    assert load_config(None, []).cluster.colocate is False  # CPU: no GPUs to share
    shared = ["learner.num_gpus=0.5", "rollout.num_gpus=0.5"]
    assert load_config(None, shared).cluster.colocate is True
    assert load_config(None, [*shared, "cluster.colocate=false"]).cluster.colocate is False
    assert load_config(None, ["learner.num_gpus=1", "rollout.num_gpus=1"]).cluster.colocate is False
