"""`streampro bench diagnose --run DIR [--out OUT]`: why a checkpoint scores what it scores.

Evaluates the run's SFT and GRPO checkpoints (DIR/sft/hf, DIR/grpo/hf) on the dev split with
one rollout group (one vLLM start; checkpoints are synced in as training does) and reports:

1. `auroc`: per task, the rank AUROC of the threshold decoder's calibrated p(`</Response>`)
   at target chunks (where SFT is taught to respond to each answer: the first whole second
   at or after its best time) against every other chunk after the question;
2. `shuffle`: F1 with each stream's chunks permuted in time (questions, query times and
   answers unchanged): how much the policy reads the frames at all;
3. `bias_sweep`: sampled decoding with a constant bias on the `</Response>` logit
   (decode.response_bias); the best bias of the SFT policy is the baseline GRPO must beat;
4. `timing`: F1 with every matched response's content counted right, and S_acc among the
   matched responses, per task (bias 0);
5. `credit` (GRPO only, from the run's stored trajectories): the share of responses whose
   marginal StreamPro-F1 has the sign of the advantage their decision token was trained with
   (advantages recomputed from the stored rewards with the learner's own functions);
6. `length`: responses vs ground-truth answers per stream on dev and on dev streams 3x
   longer (synth.min/max_duration x3, their own split folder).

Writes OUT/diagnose.json and OUT/diagnose.png. The biases are decode.bias_sweep (empty:
0, -0.5, -1, -1.5, -2); bench.diagnose_dev_streams and bench.diagnose_long_streams set the
streams used (0 = all), taken evenly over the tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pyarrow.parquet as pq
import torch

from streampro.actors.api import RolloutGroupAPI
from streampro.actors.decode_tune import with_decode
from streampro.actors.policy_eval import PolicyEval, Predictions, mean_scores
from streampro.actors.records import trajectory_from_row
from streampro.actors.rollout import make_rollout_group
from streampro.bench.reward_alignment import trajectory_files
from streampro.cluster.local import init_cluster
from streampro.config import Config, atomic_write_text, load_config
from streampro.data.dialogue import plan_responses
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import load_split, split_manifest
from streampro.data.schema import load_manifest
from streampro.errors import UserError
from streampro.learners.credit import credit_inputs, decision_advantages
from streampro.learners.grpo_loss import group_advantages
from streampro.rewards.credit import add_credit
from streampro.rewards.f1 import greedy_matches, prf, score_predictions
from streampro.rewards.judges import AccJudge, eval_acc_judge
from streampro.rewards.scoring import s_time, sorted_answers
from streampro.types import RewardResult, Trajectory

BIASES = (0.0, -0.5, -1.0, -1.5, -2.0)
LONG_SCALE = 3.0  # stream length factor of the long split


# ---- pure metrics ------------------------------------------------------------------------


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann-Whitney U over
    average ranks); None when either side is empty."""
    if not len(pos) or not len(neg):
        return None
    x = np.concatenate([np.asarray(pos, float), np.asarray(neg, float)])  # [P + N]
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average ranks
    n_pos = len(pos)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * len(neg)))


def target_chunks(sample: dict, times: Sequence[float]) -> list[bool]:
    """Whether each decision time (a chunk's end) is where SFT is taught to respond: the
    first whole second at or after each answer's best time (`plan_responses`)."""
    plan, _ = plan_responses(sample["task"], sample["answers"], list(times))
    return [j in plan for j in range(len(times))]


def auroc_by_task(samples: list[dict], decisions: dict[str, list[dict]]) -> dict[str, Any]:
    """Pooled AUROC of p_response (target vs other chunks) per task and over all tasks."""
    pos: dict[str, list[float]] = defaultdict(list)
    neg: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        # only decisions after the question: before it there is nothing to answer
        rows = [
            r for r in decisions.get(s["id"], []) if float(r["time"]) > s.get("query_time", 0.0)
        ]
        targets = target_chunks(s, [float(r["time"]) for r in rows])
        for r, is_target in zip(rows, targets):
            for key in (s["task"], "all"):
                (pos if is_target else neg)[key].append(float(r["p_response"]))
    keys = sorted({s["task"] for s in samples}) + ["all"]
    return {k: {"auroc": auroc(pos[k], neg[k]), "targets": len(pos[k]), "others": len(neg[k])}
            for k in keys}  # fmt: skip


