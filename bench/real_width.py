"""`streampro bench real-width`: the Qwen2.5-VL-3B and Qwen3-VL-4B shapes through the whole
loop on CPU, at reduced depth.

Each arch's model is built locally with random weights and every width of the public
checkpoint (hidden sizes, heads, KV heads, head dims, mRoPE sections, window attention or
deepstack, patch and merge sizes, the 151,936-row embedding; `streampro.public_models`),
cut to `bench.real_width_layers` text layers and vision blocks. `streampro train` then runs
on it as a user would: SFT with LoRA, a frozen vision tower and gradient checkpointing, vLLM
CPU rollouts on image streams, GRPO steps whose weights reach the engine by the HF-folder
sync, and the logprob agreement check after each sync. The bench records the phases' time,
the agreement, and the peak resident memory of the job's whole process tree (driver, Ray,
engine and reward workers).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from streampro.config import Config, atomic_write_text, to_yaml
from streampro.errors import UserError
from streampro.metrics import read_metrics
from streampro.tiny_vl import ensure_tiny_vl, tiny_vl_spec

ARCHS = ("qwen2_5_vl", "qwen3_vl")
# What makes the run the real-width check, over the user's config (configs/tiny_vl.yaml):
# the GPU configs' learner settings, and a context the 1 GiB CPU KV cache holds.
OVERRIDES = (
    "learner.lora_rank=16",
    "learner.lora_alpha=32",
    "learner.freeze_vision=true",
    "learner.gradient_checkpointing=true",
    "rollout.max_model_len=4096",
    # random weights write no valid decision, so a group's rewards tie and its advantages are
    # 0: the entropy bonus still moves the weights, and at lr 1e-2 far enough that an engine
    # left with stale weights would fail the agreement check
    "grpo.entropy_coef=0.01",
    "grpo.lr=0.01",
)


def _sample_peak(proc: subprocess.Popen, stop: threading.Event, peak: list[float]) -> None:
    """Sum the resident memory of proc and all its descendants every half second."""
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        peak[0] = max(peak[0], total / 1e9)
        stop.wait(0.5)


def run_one(cfg: Config, arch: str, folder: Path, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "base_config.yaml"
    atomic_write_text(config, to_yaml(cfg))
    cmd = [
        sys.executable,
        "-m",
        "streampro.cli",
        "train",
        "--config",
        str(config),
        f"policy.name_or_path={folder}",
        *OVERRIDES,
        f"run.dir={run_dir / 'run'}",
    ]
    print(f"real-width {arch}: {' '.join(cmd[3:])}", flush=True)
    log = (run_dir / "train.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_sample_peak, args=(proc, stop, peak), daemon=True)
    sampler.start()
    rc = proc.wait()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-1:]
        raise UserError(f"bench real-width: {arch}: train exited {rc}: {' '.join(tail)}")
    summary = json.loads((run_dir / "run" / "summary.json").read_text())
    grpo = read_metrics(run_dir / "run" / "grpo")
    sft = read_metrics(run_dir / "run" / "sft")
    freed = _drop_weights(run_dir / "run")
    print(f"real-width {arch}: removed {freed:.1f} GB of checkpoints and exports", flush=True)
    return {
        "model_config": json.loads((folder / "config.json").read_text()),
        "seconds": round(seconds, 1),
        "timings": summary["timings"],
        "peak_rss_gb": round(peak[0], 2),
        "sft_loss": [r["train/loss"] for r in sft if "train/loss" in r],
        "grpo_steps": len([r for r in grpo if "reward/total" in r]),
        "lp_diff_max": [r["check/lp_diff_max"] for r in grpo if "check/lp_diff_max" in r],
        "sync_s": [r["time/sync"] for r in grpo if "time/sync" in r],
        "grad_norm": [r["learn/grad_norm"] for r in grpo if "learn/grad_norm" in r],
        "reward_total": [r["reward/total"] for r in grpo if "reward/total" in r],
    }


def _drop_weights(run: Path) -> float:
    """Delete the run's checkpoints, HF exports and synced weights (11-14 GB per arch at two
    layers, the 151,936-row embedding and its Adam states): the bench keeps logs, metrics and
    its JSON. Returns the GB freed."""
    freed = 0
    for stage in ("sft", "grpo"):
        for sub in ("checkpoints", "hf", "weights"):
            path = run / stage / sub
            if path.is_dir():
                freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
    return freed / 2**30


def run(cfg: Config, out_path: str) -> dict[str, Any]:
    out = Path(out_path).with_suffix("")
    result: dict[str, Any] = {"layers": cfg.bench.real_width_layers, "overrides": list(OVERRIDES)}
    for arch in ARCHS:
        spec = tiny_vl_spec(arch=arch, real_width_layers=cfg.bench.real_width_layers)
        folder = ensure_tiny_vl(spec, cfg.policy.cache_dir)
        result[arch] = run_one(cfg, arch, folder, out / arch)
        print(f"real-width {arch}: {json.dumps(result[arch]['timings'])}", flush=True)
    return result
