"""Learner groups: `LocalLearnerGroup` (one in-process rank) and `RayLearnerGroup` (K Ray actors).

Both implement learners/api.py `LearnerGroupAPI` with the same LearnerWorker, so they run
identical maths; only the transport differs. A group computes the step's global totals
(CB-Stream class counts, the token or sequence normaliser) BEFORE splitting the batch over
ranks and micro-batches, so a step's loss and gradient do not depend on the split.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from streampro.config import Config
from streampro.errors import UserError
from streampro.learners.api import Batch, LearnerGroupAPI
from streampro.learners.packing import assign_rows, materialize
from streampro.learners.worker import ATTENTION_MODES, LearnerSettings, LearnerWorker
from streampro.tokens import CLASS_RESPONSE, CLASS_SILENCE

OBJECTIVES = ("sft", "grpo")
_REQUIRED = {"sft": ("decision_class",), "grpo": ("advantages", "old_logprobs")}
_BASE_KEYS = ("input_ids", "position_ids", "seq_ids", "loss_mask")
# Seconds a group waits for its ranks beyond the sync timeout they enforce themselves.
_SYNC_MARGIN_S = 60.0


def check_batch(batch: Batch, objective: str) -> None:
    """Fail early, naming the missing or misshapen key, before any rank starts work."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    shape = tuple(batch["input_ids"].shape) if "input_ids" in batch else None
    for key in _BASE_KEYS + _REQUIRED[objective]:
        if key not in batch:
            raise ValueError(f"batch for {objective!r} lacks key {key!r}")
        if tuple(batch[key].shape) != shape:
            raise ValueError(
                f"batch[{key!r}] has shape {tuple(batch[key].shape)}, input_ids {shape}"
            )


def step_totals(batch: Batch, *, objective: str, loss_agg: str = "token_mean") -> dict[str, float]:
    """Global quantities of the whole step: class counts and the loss normaliser."""
    mask = batch["loss_mask"] > 0  # [B, T]
    totals: dict[str, float] = {"tokens": float(mask.sum())}
    if objective == "sft":
        dc = batch["decision_class"]
        totals["n_silence"] = float((mask & (dc == CLASS_SILENCE)).sum())
        totals["n_response"] = float((mask & (dc == CLASS_RESPONSE)).sum())
        totals["normalizer"] = totals["tokens"]
    elif loss_agg == "seq_mean":
        if int(batch["seq_ids"].max()) > 0:
            raise ValueError(
                "loss_agg='seq_mean' needs one sequence per row (do not pack GRPO batches)"
            )
        totals["normalizer"] = float(mask.any(dim=1).sum())
    else:
        totals["normalizer"] = totals["tokens"]
    return totals


def reduce_stats(
    per_rank: list[dict[str, float]], *, objective: str, totals: dict[str, float]
) -> dict[str, float]:
    """Add rank sums, then turn them into the step's metrics (global means)."""
    acc: dict[str, float] = {}
    for stats in per_rank:
        for k, v in stats.items():
            if k.startswith("max/"):
                acc[k] = max(acc.get(k, v), v)
            elif k.startswith("last/"):
                acc[k] = v  # identical on every rank (global grad norm, lr)
            else:
                acc[k] = acc.get(k, 0.0) + v
    n = max(acc.get("sum/tokens", 0.0), 1.0)
    out = {
        "loss": acc.get("sum/loss", 0.0),
        "tokens": acc.get("sum/tokens", 0.0),
        "entropy": acc.get("sum/entropy", 0.0) / n,
        "grad_norm": acc.get("last/grad_norm", 0.0),
        "lr": acc.get("last/lr", 0.0),
    }
    if objective == "sft":
        from streampro.learners.losses import cb_stream_weights, finish_decision_metrics

        out["nll"] = acc.get("sum/nll", 0.0) / n
        out.update(
            finish_decision_metrics({k[4:]: v for k, v in acc.items() if k.startswith("sum/")})
        )
        out["n_silence"], out["n_response"] = totals["n_silence"], totals["n_response"]
        out["w_silence"], out["w_response"] = cb_stream_weights(
            int(totals["n_silence"]), int(totals["n_response"])
        )
    else:
        for k, v in acc.items():
            if k.startswith("sum/") and k not in ("sum/loss", "sum/tokens", "sum/entropy"):
                out[k[4:]] = v / n
        out["ratio_max"] = acc.get("max/ratio_max", 0.0)
    return out