def shuffle_chunks(e: EncodedSample, seed: int) -> EncodedSample:
    """`e` with its chunks' frame inputs (codes and frames) permuted in time by a permutation
    seeded by (seed, sample id); times, question, query times and answers untouched."""
    rng = np.random.default_rng([seed, zlib.crc32(e.sample.id.encode())])
    perm = rng.permutation(len(e.times))  # [C]
    frames = None if e.frames is None else [e.frames[i] for i in perm]
    return dataclasses.replace(e, codes=[e.codes[i] for i in perm], frames=frames)


def timing_scores(samples: list[dict], preds: Predictions, judge: AccJudge) -> dict[str, Any]:
    """Per task: F1 with every matched response's content counted right (S = S_time) and
    the mean S_acc of the responses the judge was asked about; W-Avg of the timing F1."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # S, pred, gt, n
    contents: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        resp = preds.get(s["id"], [])
        matches, n_gt = greedy_matches(s, resp, judge)
        answers = sorted_answers(s)
        best = [0.0] * n_gt  # each answer keeps its best S_time, as kept_sum keeps its best S
        for r, m in zip(resp, matches):
            if m.item >= 0:
                a = answers[m.item]
                best[m.item] = max(best[m.item], s_time(float(r["time"]), a, a.tau_early,
                                                        a.tau_late))  # fmt: skip
            if m.content is not None:
                contents[s["task"]].append(m.content)
        acc[s["task"]] = [a + b for a, b in zip(acc[s["task"]], (sum(best), len(resp), n_gt, 1))]
    tasks: dict[str, dict[str, Any]] = {
        t: {"timing_f1": prf(v[0], int(v[1]), int(v[2]))[2], "n": int(v[3]),
            "content_acc": float(np.mean(contents[t])) if contents[t] else None,
            "matched": len(contents[t])}
        for t, v in sorted(acc.items())
    }  # fmt: skip
    n = sum(int(v[3]) for v in acc.values())
    w_avg = sum(prf(v[0], int(v[1]), int(v[2]))[2] * v[3] for v in acc.values()) / n if n else 0.0
    return {"tasks": tasks, "w_avg": w_avg}


def mean_timing(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`timing_scores` of several decodings: timing F1 averaged (as the F1 of the sampled
    evaluation is), S_acc pooled over every matched response of every decoding."""
    tasks: dict[str, dict[str, Any]] = {}
    for t in runs[0]["tasks"]:
        rows = [r["tasks"][t] for r in runs]
        matched = sum(x["matched"] for x in rows)
        right = sum(x["content_acc"] * x["matched"] for x in rows if x["matched"])
        tasks[t] = {"timing_f1": float(np.mean([x["timing_f1"] for x in rows])),
                    "content_acc": right / matched if matched else None,
                    "matched_per_decoding": matched / len(rows), "n": rows[0]["n"]}  # fmt: skip
    return {"tasks": tasks, "w_avg": float(np.mean([r["w_avg"] for r in runs]))}


def sign_agreement(marginals: Sequence[float], advantages: Sequence[float]) -> dict[str, Any]:
    """Share of responses whose marginal F1 and advantage have the same sign (-1, 0, +1), and
    the same share among those where both are non-zero."""
    m, a = np.sign(np.asarray(marginals, float)), np.sign(np.asarray(advantages, float))
    both = (m != 0) & (a != 0)
    return {
        "responses": len(m),
        "agree": float((m == a).mean()) if len(m) else None,
        "agree_nonzero": float((m[both] == a[both]).mean()) if both.any() else None,
        "nonzero": int(both.sum()),
        "zero_marginal": int((m == 0).sum()),
        "zero_advantage": int((a == 0).sum()),
    }


