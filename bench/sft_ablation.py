"""`streampro bench sft-ablation`: CE vs focal vs CB-Stream SFT at the same budget, over seeds.

Each (loss, seed) is one full `run_sft` (train, export, greedy val evaluation) in its own run
folder next to the output JSON; runs that finished are reused, so an interrupted benchmark
continues. Writes a Markdown table (mean and sd of val w_avg and per-dimension F1) and a bar
plot beside the JSON. Paper (3B, StreamPro-Bench W-Avg): CE 6.6, focal 14.2, CB-Stream 16.3.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

from streampro.cluster.local import init_cluster
from streampro.config import Config, atomic_write_text
from streampro.learners.sft import run_sft

LOSSES = ("ce", "focal", "cb_stream")
PAPER_W_AVG = {"ce": 6.6, "focal": 14.2, "cb_stream": 16.3}


def _one_run(cfg: Config, loss: str, seed: int, root: Path) -> dict[str, Any]:
    run_dir = root / f"{loss}-seed{seed}"
    done = run_dir / "sft_summary.json"
    if done.is_file():
        summary: dict[str, Any] = json.loads(done.read_text())
        if "val" in summary:
            return summary
    c = copy.deepcopy(cfg)
    c.sft.loss = loss
    c.run.seed = seed  # data order, sampling and the tiny policy's initial weights
    c.run.dir = str(run_dir)
    c.run.resume = "auto"
    return run_sft(c, run_dir)


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per loss, F1 x100 over its runs: {"w_avg": [mean, sd], "dims": {D: [mean, sd]}, "runs"}."""
    table: dict[str, dict[str, Any]] = {}
    for loss, runs in results.items():
        dims = sorted({d for r in runs for d in r["val"]["dimensions"]})
        table[loss] = {
            "w_avg": list(_mean_sd([100 * r["val"]["w_avg"] for r in runs])),
            "dims": {
                d: list(_mean_sd([100 * r["val"]["dimensions"].get(d, 0.0) for r in runs]))
                for d in dims
            },
            "runs": len(runs),
        }
    return table


def markdown(table: dict[str, dict[str, Any]], silent_w_avg: float) -> str:
    dims = sorted({d for row in table.values() for d in row["dims"]})
    head = "| loss | val W-Avg | " + " | ".join(dims) + " | paper W-Avg (3B) |"
    lines = [head, "|" + "---|" * (len(dims) + 3)]
    for loss, row in table.items():
        cells = [f"{row['w_avg'][0]:.1f} ± {row['w_avg'][1]:.1f}"]
        cells += [f"{row['dims'][d][0]:.1f} ± {row['dims'][d][1]:.1f}" for d in dims]
        lines.append(
            f"| {loss} | " + " | ".join(cells) + f" | {PAPER_W_AVG.get(loss, float('nan'))} |"
        )
    lines.append(
        f"\nAlways-silent baseline: val W-Avg {100 * silent_w_avg:.1f}. "
        f"F1 x100, mean ± sd over {max(r['runs'] for r in table.values())} seed(s)."
    )
    return "\n".join(lines) + "\n"


def plot(table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib  # lazy: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(table)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(
        losses,
        [table[k]["w_avg"][0] for k in losses],
        yerr=[table[k]["w_avg"][1] for k in losses],
        capsize=4,
        color=["#999999", "#6baed6", "#2171b5"][: len(losses)],
    )
    ax.set_ylabel("val W-Avg F1 (x100)")
    ax.set_title("SFT loss ablation")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run(cfg: Config, out_path: str) -> dict[str, Any]:
    """Train every loss x seed (cfg.bench.seeds), then write OUT.md and OUT.png beside OUT."""
    out = Path(out_path)
    root = out.with_suffix("")  # runs/bench-sft-ablation/ next to runs/bench-sft-ablation.json
    root.mkdir(parents=True, exist_ok=True)
    init_cluster(cfg, "sft")
    results = {
        loss: [_one_run(cfg, loss, seed, root) for seed in cfg.bench.seeds] for loss in LOSSES
    }
    table = summarize(results)
    silent = results[LOSSES[0]][0]["always_silent"]["w_avg"]
    atomic_write_text(out.with_suffix(".md"), markdown(table, silent))
    plot(table, out.with_suffix(".png"))
    return {
        "table": table,
        "always_silent_w_avg": 100 * silent,
        "paper_w_avg": PAPER_W_AVG,
        "seeds": list(cfg.bench.seeds),
        "runs": {loss: [r["hf"] for r in runs] for loss, runs in results.items()},
        "budget": {
            "epochs": cfg.sft.epochs,
            "max_steps": cfg.sft.max_steps,
            "global_batch": cfg.sft.global_batch,
            "lr": cfg.sft.lr,
        },
    }
