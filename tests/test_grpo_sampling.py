"""Dynamic sampling: which groups train, and how replacements are drawn.

`select_groups` is pure; `GRPOStep.collect` is driven by scripted rollout and reward stand-ins,
since what is checked here is the control flow (draw order, rounds, cursor), not the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from streampro.config import Config
from streampro.learners.grpo_loop import GRPOStep, select_groups
from streampro.learners.state import DataCursor
from streampro.types import RewardResult, Segment, Trajectory


def test_select_groups_keeps_the_first_informative_groups():
    r = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.1], [0.3, 0.4]])  # [5, 2]
    assert select_groups(r, need=5, dynamic=False).tolist() == [True] * 5
    assert select_groups(r, need=5, dynamic=True).tolist() == [False, True, False, True, True]
    assert select_groups(r, need=2, dynamic=True).tolist() == [False, True, False, True, False]
    assert select_groups(r, need=0, dynamic=True).tolist() == [False] * 5


@dataclass
class _Sample:
    """What the loop reads of an encoded sample: `.sample.to_dict()`."""

    idx: int

    @property
    def sample(self) -> _Sample:
        return self

    def to_dict(self) -> dict:
        return {"id": str(self.idx)}


class _Rollout:
    """Episode e of sample i gets reward i*e when i is odd and 0 when i is even, so even
    samples form all-equal groups."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def generate(self, *, samples: list, n: int, sampling) -> list[Trajectory]:
        self.calls.append([s.idx for s in samples])
        return [
            Trajectory(sample_id=str(s.idx), episode=e, segments=[Segment([1], [1], [0.0])])
            for s in samples
            for e in range(n)
        ]


class _Pool:
    def score(self, *, samples: list[dict], trajectories: list[Trajectory]) -> list[RewardResult]:
        out = []
        for t in trajectories:
            i = int(t.sample_id)
            r = float(i * t.episode) if i % 2 else 0.0
            out.append(RewardResult(total=r, fmt=0.0, turn=0.0, traj=0.0))
        return out


def _step(dynamic: bool, rounds: int, b: int = 4) -> tuple[GRPOStep, _Rollout, list[int]]:
    cfg = Config()
    cfg.grpo.group_size, cfg.grpo.batch_samples = 3, b
    cfg.grpo.dynamic_sampling, cfg.grpo.max_resample_rounds = dynamic, rounds
    n = 10
    order = DataCursor(n, seed=7).take(3 * n)  # the data order every draw must follow
    rollout = _Rollout()
    parts = GRPOStep(
        cfg=cfg,
        train=[_Sample(i) for i in range(n)],
        rollout=rollout,
        pool=_Pool(),
        learner=None,
        cursor=DataCursor(n, seed=7),
        run_dir=Path("."),
        pad_id=0,
    )
    return parts, rollout, order


def test_collect_without_dynamic_sampling_trains_every_group():
    parts, rollout, order = _step(dynamic=False, rounds=3)
    groups = parts.collect(0)
    assert rollout.calls == [order[:4]]
    assert groups.keep == [True] * 4
    assert groups.cursor == {"epoch": 0, "pos": 4}


def test_dynamic_sampling_replaces_equal_reward_groups_from_the_data_order():
    parts, rollout, order = _step(dynamic=True, rounds=10)
    groups = parts.collect(0)
    drawn = [i for call in rollout.calls for i in call]
    assert drawn == order[: len(drawn)]  # replacements continue the seeded order
    assert rollout.calls[0] == order[:4]
    for call, prev_kept in zip(rollout.calls[1:], _kept_before(rollout.calls)):
        assert len(call) == 4 - prev_kept  # each round draws only the missing groups
    kept_ids = [i for i, k in zip(drawn, groups.keep) if k]
    assert len(kept_ids) == 4 and all(i % 2 == 1 for i in kept_ids)
    assert [i for i, k in zip(drawn, groups.keep) if not k] == [i for i in drawn if i % 2 == 0]
    trajs, rewards = groups.kept()
    assert rewards.shape == (4, 3) and len(trajs) == 12
    assert groups.rounds == [
        r for r, call in enumerate(rollout.calls) for _ in range(3 * len(call))
    ]


def test_dynamic_sampling_stops_after_max_rounds_and_trains_on_fewer_groups():
    parts, rollout, order = _step(dynamic=True, rounds=0)
    groups = parts.collect(0)
    assert rollout.calls == [order[:4]]
    assert sum(groups.keep) == sum(i % 2 for i in order[:4]) < 4
    assert groups.cursor == {"epoch": 0, "pos": 4}


def _kept_before(calls: list[list[int]]) -> list[int]:
    """Informative (odd) samples drawn before each later round."""
    out, seen = [], 0
    for call in calls[:-1]:
        seen += sum(i % 2 for i in call)
        out.append(seen)
    return out


def test_report_of_a_grpo_run_folder_has_curves_and_phase_means(tmp_path):
    """`streampro report` on a `streampro grpo` folder: curves and the per-step phase means."""
    import json
    import subprocess
    import sys

    rows = [
        {"step": 0, "val/w_avg": 0.1},
        {
            "step": 1,
            "reward/total": 0.2,
            "time/rollout": 3.0,
            "time/learn": 9.0,
            "time/sync": 0.1,
            "time/step": 12.5,
        },
        {
            "step": 2,
            "reward/total": 0.4,
            "time/rollout": 5.0,
            "time/learn": 7.0,
            "time/sync": 0.3,
            "time/step": 12.5,
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert (
        "| rollout | learn | sync | step |\n|---|---|---|---|\n| 4.00 | 8.00 | 0.20 | 12.50 |"
        in report
    )
    assert (
        "![grpo](grpo_curves.png)" in report
        and (tmp_path / "grpo_curves.png").stat().st_size > 1000
    )
