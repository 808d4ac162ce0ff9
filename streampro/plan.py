"""`streampro plan`: per-GPU memory of a config's learner ranks and engines, and whether the
roles fit the GPUs, before anything starts. `streampro train` runs it first.

The model is sized on the meta device from its config.json: a local folder's own, the
embedded public shape of a known hub id (streampro/public_models.py), or the built-in tiny
policies' (built locally, seconds). The arithmetic is `cluster/plan.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from streampro.cluster.fit import Capacity, check_fit, role_demands
from streampro.cluster.plan import (
    Term,
    check_terms,
    colocated_turns,
    engine_terms,
    format_terms,
    learner_terms,
)
from streampro.config import Config, atomic_write_text
from streampro.data.pipeline import policy_folder
from streampro.errors import UserError
from streampro.model_size import model_size
from streampro.public_models import local_config, public_config

DEFAULT_GPU_MEMORY_GB = 80.0


def hf_config(cfg: Config) -> dict[str, Any]:
    """The policy's config.json, without downloading anything."""
    name = cfg.policy.name_or_path
    found = public_config(name) or local_config(name)
    if found is None and name in ("tiny", "tiny-vl"):
        found = local_config(policy_folder(cfg))
    if found is None:
        raise UserError(
            f"plan: cannot size policy.name_or_path={name!r}: it is not a local folder with a "
            "config.json nor a known public id (Qwen/Qwen2.5-VL-3B-Instruct, "
            "Qwen/Qwen3-VL-4B-Instruct)"
        )
    return found


def run_plan(cfg: Config, *, gpus: float | None = None, gpu_memory_gb: float | None = None) -> dict:
    """Print the plan and return it; raise one line when a role cannot fit."""
    gpus = cfg.cluster.num_gpus if gpus is None else gpus
    mem = DEFAULT_GPU_MEMORY_GB if gpu_memory_gb is None else gpu_memory_gb
    size = model_size(hf_config(cfg), lora_rank=cfg.learner.lora_rank)
    lc, r = cfg.learner, cfg.rollout
    out: dict[str, Any] = {"policy": cfg.policy.name_or_path, "gpus": gpus, "gpu_memory_gb": mem}
    out["params"] = {"total": size.total, "vision": size.vision_params, "lora": size.lora_params}
    print(
        f"plan: {cfg.policy.name_or_path}: {size.total / 1e9:.3f} B parameters "
        f"({size.vision_params / 1e9:.3f} B vision, {size.lora_params / 1e6:.1f} M LoRA) on "
        f"{gpus:g} GPU{'s' if gpus != 1 else ''} of {mem:g} GB"
    )
    # CPU roles are budgeted by their memory_gb when set; GPU roles by the GPU's memory
    learner_budget = mem * lc.num_gpus if lc.num_gpus > 0 else (lc.memory_gb or None)
    if cfg.cluster.colocate and lc.num_gpus > 0:  # a fraction only to share the GPU: SFT has it all
        learner_budget = mem
    engine_budget = mem * r.gpu_memory_utilization if r.num_gpus > 0 else (r.memory_gb or None)
    checks = []
    for stage in ("sft", "grpo"):
        terms = learner_terms(cfg, size, stage=stage)
        role = f"learner rank ({stage}, ZeRO-{lc.zero_stage}, {lc.num_ranks} ranks)"
        print(format_terms(role, terms, learner_budget))
        out[f"learner_{stage}"] = {t.name: t.bytes for t in terms}
        checks.append((role, terms, learner_budget))
    terms = engine_terms(cfg, size)
    role = f"engine (TP {max(1, r.tensor_parallel_size)}, {r.num_actors} engines)"
    print(format_terms(role, terms, engine_budget))
    out["engine"] = {t.name: t.bytes for t in terms}
    checks.append((role, terms, engine_budget))
    if cfg.cluster.colocate:  # GRPO learner and engine take turns on one GPU: max, not sum
        gpu_roles = lc.num_gpus > 0 or r.num_gpus > 0  # the turns share the whole GPU
        checks = checks[:1] + _colocated(cfg, out, checks[1][1], terms, mem if gpu_roles else None)
    if gpus > 0 or lc.num_gpus > 0 or r.num_gpus > 0:
        cap = Capacity(cpus=float("inf"), gpus=gpus, node_cpus=float("inf"), node_gpus=gpus)
        check_fit(role_demands(cfg, "train"), cap, stage="plan")
    for role, terms, budget in checks:
        if budget:
            check_terms(role, terms, budget)
    print("plan: fits")
    return out


def _colocated(
    cfg: Config, out: dict, learner: list[Term], engine: list[Term], budget: float | None
) -> list[tuple[str, list[Term], float | None]]:
    """Print each turn of a colocated GPU (cluster.colocate) and return its checks; the GPU
    needs the larger turn (docs/cluster.md, colocated mode)."""
    turns = colocated_turns(
        learner,
        engine,
        offload_states=cfg.learner.offloads_states(colocate=bool(cfg.cluster.colocate)),
    )
    checks = []
    for turn, terms in turns.items():
        role = f"colocated GPU, {turn}"
        print(format_terms(role, terms, budget))
        checks.append((role, terms, budget))
    totals = {turn: sum(t.bytes for t in terms) for turn, terms in turns.items()}
    out["colocated"] = {**totals, "peak": max(totals.values())}  # bytes
    sep = sum(t.bytes for t in learner) + sum(t.bytes for t in engine)
    peak = max(totals.values())
    print(f"plan: colocated peak {peak / 1e9:.2f} GB per GPU ({sep / 1e9:.2f} GB if both resident)")
    return checks


def main(cfg: Config, args: argparse.Namespace) -> int:
    out = run_plan(cfg, gpus=args.gpus, gpu_memory_gb=args.gpu_memory)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0
