"""`streampro grpo`: B samples x G streaming episodes -> rewards -> group advantages ->
clipped updates on the DeepSpeed group -> weight sync to the vLLM engines. (SPEC.md section 3)

The loop reads top to bottom in `run_grpo`; every piece it calls lives in a package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from streampro.learners.grpo_loss import group_advantages
from streampro.learners.packing import PackItem, collate, plan_rows
from streampro.learners.state import Checkpoints, DataCursor

from streampro.config import Config, atomic_write_text, make_run_dir
from streampro.types import RewardResult, Trajectory


def rewards_matrix(results: list[RewardResult], b: int, g: int) -> torch.Tensor:  # [B, G]
    return torch.tensor([r.total for r in results], dtype=torch.float32).view(b, g)


def build_batch(trajs: list[Trajectory], adv: torch.Tensor, *, pad_id: int) -> dict[str, torch.Tensor]:
    """One row per trajectory; the sequence advantage is broadcast over its generated tokens."""
    items = [
        PackItem(
            input_ids=t.token_ids,
            loss_mask=t.gen_mask,
            advantages=[float(a)] * len(t.token_ids),
            old_logprobs=t.logprobs,
        )
        for t, a in zip(trajs, adv.tolist())
    ]
    rows = plan_rows([len(t.token_ids) for t in trajs], max_len=0, pack=False)
    return collate(items, rows, pad_id=pad_id)


def trajectory_stats(trajs: list[Trajectory], results: list[RewardResult]) -> dict[str, float]:
    steps = [s for t in trajs for s in t.steps]
    n_steps = max(len(steps), 1)
    return {
        "reward/total": float(np.mean([r.total for r in results])),
        "reward/fmt": float(np.mean([r.fmt for r in results])),
        "reward/turn": float(np.mean([r.turn for r in results])),
        "reward/traj": float(np.mean([r.traj for r in results])),
        "reward/judge_fallbacks": float(sum(r.fallback for r in results)),
        "rollout/response_rate": sum(s.decision == "response" for s in steps) / n_steps,
        "rollout/invalid_rate": sum(s.decision == "invalid" for s in steps) / n_steps,
        "rollout/tokens": float(sum(sum(t.gen_mask) for t in trajs)),
    }


def write_step_trajectories(path: Path, trajs: list[Trajectory], results: list[RewardResult], step: int) -> None:
    """The step's trajectories with their rewards, as Parquet (actors/records.py schema)."""
    from streampro.actors.records import write_trajectories

    extra = {"step": [step] * len(trajs), "reward": [r.total for r in results],
             "reward_fmt": [r.fmt for r in results], "reward_turn": [r.turn for r in results],
             "reward_traj": [r.traj for r in results]}
    write_trajectories(path, trajs, extra)