def response_counts(samples: list[dict], runs: list[Predictions]) -> dict[str, Any]:
    """Mean responses and ground-truth answers per stream, per task and overall."""
    rows: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in samples:
        n_resp = float(np.mean([len(p.get(s["id"], [])) for p in runs]))
        for key in (s["task"], "all"):
            rows[key].append((n_resp, len(s.get("answers") or [])))
    return {k: {"responses_per_stream": float(np.mean([r for r, _ in v])),
                "gt_per_stream": float(np.mean([g for _, g in v])), "streams": len(v)}
            for k, v in sorted(rows.items())}  # fmt: skip


# ---- credit sign agreement from stored trajectories ----------------------------------------


def run_credit_agreement(run: Path, cfg: Config) -> dict[str, Any]:
    """Sign agreement over the run's trajectories (kept groups: the ones trained on), the
    advantages recomputed from the stored rewards with the learner's functions under the
    run's grpo.credit, and under the other credit for comparison."""
    own = run / "config.yaml"
    rcfg = load_config(own, []) if own.is_file() else cfg
    samples = {s.id: s.to_dict() for s in load_manifest(split_manifest(rcfg, "train"))[0]}
    judge = eval_acc_judge(rcfg.eval, rcfg.reward)
    groups: dict[tuple[int, int, str], list[tuple[Trajectory, float]]] = defaultdict(list)
    for path in trajectory_files(run):
        for row in pq.read_table(path).to_pylist():
            traj = trajectory_from_row(row)
            if row.get("kept", True) and traj.sample_id in samples:
                groups[(row["step"], row.get("round", 0), traj.sample_id)].append(
                    (traj, float(row["reward"]))
                )
    g = rcfg.grpo
    marg: list[float] = []
    adv: dict[str, list[float]] = {"trajectory": [], "decision": []}
    for (_, _, sid), members in sorted(groups.items()):
        if len(members) != g.group_size:
            continue  # a partial group was not trained as one
        trajs = [t for t, _ in members]
        results = [add_credit(RewardResult(r, 0, 0, 0), samples[sid], t.responses(), judge)
                   for t, r in members]  # fmt: skip
        traj_adv, _ = group_advantages(
            torch.tensor([[r for _, r in members]]), mode=g.advantage, eps=g.adv_eps
        )  # [1, G]
        x = credit_inputs(trajs, results, len(trajs))
        dec_adv, _ = decision_advantages(x.reward, x.valid, horizon=g.credit_horizon)  # [1, G, C]
        for i, (t, res) in enumerate(zip(trajs, results)):
            chunks = [k for k, s in enumerate(t.steps) if s.decision == "response"]
            marg += res.credit_marginal
            adv["trajectory"] += [float(traj_adv[0, i])] * len(chunks)
            adv["decision"] += [float(dec_adv[0, i, k]) for k in chunks]
    return {
        "source": "recomputed from the stored rewards (trajectories/*.parquet, kept groups)",
        "credit_as_trained": g.credit,
        "groups": sum(len(v) == g.group_size for v in groups.values()),
        "as_trained": sign_agreement(marg, adv[g.credit]),
        **{f"if_{k}": sign_agreement(marg, v) for k, v in adv.items()},
    }


# ---- evaluation on one rollout group --------------------------------------------------------


def decode_with(cfg: Config, **fields: Any) -> Config:
    """`cfg` whose decoder has `fields` changed."""
    return with_decode(cfg, dataclasses.replace(cfg.decode, **fields))


def long_config(cfg: Config, scale: float = LONG_SCALE) -> Config:
    """`cfg` with synth streams `scale` times longer (their own split folder: its hash)."""
    s = cfg.synth
    longer = dataclasses.replace(
        s, min_duration=s.min_duration * scale, max_duration=s.max_duration * scale
    )
    return dataclasses.replace(cfg, synth=longer)


