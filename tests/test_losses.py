"""SFT losses and batch splitting: pure maths, hand-derived values, no model."""

from __future__ import annotations

import math

import pytest
import torch

from streampro.config import GRPOConfig, SFTConfig
from streampro.learners.group import reduce_stats, step_totals
from streampro.learners.losses import (
    cb_stream_weights,
    decision_counts,
    finish_decision_metrics,
    sft_loss,
    shifted_logprobs,
)
from streampro.learners.packing import PackItem, assign_rows, collate, materialize, plan_rows


def test_cb_stream_weights_paper_example() -> None:
    w_s, w_r = cb_stream_weights(50_000, 2_000, SFTConfig().beta)  # 0.9999
    assert w_s == pytest.approx(0.31, abs=0.005) and w_r == pytest.approx(1.69, abs=0.005)


@pytest.mark.parametrize(
    "n_s,n_r,beta",
    [
        (1, 1, 0.9999),
        (57, 13, 0.9999),
        (50_000, 2_000, 0.9999),
        (10, 3, 0.99),
        (1_000_000, 5, 0.9999),
        (4, 9, 0.5),
    ],
)
def test_cb_stream_weights_formula(n_s: int, n_r: int, beta: float) -> None:
    # the effective numbers of docs/method.md, stage 1
    e_s, e_r = (1 - beta**n_s) / (1 - beta), (1 - beta**n_r) / (1 - beta)
    expect_s = (1 / e_s) / (1 / e_s + 1 / e_r) * 2
    w_s, w_r = cb_stream_weights(n_s, n_r, beta)
    assert w_s == pytest.approx(expect_s, rel=1e-9)
    assert w_s + w_r == pytest.approx(2.0, rel=1e-12)


def test_cb_stream_weights_edge_cases() -> None:
    beta = SFTConfig().beta
    assert cb_stream_weights(7, 7, beta) == pytest.approx((1.0, 1.0))
    assert cb_stream_weights(0, 5, beta) == (0.0, 2.0)  # absent class: weight unused
    assert cb_stream_weights(0, 0, beta) == (0.0, 0.0)
    assert cb_stream_weights(3, 5, beta=0.0) == pytest.approx((1.0, 1.0))  # beta 0: no re-weighting
    with pytest.raises(ValueError):
        cb_stream_weights(-1, 2, beta)


# One row of 6 tokens: positions 1..5 are supervised with classes S, S, R, text, text.
_LP = torch.tensor([[0.0, -0.1, -0.2, -1.5, -0.7, -0.3]])
_MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
_DC = torch.tensor([[-1, 0, 0, 1, -1, -1]])


def test_cb_stream_loss_by_hand() -> None:
    w_s, w_r = cb_stream_weights(2, 1, 0.9999)  # the classes of this batch
    expect = (
        w_s * 0.1 + w_s * 0.2 + w_r * 1.5 + 2.0 * 0.7 + 2.0 * 0.3
    ) / 5  # N = 5 supervised tokens
    cb = SFTConfig(loss="cb_stream", beta=0.9999, lambda_text=2.0)
    loss, stats = sft_loss(_LP, _MASK, _DC, cb, n_silence=2, n_response=1, normalizer=5)
    assert float(loss) == pytest.approx(expect, rel=1e-6)
    assert stats["tokens"] == 5 and stats["nll_sum"] == pytest.approx(2.8, rel=1e-6)


def test_ce_and_focal_by_hand() -> None:
    counts = {"n_silence": 2, "n_response": 1, "normalizer": 5}
    ce, _ = sft_loss(_LP, _MASK, _DC, SFTConfig(loss="ce"), **counts)
    assert float(ce) == pytest.approx(2.8 / 5, rel=1e-6)
    g = 2.0
    focal = sum((1 - math.exp(lp)) ** g * -lp for lp in (-0.1, -0.2, -1.5)) + 0.7 + 0.3
    fl, _ = sft_loss(_LP, _MASK, _DC, SFTConfig(loss="focal", focal_gamma=g), **counts)
    assert float(fl) == pytest.approx(focal / 5, rel=1e-6)
    f0, _ = sft_loss(_LP, _MASK, _DC, SFTConfig(loss="focal", focal_gamma=0.0), **counts)
    assert float(f0) == pytest.approx(float(ce), rel=1e-6)  # gamma 0 is plain CE
    dice = SFTConfig()
    dice.loss = "dice"  # set after construction: past the config's own check
    with pytest.raises(ValueError, match="unknown SFT loss"):
        sft_loss(_LP, _MASK, _DC, dice, **counts)


