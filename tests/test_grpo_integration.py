"""GRPO end to end on configs/smoke.yaml: real Ray, vLLM, DeepSpeed and the reward pool.

Two steps with a weight sync between them, a SIGKILL of the whole job after the first
checkpoint, then `resume=auto` finishing the run from that checkpoint; the same in
async mode with dynamic sampling, where the data order must survive the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole GRPO jobs: Ray, vLLM, DeepSpeed

REPO = Path(__file__).resolve().parents[1]


def _grpo_cmd(run_dir: Path, synth_root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streampro.cli",
        "grpo",
        "--config",
        str(REPO / "configs" / "smoke.yaml"),
        f"run.dir={run_dir}",
        *(f"data.{s}={synth_root / s / 'manifest.jsonl'}" for s in ("train", "val", "test")),
        "grpo.save_every=1",
        "grpo.max_steps=2",
        "cluster.num_cpus=4",
        *extra,
    ]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _run_killed_after_step_1(tmp_path: Path, run_dir: Path, cmd: list[str]) -> None:
    """Start the job, SIGKILL it (and the local Ray it started) once checkpoint 1 is complete."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 480
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "checkpoints" / "step_000001" / "client_state.json").is_file():
                break
            time.sleep(1)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
        assert (run_dir / "checkpoints" / "step_000001" / "client_state.json").is_file(), (
            "no checkpoint in time"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and the local Ray it started
        proc.wait()
    assert [r["step"] for r in _metrics(run_dir)][:1] == [1]


def _resume(cmd: list[str]) -> None:
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run(
        [*cmd, "run.resume=auto"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "resumed from" in out.stdout


def test_grpo_two_steps_kill_and_resume(tmp_path, synth_smoke):
    run_dir = tmp_path / "run"
    _run_killed_after_step_1(tmp_path, run_dir, _grpo_cmd(run_dir, synth_smoke))
    _resume(_grpo_cmd(run_dir, synth_smoke))
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["reward/total"] <= 1.45 + 1e-6  # 0.1 fmt + 0.45 turn (<= 2) + 0.45 traj
        assert r["time/sync"] > 0 and "learn/pg_loss" in r or r["adv/kept_groups"] == 0
    # step 2 ran on the weights synced after step 1; its trajectories say so
    import pyarrow.parquet as pq

    t2 = pq.read_table(run_dir / "trajectories" / "step_000002.parquet").to_pylist()
    assert {row["version"] for row in t2} == {1}
    assert (run_dir / "hf" / "config.json").is_file()
    summary = json.loads((run_dir / "grpo_summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["val"]["w_avg"] <= 1.0
    assert (
        len((run_dir / "val_predictions.jsonl").read_text().splitlines())
        == summary["val"]["n_samples"]
    )


def test_grpo_async_dynamic_sampling_resume_keeps_the_data_order(tmp_path, synth_smoke):
    """Async mode + dynamic sampling, killed after step 1 while step 2's rollout is in flight:
    the resumed run redraws that batch, so the samples drawn over all three steps (kept and
    replaced groups alike) follow the seeded data order without a gap. With
    logprob_check_every=2 the agreement check runs at steps 0 and 2 (of 0-2) when they have a
    group to learn from, and never at step 1."""
    import pyarrow.parquet as pq

    from streampro.learners.state import DataCursor

    run_dir = tmp_path / "run"
    cmd = _grpo_cmd(
        run_dir,
        synth_smoke,
        "grpo.max_steps=3",
        "grpo.async_mode=true",
        "grpo.dynamic_sampling=true",
        "grpo.max_resample_rounds=2",
        "grpo.logprob_check_every=2",
    )
    _run_killed_after_step_1(tmp_path, run_dir, cmd)
    _resume(cmd)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # checked at steps 0 and 2 when they had a group to learn from (else learn returns early)
    checked = [i % 2 == 0 and r["adv/kept_groups"] > 0 for i, r in enumerate(rows)]
    assert ["check/lp_diff_max" in r for r in rows] == checked, [
        r.get("adv/kept_groups") for r in rows
    ]
    assert checked[0]

    ids = [
        json.loads(x)["id"]
        for x in (synth_smoke / "train" / "manifest.jsonl").read_text().splitlines()
    ]
    drawn, b, g = [], 2, 2
    for step, r in enumerate(rows, start=1):
        table = pq.read_table(run_dir / "trajectories" / f"step_{step:06d}.parquet").to_pylist()
        groups = table[::g]  # episodes of a group are adjacent
        drawn += [t["sample_id"] for t in groups]
        kept = [t for t in groups if t["kept"]]
        assert len(kept) == r["adv/kept_groups"] <= b
        assert r["adv/equal_reward_groups"] == len(groups) - len(kept)
        assert max(t["round"] for t in table) + 1 == r["rollout/rounds"] <= 3
        # resumed at version 1: step 2 rolled out on it, step 3 one step off-policy, also on it
        if step >= 2:
            assert {t["version"] for t in table} == {1}
    order = [ids[i] for i in DataCursor(len(ids), seed=0).take(len(drawn))]
    assert drawn == order