def plan_micro_batches(
    batch: Batch, settings: LearnerSettings, world_size: int
) -> list[list[list[int]]]:
    """Rows per rank per micro-batch, by tokens (micro_batch_tokens > 0) or by row count."""
    return assign_rows(
        batch,
        world_size=world_size,
        micro_batch=settings.micro_batch,
        micro_batch_tokens=settings.micro_batch_tokens,
    )


def _scatter_logprobs(
    batch: Batch, plan: list[list[list[int]]], results: list[list[torch.Tensor]]
) -> torch.Tensor:
    out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)  # [B, T]
    for rank_rows, rank_lps in zip(plan, results):
        for rows, lp in zip(rank_rows, rank_lps):
            if rows:
                out[rows, : lp.shape[1]] = lp
    return out


def _tmp_sibling(path: str) -> Path:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: str) -> None:
    """Atomic-ish replace: rename the finished temp folder over the final one."""
    final = Path(path)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


class LocalLearnerGroup:
    """World size 1 in this process: DeepSpeed over a single gloo rank (same code as Ray ranks)."""

    sync_timeout_s = 0.0  # set by init_weight_sync

    def __init__(self, *, model_path: str, **settings) -> None:
        """settings: the flat fields of LearnerSettings (zero_stage, precision, lr, ...)."""
        self.settings = LearnerSettings(**settings)
        self.world_size = 1
        self.worker = LearnerWorker(
            model_path=model_path, rank=0, world_size=1, settings=self.settings
        )
        _, port = self.worker.address()
        self.worker.setup(master_addr="127.0.0.1", master_port=port)

    def train_step(self, *, batch: Batch, objective: str) -> dict[str, float]:
        check_batch(batch, objective)
        totals = step_totals(batch, objective=objective, loss_agg=self.settings.loss_agg)
        plan = plan_micro_batches(batch, self.settings, self.world_size)
        stats = self.worker.train(
            micro_batches=[materialize(batch, r) for r in plan[0]],
            objective=objective,
            totals=totals,
        )
        return reduce_stats([stats], objective=objective, totals=totals)

    def logprobs(
        self, *, batch: Batch, reference: bool = False, version: int | None = None
    ) -> torch.Tensor:
        plan = plan_micro_batches(batch, self.settings, self.world_size)
        lps = self.worker.logprobs(
            micro_batches=[materialize(batch, r) for r in plan[0]],
            reference=reference,
            version=version,
        )
        return _scatter_logprobs(batch, plan, [lps])

    def keep_weights(self, *, version: int) -> None:
        self.worker.keep_weights(version=version)

    def save_checkpoint(self, *, path: str, client_state: dict | None = None) -> None:
        tmp = _tmp_sibling(path)
        self.worker.save(path=str(tmp), client_state=dict(client_state or {}))
        _publish(tmp, path)

    def load_checkpoint(self, *, path: str) -> dict:
        return self.worker.load(path=path)

    def export_hf(self, *, path: str) -> str:
        tmp = _tmp_sibling(path)
        self.worker.export_hf(path=str(tmp))
        _publish(tmp, path)
        return str(path)

    def init_weight_sync(self, *, client: Any, dtype: str, timeout_s: float) -> None:
        from streampro.actors.weight_transfer import call_with_timeout

        ip, port = self.worker.address()
        call_with_timeout(
            lambda: self.worker.init_weight_sync(
                master_address=ip,
                master_port=port,
                world_size=client.world_size,
                client=client,
                dtype=dtype,
                timeout_s=timeout_s,
            ),
            timeout_s=timeout_s + _SYNC_MARGIN_S,
            what="learner init_weight_sync",
        )
        self.sync_timeout_s = timeout_s

    def send_weights(self, *, version: int) -> float:
        return self.worker.send_weights(version=version)  # bounded inside (call_with_timeout)

    def shutdown(self) -> None:
        self.worker.shutdown()


