"""GRPO maths (docs/method.md, stage 2): group advantages, the clipped policy loss, KL estimators.

Pure functions: tensors in, `(value, stats)` out. Everything is masked to policy-generated
tokens (decisions and answer text); frame and prompt tokens never carry gradient. The
hyperparameters come from `GRPOConfig`, where their defaults are written (once).
"""

from __future__ import annotations

import torch

from streampro.config import GRPOConfig


def equal_reward_groups(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B] bool
    """Groups whose rewards are all equal: zero advantage, no gradient signal."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) <= 1e-12


def group_advantages(
    rewards: torch.Tensor,  # [B, G]
    *,
    mode: str,
    eps: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantage of each trajectory relative to its group (`grpo.advantage`, `grpo.adv_eps`).

    grpo:   (r - mean_g) / (std_g + eps)       (std with Bessel's correction, as TRL/verl)
    drgrpo: r - mean_g                          (Dr. GRPO: no std scaling)
    loo:    r - mean of the other G-1 members   (leave-one-out / RLOO baseline)
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got {tuple(rewards.shape)}")
    g = rewards.shape[1]
    mean = rewards.mean(dim=1, keepdim=True)  # [B, 1]
    if mode == "grpo":
        std = rewards.std(dim=1, keepdim=True, unbiased=True) if g > 1 else torch.zeros_like(mean)
        adv = (rewards - mean) / (std + eps)  # [B, G]
    elif mode == "drgrpo":
        adv = rewards - mean
    elif mode == "loo":
        if g < 2:
            raise ValueError("leave-one-out needs a group of at least 2")
        adv = (rewards - mean) * g / (g - 1)  # r - (sum - r)/(G-1), rearranged
    else:
        raise ValueError(f"unknown advantage mode {mode!r} (grpo, drgrpo, loo)")
    degenerate = equal_reward_groups(rewards)  # [B]
    stats = {
        "adv/degenerate_groups": float(degenerate.sum()),
        "adv/abs_mean": float(adv.abs().mean()),
    }
    return adv, stats


def kl_penalty(
    logprobs: torch.Tensor,  # [B, T] current policy
    ref_logprobs: torch.Tensor,  # [B, T] frozen reference
    estimator: str,
) -> torch.Tensor:  # [B, T]
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1, k2, k3)."""
    log_ratio = ref_logprobs - logprobs  # log(ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio  # (r - 1) - log r, >= 0, unbiased
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def aggregate(
    per_token: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T] float 0/1
    *,
    loss_agg: str,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Masked sum divided by a global normaliser, so micro-batches add up to the global mean.

    token_mean: sum over all tokens / total policy tokens of the global batch.
    seq_mean:   sum over sequences of (their token mean) / number of sequences of the global batch.
    With normalizer=None the local batch is the global batch.
    """
    if loss_agg == "token_mean":
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1.0)
        return (per_token * mask).sum() / denom
    if loss_agg == "seq_mean":
        seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [B]
        denom = normalizer if normalizer is not None else float(per_token.shape[0])
        return seq.sum() / denom
    raise ValueError(f"unknown loss_agg {loss_agg!r} (token_mean, seq_mean)")


def policy_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, log p(x_t | x_<t)
    old_logprobs: torch.Tensor,  # [B, T] behaviour policy (sampling logprobs)
    advantages: torch.Tensor,  # [B, T] sequence advantage broadcast over its tokens
    mask: torch.Tensor,  # [B, T] 1 on policy-generated tokens
    grpo: GRPOConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,  # [B, T], read only when grpo.kl_coef != 0
    entropy: torch.Tensor | None = None,  # [B, T] differentiable, read when entropy_coef != 0
    is_weights: torch.Tensor | None = None,  # [B, T] rollout-correction weights (no grad)
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip surrogate with separate low/high clip (DAPO clip-higher: `grpo.clip_low`,
    `grpo.clip_high`), plus an optional KL penalty (`kl_coef`, `kl_estimator`) and an
    optional entropy bonus (-`entropy_coef` x entropy per token), aggregated by `loss_agg`
    over `normalizer` (the global batch's; None: this batch is the global one)."""
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # [B, T]
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - grpo.clip_low, 1.0 + grpo.clip_high) * advantages
    pg = -torch.minimum(surr1, surr2)  # [B, T]
    if is_weights is not None:  # truncated importance sampling: engine -> learner probs
        pg = pg * is_weights
    per_token = pg
    kl = None
    if grpo.kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef != 0 needs ref_logprobs")
        kl = kl_penalty(logprobs, ref_logprobs, grpo.kl_estimator)  # [B, T]
        per_token = pg + grpo.kl_coef * kl
    if grpo.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the entropy")
        per_token = per_token - grpo.entropy_coef * entropy
    loss = aggregate(per_token, mask, loss_agg=grpo.loss_agg, normalizer=normalizer)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        clipped = ((surr2 < surr1) & (mask > 0)).to(mask.dtype)  # the clip was active
        stats = {
            "pg_loss": float((pg * mask).sum() / n),
            "clip_frac": float(clipped.sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
            "ratio_max": float(torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()),
            "tokens": float(mask.sum()),
        }
        if kl is not None:
            stats["kl"] = float((kl * mask).sum() / n)
        if is_weights is not None:
            stats["is_weight_mean"] = float((is_weights * mask).sum() / n)
    return loss, stats


def tis_weights(
    learner_old: torch.Tensor,  # [B, T] the learner's logprobs under the sampling weights
    behaviour: torch.Tensor,  # [B, T] vLLM's logprobs of the same tokens
    mask: torch.Tensor,  # [B, T] 1 on generated tokens
    *,
    cap: float,
) -> torch.Tensor:  # [B, T]
    """Truncated importance weights min(p_learner / p_vllm, cap) of the generated tokens (0
    elsewhere): the policy gradient is taken over the learner's distribution while the
    tokens came from the engine's, which differ where the two score at other precisions."""
    w = torch.exp(learner_old - behaviour).clamp(max=cap)  # [B, T]
    return (w * mask.to(w.dtype)).detach()
