"""Colocated mode's optimizer-state offload: the learner verbs and their place in a GRPO step.

Real parts: DeepSpeed ZeRO-2 over gloo on CPU (DS_ACCELERATOR=cpu), the in-process group and
one Ray rank, the tiny Qwen2 policy. A CPU rank moves nothing (its states are in host memory
already), so DeepSpeed's own offload / reload is also driven on the CPU engine directly.
The loop's order is checked with fakes: no engine, no learner.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from streampro.cluster.plan import Term, colocated_turns
from streampro.config import LearnerConfig, load_config
from streampro.learners.group import LocalLearnerGroup, RayLearnerGroup
from streampro.learners.grpo_loop import OFFLOAD_STATES, Groups, GRPOStep, _step
from streampro.learners.packing import PackItem, collate, plan_rows
from streampro.learners.worker import offload_zero_states

GRPO = ["learner.zero_stage=2", "learner.micro_batch=1", "grpo.lr=1e-3", "run.seed=0"]


def grpo_batch(seed: int) -> dict[str, torch.Tensor]:
    """4 rows of one sequence each, random tokens and advantages, about a third scored."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(4):
        n = int(torch.randint(16, 40, (1,), generator=g))
        mask = (torch.rand(n, generator=g) < 0.35).long()
        mask[0] = 0
        adv = [float(torch.randn(1, generator=g))] * n
        ids = torch.randint(0, 1000, (n,), generator=g).tolist()
        items.append(PackItem(ids, mask.tolist(), advantages=adv, old_logprobs=[0.0] * n))
    rows = plan_rows([len(i.input_ids) for i in items], max_len=64, pack=False)
    return collate(items, rows, pad_id=0)


def two_steps(group, between) -> tuple[list[float], torch.Tensor]:
    """Two on-policy GRPO steps with `between(group)` in the middle; the losses and the
    logprobs of a probe batch after them."""
    losses = []
    for k in range(2):
        if k == 1:
            between(group)
        batch = grpo_batch(k)
        batch["old_logprobs"] = group.logprobs(batch=batch)
        losses.append(group.train_step(batch=batch, objective="grpo")["loss"])
    return losses, group.logprobs(batch=grpo_batch(9))


def nothing(group) -> None:
    pass


def verbs(group) -> None:
    # a CPU rank's states are in host memory already: nothing moves, nothing comes back
    assert group.offload_states(include=list(OFFLOAD_STATES)) == []
    assert group.reload_states() == []


def deepspeed_offload(group) -> None:
    engine = group.worker.engine
    # pinning needs an accelerator; the CPU rank only checks the call and the round trip
    assert offload_zero_states(engine, list(OFFLOAD_STATES), pin_memory=False) == [
        "optim_states",
        "hp_params",
    ]
    assert {s.value for s in engine.optimizer.offloaded_states} == set(OFFLOAD_STATES)
    engine.reload_states()
    assert not engine.optimizer.offloaded_states


def save_while_offloaded(group) -> None:
    # a colocated step checkpoints while its states are out: the save brings them back,
    # writes them and puts them back out
    worker = group.worker
    worker._offloaded = offload_zero_states(worker.engine, list(OFFLOAD_STATES), pin_memory=False)
    worker._pin = False
    with tempfile.TemporaryDirectory() as path:
        group.save_checkpoint(path=path, client_state={"step": 1})
        assert any(Path(path).rglob("*optim_states*"))
    assert {s.value for s in worker.engine.optimizer.offloaded_states} == set(OFFLOAD_STATES)
    assert worker.reload_states() == list(OFFLOAD_STATES)


@pytest.mark.slow
def test_offload_and_reload_leave_training_unchanged(learner_spec, tiny_path, ray_local) -> None:
    """In process (the verbs, then DeepSpeed's own round trip) and through one Ray rank:
    the second step's loss and the weights after it are those of a run without offload."""
    spec = learner_spec("grpo", *GRPO)
    runs = {}
    betweens = [("plain", nothing), ("verbs", verbs), ("deepspeed", deepspeed_offload)]
    for name, between in [*betweens, ("save offloaded", save_while_offloaded)]:
        group = LocalLearnerGroup(model_path=tiny_path, spec=spec)
        try:
            runs[name] = two_steps(group, between)
        finally:
            group.shutdown()
    ray_group = RayLearnerGroup(model_path=tiny_path, spec=spec)
    try:
        runs["ray verbs"] = two_steps(ray_group, verbs)
    finally:
        ray_group.shutdown()
    ref_losses, ref_lp = runs.pop("plain")
    for name, (losses, lp) in runs.items():
        assert losses == pytest.approx(ref_losses, abs=1e-6), name
        torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=0, msg=name)