def f1_of(scores: dict[str, Any]) -> dict[str, Any]:
    return {"w_avg": scores["w_avg"], "tasks": {t: v["f1"] for t, v in scores["tasks"].items()}}


def sampled(
    rollout: RolloutGroupAPI, cfg: Config, encoded: list[EncodedSample], bias: float
) -> tuple[list[Predictions], dict[str, Any]]:
    """The evaluation's sampled decodings (eval.samples_per_stream seeded samples) with
    `bias` on the `</Response>` logit, and their mean scores."""
    pe = PolicyEval.from_config(decode_with(cfg, mode="sample", response_bias=bias))
    runs = pe.predict(rollout, encoded)
    rows = [e.sample.to_dict() for e in encoded]
    return runs, mean_scores([score_predictions(rows, p, acc_judge=pe.judge) for p in runs])


def threshold_auroc(
    rollout: RolloutGroupAPI, cfg: Config, dev: list[EncodedSample], out: Path
) -> dict[str, Any]:
    """Threshold decoding of dev (predictions with every chunk's p kept in `out`), AUROC."""
    scores = PolicyEval.from_config(decode_with(cfg, mode="threshold")).run(
        rollout, dev, predictions_out=out
    )
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    decisions = {r["id"]: r.get("decisions", []) for r in rows}
    return {"auroc": auroc_by_task([e.sample.to_dict() for e in dev], decisions),
            "threshold_f1": f1_of(scores), "predictions": str(out)}  # fmt: skip


def diagnose_checkpoint(
    rollout: RolloutGroupAPI,
    cfg: Config,
    splits: dict[str, list[EncodedSample]],
    out: Path,
    name: str,
    biases: list[float],
) -> dict[str, Any]:
    """Every evaluation-side diagnostic of the checkpoint the rollout group now holds."""
    dev, long = splits["dev"], splits["long"]
    rows = [e.sample.to_dict() for e in dev]
    res: dict[str, Any] = {"seconds": {}}
    t = time.perf_counter()
    res |= threshold_auroc(rollout, cfg, dev, out / f"{name}-threshold-dev.jsonl")
    res["seconds"]["threshold"] = time.perf_counter() - t
    print(f"[{name}] AUROC all {res['auroc']['all']['auroc']}", flush=True)
    sweep, real_runs = [], None
    for b in sorted({0.0, *biases}, reverse=True):  # bias 0 always: the real F1 of the rest
        t = time.perf_counter()
        runs, sc = sampled(rollout, cfg, dev, b)
        real_runs = runs if b == 0.0 else real_runs
        counts = response_counts(rows, runs)["all"]
        sweep.append(
            {"bias": b, **f1_of(sc), "responses_per_stream": counts["responses_per_stream"]}
        )
        res["seconds"][f"bias {b:g}"] = time.perf_counter() - t
        print(f"[{name}] bias {b:+.2f}: W-Avg {100 * sc['w_avg']:.1f}, "
              f"{counts['responses_per_stream']:.2f} responses/stream", flush=True)  # fmt: skip
    assert real_runs is not None
    real = next(s for s in sweep if s["bias"] == 0.0)
    res["bias_sweep"] = sweep
    t = time.perf_counter()
    _, shuf_scores = sampled(rollout, cfg, [shuffle_chunks(e, cfg.run.seed) for e in dev], 0.0)
    shuf = f1_of(shuf_scores)
    res["seconds"]["shuffle"] = time.perf_counter() - t
    res["shuffle"] = {"real": {k: real[k] for k in ("w_avg", "tasks")}, "shuffled": shuf,
                      "drop_w_avg": real["w_avg"] - shuf["w_avg"],
                      "drop_tasks": {k: v - shuf["tasks"].get(k, 0.0)
                                     for k, v in real["tasks"].items()}}  # fmt: skip
    print(f"[{name}] shuffled W-Avg {100 * shuf['w_avg']:.1f} (real {100 * real['w_avg']:.1f})")
    judge = PolicyEval.from_config(cfg).judge
    res["timing"] = mean_timing([timing_scores(rows, p, judge) for p in real_runs])
    t = time.perf_counter()
    long_runs, long_sc = sampled(rollout, cfg, long, 0.0)
    res["seconds"]["long"] = time.perf_counter() - t
    res["length"] = {
        "dev": response_counts(rows, real_runs),
        "long": response_counts([e.sample.to_dict() for e in long], long_runs),
        "long_f1": f1_of(long_sc),
    }
    print(f"[{name}] long streams: W-Avg {100 * long_sc['w_avg']:.1f}, responses/GT "
          f"{res['length']['long']['all']['responses_per_stream']:.2f}/"
          f"{res['length']['long']['all']['gt_per_stream']:.2f}", flush=True)  # fmt: skip
    return res


