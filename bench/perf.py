"""`streampro bench perf --out DIR`: where the time goes, every ratio measured side by side.

One process tree: each role's measures run in a spawned child process (learner, rollout,
reward, grpo), one after another, so their peak RSS is the role's own. Sections:
  peak      the machine's matmul GFLOP/s, fp32 and bf16, taken first;
  learner   tokens/s and MFU (model FLOPs / time / peak of the dtype in use) of SFT and GRPO
            updates on the tiny policy and a ~30 M-parameter bench size: packed (varlen) vs
            padded rows, fp32 vs bf16 (bf16 only where its peak is at least half fp32's),
            and the dense reference path (dense mask, full-vocab logprobs, 4-row
            micro-batches); each case is a `make_learner_group` of the config with the
            case's learner settings;
  rollout   decisions/s of vLLM with and without prefix caching and of a batched
            transformers KV-cache loop (bench/hf_batched.py), same streams and steps (the
            tiny policy at 64 streams); and of the plain transformers loop that
            runs streams one after another (actors/hf_loop.py, 2 streams give its rate);
            each in its steady state (bench/rollout.py `timed_pass`, `engine_warm_up`);
  sync      weight-sync seconds (HF export + engine reload) against model size;
  grpo      one GRPO step's phases, sync vs async (bench/grpo_async.py), and each role's
            busy share of the step;
  reward    reward-pool items/s (rule judges, in process);
  rss_mb    peak RSS of each role's process (with its children: vLLM's engine core).
Writes perf.json and perf.md (table + plots), each atomically. `--quick` shrinks every size
and skips the sections that start vLLM or Ray (marked "skipped" in the JSON).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from streampro.actors.api import Sampling
from streampro.actors.episode import StreamEpisode, sample_chunks
from streampro.bench import grpo_async
from streampro.bench.rollout import (
    HF_STREAMS,
    _local_group,
    _measure,
    batched_hf_loop,
    engine_warm_up,
    perturbed_copy,
    sequential_hf_run,
    silence_biased_policy,
    synthetic_streams,
    timed_pass,
)
from streampro.config import Config, atomic_write_text
from streampro.data.dialogue import decision_ids
from streampro.data.pipeline import policy_folder
from streampro.data.window import Window
from streampro.learners.api import Batch
from streampro.learners.attention import matmul_gflops, pick_precision
from streampro.learners.group import make_learner_group
from streampro.learners.packing import PackItem, collate, plan_rows
from streampro.rewards.pool import InProcessRewardPool
from streampro.tiny import resolve_policy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from streampro.actors.rollout import LocalRolloutGroup

# ~30 M parameters (10 layers x 3.0 M + embeddings) of the built-in Qwen2 architecture
BENCH_30M = {
    "hidden_size": 512,
    "num_layers": 10,
    "num_heads": 8,
    "num_kv_heads": 2,
    "intermediate_size": 1536,
}
QUICK_SMALL = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 128,
}


def sizes(cfg: Config, quick: bool) -> dict[str, dict[str, int]]:
    """Policy shapes measured: the configured tiny policy and the bench size."""
    p = cfg.policy
    tiny = {k: getattr(p, k) for k in BENCH_30M}
    return {"tiny": tiny, "bench30m" if not quick else "small": QUICK_SMALL if quick else BENCH_30M}


def build_policy(cfg: Config, shape: dict[str, int], cache_dir: str) -> str:
    p = cfg.policy
    return resolve_policy(
        "tiny",
        cache_dir=cache_dir,
        codebook_size=cfg.data.codebook_size,
        vocab_size=p.vocab_size,
        max_position_embeddings=p.max_position_embeddings,
        init_seed=cfg.run.seed,
        **shape,
    )


def _peak_rss_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "children": round(kids, 1)}


Section = Callable[..., dict[str, Any]]
"""A section's measure: JSON-able results (run in its own process by `in_child`)."""


