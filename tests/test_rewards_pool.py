"""The reward pool: in-process and Ray give the same results, in input order, and survive a
raising judge, a judge sleeping past its timeout and an actor killed mid-batch."""

from __future__ import annotations

import os
import random
import sys
import time

import pytest

from streampro.config import RewardConfig
from streampro.rewards import ExactJudge, InProcessRewardPool, RayRewardPool, make_reward_pool
from streampro.types import RewardResult, Step, Trajectory

TEXTS = ["red", "green", "3", "4-9", "go left"]
RUBRIC = [
    "must respond at least 1 times",
    "must respond at most 3 times",
    "shall not mention 'blue'",
    "must mention 'red' between 5s and 40s",
    "shall not respond twice within 2s",
    "must report increasing numbers",
    "must report every bounce",
]
TASKS = ["EU", "OU", "AA", "TP", "TG", "GP", "RF"]


def make_items(n: int, seed: int = 0) -> tuple[list[dict], list[Trajectory]]:
    """n (sample, trajectory) pairs of every task, with responses near and far from answers."""
    rng = random.Random(seed)
    samples, trajs = [], []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        times = sorted(rng.sample(range(5, 80), rng.randint(0, 3)))
        answers = [{"time": float(t), "text": rng.choice(TEXTS)} for t in times]
        if task == "TG":
            answers = [dict(a, text="4-9", span=[4.0, 9.0]) for a in answers]
        samples.append(
            {
                "id": f"s{i}",
                "task": task,
                "question": "q",
                "answers": answers,
                "rubric": rng.sample(RUBRIC, 3),
            }
        )
        steps = []
        for t in range(1, 61):
            if rng.random() < 0.06:
                text = rng.choice(TEXTS + ["blue", "from 5 to 9"])
                steps.append(Step(float(t), "response", text, f"</Response> {text}<|im_end|>"))
            else:
                steps.append(
                    Step(float(t), "silence", "", rng.choice(["</Silence>"] * 9 + ["</Sil"]))
                )
        trajs.append(Trajectory(f"s{i}", 0, [], steps=steps))
    return samples, trajs


class RaisingJudge:
    """Exact, but raises on any response that says 'boom'."""

    inline = True

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        if "boom" in response:
            raise RuntimeError("judge exploded")
        return ExactJudge().score(response=response, reference=reference)


class SleepyJudge:
    """Exact, but sleeps far past any timeout on responses that say 'slow'."""

    inline = False

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        if "slow" in response:
            time.sleep(30)
        return ExactJudge().score(response=response, reference=reference)


class KillOnceJudge:
    """Exact, but the first call in any process (claimed through a marker file) kills that
    process, as an OOM kill or a segfault would."""

    inline = True

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return ExactJudge().score(response=response, reference=reference)
        os._exit(1)


@pytest.fixture(scope="module")
def ray_judges(ray_local):
    # Ray workers cannot import this test module: ship its judge classes by value.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_local
    ray_local.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def fault_items() -> tuple[list[dict], list[Trajectory]]:
    """Item 0 fine, item 1 trips the judge ('boom' / 'slow'), item 2 fine."""
    samples, trajs = [], []
    for i, text in enumerate(["green", "boom slow", "green"]):
        samples.append(
            {
                "id": f"f{i}",
                "task": "OU",
                "question": "q",
                "answers": [{"time": 20.0, "text": "green"}],
                "rubric": ["must respond at least 1 times"],
            }
        )
        trajs.append(
            Trajectory(
                f"f{i}",
                0,
                [],
                steps=[
                    Step(19.0, "silence", "", "</Silence>"),
                    Step(20.0, "response", text, f"</Response> {text}"),
                ],
            )
        )
    return samples, trajs