def settings(cfg: Config) -> tuple[list[float], int, int]:
    """(biases, dev streams, long streams) of the bench (0 streams = all)."""
    b = cfg.bench
    return (
        list(cfg.decode.bias_sweep) or list(BIASES),
        b.diagnose_dev_streams,
        b.diagnose_long_streams,
    )


def spread(encoded: list[EncodedSample], n: int) -> list[EncodedSample]:
    """At most n streams, round-robin over the tasks (a split lists its tasks in blocks)."""
    if not n or n >= len(encoded):
        return encoded
    seen: dict[str, int] = defaultdict(int)
    rank = []  # (index within its task, position): the first of every task, then the second
    for i, e in enumerate(encoded):
        rank.append((seen[e.sample.task], i))
        seen[e.sample.task] += 1
    return [encoded[i] for _, i in sorted(rank)[:n]]


def run(
    cfg: Config, checkpoints: dict[str, str], out: Path, *, run_dir: Path | None = None
) -> dict[str, Any]:
    """diagnose.json's content: every checkpoint on one rollout group (synced in turn)."""
    biases, n_dev, n_long = settings(cfg)
    t0 = time.perf_counter()
    dev = spread(load_split(cfg, "dev"), n_dev or cfg.eval.max_samples)
    long = spread(load_split(long_config(cfg), "dev"), n_long or cfg.eval.max_samples)
    print(f"dev: {len(dev)} streams, long: {len(long)} streams ({LONG_SCALE:g}x)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    init_cluster(cfg, "eval")
    names = list(checkpoints)
    rollout = make_rollout_group(cfg, checkpoints[names[0]])  # the one engine start
    result: dict[str, Any] = {"config": {"biases": biases, "long_scale": LONG_SCALE,
                                         "samples_per_stream": cfg.eval.samples_per_stream,
                                         "dev_streams": len(dev), "long_streams": len(long)},
                              "checkpoints": dict(checkpoints)}  # fmt: skip
    try:
        for version, name in enumerate(names):
            if version:
                rollout.sync_weights(version=version, source=checkpoints[name])
            print(f"== {name}: {checkpoints[name]}", flush=True)
            result[name] = diagnose_checkpoint(
                rollout, cfg, {"dev": dev, "long": long}, out, name, biases
            )
    finally:
        rollout.shutdown()
    if run_dir is not None and "grpo" in result:
        result["grpo"]["credit"] = run_credit_agreement(run_dir, cfg)
        print(f"credit sign agreement: {result['grpo']['credit']['as_trained']}", flush=True)
    if "sft" in result:  # the best response rate alone: what GRPO has to beat
        best = max(result["sft"]["bias_sweep"], key=lambda s: s["w_avg"])
        result["baseline"] = {"sft_best_bias": best["bias"], "w_avg": best["w_avg"]}
        if "grpo" in result:
            grpo_real = result["grpo"]["shuffle"]["real"]["w_avg"]
            result["baseline"]["grpo_w_avg"] = grpo_real
            result["baseline"]["grpo_beats_it"] = grpo_real > best["w_avg"]
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "diagnose.json", json.dumps(result, indent=2) + "\n")
    plot(result, names, out / "diagnose.png")
    return result


