"""grpo.credit: per-response StreamPro-F1 marginals (rewards/credit.py) and the per-decision /
answer-text advantages built on them (learners/credit.py), against values derived by hand.

The worked example: a 6-chunk stream (chunk c ends at time c + 1, so decisions are at 1..6 s),
one answer "red" at 3 s with window [0, 0] and tau (2, 2): it is reached from 1 s to 5 s,
S_time = 1 - |t - 3| / 2, so 0.5 at 2 s and 4 s, 1 at 3 s, 0 at 1 s and 5 s; 6 s reaches
nothing. A group of three trajectories:

  T0: "red" at 3 s (S = 1 x 1) and "blue" at 4 s (S = 0.5 x 0)
      F1 = 2 sum S / (N_pred + N_gt) = 2 x 1 / 3 = 2/3
      without "red": sum S = 0 -> F1 0, marginal 2/3
      without "blue": 2 x 1 / 2 = 1 -> marginal 2/3 - 1 = -1/3
  T1: "red" at 2 s (S = 0.5 x 1): F1 = 2 x 0.5 / 2 = 1/2, without it 0 -> marginal 1/2
  T2: "red" at 6 s, reaching no answer: F1 0 with and without it -> marginal 0

Per-chunk decision rewards (chunk index 0..5):
  T0 [0, 0, 2/3, -1/3, 0, 0]   T1 [0, 1/2, 0, 0, 0, 0]   T2 [0, 0, 0, 0, 0, 0]
"""

from __future__ import annotations

import itertools

import pytest
import torch

from streampro.config import ConfigError, GRPOConfig
from streampro.config_train import RewardConfig
from streampro.learners.credit import (
    advantages,
    credit_inputs,
    decision_advantages,
    horizon_returns,
    text_advantages,
)
from streampro.learners.grpo_loop import build_batch
from streampro.learners.grpo_loss import group_advantages
from streampro.rewards.credit import add_credit
from streampro.rewards.judges import ExactJudge
from streampro.rewards.pool import InProcessRewardPool
from streampro.types import RewardResult, Segment, Step, Trajectory

