"""Advantages of `grpo.credit` (docs/learners.md, "Per-decision credit").

`trajectory` is the paper's GRPO: one group advantage per trajectory, broadcast over its
generated tokens. `decision` gives each decision token the return of its per-decision rewards
(each response's marginal StreamPro-F1, rewards/credit.py; silence 0) over
`grpo.credit_horizon` chunks, minus the mean return of the group's other trajectories at the
same chunk, and each response's answer text its S_acc minus the group's mean S_acc on the
same answer. The maths are pure torch over [K groups, G trajectories, C chunks].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streampro.config import GRPOConfig
from streampro.learners.grpo_loss import group_advantages
from streampro.types import RewardResult, Segment, Trajectory


@dataclass
class CreditInputs:
    """Per-chunk credit of K groups of G trajectories, padded to the longest stream's C."""

    reward: torch.Tensor  # [K, G, C] float: a response's marginal F1, 0 for anything else
    response: torch.Tensor  # [K, G, C] bool: the decision is a response
    valid: torch.Tensor  # [K, G, C] bool: the trajectory has a decision at this chunk
    item: torch.Tensor  # [K, G, C] long: the answer a response's text was judged on, -1 none
    content: torch.Tensor  # [K, G, C] float: that S_acc, 0 where item is -1


def credit_inputs(trajs: list[Trajectory], results: list[RewardResult], g: int) -> CreditInputs:
    """The reward pool's per-response credit laid out on each trajectory's chunks (step k of
    a trajectory is chunk k: every member of a group streams the same chunks)."""
    c = max((len(t.steps) for t in trajs), default=0)
    n = len(trajs)
    reward, content = torch.zeros(n, c), torch.zeros(n, c)  # [N, C]
    valid, response = torch.zeros(n, c, dtype=torch.bool), torch.zeros(n, c, dtype=torch.bool)
    item = torch.full((n, c), -1, dtype=torch.long)
    for i, (t, r) in enumerate(zip(trajs, results)):
        chunks = [k for k, s in enumerate(t.steps) if s.decision == "response"]
        if len(r.credit_marginal) != len(chunks):
            raise RuntimeError(
                f"trajectory {t.sample_id}/{t.episode}: {len(chunks)} responses but "
                f"{len(r.credit_marginal)} credits (grpo.credit=decision needs the reward "
                "pool built with credit, as make_reward_pool does)"
            )
        valid[i, : len(t.steps)] = True
        response[i, chunks] = True
        reward[i, chunks] = torch.tensor(r.credit_marginal, dtype=torch.float32)
        item[i, chunks] = torch.tensor(r.credit_item, dtype=torch.long)
        content[i, chunks] = torch.tensor(r.credit_content, dtype=torch.float32)
    k = n // g
    return CreditInputs(*(x.view(k, g, c) for x in (reward, response, valid, item, content)))


def horizon_returns(reward: torch.Tensor, horizon: int) -> torch.Tensor:  # [K, G, C]
    """R[c] = sum of reward[c : c + horizon] (horizon 0, or past the end: to the end)."""
    c = reward.shape[-1]
    # float64 prefix sums: differences of long float32 sums would lose the small marginals
    cum = torch.nn.functional.pad(reward.double().cumsum(-1), (1, 0))  # [K, G, C+1]
    start = torch.arange(c)  # [C]
    end = (start + horizon).clamp(max=c) if horizon > 0 else torch.full_like(start, c)
    return (cum[..., end] - cum[..., start]).to(reward.dtype)  # [K, G, C]


