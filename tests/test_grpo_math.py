"""GRPO maths against hand-computed values; the hyperparameters are GRPOConfig's."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from streampro.config import GRPOConfig
from streampro.learners.grpo_loss import (
    aggregate,
    group_advantages,
    kl_penalty,
    policy_loss,
    tis_weights,
)

C = GRPOConfig()  # the defaults: clip 0.2 / 0.2, no KL, no entropy bonus, token mean


def test_group_advantages_hand_values():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv, stats = group_advantages(r, mode=C.advantage, eps=C.adv_eps)  # grpo, 1e-6
    # mean 0.5, unbiased std sqrt(1/3): +-0.5 / 0.57735 = +-0.866025
    assert torch.allclose(
        adv[0], torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-5
    )
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards: no signal, no NaN
    assert stats["adv/degenerate_groups"] == 1.0
    dr, _ = group_advantages(r, mode="drgrpo", eps=C.adv_eps)
    assert torch.allclose(dr[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    loo, _ = group_advantages(r, mode="loo", eps=C.adv_eps)  # r=1: 1 - mean(0, 0, 1) = 2/3
    assert torch.allclose(loo[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)


@pytest.mark.parametrize("mode", ["grpo", "drgrpo", "loo"])
def test_vectorised_advantages_equal_a_plain_loop(mode):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(6, 8, generator=g)
    adv, _ = group_advantages(r, mode=mode, eps=1e-6)
    for b in range(6):
        row = r[b].tolist()
        for i, x in enumerate(row):
            if mode == "grpo":
                want = (x - statistics.mean(row)) / (statistics.stdev(row) + 1e-6)
            elif mode == "drgrpo":
                want = x - statistics.mean(row)
            else:
                want = x - statistics.mean(row[:i] + row[i + 1 :])
            assert adv[b, i].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def _lp(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.zeros(1, len(ratios))
    return torch.log(torch.tensor([ratios])).requires_grad_(True), old


def test_policy_loss_clips_both_sides_hand_values():
    # positive advantage 2: ratio 1.5 is clipped at 1.2 (2.4), ratio 0.5 is not (1.0)
    lp, old = _lp([9.0, 1.5, 0.5])
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # token 0 is prompt: never counted
    loss, stats = policy_loss(lp, old, torch.full((1, 3), 2.0), mask, C)
    assert loss.item() == pytest.approx(-(2.4 + 1.0) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)
    loss.backward()
    assert lp.grad[0, 0] == 0.0 and lp.grad[0, 1] == 0.0  # masked and clipped: no gradient
    assert lp.grad[0, 2].item() == pytest.approx(-2.0 * 0.5 / 2)  # d(-ratio*A)/dlogp / N
    # negative advantage -1: ratio 0.5 clipped at 0.8 (pg 0.8), ratio 1.5 unclipped (pg 1.5)
    lp, old = _lp([1.0, 0.5, 1.5])
    loss, stats = policy_loss(lp, old, torch.full((1, 3), -1.0), torch.tensor([[0.0, 1.0, 1.0]]), C)
    assert loss.item() == pytest.approx((0.8 + 1.5) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_clip_higher_raises_only_the_upper_bound():
    lp, old = _lp([1.5, 0.5])
    higher = GRPOConfig(clip_low=0.2, clip_high=0.28)
    loss, _ = policy_loss(lp, old, torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), higher)
    assert loss.item() == pytest.approx((-2.56 + 0.8) / 2)


def test_kl_estimators_hand_values_and_zero_coef_needs_no_reference():
    lp, ref = torch.zeros(1, 1), torch.full((1, 1), math.log(0.5))
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    lp2, old = _lp([1.0, 1.0])
    loss, stats = policy_loss(lp2, old, torch.ones(1, 2), torch.ones(1, 2), C)  # kl_coef 0
    assert "kl" not in stats and loss.item() == pytest.approx(-1.0)
    loss, stats = policy_loss(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.ones(1, 2),
        GRPOConfig(kl_coef=0.1, kl_estimator="k3"),
        ref_logprobs=torch.full((1, 2), math.log(0.5)),
    )
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))


def test_entropy_bonus_hand_values():
    # zero advantages: the loss is the bonus alone, -coef x the token-mean entropy
    z, mask = torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]])
    ent = torch.tensor([[1.0, 2.0, 9.0]])  # the masked token does not count
    loss, _ = policy_loss(z, z, z, mask, GRPOConfig(entropy_coef=0.1), entropy=ent)
    assert loss.item() == pytest.approx(-0.1 * 1.5)
    loss, _ = policy_loss(z, z, z, mask, C, entropy=ent)  # entropy_coef 0: ignored
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="needs the entropy"):
        policy_loss(z, z, z, mask, GRPOConfig(entropy_coef=0.1))


def test_aggregation_token_mean_and_seq_mean_and_global_normaliser():
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, m, loss_agg="token_mean").item() == pytest.approx(7 / 4)
    assert aggregate(x, m, loss_agg="seq_mean").item() == pytest.approx((1 + 4) / 2)
    # two micro-batches with the global normaliser add up to the global mean
    parts = [
        aggregate(x[i : i + 1], m[i : i + 1], loss_agg="token_mean", normalizer=4.0)
        for i in range(2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(7 / 4)
    parts = [
        aggregate(x[i : i + 1], m[i : i + 1], loss_agg="seq_mean", normalizer=2.0) for i in range(2)
    ]
    assert sum(p.item() for p in parts) == pytest.approx(5 / 2)


def test_data_cursor_is_seeded_and_resumable():
    from streampro.learners.state import DataCursor

    a = DataCursor(n=5, seed=3)
    first = a.take(3) + a.take(4)  # crosses an epoch boundary
    b = DataCursor(n=5, seed=3)
    b.take(3)
    c = DataCursor(n=5, seed=3, **b.state())
    assert first[3:] == c.take(4)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]


def test_truncated_importance_weights_hand_values():
    """w = min(p_learner / p_vllm, cap) on generated tokens, 0 elsewhere."""
    learner = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))  # [1, 4]
    vllm = torch.log(torch.tensor([[0.5, 0.4, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = tis_weights(learner, vllm, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.5, 2.0, 0.0]]))  # 0.9 / 0.3 = 3 -> cap 2
    assert not w.requires_grad


def test_policy_loss_scales_each_tokens_gradient_term_by_its_weight():
    """At ratio 1 the clipped surrogate is -A per token: weights w give -sum(w A) / N."""
    lp = torch.zeros(1, 3, requires_grad=True)  # [1, 3]
    adv = torch.tensor([[1.0, 2.0, -1.0]])
    mask = torch.ones(1, 3)
    cfg = GRPOConfig()
    w = torch.tensor([[1.0, 0.5, 2.0]])
    loss, stats = policy_loss(lp, torch.zeros(1, 3), adv, mask, cfg, is_weights=w)
    assert float(loss) == pytest.approx(-(1.0 * 1.0 + 0.5 * 2.0 + 2.0 * -1.0) / 3)
    assert stats["is_weight_mean"] == pytest.approx(3.5 / 3)
    loss.backward()  # d/d lp of -w A ratio at ratio 1: -w A / N
    assert torch.allclose(lp.grad, -(w * adv) / 3)
    plain, _ = policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), adv, mask, cfg)
    assert float(plain) == pytest.approx(-(1.0 + 2.0 - 1.0) / 3)