def test_shifted_logprobs_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    lp, ent, pred = shifted_logprobs(logits, ids, with_entropy=True)
    for b in range(2):
        assert lp[b, 0] == 0 and pred[b, 0] == -1
        for t in range(1, 5):
            ref = torch.log_softmax(logits[b, t - 1], -1)
            assert float(lp[b, t]) == pytest.approx(float(ref[ids[b, t]]), abs=1e-6)
            assert float(ent[b, t]) == pytest.approx(float(-(ref.exp() * ref).sum()), abs=1e-6)
            assert int(pred[b, t]) == int(ref.argmax())


def test_decision_metrics() -> None:
    ids = torch.tensor([[5, 9, 9, 8, 3, 4]])
    pred = torch.tensor([[-1, 9, 1, 8, 3, 0]])  # silence 1/2 right, response 1/1 right
    sums = decision_counts(pred, ids, _DC, _MASK)
    assert sums == {"n_silence": 2, "hit_silence": 1, "n_response": 1, "hit_response": 1}
    m = finish_decision_metrics(sums)
    assert m == pytest.approx(
        {"decision_acc": 2 / 3, "silence_recall": 0.5, "response_recall": 1.0}
    )


def _random_batch(seed: int, n: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        t = int(torch.randint(5, 30, (1,), generator=g))
        mask = (torch.rand(t, generator=g) < 0.4).long()
        mask[0] = 0
        dc = torch.where(mask > 0, (torch.rand(t, generator=g) < 0.2).long(), torch.full((t,), -1))
        dc[(mask > 0) & (torch.rand(t, generator=g) < 0.3)] = -1  # some answer text
        items.append(
            PackItem(torch.randint(0, 50, (t,), generator=g).tolist(), mask.tolist(), dc.tolist())
        )
    return collate(
        items, plan_rows([len(i.input_ids) for i in items], max_len=48, pack=True), pad_id=0
    )


@pytest.mark.parametrize("world,micro", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_split_does_not_change_loss_or_weights(world: int, micro: int) -> None:
    """Sum of micro-batch losses over any split == the loss of the whole batch (fixed logits)."""
    batch = _random_batch(1)
    logits = torch.randn(*batch["input_ids"].shape, 50, generator=torch.Generator().manual_seed(2))
    lp_full, _, _ = shifted_logprobs(logits, batch["input_ids"])
    sft = SFTConfig(loss="cb_stream")
    totals = step_totals(batch, sft)
    kw = {
        "n_silence": int(totals["n_silence"]),
        "n_response": int(totals["n_response"]),
        "normalizer": totals["normalizer"],
    }
    full, _ = sft_loss(lp_full, batch["loss_mask"], batch["decision_class"], sft, **kw)
    plan = assign_rows(batch, world_size=world, micro_batch=micro)
    assert len({len(p) for p in plan}) == 1  # equal micro-batch counts on every rank
    assert sorted(r for p in plan for mb in p for r in mb) == list(
        range(batch["input_ids"].shape[0])
    )
    parts = 0.0
    for rank_plan in plan:
        for rows in rank_plan:
            mb = materialize(batch, rows)
            sub_logits = logits[rows, : mb["input_ids"].shape[1]] if rows else torch.zeros(1, 1, 50)
            lp, _, _ = shifted_logprobs(sub_logits, mb["input_ids"])
            parts += float(sft_loss(lp, mb["loss_mask"], mb["decision_class"], sft, **kw)[0])
    assert parts == pytest.approx(float(full), rel=1e-6)
    stats = reduce_stats([{"sum/loss": parts}], sft, totals=totals)
    assert (stats["w_silence"], stats["w_response"]) == cb_stream_weights(
        int(totals["n_silence"]), int(totals["n_response"]), sft.beta
    )


def test_step_totals_counts_global_classes() -> None:
    batch = collate(
        [PackItem([1, 2, 3], [0, 1, 1], [-1, 0, 1]), PackItem([4, 5], [0, 1], [-1, 0])],
        [[0, 1]],
        pad_id=0,
    )
    assert step_totals(batch, SFTConfig()) == {
        "tokens": 3.0,
        "n_silence": 2.0,
        "n_response": 1.0,
        "normalizer": 3.0,
    }
    grpo = {k: v for k, v in batch.items() if k != "decision_class"}
    with pytest.raises(ValueError, match="seq_mean"):
        step_totals(grpo, GRPOConfig(loss_agg="seq_mean"))


def test_shifted_logprobs_single_token_row() -> None:
    lp, ent, pred = shifted_logprobs(
        torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long), with_entropy=True
    )
    assert lp.shape == ent.shape == pred.shape == (1, 1)