def decision_advantages(
    reward: torch.Tensor,  # [K, G, C] per-decision rewards, 0 at padding
    valid: torch.Tensor,  # [K, G, C] bool
    *,
    horizon: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return over `horizon` chunks minus the leave-one-out mean of the group's other
    trajectories' returns at the same chunk; 0 at padding."""
    g = reward.shape[1]
    if g < 2:
        raise ValueError("a leave-one-out baseline needs a group of at least 2")
    ret = horizon_returns(reward, horizon)  # [K, G, C]
    others = (ret.sum(dim=1, keepdim=True) - ret) / (g - 1)  # [K, G, C]
    adv = (ret - others) * valid  # [K, G, C]
    n = valid.sum().clamp(min=1)
    stats = {
        "adv/abs_mean": float(adv.abs().sum() / n),
        "adv/return_mean": float((ret * valid).sum() / n),
    }
    return adv, stats


def text_advantages(
    item: torch.Tensor,  # [K, G, C] long, -1 where no answer was judged
    content: torch.Tensor,  # [K, G, C] S_acc
) -> tuple[torch.Tensor, dict[str, float]]:
    """S_acc minus the group's mean S_acc on the same answer (a trajectory's S_acc on an
    answer is the mean of its responses judged on it; the mean is over the trajectories that
    have one); 0 where no answer was judged."""
    j = int(item.max()) + 1 if item.numel() else 0
    onehot = (item.unsqueeze(-1) == torch.arange(max(j, 1))).to(content.dtype)  # [K, G, C, J]
    count = onehot.sum(dim=2)  # [K, G, J]
    per_traj = (onehot * content.unsqueeze(-1)).sum(dim=2) / count.clamp(min=1)  # [K, G, J]
    matched = (count > 0).to(content.dtype)  # [K, G, J]
    group = (per_traj * matched).sum(dim=1) / matched.sum(dim=1).clamp(min=1)  # [K, J]
    baseline = (onehot * group[:, None, None, :]).sum(dim=-1)  # [K, G, C]
    judged = item >= 0  # [K, G, C]
    adv = (content - baseline) * judged
    stats = {
        "adv/text_abs_mean": float(adv.abs().sum() / judged.sum().clamp(min=1)),
        "credit/judged_responses": float(judged.sum()),
    }
    return adv, stats


def token_advantages(
    traj: Trajectory,
    decision: torch.Tensor,  # [C] advantage of each step's decision token
    text: torch.Tensor,  # [C] advantage of each step's answer text
) -> list[list[float]]:
    """Per segment, per token: each decision's first generated token gets `decision[step]`,
    the rest of its generated tokens `text[step]`, every other token 0."""
    out = [_segment_advantages(seg, decision, text) for seg in traj.segments]
    runs = sum(n for _, n in out)
    if runs != len(traj.steps):
        raise RuntimeError(
            f"trajectory {traj.sample_id}/{traj.episode}: {runs} generated runs for "
            f"{len(traj.steps)} steps; decisions cannot be told apart"
        )
    return [adv for adv, _ in out]


def _segment_advantages(
    seg: Segment, decision: torch.Tensor, text: torch.Tensor
) -> tuple[list[float], int]:  # (per token, decisions in the segment)
    mask = torch.tensor(seg.gen_mask, dtype=torch.long)  # [T]
    if decision.numel() == 0:  # an episode without a step generated nothing
        return [0.0] * len(seg.gen_mask), 0
    # a decision's generated tokens are one run of the mask (its turn end is not generated)
    first = mask.diff(prepend=torch.tensor([0])).eq(1)  # [T]
    step = (seg.first_step + first.long().cumsum(0) - 1).clamp(min=0, max=decision.numel() - 1)
    adv = torch.where(first, decision[step], text[step]) * mask  # [T]
    return adv.tolist(), int(first.sum())


def advantages(
    grpo: GRPOConfig,
    trajs: list[Trajectory],  # [K*G]
    results: list[RewardResult],  # [K*G]
    rewards: torch.Tensor,  # [K, G] total rewards
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """(advantages, text advantages, stats) for build_batch: [K*G] and None for
    credit=trajectory, [K*G, C] each for credit=decision."""
    if grpo.credit == "trajectory":
        adv, stats = group_advantages(rewards, mode=grpo.advantage, eps=grpo.adv_eps)  # [K, G]
        return adv.view(-1), None, stats
    x = credit_inputs(trajs, results, grpo.group_size)
    dec, dec_stats = decision_advantages(x.reward, x.valid, horizon=grpo.credit_horizon)
    text, text_stats = text_advantages(x.item, x.content)
    flat = (dec.abs() + text.abs()).flatten(1).amax(dim=1)  # [K]
    stats = {
        **dec_stats,
        **text_stats,
        "adv/degenerate_groups": float((flat <= 1e-12).sum()),
        "credit/marginal_mean": float(x.reward.sum() / x.response.sum().clamp(min=1)),
        "credit/responses": float(x.response.sum()),
    }
    c = x.reward.shape[-1]
    return dec.reshape(-1, c), text.reshape(-1, c), stats
