"""SFT losses: plain CE, focal on decision tokens, and CB-Stream (docs/method.md, stage 1).

Pure functions over `[B, T]` tensors. Hyperparameters come from `SFTConfig`, where their
defaults are written (once); no function here has a default of its own. Alignment follows
learners/api.py: `logprobs[:, t] = log p(input_ids[:, t] | tokens < t)` and position 0 is 0,
so one mask, one class tensor and one logprob tensor all index the predicted token t.
Every loss is a masked *sum* divided by a global normaliser (the number of supervised tokens
of the whole step, all ranks and micro-batches), so micro-batch losses add up to the global
mean and the result does not depend on how the step's batch was split.
"""

from __future__ import annotations

import math

import torch

from streampro.config import SFT_LOSSES, SFTConfig
from streampro.tokens import CLASS_RESPONSE, CLASS_SILENCE


def cb_stream_weights(n_silence: int, n_response: int, beta: float) -> tuple[float, float]:
    """Class-balanced weights (Cui et al. 2019) of the two decision classes, summing to |S| = 2.

    E_k = (1 - beta^n_k) / (1 - beta); w_k = (1/E_k) / sum_j (1/E_j) * 2. A class with no
    target in the batch gets weight 0 (it is unused) and the other one weight 2.
    """
    if n_silence < 0 or n_response < 0:
        raise ValueError(f"class counts must be >= 0, got {n_silence}, {n_response}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    inv = []
    for n in (n_silence, n_response):
        # 1 - beta^n = -expm1(n * log(beta)): no cancellation when beta is near 1
        eff = -math.expm1(n * math.log(beta)) / (1.0 - beta) if n > 0 and beta > 0 else float(n > 0)
        inv.append(1.0 / eff if eff > 0 else 0.0)
    total = sum(inv)
    if total == 0.0:
        return 0.0, 0.0
    return inv[0] / total * 2.0, inv[1] / total * 2.0


def shifted_logprobs(
    logits: torch.Tensor,  # [B, T, V] logits[:, t] predicts token t+1
    input_ids: torch.Tensor,  # [B, T]
    *,
    position_ids: torch.Tensor | None = None,  # [B, T] packed rows: 0 starts a sequence
    with_entropy: bool = False,
    entropy_grad: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-token logprobs, entropies and argmax predictions, aligned to the predicted token.

    `temperature` divides the logits first: the logprobs and entropy are those of the
    distribution the sampler drew from (vLLM applies logits / temperature), not of T = 1.

    Returns (logprobs [B, T], entropy [B, T] or None, predicted ids [B, T]); the first token
    of every sequence (column 0, and position_ids == 0 in packed rows) holds 0 (entropy 0,
    prediction -1): nothing of its own sequence predicts it. The entropy is a statistic
    (no gradient) unless `entropy_grad` (a loss term: GRPO's entropy bonus).
    """
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits[:, :-1].float()  # [B, T-1, V]
    if temperature != 1.0:
        scaled = scaled / temperature
    logp = torch.log_softmax(scaled, dim=-1)  # [B, T-1, V]
    target = input_ids[:, 1:].unsqueeze(-1)  # [B, T-1, 1]
    lp = logp.gather(-1, target).squeeze(-1)  # [B, T-1]
    zero = lp.new_zeros(lp.shape[0], 1)  # [B, 1] (not lp[:, :1]: empty when T == 1)
    logprobs = torch.cat([zero, lp], dim=1)  # [B, T]
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp.exp() * logp).sum(-1)  # [B, T-1]
        entropy = torch.cat([zero.detach(), ent], dim=1)
    with torch.no_grad():
        pred = logits[:, :-1].argmax(-1)  # [B, T-1]
        pred = torch.cat([pred.new_full((pred.shape[0], 1), -1), pred], dim=1)  # [B, T]
    if position_ids is not None:
        start = position_ids == 0  # [B, T]
        logprobs = logprobs.masked_fill(start, 0.0)
        pred = pred.masked_fill(start, -1)
        entropy = entropy.masked_fill(start, 0.0) if entropy is not None else None
    return logprobs, entropy, pred


def token_logprobs(
    logits: torch.Tensor,  # [N, V] the logits that predict each scored token
    targets: torch.Tensor,  # [N] the scored tokens
    *,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Logprob, entropy and argmax of the scored tokens only: `shifted_logprobs` restricted to
    the N positions a loss or metric reads (the learner gathers their hidden states first).

    Returns (logprobs [N], entropy [N] or None, predicted ids [N]); same maths and dtype
    (fp32 log-softmax of logits / temperature) as `shifted_logprobs`, so values are equal;
    the entropy carries a gradient only with `entropy_grad`.
    """
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits.float()  # [N, V]
    if temperature != 1.0:
        scaled = scaled / temperature
    logp = torch.log_softmax(scaled, dim=-1)  # [N, V]
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]
    entropy = None
    if with_entropy:  # a statistic (no graph) unless a loss term needs its gradient
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            # banned ids (-inf logits) add 0, not 0 * -inf = NaN
            finite = logp.clamp_min(torch.finfo(logp.dtype).min)
            entropy = -(logp.exp() * finite).sum(-1)  # [N]
    with torch.no_grad():
        pred = logits.argmax(-1)  # [N]
    return lp, entropy, pred


def token_weights(
    decision_class: torch.Tensor,  # [B, T] long: -1 text/none, 0 silence, 1 response
    *,
    w_silence: float,
    w_response: float,
    w_text: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # [B, T]
    """w_i = w_{y_i} on decision tokens, w_text on every other token (masking is done later)."""
    w = torch.full(decision_class.shape, w_text, dtype=dtype, device=decision_class.device)
    w = torch.where(decision_class == CLASS_SILENCE, torch.full_like(w, w_silence), w)
    w = torch.where(decision_class == CLASS_RESPONSE, torch.full_like(w, w_response), w)
    return w


def sft_loss(
    logprobs: torch.Tensor,  # [B, T] log p(y_t | < t)
    loss_mask: torch.Tensor,  # [B, T] float 0/1 supervised tokens
    decision_class: torch.Tensor,  # [B, T] long
    sft: SFTConfig,
    *,
    n_silence: int,
    n_response: int,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT loss of one micro-batch: sum_i w_i * l_i / N, N = supervised tokens of the global step.

    `sft.loss` picks the loss (`sft.beta`, `sft.lambda_text` and `sft.focal_gamma` its knobs):
    ce:        w_i = 1,                               l_i = -log p
    focal:     decisions l_i = (1 - p)^gamma * -log p, text l_i = -log p, w_i = 1
    cb_stream: w_i = cb_stream_weights(n_silence, n_response) on decisions, lambda_text on text
    n_silence / n_response are the class counts of the *global* step, never of this micro-batch.
    """
    mask = loss_mask.to(logprobs.dtype)
    nll = -logprobs  # [B, T]
    is_decision = decision_class >= 0  # [B, T]
    if sft.loss == "ce":
        per_token = nll
    elif sft.loss == "focal":
        focal = (1.0 - logprobs.exp()).clamp(min=0.0).pow(sft.focal_gamma) * nll
        per_token = torch.where(is_decision, focal, nll)
    elif sft.loss == "cb_stream":
        w_s, w_r = cb_stream_weights(n_silence, n_response, sft.beta)
        w = token_weights(
            decision_class,
            w_silence=w_s,
            w_response=w_r,
            w_text=sft.lambda_text,
            dtype=logprobs.dtype,
        )
        per_token = w * nll
    else:
        raise ValueError(f"unknown SFT loss {sft.loss!r} (one of {', '.join(SFT_LOSSES)})")
    loss = (per_token * mask).sum() / max(float(normalizer), 1.0)
    with torch.no_grad():
        stats = {"nll_sum": float((nll * mask).sum()), "tokens": float(mask.sum())}
    return loss, stats


def decision_counts(
    pred: torch.Tensor,  # [B, T] argmax prediction of token t
    input_ids: torch.Tensor,  # [B, T]
    decision_class: torch.Tensor,  # [B, T]
    loss_mask: torch.Tensor,  # [B, T]
) -> dict[str, float]:
    """Hits and targets per class, as sums so ranks and micro-batches reduce by addition."""
    sup = loss_mask > 0
    hit = pred == input_ids
    out: dict[str, float] = {}
    for name, k in (("silence", CLASS_SILENCE), ("response", CLASS_RESPONSE)):
        is_k = sup & (decision_class == k)
        out[f"n_{name}"] = float(is_k.sum())
        out[f"hit_{name}"] = float((is_k & hit).sum())
    return out


def finish_decision_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Summed counts -> accuracy and per-class recall (0, not NaN, for an absent class)."""
    n_s, n_r = sums.get("n_silence", 0.0), sums.get("n_response", 0.0)
    h_s, h_r = sums.get("hit_silence", 0.0), sums.get("hit_response", 0.0)
    return {
        "decision_acc": (h_s + h_r) / max(n_s + n_r, 1.0),
        "silence_recall": h_s / max(n_s, 1.0),
        "response_recall": h_r / max(n_r, 1.0),
    }