# ---- the loop's order, with fakes -----------------------------------------------------------


class FakeRollout:
    """The rollout group's colocated verbs, recorded."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def sleep(self, *, level: int) -> None:
        self.calls.append("sleep")

    def wake_up(self, *, tags: list[str]) -> None:
        self.calls.append(f"wake:{tags[0]}")

    def sync_weights(self, *, version: int, source: str, blob: bytes | None = None) -> None:
        self.calls.append(f"load:v{version}")


class FakeLearner:
    """The learner verbs a colocated step calls, recorded."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def weights_blob(self, *, dtype: str) -> bytes:
        self.calls.append("export")
        return b"weights"

    def offload_states(self, *, include: list[str], pin_memory: bool = True) -> list[str]:
        self.calls.append(f"offload:{'+'.join(include)}")
        return include

    def reload_states(self) -> list[str]:
        self.calls.append("reload")
        return []


class FakeStep(GRPOStep):
    """A GRPO step whose rollouts, learning and records only say that they ran."""

    calls: list[str]

    def collect(self, step: int) -> Groups:
        self.calls.append("generate")
        return Groups(g=1)

    def learn(self, groups: Groups, *, step: int = 0) -> dict[str, float]:
        self.calls.append("train")
        return {}

    def record(self, step: int, groups: Groups) -> dict[str, float]:
        return {}


def colocated_calls(tmp_path: Path, *settings: str) -> list[str]:
    """The calls of a colocated run's start and two steps (rollouts and learning faked)."""
    cfg = load_config(None, ["cluster.colocate=true", "rollout.sleep_level=1", *settings])
    calls: list[str] = []
    parts = FakeStep(
        cfg=cfg,
        train=[],
        rollout=FakeRollout(calls),  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        learner=FakeLearner(calls),  # type: ignore[arg-type]
        cursor=None,  # type: ignore[arg-type]
        run_dir=tmp_path,
        pad_id=0,
    )
    parts.calls = calls
    for step in range(2):
        _, metrics, _ = _step(parts, step, None, None)
    assert ("time/reload" in metrics) == parts.offloading
    return calls


STEP = ["generate", "sleep", "reload", "train", "export", "offload:optim_states+hp_params"]
WAKE = ["wake:weights", "load:v{}", "wake:kv_cache"]


def test_gpu_step_offloads_after_the_export_and_reloads_after_the_sleep(tmp_path) -> None:
    calls = colocated_calls(tmp_path, "learner.num_gpus=0.5")
    expect = ["offload:optim_states+hp_params"]
    for v in (1, 2):
        expect += STEP + [w.format(v) for w in WAKE]
    assert calls == expect


@pytest.mark.parametrize(
    "setting",
    ["learner.num_gpus=0", "learner.zero_stage=0", "learner.offload_states_while_generating=false"],
)
def test_no_offload_where_it_frees_nothing_or_is_off(tmp_path, setting: str) -> None:
    calls = colocated_calls(tmp_path, "learner.num_gpus=0.5", setting)
    assert not [c for c in calls if c.startswith(("offload", "reload"))]
    assert calls[:4] == ["generate", "sleep", "train", "export"]


def test_offloads_states_only_colocated_on_gpu_with_zero() -> None:
    gpu = LearnerConfig(num_gpus=0.5, zero_stage=2)
    assert gpu.offloads_states(colocate=True)
    assert not gpu.offloads_states(colocate=False)
    assert not LearnerConfig(num_gpus=0.0).offloads_states(colocate=True)
    assert not LearnerConfig(num_gpus=0.5, zero_stage=0).offloads_states(colocate=True)
    off = LearnerConfig(num_gpus=0.5, offload_states_while_generating=False)
    assert not off.offloads_states(colocate=True)


def test_plan_engines_turn_leaves_out_offloaded_optimizer_states() -> None:
    learner = [Term("weights", 2.0, ""), Term("optimizer states", 4.0, "")]
    engine = [Term("KV cache (1 streams x 10 tokens)", 6.0, "")]
    on = colocated_turns(learner, engine, offload_states=True)["engines' turn"]
    off = colocated_turns(learner, engine)["engines' turn"]
    assert [t.name for t in on] == [
        "KV cache (1 streams x 10 tokens)",
        "learner weights (resident)",
    ]
    assert (sum(t.bytes for t in on), sum(t.bytes for t in off)) == (8.0, 12.0)
