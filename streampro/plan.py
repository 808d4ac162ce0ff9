"""`streampro plan`: per-GPU memory of a config's learner ranks and engines, and whether the
roles fit the GPUs, before anything starts. `streampro train` runs it first.

The model is sized on the meta device from its config.json: a local folder's own, the
embedded public shape of a known hub id (streampro/public_models.py), or the built-in tiny
policies' (built locally, seconds). The arithmetic is `cluster/plan.py`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from streampro.cluster.fit import Capacity, check_fit, role_demands
from streampro.cluster.plan import ModelSize, check_terms, engine_terms, format_terms, learner_terms
from streampro.config import Config, atomic_write_text
from streampro.data.pipeline import policy_folder
from streampro.errors import UserError
from streampro.learners.worker import LORA_TARGETS
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


def model_size(hf: dict[str, Any], *, lora_rank: int) -> ModelSize:
    """Parameter counts by part, from the model built on the meta device (no memory)."""
    body = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model(hf["model_type"], **body)
    vl = "vision_config" in hf
    with torch.device("meta"):
        auto = AutoModelForImageTextToText if vl else AutoModelForCausalLM
        model = auto.from_config(config)
    parts = {"vision": 0, "head": 0, "text": 0}
    for name, p in model.named_parameters():  # a tied head shares the embedding: counted once
        key = "vision" if ".visual." in f".{name}" else "head" if "lm_head" in name else "text"
        parts[key] += p.numel()
    lora = 0
    if lora_rank > 0:
        pattern = re.compile(LORA_TARGETS)
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and pattern.match(name):
                lora += lora_rank * (mod.in_features + mod.out_features)
    text = hf.get("text_config", hf)
    vision = hf.get("vision_config", {})
    heads, kv_heads = text["num_attention_heads"], text["num_key_value_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    return ModelSize(
        text_params=parts["text"],
        head_params=parts["head"],
        vision_params=parts["vision"],
        lora_params=lora,
        layers=text["num_hidden_layers"],
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        kv_heads=kv_heads,
        vocab=text["vocab_size"],
        vision_hidden=vision.get("hidden_size", 0),
        vision_intermediate=vision.get("intermediate_size", 0),
        vision_depth=vision.get("depth", 0),
        vision_patch=vision.get("patch_size", 14),
    )


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
    if gpus > 0 or lc.num_gpus > 0 or r.num_gpus > 0:
        cap = Capacity(cpus=float("inf"), gpus=gpus, node_cpus=float("inf"), node_gpus=gpus)
        check_fit(role_demands(cfg, "train"), cap, stage="plan")
    for role, terms, budget in checks:
        if budget:
            check_terms(role, terms, budget)
    print("plan: fits")
    return out


def main(cfg: Config, args: argparse.Namespace) -> int:
    out = run_plan(cfg, gpus=args.gpus, gpu_memory_gb=args.gpu_memory)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0
