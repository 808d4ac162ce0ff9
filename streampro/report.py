"""`streampro report RUN_DIR`: curves, timelines and report.md of a training run.

Reads what the stages wrote (metrics.jsonl of sft/ and grpo/, summary.json, predictions/)
and draws PNGs with matplotlib (Agg backend: no display needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streampro.config import Config, atomic_write_text
from streampro.data.schema import Sample, load_manifest
from streampro.errors import UserError
from streampro.metrics import read_metrics
from streampro.tasks import resolve_answer

CURVES = {
    "grpo": [
        "reward/total",
        "reward/fmt",
        "reward/turn",
        "reward/traj",
        "rollout/response_rate",
        "learn/kl",
        "learn/entropy",
        "learn/clip_frac",
        "val/w_avg",
    ],
    "sft": [
        "train/loss",
        "train/decision_acc",
        "train/silence_recall",
        "train/response_recall",
        "train/w_response",
        "val/w_avg",
    ],
}


def plot_curves(rows: list[dict], keys: list[str], out: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(
            xs, ys, marker="." if len(pts) < 30 else None, alpha=0.45 if len(pts) >= 10 else 1.0
        )
        if len(pts) >= 10:  # noisy per-step values: draw a moving average over them
            ax.plot(xs, moving_average(ys, 5), color="C1", label="mean of 5")
            ax.legend(fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def moving_average(ys: list[float], k: int) -> list[float]:
    """Mean of the last k values at each point (fewer at the start)."""
    return [
        sum(ys[max(0, i - k + 1) : i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(ys))
    ]


def plot_timelines(
    manifest: Path, predictions: dict[str, dict[str, list[dict]]], out: Path, max_samples: int = 7
) -> Path | None:
    """Ground-truth windows (bars) against each policy's responses (ticks), a few samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, _ = load_manifest(manifest, skip_bad=True)
    by_task: dict[str, Sample] = {}
    for s in samples:  # one sample per task first, so the plot shows different tasks
        by_task.setdefault(s.task, s)
    samples = list(by_task.values())[:max_samples]
    if not samples or not predictions:
        return None
    fig, axes = plt.subplots(len(samples), 1, figsize=(10, 1.3 + 0.9 * len(samples)), squeeze=False)
    for ax, s in zip(axes[:, 0], samples):
        for a in s.to_dict()["answers"]:
            r = resolve_answer(a, s.task)
            ax.axvspan(r.lo, r.hi, ymin=0.0, ymax=1.0, color="tab:green", alpha=0.25)
            ax.axvline(r.best, color="tab:green", lw=1)
        for i, (name, preds) in enumerate(sorted(predictions.items())):
            times = [p["time"] for p in preds.get(s.id, [])]
            ax.scatter(times, [i + 1] * len(times), marker="|", s=120, color=f"C{i}", label=name)
        ax.set_yticks(range(1, len(predictions) + 1), sorted(predictions), fontsize=8)
        ax.set_ylim(0.3, len(predictions) + 0.7)
        ax.set_xlim(0, s.duration or max([1.0] + [r for r in ax.get_xlim()]))
        ax.set_title(f"{s.id} ({s.task}): {s.question[:70]}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds (green: ground-truth window and best time)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def score_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per policy, StreamPro-F1 x100 per task and dimension, and
    PAUC x100 (omega 0.5) over all samples."""
    tasks = sorted({t for s in rows.values() for t in s.get("tasks", {})})
    dims = [
        d for d in ("PU", "TR", "PA") if any(d in s.get("dimensions", {}) for s in rows.values())
    ]
    head = ["policy", *tasks, *dims, "avg", "w_avg", "pauc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        vals = [s["tasks"].get(t, {}).get("f1") for t in tasks] + [
            s["dimensions"].get(d) for d in dims
        ]
        vals += [s.get("avg"), s.get("w_avg"), s.get("pauc")]
        lines.append(
            "| "
            + " | ".join([name] + ["-" if v is None else f"{100 * v:.1f}" for v in vals])
            + " |"
        )
    return "\n".join(lines)


def decoder_table(summary: dict) -> str:
    """The policies under each decoder on test: sampled (the policy's own rate), the SFT
    policy with its best `</Response>` logit bias, and the threshold decoder tuned on dev."""
    rows: dict[str, dict] = {}
    for stage in ("sft", "grpo"):
        rows[f"{stage} (sample)"] = summary[stage]["test"]
        for name, d in summary["decoders"].get(stage, {}).items():
            knob = d["decode"]["response_bias"] if name == "bias" else d["decode"]["threshold"]
            rows[f"{stage} ({name} {knob:g})"] = d["test"]
    return score_table(rows)


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    parts = [f"# StreamPro-RL run `{run_dir.name}`", ""]
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        for split in ("test", "val"):
            rows = {"always_silent": summary["baselines"]["always_silent"][split]}
            for stage in ("sft", "grpo"):
                if split in summary.get(stage, {}):
                    rows[stage] = summary[stage][split]
            parts += [f"## StreamPro-F1 (x100), {split} split", "", score_table(rows), ""]
        if summary.get("decoders"):
            parts += ["## Decoders tuned on dev, test split", "", decoder_table(summary), ""]
        parts += ["## Time per phase (s)", "", "| phase | seconds |", "|---|---|"]
        parts += [f"| {k} | {v:.1f} |" for k, v in summary.get("timings", {}).items()] + [""]
    for stage, metric_rows in _stage_metrics(run_dir):
        if stage == "grpo":
            parts += phase_table(metric_rows)
        if plot_curves(
            metric_rows, CURVES[stage], run_dir / f"{stage}_curves.png", f"{stage} curves"
        ):
            parts += [f"## {stage.upper()} curves", "", f"![{stage}]({stage}_curves.png)", ""]
    pred_dir = run_dir / "predictions"
    manifest = run_dir / "predictions" / "val_manifest.txt"
    if manifest.is_file():
        preds = {p.stem.split("-")[0]: _read_preds(p) for p in sorted(pred_dir.glob("*-val.jsonl"))}
        if plot_timelines(Path(manifest.read_text().strip()), preds, run_dir / "timelines.png"):
            parts += ["## Val timelines", "", "![timelines](timelines.png)", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


PHASES = ("rollout", "reward", "wait", "learn", "sync", "step")


def phase_table(rows: list[dict]) -> list[str]:
    """Markdown lines: mean seconds per GRPO step of each phase (async: rollout and reward
    overlap learning, `wait` is what the loop waited for them)."""
    rows = [r for r in rows if "time/step" in r]  # training steps (not the step-0 val row)
    if not rows:
        return []
    cols = [p for p in PHASES if any(f"time/{p}" in r for r in rows)]
    means = [sum(r.get(f"time/{p}", 0.0) for r in rows) / len(rows) for p in cols]
    return [
        "## GRPO time per step (s, mean over steps)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        "| " + " | ".join(f"{m:.2f}" for m in means) + " |",
        "",
    ]


def _stage_metrics(run_dir: Path) -> list[tuple[str, list[dict]]]:
    """(stage, metric rows) of a `train` run (sft/, grpo/) or of a single-stage run folder."""
    out = [(stage, read_metrics(run_dir / stage)) for stage in ("sft", "grpo")]
    own = read_metrics(run_dir)
    if own:
        out.append(("grpo" if any("reward/total" in r for r in own) else "sft", own))
    return [(stage, rows) for stage, rows in out if rows]


def _read_preds(path: Path) -> dict[str, list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r["responses"] for r in rows}


def main(cfg: Config, args: argparse.Namespace) -> int:
    print(f"wrote {write_report(args.run_dir)}")
    return 0