def plot(result: dict[str, Any], names: list[str], path: Path) -> None:
    """Four panels: AUROC per task, real vs shuffled F1, the bias sweep, responses vs GT."""
    plt.switch_backend("Agg")  # headless: no display on the machines that run benches
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    tasks = [t for t in result[names[0]]["auroc"] if t != "all"]
    x, w = np.arange(len(tasks) + 1), 0.8 / len(names)
    for i, n in enumerate(names):
        au = result[n]["auroc"]
        ax[0, 0].bar(x + i * w, [au[t]["auroc"] or 0.0 for t in [*tasks, "all"]], w, label=n)
        sh = result[n]["shuffle"]
        real = [sh["real"]["tasks"].get(t, 0.0) for t in tasks] + [sh["real"]["w_avg"]]
        shuf = [sh["shuffled"]["tasks"].get(t, 0.0) for t in tasks] + [sh["shuffled"]["w_avg"]]
        ax[0, 1].bar(x + i * w, real, w, label=f"{n} real", alpha=0.9)
        ax[0, 1].bar(
            x + i * w, shuf, w * 0.5, label=f"{n} shuffled", color="k", alpha=0.4 + 0.3 * i
        )
        sw = result[n]["bias_sweep"]
        ax[1, 0].plot([s["bias"] for s in sw], [s["w_avg"] for s in sw], marker="o", label=n)
        ln = result[n]["length"]
        for j, split in enumerate(("dev", "long")):
            ax[1, 1].bar(
                j + i * w,
                ln[split]["all"]["responses_per_stream"],
                w,
                label=f"{n}" if not j else None,
                color=f"C{i}",
            )
    for n in names[:1]:
        ln = result[n]["length"]
        gts = [ln[s]["all"]["gt_per_stream"] for s in ("dev", "long")]
        ax[1, 1].scatter(
            np.arange(2) + w / 2, gts, color="k", marker="_", s=600, label="GT", zorder=3
        )
    ax[0, 0].axhline(0.5, color="gray", lw=0.8)
    for a, title, labels in (
        (ax[0, 0], "AUROC of p(</Response>) at target chunks", [*tasks, "all"]),
        (ax[0, 1], "F1: real vs chunks shuffled", [*tasks, "W-Avg"]),
    ):
        a.set_xticks(x + w * (len(names) - 1) / 2, labels, fontsize=8)
        a.set_title(title, fontsize=10)
        a.legend(fontsize=7)
    ax[1, 0].set(xlabel="bias on </Response> logit", ylabel="W-Avg", title="bias sweep (sampled)")
    ax[1, 0].legend(fontsize=7)
    ax[1, 1].set_xticks(np.arange(2) + w / 2, ["dev", f"{LONG_SCALE:g}x longer"])
    ax[1, 1].set(ylabel="per stream", title="responses vs GT answers per stream")
    ax[1, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(cfg: Config, args: argparse.Namespace) -> int:
    if not getattr(args, "run", None):
        raise UserError("bench diagnose needs --run DIR (a train run folder: sft/hf, grpo/hf)")
    run_dir = Path(args.run)
    checkpoints = {n: str(run_dir / n / "hf") for n in ("sft", "grpo")}
    checkpoints = {n: p for n, p in checkpoints.items() if Path(p).is_dir()}
    if not checkpoints:
        raise UserError(f"{run_dir}: neither sft/hf nor grpo/hf")
    out = Path(args.out or "runs/bench-diagnose")
    result = run(cfg, checkpoints, out, run_dir=run_dir)
    print(f"wrote {out / 'diagnose.json'} and diagnose.png ({result['seconds']:.0f} s)")
    return 0