def in_child(fn: Section, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run fn in a fresh spawned process (one role at a time); adds its peak RSS."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(_child, fn, args, kwargs).result()


def _child(fn: Section, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = fn(*args, **kwargs)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# ---- peak -----------------------------------------------------------------------------------


def peak_section(quick: bool) -> dict[str, float]:
    """Square-matmul GFLOP/s, fp32 and bf16 timed in alternation, best of 5 short trials
    (a busy neighbour lowers a trial; the best is the machine's)."""
    n, sec, trials = (256, 0.05, 2) if quick else (1024, 0.3, 5)
    fp32 = bf16 = 0.0
    for _ in range(trials):
        fp32 = max(fp32, matmul_gflops(torch.float32, n=n, seconds=sec))
        probe = matmul_gflops(torch.bfloat16, n=256, seconds=0.0)
        if probe < 0.1 * fp32:  # no fast bf16 here: do not spend seconds timing it
            bf16 = max(bf16, probe)
            continue
        bf16 = max(bf16, matmul_gflops(torch.bfloat16, n=n, seconds=sec))
    return {
        "fp32_gflops": round(fp32, 2),
        "bf16_gflops": round(bf16, 2),
        "threads": torch.get_num_threads(),
    }


# ---- learner --------------------------------------------------------------------------------


class LearnerCase(TypedDict):
    """One measured learner configuration."""

    name: str
    objective: str
    layout: str
    """'packed' or 'padded' rows."""
    settings: dict[str, Any]
    """learner.* fields of the case (precision, attention, micro-batching)."""


def synthetic_batch(objective: str, lengths: list[int], *, pack: bool, seed: int) -> Batch:
    """Dialogue-like rows: SFT supervises ~10% of tokens (decisions + text), GRPO ~3%."""
    g = torch.Generator().manual_seed(seed)
    p = 0.10 if objective == "sft" else 0.03
    items = []
    for n in lengths:
        mask = (torch.rand(n, generator=g) < p).long()
        mask[0] = 0
        ids = torch.randint(0, 1000, (n,), generator=g).tolist()
        if objective == "sft":
            dc = torch.where(mask > 0, (torch.rand(n, generator=g) < 0.2).long(), -1)
            items.append(PackItem(ids, mask.tolist(), decision_class=dc.tolist()))
        else:
            adv = [float(torch.randn(1, generator=g))] * n
            items.append(PackItem(ids, mask.tolist(), advantages=adv, old_logprobs=[-7.0] * n))
    rows = plan_rows(lengths, max_len=max(lengths), pack=pack)
    return collate(items, rows, pad_id=0)


def model_flops(model_path: str, batch: Batch) -> float:
    """Training FLOPs the model needs for a batch: 6 x params per token and 6 x L^2 x d_attn
    of causal attention per layer and sequence, except the last layer's queries, MLP and
    the LM head, needed at scored tokens only (what a loss or metric reads)."""
    c = AutoConfig.from_pretrained(model_path)
    d, layers, v = c.hidden_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    d_q, d_kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    body = layers * (d * d_q + 2 * d * d_kv + d_q * d + 3 * d * c.intermediate_size)
    seq, pos = batch["seq_ids"], batch["position_ids"]
    lengths = []
    for r in range(seq.shape[0]):
        for s in seq[r].unique().tolist():
            if s >= 0:
                lengths.append(int((seq[r] == s).sum()))
    tokens = sum(lengths)
    scored = int(((batch["loss_mask"] > 0) & (pos > 0)).sum())
    # causal attention: L^2/2 query-key pairs, QK^T and PV, 2 FLOPs each, x3 for training
    attn = sum(6 * n * n * d_q for n in lengths)
    # the learner runs the last layer's queries, MLP and the head at scored tokens only: the
    # FLOPs it needs (the dense reference path spends more, counted the same)
    per_layer = d * d_q + 2 * d * d_kv + d_q * d + 3 * d * c.intermediate_size
    last_rest = per_layer - 2 * d * d_kv
    need = body - last_rest * (tokens - scored) / max(tokens, 1)
    attn_need = attn * (layers - 1) + attn * scored / max(tokens, 1)
    return 6.0 * need * tokens + 6.0 * v * d * scored + attn_need


def case_config(cfg: Config, case: LearnerCase) -> Config:
    """The config of one case: its learner settings, in process (one rank), lr 1e-5 and no
    KL reference (the synthetic batches carry no reference logprobs)."""
    c = copy.deepcopy(cfg)
    c.learner = dataclasses.replace(c.learner, in_process=True, num_ranks=1, **case["settings"])
    c.sft.lr = c.grpo.lr = 1e-5
    c.grpo.kl_coef = 0.0
    return c


def learner_run(
    cfg: Config, model_path: str, cases: list[LearnerCase], lengths: list[int], steps: int
) -> dict[str, Any]:
    """Each case: one learner group (`make_learner_group`), a warm-up step, then `steps` timed
    steps."""
    out: dict[str, Any] = {}
    for case in cases:
        name, objective = case["name"], case["objective"]
        pack = case["layout"] == "packed"
        batches = [synthetic_batch(objective, lengths, pack=pack, seed=k) for k in range(steps + 1)]
        group = make_learner_group(case_config(cfg, case), model_path, objective=objective)
        try:
            group.train_step(batch=batches[0], objective=objective)  # warm-up
            times = []
            for b in batches[1:]:
                t0 = time.perf_counter()
                group.train_step(batch=b, objective=objective)
                times.append(time.perf_counter() - t0)
        finally:
            group.shutdown()
        # the batches are alike: the fastest step is the one least disturbed by neighbours
        best = min(times)
        tokens = sum(int((b["seq_ids"] >= 0).sum()) for b in batches[1:]) / steps
        flops = sum(model_flops(model_path, b) for b in batches[1:]) / steps
        out[name] = {
            "objective": objective,
            "layout": case["layout"],
            # explicit, never 'auto': the rank runs the precision it is given
            "precision": case["settings"]["precision"],
            "attention": case["settings"]["attention"],
            "step_s": round(best, 4),
            "step_s_mean": round(sum(times) / steps, 4),
            "tokens_per_s": round(tokens / best, 1),
            "model_gflops_per_s": round(flops / best / 1e9, 2),
        }
    return out


def learner_cases(peak: dict[str, float], *, reference: bool) -> list[LearnerCase]:
    precisions = ["fp32"] + (["bf16"] if peak["bf16_gflops"] >= 0.5 * peak["fp32_gflops"] else [])
    cases: list[LearnerCase] = []
    for objective in ("sft", "grpo"):
        for prec in precisions:
            for layout, attention in (("packed", "varlen"), ("padded", "padded")):
                settings = {
                    "precision": prec,
                    "attention": attention,
                    "micro_batch_tokens": 16384,
                    "micro_batch": 4,
                }
                cases.append(
                    {
                        "name": f"{objective}/{prec}/{layout}",
                        "objective": objective,
                        "layout": layout,
                        "settings": settings,
                    }
                )
        if reference:  # the dense reference path: dense mask, full vocab, 4-row batches
            settings = {
                "precision": "fp32",
                "attention": "dense",
                "micro_batch_tokens": 0,
                "micro_batch": 4,
            }
            cases.append(
                {
                    "name": f"{objective}/fp32/padded-dense-reference",
                    "objective": objective,
                    "layout": "padded",
                    "settings": settings,
                }
            )
    return cases


def learner_section(
    cfg: Config, paths: dict[str, str], peak: dict[str, float], quick: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    plan: dict[str, tuple[list[int], int]] = {
        "tiny": ([64, 48, 80, 56] if quick else [1500, 1100, 1900, 1300] * 4, 1 if quick else 3),
        "bench30m": ([512] * 8, 3),
        "small": ([64, 48, 80, 56], 1),
    }
    for size, path in paths.items():
        lengths, steps = plan[size]
        cases = learner_cases(peak, reference=size == "tiny")
        res = in_child(learner_run, cfg, path, cases, lengths, steps)
        rss = res.pop("peak_rss_mb")
        for r in res.values():
            p = peak["bf16_gflops"] if r["precision"] == "bf16" else peak["fp32_gflops"]
            r["mfu"] = round(r["model_gflops_per_s"] / p, 4)
        auto = in_child(_auto_precision, path)
        auto.pop("peak_rss_mb")
        in_use = [r for r in res.values() if r["precision"] == auto["choice"]]
        speedup = {}
        for objective in ("sft", "grpo"):
            ref = res.get(f"{objective}/fp32/padded-dense-reference")
            fast = [r for r in in_use if r["objective"] == objective]
            if ref and fast:
                speedup[objective] = round(ref["step_s"] / min(r["step_s"] for r in fast), 3)
        out[size] = {
            "speedup_vs_reference": speedup,
            "params_m": round(_params(path) / 1e6, 2),
            "auto_precision": auto,
            "best_mfu_in_use": max((r["mfu"] for r in in_use), default=None),
            "cases": res,
            "peak_rss_mb": rss,
        }
    return out


def _auto_precision(path: str) -> dict[str, Any]:
    """What `learner.precision: auto` picks for this model on this machine (and why)."""
    c = AutoConfig.from_pretrained(path)
    choice, measured = pick_precision(
        "auto", hidden=c.hidden_size, intermediate=c.intermediate_size
    )
    return {"choice": choice, **{k: round(v, 2) for k, v in measured.items()}}


def _params(path: str) -> int:
    n = 0
    with safe_open(str(Path(path) / "model.safetensors"), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            n += _prod(f.get_slice(k).get_shape())
    return n


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


# ---- rollout and weight sync ----------------------------------------------------------------


def rollout_run(
    cfg: Config, model_path: str, work: str, streams: int, steps: int
) -> dict[str, Any]:
    """Decisions/s of the transformers loops (batched; sequential) and vLLM with and without
    the prefix cache on the same streams; then the weight sync of the cached engine."""
    sampling = Sampling.from_config(cfg.rollout, seed=cfg.run.seed)
    policy = silence_biased_policy(model_path, Path(work) / "policy")
    hf = batched_hf_loop(policy, cfg)
    out: dict[str, Any] = {"streams": streams, "steps": steps, "dtype": cfg.bench.dtype}
    hf_m = timed_pass(hf, streams, steps, seed=cfg.run.seed, sampling=sampling)
    out["transformers_batched_kv"] = {"decisions_per_s": round(hf_m["decisions_per_s"], 2)}
    del hf
    seq_m = sequential_hf_run(policy, cfg, steps, sampling)
    out["transformers_kv_loop"] = {
        "decisions_per_s": round(seq_m["decisions_per_s"], 2),
        "streams_run_sequentially": HF_STREAMS,
    }
    for prefix in (False, True):
        group = _local_group(policy, cfg, [streams], prefix=prefix)
        try:
            engine_warm_up(group, sampling)
            m = _measure(group, synthetic_streams(streams, steps, seed=cfg.run.seed), sampling)
            key = "vllm_prefix_cache" if prefix else "vllm_no_prefix_cache"
            out[key] = {
                "decisions_per_s": round(m["decisions_per_s"], 2),
                "silence_rate": round(m["silence_rate"], 3),
            }
            if prefix:
                out["sync"] = _sync(group, policy, work)
        finally:
            group.shutdown()
    base = out["transformers_batched_kv"]["decisions_per_s"]
    out["vllm_over_transformers"] = round(out["vllm_prefix_cache"]["decisions_per_s"] / base, 3)
    out["vllm_over_transformers_loop"] = round(
        out["vllm_prefix_cache"]["decisions_per_s"]
        / out["transformers_kv_loop"]["decisions_per_s"],
        3,
    )
    out["vllm_over_no_prefix"] = round(
        out["vllm_prefix_cache"]["decisions_per_s"]
        / out["vllm_no_prefix_cache"]["decisions_per_s"],
        3,
    )
    return out


def _sync(group: LocalRolloutGroup, policy: str, work: str) -> dict[str, float]:
    """Export (what the learner writes) and reload (what every engine does) of new weights."""
    new = perturbed_copy(policy, Path(work) / "v1")
    model = AutoModelForCausalLM.from_pretrained(new, dtype=torch.float32)
    t0 = time.perf_counter()
    model.save_pretrained(Path(work) / "export", safe_serialization=True)
    export_s = time.perf_counter() - t0
    reload_s = group.sync_weights(version=1, source=new)
    return {
        "export_s": round(export_s, 4),
        "reload_s": round(reload_s, 4),
        "total_s": round(export_s + reload_s, 4),
    }


def rollout_section(cfg: Config, paths: dict[str, str], quick: bool, work: str) -> dict[str, Any]:
    if quick:
        return {"skipped": "--quick does not start vLLM"}
    out: dict[str, Any] = {}
    for size, path in paths.items():
        streams, steps = (64, 20) if size == "tiny" else (8, 12)
        out[size] = in_child(rollout_run, cfg, path, str(Path(work) / size), streams, steps)
        out[size]["params_m"] = round(_params(path) / 1e6, 2)
    return out


# ---- GRPO step phases and the reward pool ---------------------------------------------------


def grpo_run(cfg: Config, work: str) -> dict[str, Any]:
    res = grpo_async.run(cfg, str(Path(work) / "grpo.json"))
    for mode in ("sync", "async"):
        if mode in res:
            ph = res[mode]["phase_s_mean"]
            step = max(res[mode]["step_s_mean"], 1e-9)
            # phase seconds / step seconds; async phases overlap, so shares may add past 1
            res[mode]["busy_share"] = {
                "rollout": round(ph["time/rollout"] / step, 3),
                "reward": round(ph["time/reward"] / step, 3),
                "learner": round((ph["time/learn"] + ph["time/sync"]) / step, 3),
            }
    return res


def grpo_section(cfg: Config, quick: bool, work: str) -> dict[str, Any]:
    if quick:
        return {"skipped": "--quick does not start Ray"}
    c = copy.deepcopy(cfg)
    c.grpo.max_steps, c.grpo.batch_samples, c.grpo.group_size = 3, 2, 4
    c.grpo.dynamic_sampling = False
    return in_child(grpo_run, c, work)


def reward_run(cfg: Config, n_items: int) -> dict[str, Any]:
    tok = AutoTokenizer.from_pretrained(policy_folder(cfg))
    window = Window.from_config(cfg.data)
    rng = random.Random(0)
    samples, trajs = [], []
    for enc in synthetic_streams(n_items, 30, seed=cfg.run.seed):
        ep = StreamEpisode.for_sample(tok, enc, window=window)
        for chunk in sample_chunks(enc):
            ep.add_chunk(chunk)
            kind = "silence" if rng.random() < 0.9 else "response"
            ids = (
                decision_ids(tok, kind, "teleport")
                if kind == "response"
                else decision_ids(tok, kind)
            )
            ep.add_decision(ids, [0.0] * len(ids))
        samples.append(enc.sample.to_dict())
        trajs.append(ep.trajectory())
    pool = InProcessRewardPool(cfg.reward)  # the scorer's own speed, no transport
    try:
        t0 = time.perf_counter()
        pool.score(samples=samples, trajectories=trajs)
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown()
    return {
        "items": n_items,
        "items_per_s": round(n_items / wall, 1),
        "judge": cfg.reward.acc_judge,
    }


# ---- report ---------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    pk = result["peak"]
    lines = [
        "# streampro bench perf",
        "",
        (
            f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, torch "
            f"threads {pk['threads']}. Matmul peak: fp32 {pk['fp32_gflops']} GFLOP/s, bf16 "
            f"{pk['bf16_gflops']} GFLOP/s."
        ),
        "",
        "## Learner",
        "",
        "| size | case | step s | tokens/s | model GFLOP/s | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for size, sec in result["learner"].items():
        for name, r in sec["cases"].items():
            mark = " (auto)" if r["precision"] == sec["auto_precision"]["choice"] else ""
            lines.append(
                f"| {size} ({sec['params_m']} M) | {name}{mark} | {r['step_s']} | {r['tokens_per_s']} "
                f"| {r['model_gflops_per_s']} | {100 * r['mfu']:.1f}% |"
            )
    lines += ["", "## Rollout (decisions/s, same streams and steps)", ""]
    ro = result["rollout"]
    if "skipped" in ro:
        lines.append(f"skipped: {ro['skipped']}")
    else:
        lines += [
            (
                "| size | streams x steps | transformers batched KV | transformers loop "
                "(sequential) | vLLM no prefix cache | vLLM prefix cache | sync s (export + "
                "reload) |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for size, r in ro.items():
            lines.append(
                f"| {size} ({r['params_m']} M) | {r['streams']} x {r['steps']} | "
                f"{r['transformers_batched_kv']['decisions_per_s']} | "
                f"{r['transformers_kv_loop']['decisions_per_s']} | "
                f"{r['vllm_no_prefix_cache']['decisions_per_s']} | "
                f"{r['vllm_prefix_cache']['decisions_per_s']} | {r['sync']['total_s']} |"
            )
    lines += ["", "## GRPO step phases (s, mean)", ""]
    gr = result["grpo"]
    if "skipped" in gr or "error" in gr:
        lines.append(f"{gr}")
    else:
        for mode in ("sync", "async"):
            lines.append(
                f"- {mode}: step {gr[mode]['step_s_mean']:.2f} s, phases "
                f"{ {k[5:]: round(v, 2) for k, v in gr[mode]['phase_s_mean'].items()} }, "
                f"busy {gr[mode]['busy_share']}"
            )
    rw = result["reward"]
    lines += ["", f"## Reward pool: {rw.get('items_per_s')} items/s ({rw.get('judge')} judge)", ""]
    lines += ["## Peak RSS (MB)", ""] + [f"- {k}: {v}" for k, v in result["rss_mb"].items()]
    lines += ["", "![learner](learner.png)", "", "![rollout](rollout.png)", ""]
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib  # lazy: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(9, 4))
    names, vals = [], []
    for size, sec in result["learner"].items():
        for name, r in sec["cases"].items():
            names.append(f"{size}\n{name}")
            vals.append(r["tokens_per_s"])
    ax.barh(names, vals)
    ax.set_xlabel("learner tokens/s")
    ax.set_xscale("log")
    fig.tight_layout()
    _save(fig, out / "learner.png")
    made.append("learner.png")
    ro = result["rollout"]
    if "skipped" not in ro:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        keys = (
            "transformers_batched_kv",
            "transformers_kv_loop",
            "vllm_no_prefix_cache",
            "vllm_prefix_cache",
        )
        for i, (size, r) in enumerate(ro.items()):
            ax.bar(
                [j + 0.4 * i for j in range(len(keys))],
                [r[k]["decisions_per_s"] for k in keys],
                width=0.4,
                label=size,
            )
        ax.set_xticks(
            [j + 0.2 for j in range(len(keys))],
            ["transformers\nbatched KV", "transformers\nloop", "vLLM\nno cache", "vLLM"],
        )
        ax.set_ylabel("decisions/s")
        ax.legend()
        fig.tight_layout()
        _save(fig, out / "rollout.png")
        made.append("rollout.png")
    plt.close("all")
    return made


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def run(cfg: Config, out_dir: str, *, quick: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "quick": quick,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
    }
    result["peak"] = in_child(peak_section, quick)
    rss = {"peak_probe": result["peak"].pop("peak_rss_mb")}
    work = tempfile.mkdtemp(prefix="bench-perf-", dir=out)
    try:
        models = str(Path(work) / "models")
        paths = {
            name: build_policy(cfg, shape, models) for name, shape in sizes(cfg, quick).items()
        }
        result["learner"] = learner_section(cfg, paths, result["peak"], quick)
        rss.update({f"learner_{k}": v["peak_rss_mb"] for k, v in result["learner"].items()})
        result["rollout"] = rollout_section(cfg, paths, quick, work)
        rss.update(
            {
                f"rollout_{k}": v.get("peak_rss_mb")
                for k, v in result["rollout"].items()
                if isinstance(v, dict)
            }
        )
        result["sync"] = {
            k: {"params_m": v["params_m"], **v["sync"]}
            for k, v in result["rollout"].items()
            if isinstance(v, dict) and "sync" in v
        } or {"skipped": "no rollout section"}
        result["grpo"] = grpo_section(cfg, quick, work)
        rss["grpo_driver"] = result["grpo"].get("peak_rss_mb")
        result["reward"] = in_child(reward_run, cfg, 16 if quick else 128)
        rss["reward"] = result["reward"].pop("peak_rss_mb")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["rss_mb"] = rss
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["plots"] = plots(result, out)
    atomic_write_text(out / "perf.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "perf.md", markdown(result))
    return result


def main(cfg: Config, args: argparse.Namespace) -> int:
    out = args.out or "runs/bench-perf"
    result = run(cfg, out, quick=bool(getattr(args, "quick", False)))
    print(f"wrote {out}/perf.json and perf.md ({result['wall_s']} s)")
    return 0
