"""`bench scaling`: the sweep's points, the step shape, the plots, and a tiny real run.

Real parts in the slow test: local Ray, a vLLM CPU rollout actor, the in-process DeepSpeed
learner and the rule reward scorer, on the built-in policy. Numbers are timings, so the test
asserts what must hold whatever the machine: every decision is counted, every phase timed,
and the learner agrees with vLLM's logprobs (sync step, lr 0).
"""

from __future__ import annotations

import json

import pytest

from streampro.bench.scaling import AXES, plan, plots, run, step_shape
from streampro.config import Config
from streampro.errors import UserError


def _cfg(streams, lengths, actors) -> Config:
    cfg = Config()
    cfg.bench.scaling_streams, cfg.bench.scaling_lengths = streams, lengths
    cfg.bench.scaling_actors = actors
    return cfg


def test_plan_sweeps_each_axis_with_the_others_at_their_first_value() -> None:
    points = plan(_cfg([16, 4], [30, 600], [1, 2]))
    assert points == [
        {"streams": 16, "length": 30, "actors": 1},
        {"streams": 4, "length": 30, "actors": 1},
        {"streams": 16, "length": 600, "actors": 1},
        {"streams": 16, "length": 30, "actors": 2},
    ]


@pytest.mark.parametrize("bad", [[], [0], [4, -1]])
def test_plan_refuses_empty_or_non_positive_lists(bad) -> None:
    with pytest.raises(UserError, match="bench.scaling_length"):
        plan(_cfg([4], bad, [1]))


def test_step_shape_keeps_the_group_size_where_it_divides() -> None:
    assert step_shape(32, 8) == (4, 8)
    assert step_shape(64, 8) == (8, 8)
    assert step_shape(12, 8) == (1, 12)  # one group of all the streams
    assert step_shape(1, 8) == (1, 1)


def test_plots_one_png_per_axis(tmp_path) -> None:
    row = {"decisions_per_s": 10.0, "phase_s": dict.fromkeys(("rollout", "reward", "learn", "sync"), 1.0)}  # fmt: skip
    result = {
        "config": {"base": {"streams": 2, "length": 3, "actors": 1}},
        "sweeps": {
            "streams": [{**row, "streams": 2}, {**row, "streams": 4}],
            "length": [{**row, "length": 3}],
            "actors": [],
        },
    }
    assert plots(result, tmp_path) == ["scaling_streams.png", "scaling_length.png"]
    assert (tmp_path / "scaling_streams.png").stat().st_size > 0
    assert not (tmp_path / "scaling_actors.png").exists()


@pytest.mark.slow
def test_tiny_scaling_run(ray_local, tmp_path) -> None:
    cfg = _cfg([2, 4], [3, 5], [1])
    cfg.policy.cache_dir = str(tmp_path / "models")
    cfg.learner.in_process = True
    cfg.learner.precision = "fp32"  # as the engine: a bf16 learner differs by ~1e-2
    cfg.reward.num_actors = 0
    cfg.grpo.group_size = 2
    res = run(cfg, str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert saved == json.loads(json.dumps(res, sort_keys=True)) and saved["complete"]
    sw = saved["sweeps"]
    assert [r["streams"] for r in sw["streams"]] == [2, 4]
    assert [r["length"] for r in sw["length"]] == [3, 5]
    assert [r["actors"] for r in sw["actors"]] == [1]
    for rows in sw.values():
        for r in rows:
            assert set(AXES) <= set(r)
            assert r["decisions"] == r["streams"] * r["length"]  # one decision per second
            assert r["batch_samples"] * r["group_size"] == r["streams"]
            assert r["decisions_per_s"] > 0 and r["step_s"] > 0
            assert set(r["phase_s"]) == {"rollout", "reward", "learn", "sync"}
            assert r["lp_diff_max"] < 1e-3  # sync step: learner and vLLM share the weights
    assert saved["plots"] == ["scaling_streams.png", "scaling_length.png", "scaling_actors.png"]
    for name in saved["plots"]:
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert not list((tmp_path / "out").glob("bench-scaling-*"))  # work folder removed