SAMPLE = {
    "id": "s",
    "task": "EU",
    "question": "tell me the colour",
    "answers": [{"time": 3.0, "text": "red", "window": [0, 0], "tau": [2, 2]}],
}
RESPONSES = [  # chunk index -> text, per trajectory
    {2: "red", 3: "blue"},
    {1: "red"},
    {5: "red"},
]
REWARDS = torch.tensor(  # [1, 3, 6]
    [[[0, 0, 2 / 3, -1 / 3, 0, 0], [0, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]]
)
THIRD, SIXTH, TWELFTH = 1 / 3, 1 / 6, 1 / 12


def _responses(chunks: dict[int, str]) -> list[dict]:
    return [{"time": float(c + 1), "text": t} for c, t in sorted(chunks.items())]


def test_marginals_and_content_by_hand() -> None:
    got = [
        add_credit(RewardResult(0, 0, 0, 0), SAMPLE, _responses(r), ExactJudge()) for r in RESPONSES
    ]
    assert [r.credit_marginal for r in got] == [
        pytest.approx([2 / 3, -1 / 3]),
        pytest.approx([0.5]),
        [0.0],
    ]
    assert [r.credit_item for r in got] == [[0, 0], [0], [-1]]  # 6 s reaches no answer
    assert [r.credit_content for r in got] == [[1.0, 0.0], [1.0], [0.0]]


def test_pool_scores_credit_only_when_asked() -> None:
    traj = _trajectory(0, RESPONSES[0])
    plain = InProcessRewardPool(RewardConfig()).score(samples=[SAMPLE], trajectories=[traj])[0]
    credit = InProcessRewardPool(RewardConfig(), credit=True)
    with_credit = credit.score(samples=[SAMPLE], trajectories=[traj])[0]
    assert plain.credit_marginal == [] and with_credit.credit_marginal == pytest.approx(
        [2 / 3, -1 / 3]
    )
    assert (with_credit.total, with_credit.fallback) == (plain.total, plain.fallback)


def test_horizon_returns_by_hand() -> None:
    # horizon 2: R[c] = r[c] + r[c + 1]; T0: 2/3 - 1/3 = 1/3 at chunk 2
    want2 = [[0, 2 / 3, THIRD, -THIRD, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [0] * 6]
    assert torch.allclose(horizon_returns(REWARDS, 2), torch.tensor([want2]))
    # horizon 0 (and anything >= 6): to the end of the stream
    want_end = [[THIRD, THIRD, THIRD, -THIRD, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [0] * 6]
    assert torch.allclose(horizon_returns(REWARDS, 0), torch.tensor([want_end]))
    assert torch.equal(horizon_returns(REWARDS, 0), horizon_returns(REWARDS, 100))
    assert torch.allclose(horizon_returns(REWARDS, 1), REWARDS)


def test_decision_advantages_by_hand() -> None:
    # horizon 2; leave-one-out baselines, the mean of the other two returns per chunk:
    #   T0: (R1 + R2) / 2 = [1/4, 1/4, 0, 0, 0, 0]   -> A0 = [-1/4, 5/12, 1/3, -1/3, 0, 0]
    #   T1: (R0 + R2) / 2 = [0, 1/3, 1/6, -1/6, 0, 0] -> A1 = [1/2, 1/6, -1/6, 1/6, 0, 0]
    #   T2: (R0 + R1) / 2 = [1/4, 7/12, 1/6, -1/6, 0, 0] -> A2 = [-1/4, -7/12, -1/6, 1/6, 0, 0]
    valid = torch.ones(1, 3, 6, dtype=torch.bool)
    adv, stats = decision_advantages(REWARDS, valid, horizon=2)
    want = [
        [-0.25, 5 * TWELFTH, THIRD, -THIRD, 0, 0],
        [0.5, SIXTH, -SIXTH, SIXTH, 0, 0],
        [-0.25, -7 * TWELFTH, -SIXTH, SIXTH, 0, 0],
    ]
    assert torch.allclose(adv, torch.tensor([want]))
    assert torch.allclose(adv.sum(dim=1), torch.zeros(1, 6), atol=1e-6)  # LOO sums to 0
    # |A| summed: (1/4+5/12+1/3+1/3) + (1/2+1/6+1/6+1/6) + (1/4+7/12+1/6+1/6)
    #   = 4/3 + 1 + 7/6 = 7/2, over 18 chunks
    assert stats["adv/abs_mean"] == pytest.approx((7 / 2) / 18)


def test_text_advantages_by_hand() -> None:
    # answer 0: T0's S_acc 1 (chunk 2) and 0 (chunk 3): its mean 1/2; T1's 1 (chunk 1); T2 none
    # group mean over the trajectories that matched it: (1/2 + 1) / 2 = 3/4
    item = torch.full((1, 3, 6), -1)
    item[0, 0, 2] = item[0, 0, 3] = item[0, 1, 1] = 0
    content = torch.zeros(1, 3, 6)
    content[0, 0, 2] = content[0, 1, 1] = 1.0
    adv, _ = text_advantages(item, content)
    want = torch.zeros(1, 3, 6)
    want[0, 0, 2], want[0, 0, 3], want[0, 1, 1] = 0.25, -0.75, 0.25
    assert torch.allclose(adv, want)
    # an answer only one trajectory matched: its own mean is the baseline -> 0
    alone, _ = text_advantages(item[:, :1], content[:, :1])
    assert torch.allclose(alone, torch.tensor([[[0, 0, 0.5, -0.5, 0, 0]]]))


def _trajectory(episode: int, chunks: dict[int, str], split_at: int = 0) -> Trajectory:
    """Six chunks: per chunk a turn [10, 11] (context), the decision (silence [1]; response
    [2, 20, 21]: decision token then two text tokens) and a turn end [3] (context). A
    `split_at` > 0 opens a second window segment there, after a one-token prompt [9]."""
    steps, parts = [], []
    for c in range(6):
        text = chunks.get(c, "")
        steps.append(Step(float(c + 1), "response" if text else "silence", text, text))
        gen = [2, 20, 21] if text else [1]
        parts.append(([10, 11] + gen + [3], [0, 0] + [1] * len(gen) + [0]))
    cuts = [0, split_at, 6] if split_at else [0, 6]
    segments = []
    for a, b in itertools.pairwise(cuts):
        ids, mask = ([9], [0]) if a else ([], [])
        for p_ids, p_mask in parts[a:b]:
            ids, mask = ids + p_ids, mask + p_mask
        segments.append(Segment(ids, mask, [0.0] * len(ids), first_step=a))
    return Trajectory("s", episode, segments, steps)


def _group() -> tuple[list[Trajectory], list[RewardResult]]:
    trajs = [_trajectory(g, r, split_at=3 if g == 0 else 0) for g, r in enumerate(RESPONSES)]
    results = [
        add_credit(RewardResult(float(g), 0, 0, 0), SAMPLE, t.responses(), ExactJudge())
        for g, t in enumerate(trajs)
    ]
    return trajs, results


def test_decision_mode_tokens_by_hand() -> None:
    trajs, results = _group()
    grpo = GRPOConfig(group_size=3, credit="decision", credit_horizon=2)
    adv, text, stats = advantages(grpo, trajs, results, torch.tensor([[0.0, 1.0, 2.0]]))
    batch = build_batch(trajs, adv, pad_id=0, samples=None, text_adv=text)
    rows = batch["advantages"]  # T0 has two segments: rows 0-1, T1 row 2, T2 row 3
    # T0 segment 1 (chunks 0-2): silence -1/4, silence 5/12, response 1/3 with text 1/4
    seg0 = [0, 0, -0.25, 0] + [0, 0, 5 * TWELFTH, 0] + [0, 0, THIRD, 0.25, 0.25, 0]
    assert torch.allclose(rows[0, : len(seg0)], torch.tensor(seg0))
    # T0 segment 2 (chunks 3-5, after its prompt token): response -1/3 with text -3/4, 0, 0
    seg1 = [0] + [0, 0, -THIRD, -0.75, -0.75, 0] + [0, 0, 0, 0] * 2
    assert torch.allclose(rows[1, : len(seg1)], torch.tensor(seg1))
    # T1: silence 1/2, response 1/6 with text 1/4, silence -1/6, 1/6, 0, 0
    t1 = [0, 0, 0.5, 0] + [0, 0, SIXTH, 0.25, 0.25, 0] + [0, 0, -SIXTH, 0]
    t1 += [0, 0, SIXTH, 0] + [0, 0, 0, 0] * 2
    assert torch.allclose(rows[2, : len(t1)], torch.tensor(t1))
    # T2: -1/4, -7/12, -1/6, 1/6, 0, then its unmatched response: decision 0, text 0
    t2 = [0, 0, -0.25, 0] + [0, 0, -7 * TWELFTH, 0] + [0, 0, -SIXTH, 0] + [0, 0, SIXTH, 0]
    t2 += [0, 0, 0, 0] + [0, 0, 0, 0, 0, 0]
    assert torch.allclose(rows[3, : len(t2)], torch.tensor(t2))
    assert stats["credit/responses"] == 4.0
    assert stats["credit/marginal_mean"] == pytest.approx((2 / 3 - 1 / 3 + 0.5 + 0) / 4)
    assert stats["adv/degenerate_groups"] == 0.0


def test_trajectory_mode_is_the_broadcast() -> None:
    trajs, results = _group()
    rewards = torch.tensor([[0.2, 0.9, 0.4]])
    grpo = GRPOConfig(group_size=3)  # credit=trajectory, the default
    adv, text, stats = advantages(grpo, trajs, results, rewards)
    want, want_stats = group_advantages(rewards, mode=grpo.advantage, eps=grpo.adv_eps)
    assert text is None and torch.equal(adv, want.view(-1)) and stats == want_stats
    batch = build_batch(trajs, adv, pad_id=0)
    rows = [(i, s) for i, t in enumerate(trajs) for s in t.segments]  # T0 has two segments
    for row, (i, seg) in enumerate(rows):
        n = len(seg.token_ids)
        expected = torch.full((n,), float(adv[i]))
        assert torch.equal(batch["advantages"][row, :n], expected)


def test_credit_inputs_refuses_a_pool_without_credit() -> None:
    trajs, _ = _group()
    bare = [RewardResult(0, 0, 0, 0) for _ in trajs]
    with pytest.raises(RuntimeError, match="credit"):
        credit_inputs(trajs, bare, 3)


def _loop_decision(r: torch.Tensor, valid: torch.Tensor, h: int) -> torch.Tensor:
    k, g, c = r.shape
    ret = torch.zeros(k, g, c, dtype=torch.float64)
    for a in range(k):
        for b in range(g):
            for t in range(c):
                end = c if h == 0 else min(t + h, c)
                ret[a, b, t] = sum(float(r[a, b, u]) for u in range(t, end))
    out = torch.zeros_like(ret)
    for a in range(k):
        for b in range(g):
            for t in range(c):
                others = [float(ret[a, o, t]) for o in range(g) if o != b]
                out[a, b, t] = (ret[a, b, t] - sum(others) / len(others)) * bool(valid[a, b, t])
    return out


def _loop_text(item: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    k, g, c = item.shape
    out = torch.zeros(k, g, c, dtype=torch.float64)
    for a in range(k):
        for j in range(int(item.max()) + 1):
            means = []
            for b in range(g):
                s = [float(content[a, b, t]) for t in range(c) if item[a, b, t] == j]
                means += [sum(s) / len(s)] if s else []
            for b in range(g):
                for t in range(c):
                    if item[a, b, t] == j:
                        out[a, b, t] = float(content[a, b, t]) - sum(means) / len(means)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_a_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k, g, c = 3, 4, 9
    lengths = torch.randint(3, c + 1, (k,), generator=gen)  # one stream length per group
    valid = (torch.arange(c) < lengths[:, None, None]).expand(k, g, c)
    respond = (torch.rand(k, g, c, generator=gen) < 0.3) & valid
    r = torch.randn(k, g, c, generator=gen) * respond
    for h in (0, 1, 3, 50):
        got, _ = decision_advantages(r, valid, horizon=h)
        assert torch.allclose(got.double(), _loop_decision(r, valid, h), atol=1e-6)
    item = torch.where(respond, torch.randint(-1, 3, (k, g, c), generator=gen), -1)
    content = torch.rand(k, g, c, generator=gen) * (item >= 0)
    got, _ = text_advantages(item, content)
    assert torch.allclose(got.double(), _loop_text(item, content), atol=1e-6)


def test_config_checks_credit() -> None:
    with pytest.raises(ConfigError, match="grpo.credit"):
        GRPOConfig(credit="token")
    with pytest.raises(ConfigError, match="grpo.credit_horizon"):
        GRPOConfig(credit_horizon=-1)