# R_turn: S' = 1 (in window) + S_acc; fallback S_acc = 0.25 for the tripped item.
GOOD = RewardResult(total=0.1 + 0.45 * 2.0 + 0.45, fmt=1.0, turn=2.0, traj=1.0, fallback=0)
TRIPPED = RewardResult(total=0.1 + 0.45 * 1.25 + 0.45, fmt=1.0, turn=1.25, traj=1.0, fallback=1)


def test_in_process_pool_hand_values_and_faults():
    samples, trajs = fault_items()
    for judge in (RaisingJudge(), SleepyJudge()):
        pool = InProcessRewardPool(
            RewardConfig(timeout_s=0.5, fallback_score=0.25), acc_judge=judge
        )
        got = pool.score(samples=samples, trajectories=trajs)
        assert got == [GOOD, TRIPPED, GOOD], type(judge).__name__
    with pytest.raises(ValueError, match="2 samples for 3 trajectories"):
        pool.score(samples=samples[:2], trajectories=trajs)


@pytest.mark.slow
def test_ray_pool_equals_in_process(ray_judges):
    samples, trajs = make_items(60)
    local = InProcessRewardPool(RewardConfig()).score(samples=samples, trajectories=trajs)
    assert len({r.total for r in local}) > 10 and sum(r.fallback for r in local) > 0  # varied
    pool = RayRewardPool(RewardConfig(num_actors=2, num_cpus=0.5), chunk_size=7)
    try:
        assert pool.score(samples=samples, trajectories=trajs) == local
        assert pool.score(samples=[], trajectories=[]) == []
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_ray_pool_survives_raising_and_sleeping_judges(ray_judges):
    samples, trajs = fault_items()
    for judge in (RaisingJudge(), SleepyJudge()):
        scored = RewardConfig(num_actors=2, num_cpus=0.5, timeout_s=0.5, fallback_score=0.25)
        pool = RayRewardPool(scored, chunk_size=1, acc_judge=judge)
        try:
            assert pool.score(samples=samples, trajectories=trajs) == [GOOD, TRIPPED, GOOD]
        finally:
            pool.shutdown()


@pytest.mark.slow
def test_ray_pool_actor_killed_mid_batch_reruns_its_items(ray_judges, tmp_path):
    import ray

    samples, trajs = make_items(24, seed=1)
    expected = InProcessRewardPool(RewardConfig()).score(samples=samples, trajectories=trajs)
    marker = tmp_path / "killed"
    pool = RayRewardPool(
        RewardConfig(num_actors=2, num_cpus=0.5, max_restarts=2),
        chunk_size=4,
        acc_judge=KillOnceJudge(str(marker)),
    )
    try:
        pids = ray.get([a.pid.remote() for a in pool.actors])
        assert pool.score(samples=samples, trajectories=trajs) == expected
        assert marker.exists()  # one actor did die mid-batch ...
        after = ray.get([a.pid.remote() for a in pool.actors])
        assert sum(p != q for p, q in zip(pids, after)) == 1  # ... and was restarted once
    finally:
        pool.shutdown()


def test_make_reward_pool_in_process_from_config():
    from streampro.config import load_config

    cfg = load_config(None, ["reward.num_actors=0", "reward.w_traj=0", "reward.w_turn=0.9"])
    pool = make_reward_pool(cfg)
    samples, trajs = fault_items()
    got = pool.score(samples=samples[:1], trajectories=trajs[:1])
    assert got == [RewardResult(total=0.1 + 0.9 * 2.0, fmt=1.0, turn=2.0, traj=1.0, fallback=0)]


def test_bad_judge_settings_are_refused_before_any_actor_starts():
    from streampro.errors import UserError

    with pytest.raises(UserError, match="reward.acc_judge must be one of .*got 'fuzzy'"):
        RewardConfig(acc_judge="fuzzy")
    with pytest.raises(UserError, match="reward.llm_url"):
        RewardConfig(traj_judge="llm")
    with pytest.raises(UserError, match="reward.num_actors"):
        RayRewardPool(RewardConfig(num_actors=0))
