"""`streampro bench grpo-async`: the same GRPO run with and without rollout/learn overlap."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from streampro.cluster.local import init_cluster
from streampro.config import Config
from streampro.data.pipeline import policy_folder
from streampro.learners.grpo_loop import run_grpo
from streampro.metrics import read_metrics

PHASES = ("time/rollout", "time/reward", "time/wait", "time/learn", "time/sync")


def run(cfg: Config, out_path: str) -> dict[str, Any]:
    init_cluster(cfg, "grpo")
    model = policy_folder(cfg)
    root = Path(out_path).with_suffix("")
    result: dict[str, Any] = {
        "config": {
            "group_size": cfg.grpo.group_size,
            "batch_samples": cfg.grpo.batch_samples,
            "max_steps": cfg.grpo.max_steps,
        }
    }
    for mode in ("sync", "async"):
        c = copy.deepcopy(cfg)
        c.grpo.async_mode = mode == "async"
        c.grpo.eval_every = 0
        c.run.resume = "never"
        run_dir = root / mode
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        t = time.perf_counter()
        run_grpo(c, run_dir, init_model=model)
        rows = read_metrics(run_dir)
        # Steady state: the first step includes warm-up in both modes.
        steady = [r["time/step"] for r in rows[1:]] or [r["time/step"] for r in rows]
        result[mode] = {
            "wall_s": time.perf_counter() - t,
            "step_s_mean": sum(steady) / len(steady),
            "phase_s_mean": {k: sum(r[k] for r in rows) / len(rows) for k in PHASES},
            "reward_mean": sum(r["reward/total"] for r in rows) / len(rows),
        }
    result["speedup_step"] = result["sync"]["step_s_mean"] / result["async"]["step_s_mean"]
    return result