class RayLearnerGroup:
    """K Ray actors in one placement group, each a rank of one DeepSpeed data-parallel engine."""

    sync_timeout_s = 0.0  # set by init_weight_sync

    def __init__(
        self,
        *,
        model_path: str,
        num_ranks: int,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        memory_gb: float = 0.0,
        placement: str = "PACK",
        role_resource: bool = False,
        **settings,
    ) -> None:
        """settings: the flat fields of LearnerSettings; role_resource asks for the 'learner'
        custom resource so an autoscaler starts nodes of the learner worker group."""
        import ray

        from streampro.cluster.resources import in_placement_group, learner_placement_group

        self.settings = LearnerSettings(**settings)
        self.world_size = num_ranks
        self.pg = learner_placement_group(
            num_ranks, num_cpus, num_gpus, placement, memory_gb=memory_gb, custom=role_resource
        )
        ray.get(self.pg.ready(), timeout=600)
        env = {"TOKENIZERS_PARALLELISM": "false"}
        if num_gpus == 0:
            env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed must not look for CUDA on a CPU rank
        remote_cls = ray.remote(LearnerWorker)
        self.actors = [
            remote_cls.options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                runtime_env={"env_vars": env},
                **in_placement_group(self.pg, i),
            ).remote(model_path=model_path, rank=i, world_size=num_ranks, settings=self.settings)
            for i in range(num_ranks)
        ]
        try:
            addrs = ray.get([a.address.remote() for a in self.actors])
            one_node = len({ip for ip, _ in addrs}) == 1
            master = "127.0.0.1" if one_node else addrs[0][0]
            port = addrs[0][1]
            ray.get([a.setup.remote(master_addr=master, master_port=port) for a in self.actors])
        except BaseException:
            self.shutdown()  # a failed start must not leave actors and bundles behind
            raise

    def train_step(self, *, batch: Batch, objective: str) -> dict[str, float]:
        import ray

        check_batch(batch, objective)
        totals = step_totals(batch, objective=objective, loss_agg=self.settings.loss_agg)
        plan = plan_micro_batches(batch, self.settings, self.world_size)
        refs = [
            a.train.remote(
                micro_batches=[materialize(batch, r) for r in plan[k]],
                objective=objective,
                totals=totals,
            )
            for k, a in enumerate(self.actors)
        ]
        return reduce_stats(ray.get(refs), objective=objective, totals=totals)

    def logprobs(
        self, *, batch: Batch, reference: bool = False, version: int | None = None
    ) -> torch.Tensor:
        import ray

        plan = plan_micro_batches(batch, self.settings, self.world_size)
        refs = [
            a.logprobs.remote(
                micro_batches=[materialize(batch, r) for r in plan[k]],
                reference=reference,
                version=version,
            )
            for k, a in enumerate(self.actors)
        ]
        return _scatter_logprobs(batch, plan, ray.get(refs))

    def keep_weights(self, *, version: int) -> None:
        import ray

        ray.get([a.keep_weights.remote(version=version) for a in self.actors])

    def save_checkpoint(self, *, path: str, client_state: dict | None = None) -> None:
        import ray

        tmp = _tmp_sibling(path)  # ranks write into one shared folder (same node or shared FS)
        ray.get(
            [
                a.save.remote(path=str(tmp), client_state=dict(client_state or {}))
                for a in self.actors
            ]
        )
        _publish(tmp, path)

    def load_checkpoint(self, *, path: str) -> dict:
        import ray

        return ray.get([a.load.remote(path=path) for a in self.actors])[0]

    def export_hf(self, *, path: str) -> str:
        import ray

        tmp = _tmp_sibling(path)
        ray.get([a.export_hf.remote(path=str(tmp)) for a in self.actors])
        _publish(tmp, path)
        return str(path)

    def init_weight_sync(self, *, client: Any, dtype: str, timeout_s: float) -> None:
        from streampro.learners.weight_sync import wait_refs

        # rank 0 hosts the NCCL rendezvous on its own node
        ip, port = wait_refs(
            [self.actors[0].address.remote()], timeout_s=timeout_s, what="learner rank 0 address"
        )[0]
        refs = [
            a.init_weight_sync.remote(
                master_address=ip,
                master_port=port,
                world_size=client.world_size,
                client=client,
                dtype=dtype,
                timeout_s=timeout_s,
            )
            for a in self.actors
        ]
        # the ranks time out themselves (call_with_timeout) and say where; this is the backstop
        wait_refs(refs, timeout_s=timeout_s + _SYNC_MARGIN_S, what="learner init_weight_sync")
        self.sync_timeout_s = timeout_s

    def send_weights(self, *, version: int) -> float:
        from streampro.learners.weight_sync import wait_refs

        if not self.sync_timeout_s:
            raise RuntimeError("send_weights before init_weight_sync")
        refs = [a.send_weights.remote(version=version) for a in self.actors]
        what = f"learner send_weights v{version}"
        return wait_refs(refs, timeout_s=self.sync_timeout_s + _SYNC_MARGIN_S, what=what)[0]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:  # a rank stuck in a collective after a peer failed must not block shutdown
            ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as e:  # the actors are killed below
            warnings.warn(
                f"learner shutdown: {type(e).__name__}: {e}; killing the ranks", stacklevel=2
            )
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []  # idempotent: a second shutdown finds nothing to release
            if self.pg is not None:
                remove_placement_group(self.pg)
                self.pg = None


