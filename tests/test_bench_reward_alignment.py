"""`streampro bench reward-alignment`: within-group reward/F1 statistics, hand-derived."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streampro.actors.records import write_trajectories
from streampro.bench.reward_alignment import group_stats, summarise
from streampro.cli import main as cli_main
from streampro.types import Segment, Step, Trajectory


def test_group_stats_hand_values():
    corr, signal = group_stats(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    # adv = [-0.5, 0.5] / (0.5 + 1e-4); F1 - mean = [-0.5, 0.5]
    assert corr == pytest.approx(1.0)
    assert signal == pytest.approx(0.25 / (0.5 + 1e-4))
    assert group_stats(np.array([1.0, 1.0]), np.array([0.0, 1.0])) == (None, 0.0)  # flat
    corr, signal = group_stats(np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.0, 1.0]))
    assert corr == pytest.approx(0.0) and signal == pytest.approx(0.0)  # cov 0


def test_summarise_counts_flat_groups_and_tasks():
    g1 = {"task": "OU", "rows": [{"r": 0.0, "f1": 0.0}, {"r": 1.0, "f1": 1.0}]}
    g2 = {"task": "TP", "rows": [{"r": 1.0, "f1": 0.0}, {"r": 0.0, "f1": 1.0}]}
    g3 = {"task": "TP", "rows": [{"r": 0.5, "f1": 0.0}, {"r": 0.5, "f1": 1.0}]}
    s = summarise([g1, g2, g3], "r")
    assert s["corr"] == pytest.approx(0.0)  # +1 and -1; g3 has no correlation
    assert s["groups_with_corr"] == 2 and s["flat_groups"] == 1
    assert s["corr_by_task"] == {"OU": pytest.approx(1.0), "TP": pytest.approx(-1.0)}
    assert s["signal"] == pytest.approx(0.0)


def _traj(sid: str, episode: int, responses: list[tuple[float, str]]) -> Trajectory:
    said = dict(responses)
    steps = [
        Step(time=float(t), decision="response", text=said[t], raw=f"</Response> {said[t]}")
        if t in said
        else Step(time=float(t), decision="silence", text="", raw="</Silence>")
        for t in range(1, 31)
    ]
    seg = Segment(token_ids=[1, 2], gen_mask=[0, 1], logprobs=[0.0, -0.1], first_step=0)
    return Trajectory(sample_id=sid, episode=episode, segments=[seg], steps=steps)


def test_bench_reads_a_grpo_run(tmp_path, capsys):
    # One OU sample (answer "green" at 20 s: window [17, 23], tau 4). Episode 0 answers right
    # at 20 (F1 1); episode 1 at 20 with the wrong colour (F1 0); episode 2 stays silent (F1 0).
    row = {
        "id": "ou-0",
        "video": "videos/ou-0.mp4",
        "task": "OU",
        "question": "Tell me when the square changes colour, and the new colour.",
        "query_time": 0.0,
        "answers": [{"time": 20.0, "text": "green"}],
    }
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    trajs = [
        _traj("ou-0", 0, [(20, "green")]),
        _traj("ou-0", 1, [(20, "red")]),
        _traj("ou-0", 2, []),
    ]
    # logged rewards: R_turn (sum, tau 8) 2, 1, 0 -> as trained with R_fmt 1, R_traj 1
    turn = [2.0, 1.0, 0.0]
    extra = {
        "step": [1, 1, 1],
        "round": [0, 0, 0],
        "reward": [0.1 + 0.45 * t + 0.45 for t in turn],
        "reward_fmt": [1.0] * 3,
        "reward_turn": turn,
        "reward_traj": [1.0] * 3,
    }
    run = tmp_path / "run"
    write_trajectories(run / "trajectories" / "step_000001.parquet", trajs, extra)
    out = tmp_path / "out"
    args = ["bench", "reward-alignment", "--run", str(run), "--manifest", str(manifest)]
    assert cli_main([*args, "--out", str(out)]) == 0
    res = json.loads((out / "reward_alignment.json").read_text())
    assert res["trajectories"] == 3 and res["groups"] == 1 and res["skipped_unknown_sample"] == 0
    v = res["variants"]
    # F1 per episode [1, 0, 0]; R_turn [2, 1, 0]: corr = cov / (sd sd) = (1/3) / (sqrt(2/9)
    # sqrt(2/3)) = sqrt(3) / 2
    assert v["R_turn"]["corr"] == pytest.approx(3**0.5 / 2)
    assert v["as trained"]["corr"] == pytest.approx(3**0.5 / 2)
    # The product match gives the wrong colour nothing: [1, 0, 0], the F1 itself
    assert v["turn product tau 8"]["corr"] == pytest.approx(1.0)
    assert v["f1"]["corr"] == pytest.approx(1.0) and v["R_fmt"]["flat_groups"] == 1
    assert (out / "reward_vs_f1.png").stat().st_size > 0
    assert "| turn product tau 8 | +1.000 |" in (out / "reward_alignment.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_bench_refuses_a_folder_without_trajectories(tmp_path, capsys):
    args = ["bench", "reward-alignment", "--run", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli_main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a GRPO run" in err[0]
