"""`streampro bench reward-alignment --run DIR --out OUT`: does GRPO's reward point at F1?

GRPO moves a group's probability mass towards its trajectories of above-average reward. That
raises StreamPro-F1 only as far as, within a group, reward and F1 rise together. This bench
reads the trajectories a GRPO run wrote (DIR/trajectories/*.parquet, or DIR/grpo/... for a
`streampro train` run), scores each one's own StreamPro-F1 (the evaluation's matching,
windows and task tolerances on that one stream: F1 = 2 sum S / (N_pred + N_gt)), and re-scores
it under reward variants with the same reward code. For each variant it reports:

- `corr`: Pearson correlation of reward and F1 within a group, averaged over groups where
  both vary (per task as well);
- `signal`: the mean over groups of mean(advantage * (F1 - mean F1)), advantage = (r - mean) /
  (std + 1e-4) as GRPO normalises it: the first-order F1 change a unit step along the
  advantage-weighted direction asks for. The F1 itself as the reward gives the ceiling;
- `flat_groups`: groups whose rewards are all equal (no learning signal).

Offline and fast: it re-scores rows, it does not run the policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from streampro.actors.records import trajectory_from_row
from streampro.config import Config, atomic_write_text, load_config
from streampro.data.pipeline import split_manifest
from streampro.data.schema import load_manifest
from streampro.errors import UserError
from streampro.report import plot_curves
from streampro.rewards.f1 import prf, sample_stats
from streampro.rewards.judges import eval_acc_judge
from streampro.rewards.pool import RewardScorer

# logged columns of the GRPO run, by the name the report gives them
LOGGED = {
    "as trained": "reward",
    "R_fmt": "reward_fmt",
    "R_turn": "reward_turn",
    "R_traj": "reward_traj",
}
TURN_ONLY: dict[str, Any] = {"w_fmt": 0.0, "w_turn": 1.0, "w_traj": 0.0}
# re-scored variants: reward fields replaced in the run's own reward section
VARIANTS: dict[str, dict[str, Any]] = {
    "turn sum tau 4": {**TURN_ONLY, "turn_match": "sum", "tau": 4.0},
    "turn product tau 8": {**TURN_ONLY, "turn_match": "product", "tau": 8.0},
    "turn product tau 4": {**TURN_ONLY, "turn_match": "product", "tau": 4.0},
    "R with turn product tau 8": {"turn_match": "product", "tau": 8.0},
    "R with turn product tau 4": {"turn_match": "product", "tau": 4.0},
}


def group_stats(rewards: np.ndarray, f1: np.ndarray) -> tuple[float | None, float]:
    """(Pearson corr or None where either is constant, mean(adv * (f1 - mean f1))) of one group."""
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # [G], GRPO's normalisation
    signal = float((adv * (f1 - f1.mean())).mean())
    if rewards.std() < 1e-12 or f1.std() < 1e-12:
        return None, signal
    return float(np.corrcoef(rewards, f1)[0, 1]), signal


def summarise(groups: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Alignment of one reward column with `f1` over the groups ({task, rows})."""
    corrs: list[float] = []
    signals: list[float] = []
    by_task: dict[str, list[float]] = defaultdict(list)
    flat = 0
    for g in groups:
        r = np.array([x[key] for x in g["rows"]])
        f = np.array([x["f1"] for x in g["rows"]])
        flat += int(r.std() < 1e-12)
        c, s = group_stats(r, f)
        signals.append(s)
        if c is not None:
            corrs.append(c)
            by_task[g["task"]].append(c)
    return {
        "corr": float(np.mean(corrs)) if corrs else None,
        "groups_with_corr": len(corrs),
        "signal": float(np.mean(signals)) if signals else 0.0,
        "flat_groups": flat,
        "corr_by_task": {t: float(np.mean(v)) for t, v in sorted(by_task.items())},
    }


def trajectory_files(run: Path) -> list[str]:
    for folder in (run / "trajectories", run / "grpo" / "trajectories"):
        files = sorted(glob.glob(str(folder / "step_*.parquet")))
        if files:
            return files
    raise UserError(
        f"{run}: no trajectories/step_*.parquet (nor grpo/trajectories/): not a GRPO run"
    )