def run_grpo(cfg: Config, run_dir: Path, *, init_model: str, rollout=None) -> dict:
    """The GRPO stage. Returns {"hf": final policy folder, "val": scores, "steps": n, ...}.

    `rollout`: a running rollout group already holding init_model's weights (the caller keeps
    ownership and shuts it down); None starts one here.
    """
    from streampro.actors.api import Sampling
    from streampro.actors.rollout import make_rollout_group
    from streampro.bench.policy_eval import eval_kwargs, evaluate
    from streampro.learners.group import make_learner_group
    from streampro.rewards.pool import make_reward_pool
    from tqdm import tqdm

    from streampro.metrics import MetricsLogger
    from streampro.pipeline import load_split

    g, b = cfg.grpo.group_size, cfg.grpo.batch_samples
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    steps_total = cfg.grpo.max_steps or cfg.grpo.epochs * max(len(train) // b, 1)

    learner = make_learner_group(cfg, init_model, objective="grpo")
    own_rollout = rollout is None
    rollout = make_rollout_group(cfg, init_model) if own_rollout else rollout
    pool = make_reward_pool(cfg)
    logger = MetricsLogger(run_dir)
    ckpts = Checkpoints(run_dir, cfg.grpo.keep_checkpoints)
    cursor, step, version = DataCursor(len(train), cfg.run.seed), 0, 0
    pad_id = _pad_id(init_model)

    if cfg.run.resume == "auto" and (last := ckpts.latest()) is not None:
        learner.load_checkpoint(path=str(last))
        state = json.loads((last / "client_state.json").read_text())
        step, version = state["step"], state["version"]
        logger.truncate_after(step)
        cursor.epoch, cursor.pos = state["cursor"]["epoch"], state["cursor"]["pos"]
        _sync(learner, rollout, run_dir, version)
        print(f"resumed from {last} at step {step}")

    def sample_batch(k: int) -> tuple[list, Callable[[], list[Trajectory]]]:
        batch = [train[i] for i in cursor.take(b)]
        sampling = Sampling(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_answer_tokens=cfg.rollout.max_answer_tokens, seed=cfg.run.seed * 100003 + k)
        return batch, lambda: rollout.generate(samples=batch, n=g, sampling=sampling)

    executor = ThreadPoolExecutor(max_workers=1)  # async mode: the next rollout runs here
    pending: tuple[list, Future] | None = None
    bar = tqdm(total=steps_total, initial=step, desc="grpo", dynamic_ncols=True)
    while step < steps_total:
        t0 = time.perf_counter()
        if pending is None:
            batch, gen = sample_batch(step)
            trajs = gen()
        else:
            batch, fut = pending
            trajs = fut.result()
        t_rollout = time.perf_counter() - t0
        if cfg.grpo.async_mode and step + 1 < steps_total:
            nb, ngen = sample_batch(step + 1)
            pending = (nb, executor.submit(ngen))  # rolls out with the current weights
        else:
            pending = None

        t1 = time.perf_counter()
        samples = [s.sample.to_dict() for s in batch for _ in range(g)]
        results = pool.score(samples=samples, trajectories=trajs)
        rewards = rewards_matrix(results, b, g)  # [B, G]
        adv, adv_stats = group_advantages(rewards, mode=cfg.grpo.advantage, eps=cfg.grpo.adv_eps)
        t_reward = time.perf_counter() - t1

        t2 = time.perf_counter()
        keep = _informative(rewards) if cfg.grpo.dynamic_sampling else torch.ones(b, dtype=torch.bool)
        flat_keep = keep.repeat_interleave(g)
        kept = [t for t, k in zip(trajs, flat_keep.tolist()) if k]
        learn_stats: dict[str, float] = {}
        if kept:
            learn_stats = _learn(cfg, learner, kept, adv.view(-1)[flat_keep], pad_id=pad_id)
        t_learn = time.perf_counter() - t2

        t3 = time.perf_counter()
        version += 1
        if pending is not None:
            pending[1].result()  # one step off-policy: finish the rollout before swapping weights
        _sync(learner, rollout, run_dir, version)
        t_sync = time.perf_counter() - t3

        step += 1
        metrics = {**trajectory_stats(trajs, results), **adv_stats, **learn_stats,
                   "adv/kept_groups": float(keep.sum()),
                   "time/rollout": t_rollout, "time/reward": t_reward, "time/learn": t_learn,
                   "time/sync": t_sync, "time/step": time.perf_counter() - t0}
        if cfg.grpo.eval_every and step % cfg.grpo.eval_every == 0:
            scores = evaluate(rollout, val, **eval_kwargs(cfg))
            metrics["val/w_avg"], metrics["val/avg"] = scores["w_avg"], scores["avg"]
        logger.log(step, metrics)
        write_step_trajectories(run_dir / "trajectories" / f"step_{step:06d}.parquet", trajs, results, step)
        if step % cfg.grpo.save_every == 0 or step == steps_total:
            state = {"step": step, "version": version, "cursor": cursor.state()}
            ckpts.save(learner, step, state)
        bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", resp=f"{metrics['rollout/response_rate']:.2f}")
        bar.update(1)
    bar.close()
    executor.shutdown()

    hf = learner.export_hf(path=str(run_dir / "hf"))
    val_scores = evaluate(rollout, val, **eval_kwargs(cfg))
    summary = {"hf": hf, "steps": step, "val": val_scores}
    atomic_write_text(run_dir / "grpo_summary.json", json.dumps(summary, indent=2, sort_keys=True))
    logger.close()
    for part in (learner, pool) + ((rollout,) if own_rollout else ()):
        part.shutdown()
    return summary


def _informative(rewards: torch.Tensor) -> torch.Tensor:  # [B] bool
    """Groups whose rewards differ: the only ones with a gradient signal."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 1e-12


def _learn(cfg: Config, learner, trajs: list[Trajectory], adv: torch.Tensor, *, pad_id: int) -> dict[str, float]:
    """Old (and reference) logprobs from the learner, then mini-batch clipped updates."""
    batch = build_batch(trajs, adv, pad_id=pad_id)
    if not cfg.grpo.async_mode:
        # On-policy: recompute old logprobs with the learner (as verl does), so the ratio
        # starts at exactly 1; in async mode the behaviour logprobs of vLLM are the baseline.
        batch["old_logprobs"] = learner.logprobs(batch=batch)
    if cfg.grpo.kl_coef != 0.0:
        batch["ref_logprobs"] = learner.logprobs(batch=batch, reference=True)
    n = batch["input_ids"].shape[0]
    splits = np.array_split(np.arange(n), max(1, min(cfg.grpo.mini_batches, n)))
    stats: dict[str, list[float]] = {}
    for idx in splits:
        mb = {k: v[torch.as_tensor(idx)] for k, v in batch.items()}
        for k, v in learner.train_step(batch=mb, objective="grpo").items():
            stats.setdefault(k, []).append(v)
    return {f"learn/{k}": float(np.mean(v)) for k, v in stats.items()}


def _sync(learner, rollout, run_dir: Path, version: int) -> None:
    """Publish weights v as an HF folder and load them into every engine in place."""
    path = run_dir / "weights" / f"v{version:06d}"
    learner.export_hf(path=str(path))
    rollout.sync_weights(version=version, source=str(path))
    for old in sorted((run_dir / "weights").glob("v*"))[:-1]:
        shutil.rmtree(old, ignore_errors=True)


def _pad_id(model_path: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def main(cfg: Config, args: argparse.Namespace) -> int:
    from streampro.cluster.local import init_from_config

    from streampro.tiny import policy_path

    run_dir = make_run_dir(cfg, "grpo")
    init_from_config(cfg.cluster)
    summary = run_grpo(cfg, run_dir, init_model=policy_path(cfg.policy, cfg.data.codebook_size))
    print(json.dumps({"run_dir": str(run_dir), "val_w_avg": summary["val"]["w_avg"]}))
    return 0