def make_learner_group(cfg: Config, model_path: str, *, objective: str) -> LearnerGroupAPI:
    """The learner group of a config, with the lr, schedule and loss of the objective."""
    lc = cfg.learner
    if objective == "sft":
        stage = {"lr": cfg.sft.lr, "warmup_steps": cfg.sft.warmup_steps, "with_reference": False}
    elif objective == "grpo":
        stage = {"lr": cfg.grpo.lr, "warmup_steps": 0, "with_reference": cfg.grpo.kl_coef != 0.0}
    else:
        raise ValueError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})")
    settings = dict(
        zero_stage=lc.zero_stage,
        precision=lc.precision,
        micro_batch=lc.micro_batch,
        micro_batch_tokens=lc.micro_batch_tokens,
        attention=lc.attention,
        weight_decay=lc.weight_decay,
        grad_clip=lc.grad_clip,
        seed=cfg.run.seed,
        sft_loss=cfg.sft.loss,
        beta=cfg.sft.beta,
        lambda_text=cfg.sft.lambda_text,
        focal_gamma=cfg.sft.focal_gamma,
        clip_low=cfg.grpo.clip_low,
        clip_high=cfg.grpo.clip_high,
        kl_coef=cfg.grpo.kl_coef,
        kl_estimator=cfg.grpo.kl_estimator,
        entropy_coef=cfg.grpo.entropy_coef,
        loss_agg=cfg.grpo.loss_agg,
        temperature=cfg.rollout.temperature,
        freeze_vision=lc.freeze_vision,
        lora_rank=lc.lora_rank,
        lora_alpha=lc.lora_alpha,
        **stage,
    )
    check_settings(**settings)
    if lc.in_process:
        if lc.num_ranks != 1:
            raise UserError(
                f"learner.in_process=true needs learner.num_ranks=1, got {lc.num_ranks}"
            )
        return LocalLearnerGroup(model_path=model_path, **settings)
    return RayLearnerGroup(
        model_path=model_path,
        num_ranks=lc.num_ranks,
        num_cpus=rank_cpus(cfg, objective),
        num_gpus=lc.num_gpus,
        memory_gb=lc.memory_gb,
        placement=lc.placement,
        role_resource=cfg.cluster.role_resources,
        **settings,
    )


def rank_cpus(cfg: Config, objective: str) -> float:
    """CPUs of each learner rank for an objective: sft.num_cpus in SFT when set (SFT runs with
    no rollouts beside it), else learner.num_cpus."""
    if objective == "sft" and cfg.sft.num_cpus > 0:
        return cfg.sft.num_cpus
    return cfg.learner.num_cpus


def check_settings(**s) -> None:
    """Config values a rank would only reject minutes later, as one-line UserErrors now."""
    from streampro.learners.losses import SFT_LOSSES

    if s["zero_stage"] not in (0, 1, 2, 3):
        raise UserError(f"learner.zero_stage must be 0-3, got {s['zero_stage']}")
    if s["precision"] not in ("fp32", "bf16", "auto"):
        raise UserError(f"learner.precision must be fp32, bf16 or auto, got {s['precision']!r}")
    if s["attention"] not in ATTENTION_MODES:
        raise UserError(
            f"learner.attention must be one of {', '.join(ATTENTION_MODES)}, got {s['attention']!r}"
        )
    if s["micro_batch_tokens"] < 0:
        raise UserError(f"learner.micro_batch_tokens must be >= 0, got {s['micro_batch_tokens']}")
    if s["micro_batch"] < 1:
        raise UserError(f"learner.micro_batch must be >= 1, got {s['micro_batch']}")
    if s["sft_loss"] not in SFT_LOSSES:
        raise UserError(f"sft.loss must be one of {', '.join(SFT_LOSSES)}, got {s['sft_loss']!r}")
    if not 0.0 <= s["beta"] < 1.0:
        raise UserError(f"sft.beta must be in [0, 1), got {s['beta']}")