def score_rows(
    files: list[str], samples: dict[str, dict[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], int]:
    """One row per logged trajectory: its step, task, logged rewards, F1 and variant rewards;
    and how many rows name a sample the manifest lacks (skipped, counted)."""
    judge = eval_acc_judge(cfg.eval, cfg.reward)  # the evaluation's S_acc judge, for F1
    scorers = {k: RewardScorer(dataclasses.replace(cfg.reward, **v)) for k, v in VARIANTS.items()}
    rows: list[dict[str, Any]] = []
    skipped = 0
    for path in files:
        for t in pq.read_table(path).to_pylist():
            s = samples.get(t["sample_id"])
            if s is None:
                skipped += 1
                continue
            traj = trajectory_from_row(t)
            resp = traj.responses()
            f1 = prf(*sample_stats(s, resp, judge))[2]
            row: dict[str, Any] = {
                "step": t["step"],
                "round": t.get("round", 0),
                "sample": t["sample_id"],
            }
            row |= {"task": s["task"], "f1": f1}
            row |= {k: t[col] for k, col in LOGGED.items()}
            row |= {
                k: sc.score_item(s, resp, traj.step_outputs()).total for k, sc in scorers.items()
            }
            rows.append(row)
    return rows, skipped


def run(cfg: Config, run_dir: str, manifest: str | None, out: str) -> dict[str, Any]:
    """Scores the run's trajectories; the run's own config.yaml (its reward, its training
    split) replaces `cfg` where the folder has one."""
    run_path = Path(run_dir)
    files = trajectory_files(run_path)
    own = run_path / "config.yaml"
    if own.is_file():
        cfg = load_config(own, [])
    path = Path(manifest) if manifest else split_manifest(cfg, "train")
    if not path.is_file():
        raise UserError(f"{path}: training manifest not found (pass --manifest M)")
    samples = {s.id: s.to_dict() for s in load_manifest(path)[0]}
    rows, skipped = score_rows(files, samples, cfg)
    groups_by: dict[tuple[int, int, str], list[dict[str, Any]]] = defaultdict(list)
    for x in rows:
        groups_by[(x["step"], x["round"], x["sample"])].append(x)  # one GRPO group
    groups = [{"task": g[0]["task"], "rows": g} for g in groups_by.values() if len(g) > 1]
    keys = [*LOGGED, *VARIANTS, "f1"]
    per_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for x in rows:
        per_step[x["step"]].append(x)
    curve = [
        {
            "step": s,
            **{
                k: float(np.mean([x[k] for x in v]))
                for k in ("as trained", "R_turn", "R_traj", "f1")
            },
        }
        for s, v in sorted(per_step.items())
    ]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(
        curve,
        ["as trained", "R_turn", "R_traj", "f1"],
        out_dir / "reward_vs_f1.png",
        f"{run_path.name}: reward and StreamPro-F1 of the rollouts, per GRPO step",
    )
    result = {
        "run": str(run_path),
        "manifest": str(path),
        "trajectories": len(rows),
        "skipped_unknown_sample": skipped,
        "groups": len(groups),
        "variants": {k: summarise(groups, k) for k in keys},
        "per_step": curve,
    }
    atomic_write_text(out_dir / "reward_alignment.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "reward_alignment.md", markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Reward vs StreamPro-F1 within GRPO groups: {result['run']}",
        "",
        (
            f"{result['trajectories']} trajectories in {result['groups']} groups"
            f" ({result['skipped_unknown_sample']} skipped: sample not in the manifest)."
        ),
        "",
        "| reward | corr(R, F1) | signal | flat groups | corr by task |",
        "|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        corr = "-" if v["corr"] is None else f"{v['corr']:+.3f}"
        tasks = " ".join(f"{t} {c:+.2f}" for t, c in v["corr_by_task"].items())
        lines.append(f"| {name} | {corr} | {v['signal']:+.4f} | {v['flat_groups']} | {tasks} |")
    return "\n".join(lines) + "\n"


def main(cfg: Config, args: argparse.Namespace) -> int:
    if not getattr(args, "run", None):
        raise UserError("bench reward-alignment needs --run DIR (a grpo or train run folder)")
    out = args.out or "runs/bench-reward-alignment"
    result = run(cfg, args.run, args.manifest, out)
    for name, v in result["variants"].items():
        corr = "-" if v["corr"] is None else f"{v['corr']:+.3f}"
        print(f"{name:28s} corr {corr}  signal {v['signal']:+.4f}  flat {v['flat_groups']}")
    print(f"wrote {out}/reward_alignment.json and reward_alignment.md")
    return 0
