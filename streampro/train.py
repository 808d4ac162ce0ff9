"""`streampro train`: the main job. Synth (cached) -> CB-Stream SFT -> GRPO -> test evaluation
-> summary.json and report.md in the run folder. `make demo` runs it on configs/default.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray

from streampro.actors.api import RolloutGroupAPI
from streampro.actors.decode import save_tuned
from streampro.actors.decode_tune import (
    bias_candidates,
    pick_best,
    threshold_candidates,
    with_decode,
)
from streampro.actors.policy_eval import PolicyEval, always_silent
from streampro.actors.rollout import make_rollout_group
from streampro.cluster.local import init_cluster
from streampro.config import Config, atomic_write_text, make_run_dir
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import SPLITS, ensure_split, load_split, policy_folder
from streampro.learners.group import rank_cpus
from streampro.learners.grpo_loop import run_grpo
from streampro.learners.sft import run_sft
from streampro.plan import run_plan
from streampro.report import write_report


def main(cfg: Config, args: argparse.Namespace) -> int:
    run_plan(cfg)  # a config that cannot fit stops here, in one line, before anything starts
    run_dir = make_run_dir(cfg, "train")
    print(f"run folder: {run_dir}")
    init_cluster(cfg, "train")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    tuning = bool(cfg.decode.tune_thresholds or cfg.decode.bias_sweep)
    for split in (*SPLITS, "dev") if tuning else SPLITS:
        ensure_split(cfg, split)
    val, test = (
        load_split(cfg, "val", limit=cfg.eval.max_samples),
        load_split(cfg, "test", limit=cfg.eval.max_samples),
    )
    dev = load_split(cfg, "dev") if tuning else []
    timings["data"] = time.perf_counter() - t

    # One rollout group serves every evaluation and GRPO: engines start once, then weights
    # are synced in place (SFT -> GRPO versions), so the run pays one vLLM start-up. Where
    # both fit at once, that start-up (~40 s of imports in vLLM's processes) runs behind SFT.
    early = _engines_fit_beside_sft(cfg)
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(make_rollout_group, cfg, policy_folder(cfg)) if early else None
        t = time.perf_counter()
        sft = run_sft(cfg, run_dir / "sft", evaluate=False)  # evaluated below, on the engines
        timings["sft"] = time.perf_counter() - t
        t = time.perf_counter()
        rollout = starting.result() if starting else make_rollout_group(cfg, sft["hf"])
        if starting:
            rollout.sync_weights(version=0, source=sft["hf"])
        timings["engine_start"] = time.perf_counter() - t  # what SFT did not hide

    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    atomic_write_text(pred_dir / "val_manifest.txt", str(ensure_split(cfg, "val").resolve()))

    policy_eval = PolicyEval.from_config(cfg)

    def scores_of(stage: str, split: str) -> dict:
        enc = val if split == "val" else test
        return policy_eval.run(rollout, enc, predictions_out=pred_dir / f"{stage}-{split}.jsonl")

    t = time.perf_counter()
    sft_scores = {split: scores_of("sft", split) for split in ("val", "test")}
    timings["eval_sft"] = time.perf_counter() - t
    t = time.perf_counter()
    decoders = {"sft": tuned_decoders(cfg, rollout, dev, test, sft["hf"], pred_dir / "sft")}
    timings["tune_sft"] = time.perf_counter() - t

    t = time.perf_counter()
    grpo = run_grpo(
        cfg, run_dir / "grpo", init_model=sft["hf"], rollout=rollout, start_val=sft_scores["val"]
    )  # the SFT policy's val scores: GRPO's step 0
    timings["grpo"] = time.perf_counter() - t

    # GRPO's last val pass scored the final weights (the engines still hold them): reuse it.
    shutil.copyfile(run_dir / "grpo" / "val_predictions.jsonl", pred_dir / "grpo-val.jsonl")
    t = time.perf_counter()
    grpo_scores = {"val": grpo["val"], "test": scores_of("grpo", "test")}
    timings["eval_grpo"] = time.perf_counter() - t
    t = time.perf_counter()
    no_bias = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, bias_sweep=[]))
    decoders["grpo"] = tuned_decoders(no_bias, rollout, dev, test, grpo["hf"], pred_dir / "grpo")
    timings["tune_grpo"] = time.perf_counter() - t
    rollout.shutdown()

    summary = {
        "sft": sft_scores,
        "grpo": grpo_scores,
        "decoders": decoders,
        "baselines": {"always_silent": {"val": always_silent(val), "test": always_silent(test)}},
        "timings": timings,
        "engines_started_during_sft": early,
        "checkpoints": {"sft": sft["hf"], "grpo": grpo["hf"]},
    }
    atomic_write_text(
        run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n"
    )
    write_report(run_dir)
    print(json.dumps({"run_dir": str(run_dir), "test_w_avg": _headline(summary)}))
    return 0


def tuned_decoders(
    cfg: Config,
    rollout: RolloutGroupAPI,
    dev: list[EncodedSample],
    test: list[EncodedSample],
    checkpoint: str,
    pred_prefix: Path,
) -> dict:
    """The engines' policy under the decoders tuned on dev: {"threshold": ..., "bias": ...}
    with the dev rows of each sweep, the pick, and its test scores. The threshold pick is
    saved with `checkpoint` (eval and Serve read it there)."""
    out: dict = {}
    sweeps = (
        ("bias", bias_candidates(cfg.decode)),
        ("threshold", threshold_candidates(cfg.decode)),
    )
    for name, candidates in sweeps:
        if not candidates:
            continue
        print(f"{pred_prefix.name}: tuning the {name} decoder on {len(dev)} dev streams")
        best, rows = pick_best(cfg, rollout, dev, candidates)
        test_scores = PolicyEval.from_config(with_decode(cfg, best)).run(
            rollout, test, predictions_out=f"{pred_prefix}-{name}-test.jsonl"
        )
        if name == "threshold":
            save_tuned(checkpoint, best, stats={"dev": rows})
        out[name] = {"decode": dataclasses.asdict(best), "dev": rows, "test": test_scores}
    return out


def _engines_fit_beside_sft(cfg: Config) -> bool:
    """Whether the rollout engines can start during SFT: CPU-only (on GPUs SFT may hold the
    device an engine needs) and the engines' CPUs plus SFT's fit the local Ray cluster."""
    r, lc = cfg.rollout, cfg.learner
    if r.num_gpus or lc.num_gpus:
        return False
    sft_cpus = 0.0 if lc.in_process else lc.num_ranks * rank_cpus(cfg, "sft")
    return r.num_actors * r.num_cpus + sft_cpus <= ray.cluster_resources().get("CPU", 0.0)


def _headline(summary: dict) -> dict[str, float]:
    """Test W-Avg of always-silent, SFT and GRPO: the line `make demo` ends with."""
    return {
        "always_silent": summary["baselines"]["always_silent"]["test"]["w_avg"],
        "sft": summary["sft"]["test"]["w_avg"],
        "grpo": summary["grpo"]["test"]["w_avg"],
    }
