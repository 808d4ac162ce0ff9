"""`streampro grpo`: B samples x G streaming episodes -> rewards -> group advantages ->
clipped updates on the DeepSpeed group -> weight sync to the vLLM engines. The method is
docs/method.md, stage 2.

`run_grpo` reads top to bottom on the stage skeleton (learners/stage.py: resume, metrics,
checkpoints, progress); one step is `GRPOStep.collect` (rollout + reward, with dynamic
sampling), `learn` (old/ref logprobs + clipped updates) and `publish` (weight sync).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from streampro.actors.api import IN_MEMORY, WEIGHT_TRANSFER, RolloutGroupAPI, Sampling
from streampro.actors.colocate import Colocation
from streampro.actors.policy_eval import PolicyEval
from streampro.actors.records import write_trajectories
from streampro.cluster.local import init_cluster
from streampro.config import (
    Config,
    GRPOConfig,
    atomic_write_text,
    learner_precision,
    make_run_dir,
    mixed_precision,
    policy_precision,
    require,
    to_dict,
)
from streampro.data.pipeline import load_split, policy_folder
from streampro.hf_policy import pad_token_id
from streampro.learners.api import LearnerGroupAPI
from streampro.learners.credit import advantages, token_advantages
from streampro.learners.group import make_learner_group
from streampro.learners.grpo_loss import equal_reward_groups, tis_weights
from streampro.learners.packing import PackItem, collate, plan_rows, select_rows
from streampro.learners.stage import Stage
from streampro.learners.state import DataCursor
from streampro.rewards.api import RewardPoolAPI
from streampro.rewards.pool import make_reward_pool
from streampro.types import RewardResult, Trajectory

OFFLOAD_STATES = ("optim_states", "hp_params")
"""What colocated mode moves off the GPU while the engines generate: the Adam moments and the
fp32 master weights (the plan's "optimizer states"); the model weights stay for the sync."""


def rewards_matrix(results: list[RewardResult], b: int, g: int) -> torch.Tensor:  # [B, G]
    return torch.tensor([r.total for r in results], dtype=torch.float32).view(b, g)


def select_groups(rewards: torch.Tensor, *, need: int, dynamic: bool) -> torch.Tensor:  # [N] bool
    """Groups to train on. Dynamic sampling (DAPO) keeps the first `need` groups whose rewards
    differ; all-equal groups have zero advantage and carry no gradient signal."""
    if not dynamic:
        return torch.ones(rewards.shape[0], dtype=torch.bool)
    informative = ~equal_reward_groups(rewards)  # [N]
    return informative & (informative.cumsum(0) <= need)


def build_batch(
    trajs: list[Trajectory],
    adv: torch.Tensor,
    *,
    pad_id: int,
    samples: list | None = None,
    text_adv: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One row per window segment (each exactly what vLLM was prompted with). `adv` [N]: a
    trajectory's advantage is broadcast over the generated tokens of all its segments; `adv`
    and `text_adv` [N, C] (grpo.credit=decision): per decision token and per answer text
    (learners/credit.py). With the image codec, each row carries the frames of its
    `image_chunks`, taken from `samples` (the EncodedSamples the episodes streamed)."""
    frames = {e.sample.id: e.frames for e in samples or [] if e.frames is not None}
    per_token = (
        [[[a] * len(seg.token_ids) for seg in t.segments] for t, a in zip(trajs, adv.tolist())]
        if text_adv is None
        else [token_advantages(t, d, x) for t, d, x in zip(trajs, adv, text_adv)]
    )
    items = [
        PackItem(
            input_ids=seg.token_ids,
            loss_mask=seg.gen_mask,
            advantages=seg_adv,
            old_logprobs=seg.logprobs,
            images=[frames[t.sample_id][j] for j in seg.image_chunks] if frames else None,
        )
        for t, t_adv in zip(trajs, per_token)
        for seg, seg_adv in zip(t.segments, t_adv)
    ]
    rows = plan_rows([len(i.input_ids) for i in items], max_len=0, pack=False)
    return collate(items, rows, pad_id=pad_id)


def keeps_weights(c: GRPOConfig) -> bool:
    """Async GRPO keeps each published version on the learner for the agreement check."""
    return c.async_mode and c.logprob_check_every > 0


def behaviour_version(trajs: list[Trajectory]) -> int:
    """The one policy version a step's episodes were sampled from (the loop never swaps
    weights while a rollout is in flight)."""
    versions = {s.version for t in trajs for s in t.steps} or {t.version for t in trajs}
    if len(versions) != 1:
        raise RuntimeError(f"a step's episodes were sampled from several versions {versions}")
    return versions.pop()


def logprob_agreement(
    sampler: torch.Tensor,  # [B, T] vLLM's logprobs of the sampled tokens
    learner: torch.Tensor,  # [B, T] the learner's, same weights and temperature
    mask: torch.Tensor,  # [B, T] 1 on generated tokens
    *,
    tol: float = 1e-2,
) -> dict[str, float]:
    """How far the learner's logprobs are from the sampler's on the generated tokens (the
    agreement check, docs/architecture.md "One GRPO step"): mean and max absolute difference,
    and the share above `tol`."""
    diff = (sampler - learner).abs()[mask.bool()]  # [N]
    if diff.numel() == 0:
        return {"check/lp_diff_mean": 0.0, "check/lp_diff_max": 0.0, "check/lp_diff_share": 0.0}
    return {
        "check/lp_diff_mean": float(diff.mean()),
        "check/lp_diff_max": float(diff.max()),
        "check/lp_diff_share": float((diff > tol).float().mean()),
    }


def check_threshold(cfg: Config) -> float:
    """The agreement check's threshold for the precisions in play: fp32 on both sides, or bf16
    on either (`grpo.logprob_check_max` / `logprob_check_max_bf16`)."""
    bf16 = "bf16" in (learner_precision(cfg.learner, cfg.policy), policy_precision(cfg.policy))
    return cfg.grpo.logprob_check_max_bf16 if bf16 else cfg.grpo.logprob_check_max


def rollout_correction(cfg: Config) -> bool:
    """Whether synchronous GRPO weights tokens by `tis_weights` (grpo.rollout_correction)."""
    mode = cfg.grpo.rollout_correction
    return not cfg.grpo.async_mode and (mode == "tis" or (mode == "auto" and mixed_precision(cfg)))


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
        "rollout/tokens": float(sum(t.num_generated for t in trajs)),
        "rollout/segments": float(sum(len(t.segments) for t in trajs)) / max(len(trajs), 1),
    }


@dataclass
class Groups:
    """The scored rollouts of one step: every generated group, and which ones train."""

    g: int
    trajs: list[Trajectory] = field(default_factory=list)  # [N*G], N >= kept groups
    results: list[RewardResult] = field(default_factory=list)  # [N*G]
    rounds: list[int] = field(default_factory=list)  # [N*G] sampling round of each trajectory
    keep: list[bool] = field(default_factory=list)  # [N] group trains
    cursor: dict = field(default_factory=dict)  # data cursor after this step's draws
    seconds: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "reward": 0.0})

    def rewards(self) -> torch.Tensor:  # [N, G]
        return rewards_matrix(self.results, len(self.results) // self.g, self.g)

    def kept(self) -> tuple[list[Trajectory], torch.Tensor]:
        """Trajectories of the kept groups and their rewards [K, G]."""
        trajs = [t for t, k in zip(self.trajs, self.keep_per_trajectory()) if k]
        return trajs, self.rewards()[torch.tensor(self.keep, dtype=torch.bool)]

    def kept_results(self) -> list[RewardResult]:  # [K*G], in kept()'s order
        return [r for r, k in zip(self.results, self.keep_per_trajectory()) if k]

    def keep_per_trajectory(self) -> list[bool]:  # [N*G]
        return [k for k in self.keep for _ in range(self.g)]


class GRPOStep:
    """The parts of one GRPO step over running groups (rollout, reward pool, learner)."""

    def __init__(
        self,
        *,
        cfg: Config,
        train: list,
        rollout: RolloutGroupAPI,
        pool: RewardPoolAPI,
        learner: LearnerGroupAPI,
        cursor: DataCursor,
        run_dir: Path,
        pad_id: int,
    ) -> None:
        self.cfg, self.train, self.rollout, self.pool, self.learner = (
            cfg,
            train,
            rollout,
            pool,
            learner,
        )
        self.cursor, self.run_dir, self.pad_id = cursor, run_dir, pad_id
        self.warned = False  # the logprob-agreement warning is given once per run
        self.nccl_open = False  # NCCL / IPC weight sync set up (first publish with a backend)
        self.weights_dir = run_dir / "weights"
        # colocated without a GPU transfer: versions go to the engines in memory (no folder)
        self.in_memory = bool(cfg.cluster.colocate) and not cfg.rollout.weight_transfer_backend
        self.blob = b""  # the last staged version, in memory
        self.seconds: dict[str, float] = {}  # the last publish: export and load times
        # colocated GPU ranks: the optimizer states sit in host memory while the engines
        # generate (the same test as the memory plan's; a CPU rank has nothing to move)
        self.offloading = cfg.learner.offloads_states(colocate=bool(cfg.cluster.colocate))
        self.states_out = False  # the learner's states are offloaded now
        self.colocation = (
            Colocation(
                _Engines(self),
                level=cfg.rollout.sleep_level,
                timeout_s=cfg.rollout.weight_sync_timeout_s,
            )
            if cfg.cluster.colocate
            else None
        )

    def collect(self, step: int) -> Groups:
        """B groups of G episodes, scored. With dynamic sampling, groups whose rewards are all
        equal are dropped and replaced by fresh samples, for up to `max_resample_rounds` rounds."""
        c = self.cfg.grpo
        out, need = Groups(g=c.group_size), c.batch_samples
        for rnd in range(1 + (c.max_resample_rounds if c.dynamic_sampling else 0)):
            batch = [self.train[i] for i in self.cursor.take(need)]
            sampling = Sampling.from_config(
                self.cfg.rollout, seed=self.cfg.run.seed * 100003 + step + 1_000_003 * rnd
            )
            t = time.perf_counter()
            trajs = self.rollout.generate(samples=batch, n=c.group_size, sampling=sampling)
            out.seconds["rollout"] += time.perf_counter() - t
            t = time.perf_counter()
            samples = [s.sample.to_dict() for s in batch for _ in range(c.group_size)]
            results = self.pool.score(samples=samples, trajectories=trajs)
            out.seconds["reward"] += time.perf_counter() - t
            keep = select_groups(
                rewards_matrix(results, len(batch), c.group_size),
                need=need,
                dynamic=c.dynamic_sampling,
            )
            out.trajs += trajs
            out.results += results
            out.rounds += [rnd] * len(trajs)
            out.keep += keep.tolist()
            need -= int(keep.sum())
            if need <= 0:
                break
        out.cursor = self.cursor.state()
        return out

    def learn(self, groups: Groups, *, step: int = 0) -> dict[str, float]:
        """Group advantages, old (and reference) logprobs, then mini-batch clipped updates;
        the agreement check when due at `step` (`grpo.logprob_check_every`)."""
        c = self.cfg.grpo
        trajs, rewards = groups.kept()  # [K*G], [K, G]
        if not trajs:
            return {}  # every group had equal rewards: nothing to learn from this step
        adv, text_adv, stats = advantages(c, trajs, groups.kept_results(), rewards)
        batch = build_batch(trajs, adv, pad_id=self.pad_id, samples=self.train, text_adv=text_adv)
        sampler = batch["old_logprobs"]  # [R, T] vLLM's
        check: dict[str, float] = {}
        if not c.async_mode:
            # On-policy: recompute old logprobs with the learner (as verl does), so the ratio
            # starts at exactly 1; in async mode the behaviour logprobs of vLLM are the baseline.
            batch["old_logprobs"] = self.learner.logprobs(batch=batch)
            check = self.check_agreement(sampler, batch["old_logprobs"], batch["loss_mask"])
            if rollout_correction(self.cfg):
                batch["is_weights"] = tis_weights(
                    batch["old_logprobs"], sampler, batch["loss_mask"], cap=c.rollout_correction_cap
                )
        elif c.logprob_check_every and step % c.logprob_check_every == 0:
            # the learner has moved on: score under the weights the rollout sampled from
            learner = self.learner.logprobs(batch=batch, version=behaviour_version(trajs))
            check = self.check_agreement(sampler, learner, batch["loss_mask"])
        if c.kl_coef != 0.0:
            batch["ref_logprobs"] = self.learner.logprobs(batch=batch, reference=True)
        n = batch["input_ids"].shape[0]
        per_update: dict[str, list[float]] = {}
        for idx in np.array_split(np.arange(n), max(1, min(c.mini_batches, n))):
            mb = select_rows(batch, idx.tolist())  # rows (and a VLM's frames) of this update
            for k, v in self.learner.train_step(batch=mb, objective="grpo").items():
                per_update.setdefault(k, []).append(v)
        learned = {f"learn/{k}": float(np.mean(v)) for k, v in per_update.items()}
        return {**stats, **check, **learned}

    def check_agreement(
        self, sampler: torch.Tensor, learner: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, float]:  # [R, T] each
        """vLLM vs learner logprobs under the same weights; warns once past the threshold."""
        out = logprob_agreement(sampler, learner, mask)
        tol = check_threshold(self.cfg)
        if tol > 0 and out["check/lp_diff_max"] > tol and not self.warned:
            self.warned = True
            warnings.warn(
                f"vLLM and learner logprobs disagree: max {out['check/lp_diff_max']:.2e}, "
                f"mean {out['check/lp_diff_mean']:.2e}, {100 * out['check/lp_diff_share']:.1f}% "
                f"of generated tokens over 1e-2 (threshold {tol:g}: grpo.logprob_check_max, or "
                f"logprob_check_max_bf16 with bf16 on either side); the ratio "
                "and gradient are biased: check dtype, temperature and the window",
                stacklevel=2,
            )
        return out

    def publish(self, version: int) -> None:
        """Weights v as an HF folder, loaded into every engine in place; older folders pruned.
        With rollout.weight_transfer_backend=nccl (GPU) learner rank 0 broadcasts them instead.
        In async mode the learner also keeps them, to score the next batch under them.
        Colocated with the engines asleep: staged here, pushed by their wake (actors/colocate.py)."""
        self.stage(version)
        self.give_gpus()
        if self.colocation is not None and self.colocation.asleep:
            self.colocation.wake(version=version)
        else:
            self.push(version)

    def give_gpus(self) -> None:
        """Colocated, after the learner's export and before the engines wake: its optimizer
        states go to host memory (the weights stay: an IPC sync reads them in place)."""
        if not self.offloading or self.states_out:
            return
        t = time.perf_counter()
        self.learner.offload_states(include=list(OFFLOAD_STATES))
        self.states_out = True
        self.seconds["time/offload"] = time.perf_counter() - t

    def take_gpus(self) -> dict[str, float]:
        """Colocated, after the engines generated and before the learner trains: the engines
        sleep, then the learner's states come back. Returns the times of both."""
        if self.colocation is None:
            return {}
        t = time.perf_counter()
        self.colocation.sleep()
        out = {"time/sleep": time.perf_counter() - t}
        if self.states_out:
            t = time.perf_counter()
            self.learner.reload_states()
            self.states_out = False
            out["time/reload"] = time.perf_counter() - t
        return out

    def stage(self, version: int) -> None:
        """The learner's part before the engines take weights v: the folder export (if any)."""
        if keeps_weights(self.cfg.grpo):
            self.learner.keep_weights(version=version)
        self.seconds = {"time/sync_export": 0.0, "time/sync_load": 0.0}
        t = time.perf_counter()
        if self.in_memory:
            self.blob = self.learner.weights_blob(dtype=self.cfg.policy.dtype)
        elif not self.cfg.rollout.weight_transfer_backend:
            self.learner.export_hf(path=str(self.weights_dir / f"v{version:06d}"))
        self.seconds["time/sync_export"] = time.perf_counter() - t

    def push(self, version: int) -> None:
        """Weights v into the engines (awake): a folder reload, or learner rank 0 sends."""
        t = time.perf_counter()
        if self.cfg.rollout.weight_transfer_backend:
            self.send_weights(version)
        elif self.in_memory:
            self.rollout.sync_weights(version=version, source=IN_MEMORY, blob=self.blob)
        else:
            self.rollout.sync_weights(
                version=version, source=str(self.weights_dir / f"v{version:06d}")
            )
            for old in sorted(self.weights_dir.glob("v*"))[:-1]:
                shutil.rmtree(old, ignore_errors=True)
        self.seconds["time/sync_load"] = time.perf_counter() - t

    def send_weights(self, version: int) -> None:
        """NCCL or IPC sync (learners/weight_sync.py): the transfer is set up on first use,
        then each version is sent; the engines then drop their caches and take it."""
        timeout = self.cfg.rollout.weight_sync_timeout_s
        if not self.nccl_open:
            if self.cfg.rollout.weight_transfer_backend == "ipc":
                rollout: Any = self.rollout  # the Ray group takes a backend (actors/rollout.py)
                client = rollout.weight_sync_client(timeout_s=timeout, backend="ipc")
            else:
                client = self.rollout.weight_sync_client(timeout_s=timeout)
            dtype = self.cfg.policy.dtype  # the engines' (actors/engine.py)
            self.learner.init_weight_sync(client=client, dtype=dtype, timeout_s=timeout)
            self.nccl_open = True
        self.learner.send_weights(version=version)
        self.rollout.sync_weights(version=version, source=WEIGHT_TRANSFER)

    def record(self, step: int, groups: Groups) -> dict[str, float]:
        """Every generated trajectory of the step, with rewards, round and kept flag, as Parquet."""
        res = groups.results
        extra: dict[str, list[Any]] = {
            "step": [step] * len(res),
            "reward": [r.total for r in res],
            "reward_fmt": [r.fmt for r in res],
            "reward_turn": [r.turn for r in res],
            "reward_traj": [r.traj for r in res],
            "round": groups.rounds,
            "kept": groups.keep_per_trajectory(),
        }
        write_trajectories(
            self.run_dir / "trajectories" / f"step_{step:06d}.parquet", groups.trajs, extra
        )
        equal = equal_reward_groups(groups.rewards())  # [N]
        return {
            **trajectory_stats(groups.trajs, res),
            "adv/kept_groups": float(sum(groups.keep)),
            "adv/equal_reward_groups": float(equal.sum()),
            "rollout/rounds": float(max(groups.rounds) + 1),
            "time/rollout": groups.seconds["rollout"],
            "time/reward": groups.seconds["reward"],
        }


class _Engines:
    """The rollout group as colocated engines: its sleep / wake verbs, and the step's push."""

    def __init__(self, step: GRPOStep) -> None:
        self.step = step

    def sleep(self, *, level: int) -> None:
        rollout: Any = self.step.rollout  # actors/rollout.py groups have sleep / wake_up
        rollout.sleep(level=level)

    def wake_up(self, *, tags: list[str]) -> None:
        rollout: Any = self.step.rollout
        rollout.wake_up(tags=tags)

    def sync_weights(self, *, version: int) -> None:
        self.step.push(version)


def check_colocation(cfg: Config) -> None:
    """The settings colocated mode needs, and the backends that only fit one way or the other."""
    backend, colocate = cfg.rollout.weight_transfer_backend, cfg.cluster.colocate
    require(
        not (colocate and cfg.grpo.async_mode),
        "cluster.colocate takes turns on the GPUs: grpo.async_mode must be false",
    )
    require(
        not (colocate and backend == "nccl"),
        "cluster.colocate: rollout.weight_transfer_backend=nccl needs separate GPUs; use ipc",
    )
    require(
        colocate or backend != "ipc",
        "rollout.weight_transfer_backend=ipc reads the learner's GPU memory: set cluster.colocate",
    )


def run_grpo(
    cfg: Config,
    run_dir: Path,
    *,
    init_model: str,
    rollout: RolloutGroupAPI | None = None,
    start_val: dict | None = None,
) -> dict:
    """The GRPO stage. Returns {"hf": final policy folder, "val": scores, "steps": n}; the
    final policy's val predictions go to run_dir/val_predictions.jsonl.

    `rollout`: a running rollout group already holding init_model's weights (the caller keeps
    ownership and shuts it down); None starts one here. `start_val`: init_model's val scores
    when the caller has them (the step-0 point of the val curve), else evaluated here.
    """
    c = cfg.grpo
    check_colocation(cfg)
    train, val = load_split(cfg, "train"), load_split(cfg, "val", limit=cfg.eval.max_samples)
    steps_total = c.max_steps or c.epochs * max(len(train) // c.batch_samples, 1)
    policy_eval = PolicyEval.from_config(cfg)
    learner = make_learner_group(cfg, init_model, objective="grpo")
    own_rollout = rollout is None
    if rollout is None:
        from streampro.actors.rollout import make_rollout_group  # imports vLLM: only here

        rollout = make_rollout_group(cfg, init_model)
    pool = make_reward_pool(cfg)
    parts = GRPOStep(
        cfg=cfg,
        train=train,
        rollout=rollout,
        pool=pool,
        learner=learner,
        cursor=DataCursor(len(train), cfg.run.seed),
        run_dir=run_dir,
        pad_id=pad_token_id(AutoTokenizer.from_pretrained(init_model)),
    )
    try:
        with Stage(
            "grpo",
            run_dir,
            learner,
            total=steps_total,
            save_every=c.save_every,
            keep=c.keep_checkpoints,
            log_every=1,  # every step: its rollout and reward metrics
            run=cfg.run,
            config=to_dict(cfg),
        ) as stage:
            if cfg.run.resume == "auto" and (state := stage.resume()) is not None:
                # The cursor was saved before the next step's draws, so an async run redraws
                # the batch that was in flight (now sampled from the checkpoint's weights).
                parts.cursor.restore(state["cursor"])
                parts.publish(state["version"])
            if keeps_weights(c) and stage.step == 0:
                learner.keep_weights(version=0)  # what the engines hold: step 0's behaviour
            if c.eval_every and stage.step == 0:  # the starting point of the val curve
                start = start_val or policy_eval.run(rollout, val)
                stage.log(0, {"val/w_avg": start["w_avg"], "val/avg": start["avg"]})

            # Async mode: step k+1's rollouts run in this thread while the learner trains step k.
            executor, pending, val_scores = ThreadPoolExecutor(max_workers=1), None, None
            try:
                for step in stage.steps():  # step k publishes policy version k
                    ahead = executor if c.async_mode and step < steps_total else None
                    groups, metrics, pending = _step(parts, step - 1, pending, ahead)
                    if c.eval_every and step % c.eval_every == 0:
                        last = run_dir / "val_predictions.jsonl" if step == steps_total else None
                        val_scores = policy_eval.run(rollout, val, predictions_out=last)
                        metrics["val/w_avg"] = val_scores["w_avg"]
                        metrics["val/avg"] = val_scores["avg"]
                    stage.end_step(
                        step,
                        metrics,
                        state={"version": step, "cursor": groups.cursor},
                        postfix={
                            "reward": f"{metrics['reward/total']:.3f}",
                            "resp": f"{metrics['rollout/response_rate']:.2f}",
                        },
                    )
            finally:
                executor.shutdown()

        step = stage.step
        hf = learner.export_hf(path=str(run_dir / "hf"))
        if val_scores is None or not (c.eval_every and step % c.eval_every == 0):
            val_scores = policy_eval.run(  # the last step was not scored
                rollout, val, predictions_out=run_dir / "val_predictions.jsonl"
            )
        summary = {"hf": hf, "steps": step, "val": val_scores}
        text = json.dumps(summary, indent=2, sort_keys=True)
        atomic_write_text(run_dir / "grpo_summary.json", text)
    finally:
        for part in (learner, pool) + ((rollout,) if own_rollout else ()):
            part.shutdown()
    return summary


def _step(
    parts: GRPOStep, step: int, pending: Future | None, ahead: ThreadPoolExecutor | None
) -> tuple[Groups, dict[str, float], Future | None]:
    """Step `step` -> version step + 1: take (or wait for) its rollouts, start the next step's
    on `ahead` (async mode), learn, publish. Returns the groups, metrics and next rollout."""
    t0 = time.perf_counter()
    parts.give_gpus()  # colocated: the engines' turn (a no-op after a publish gave them)
    groups = pending.result() if pending is not None else parts.collect(step)
    t_wait = time.perf_counter() - t0
    pending = ahead.submit(parts.collect, step + 1) if ahead is not None else None

    turn = parts.take_gpus()  # colocated: the learner's turn on the GPUs
    t1 = time.perf_counter()
    learn_stats = parts.learn(groups, step=step)
    t_learn = time.perf_counter() - t1

    t2 = time.perf_counter()
    if pending is not None:
        _wait(pending)  # one step off-policy: the next rollout ends before weights swap
    parts.publish(step + 1)  # policy version = steps done
    t_sync = time.perf_counter() - t2
    metrics = {
        **parts.record(step + 1, groups),
        **learn_stats,
        "time/wait": t_wait,
        "time/learn": t_learn,
        "time/sync": t_sync,
        **parts.seconds,
        **turn,
        "time/step": time.perf_counter() - t0,
    }
    return groups, metrics, pending


def _wait(fut: Future) -> None:
    fut.exception()  # block until done; a failure is raised where the result is taken


def main(cfg: Config, args: argparse.Namespace) -> int:
    run_dir = make_run_dir(cfg, "grpo")
    init_cluster(cfg, "grpo")
    summary = run_grpo(cfg, run_dir, init_model=policy_folder(cfg))
    print(json.dumps({"run_dir": str(run_dir), "val_w_avg": summary["val"]["w_avg"]}))
    return 0
