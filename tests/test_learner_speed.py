"""The learner's fast paths equal its reference paths.

- selective logprobs (LM head and log-softmax on the scored positions only) equal the
  full-vocabulary logprobs at every position, restricted to those positions;
- mask-free causal attention (varlen: sequences end to end, SDPA causal per sequence;
  padded: SDPA causal over rows) gives the logits of the dense block-diagonal mask path,
  on the real tiny Qwen2 policy, for packed and for unpacked rows;
- micro-batches sized by tokens, the flat layout's indices, and the precision choice.
"""

from __future__ import annotations

import pytest
import torch

from streampro.learners.losses import shifted_logprobs, token_logprobs
from streampro.learners.packing import PackItem, assign_rows, collate, flat_layout, plan_rows


def _items(lengths: list[int], seed: int, *, p_mask: float = 0.3) -> list[PackItem]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        mask = (torch.rand(n, generator=g) < p_mask).long()
        dc = torch.where(mask > 0, (torch.rand(n, generator=g) < 0.2).long(), torch.full((n,), -1))
        ids = torch.randint(0, 1000, (n,), generator=g).tolist()
        out.append(PackItem(ids, mask.tolist(), decision_class=dc.tolist()))
    return out


def _batch(lengths: list[int], *, pack: bool, seed: int = 0, max_len: int = 96) -> dict:
    items = _items(lengths, seed)
    return collate(items, plan_rows(lengths, max_len=max_len, pack=pack), pad_id=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_full_vocab_reference(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g) * 3  # [B, T, V]
    ids = torch.randint(0, 50, (3, 11), generator=g)
    ref_lp, ref_ent, ref_pred = shifted_logprobs(
        logits, ids, with_entropy=True, temperature=temperature
    )
    b, t = torch.meshgrid(torch.arange(3), torch.arange(1, 11), indexing="ij")
    b, t = b.reshape(-1), t.reshape(-1)
    lp, ent, pred = token_logprobs(
        logits[b, t - 1], ids[b, t], with_entropy=True, temperature=temperature
    )
    torch.testing.assert_close(lp, ref_lp[b, t], rtol=0, atol=0)
    torch.testing.assert_close(ent, ref_ent[b, t], rtol=0, atol=0)
    assert torch.equal(pred, ref_pred[b, t])


def test_entropy_carries_a_gradient_only_when_asked() -> None:
    from streampro.learners.losses import shifted_logprobs, token_logprobs

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 11, generator=g, requires_grad=True)  # [N, V]
    targets = torch.randint(0, 11, (5,), generator=g)
    _, ent, _ = token_logprobs(logits, targets, with_entropy=True, temperature=0.7)
    assert not ent.requires_grad  # a statistic by default
    _, ent, _ = token_logprobs(
        logits, targets, with_entropy=True, entropy_grad=True, temperature=0.7
    )
    (grad,) = torch.autograd.grad(ent.sum(), logits)
    p = torch.softmax(logits / 0.7, -1)  # reference: H = -sum p log p of logits / T
    (ref,) = torch.autograd.grad(-(p * p.log()).sum(), logits)
    torch.testing.assert_close(grad, ref)
    _, ent_b, _ = shifted_logprobs(  # the dense path: the same values and gradient
        logits[None], torch.cat([targets[:1], targets[:-1]])[None], with_entropy=True,
        entropy_grad=True, temperature=0.7,
    )  # fmt: skip
    (grad_b,) = torch.autograd.grad(ent_b.sum(), logits)
    torch.testing.assert_close(grad_b[:-1], ref[:-1])  # the last row predicts no token
    assert grad_b[-1].abs().max() == 0.0


def test_flat_layout_indexes_the_scored_tokens() -> None:
    # row 0 packs two sequences (3 + 2 tokens), row 1 holds one of 4 tokens then padding
    batch = {
        "input_ids": torch.tensor([[10, 11, 12, 20, 21], [30, 31, 32, 33, 0]]),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]),
        "seq_ids": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, -1]]),
    }
    need = torch.tensor([[1, 0, 1, 1, 1], [0, 1, 0, 1, 1]], dtype=torch.bool)
    lay = flat_layout(batch, need)
    assert lay.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 31, 32, 33]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert lay.segments == [(0, 3), (3, 5), (5, 9)]
    # scored: (0,2) (0,4) (1,1) (1,3); firsts of sequences and padding are never scored
    assert list(zip(lay.rows.tolist(), lay.cols.tolist())) == [(0, 2), (0, 4), (1, 1), (1, 3)]
    assert lay.keep.tolist() == [1, 3, 5, 7]
    assert lay.targets.tolist() == [12, 21, 31, 33]


def test_micro_batches_sized_by_tokens() -> None:
    batch = _batch([40, 30, 20, 50, 10], pack=False)
    plan = assign_rows(batch, world_size=1, micro_batch=4, micro_batch_tokens=60)
    assert plan == [[[0], [1, 2], [3, 4]]]  # 40 | 30+20 | 50+10, in row order
    two = assign_rows(batch, world_size=2, micro_batch=4, micro_batch_tokens=60)
    assert sorted(r for mbs in two for mb in mbs for r in mb) == [0, 1, 2, 3, 4]
    assert len(two[0]) == len(two[1])  # same number of backward calls on every rank
    alone = assign_rows(batch, world_size=1, micro_batch=4, micro_batch_tokens=25)
    assert [0] in alone[0] and [3] in alone[0]  # longer than the budget: a row alone


def test_precision_choice() -> None:
    from streampro.learners.attention import matmul_gflops, pick_precision

    assert pick_precision("fp32") == ("fp32", {})
    assert pick_precision("bf16") == ("bf16", {})
    choice, measured = pick_precision("auto", hidden=64, intermediate=128)
    assert choice in ("fp32", "bf16") and measured["fp32_gflops"] > 0
    assert (choice == "bf16") == (measured["bf16_gflops"] > 1.2 * measured["fp32_gflops"])
    assert matmul_gflops(torch.float32, n=64, seconds=0.01) > 0


@pytest.fixture(scope="module")
def tiny_model(tiny_path):
    from transformers import AutoModelForCausalLM

    from streampro.learners.attention import register_attention

    model = AutoModelForCausalLM.from_pretrained(
        tiny_path, dtype=torch.float32, attn_implementation=register_attention()
    )
    return model.eval()


@pytest.mark.parametrize("pack", [True, False])
def test_mask_free_attention_gives_the_dense_mask_logits(tiny_model, pack: bool) -> None:
    from streampro.learners.worker import dense_logits

    batch = _batch([37, 20, 45, 11, 29], pack=pack, seed=3)
    need = batch["loss_mask"] > 0
    lay = flat_layout(batch, need)
    with torch.no_grad():
        ref = dense_logits(tiny_model, batch, torch.float32)[lay.rows, lay.cols - 1]  # [N, V]
        varlen = tiny_model(
            input_ids=lay.input_ids,
            position_ids=lay.position_ids,
            streampro_segments=lay.segments,
            logits_to_keep=lay.keep,
        ).logits[0]
    assert lay.keep.numel() > 20
    torch.testing.assert_close(varlen, ref, rtol=0, atol=2e-5)
    if not pack:  # SDPA causal over whole rows: padding follows every real token
        with torch.no_grad():
            rows = tiny_model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"]
            ).logits
        torch.testing.assert_close(rows[lay.rows, lay.cols - 1], ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("attention", ["varlen", "padded"])
@pytest.mark.parametrize("pack", [True, False])
def test_score_tokens_equal_the_reference_path(tiny_model, attention: str, pack: bool) -> None:
    from streampro.learners.worker import score_tokens

    batch = _batch([37, 20, 45, 11, 29], pack=pack, seed=5)
    need = batch["loss_mask"] > 0
    kw = {"dtype": torch.float32, "temperature": 0.7, "with_entropy": True}
    with torch.no_grad():
        ref = score_tokens(tiny_model, batch, need, attention="dense", **kw)
        got = score_tokens(tiny_model, batch, need, attention=attention, **kw)
    scored = need & (batch["position_ids"] > 0)
    torch.testing.assert_close(got[0][scored], ref[0][scored], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1][scored], ref[1][scored], rtol=0, atol=1e-5)
    assert torch.equal(got[2][scored], ref[2][scored])
    assert float(got[0][~scored].abs().sum()) == 0.0  # nothing computed elsewhere


@pytest.fixture(scope="module")
def selective_model(tiny_path):
    from transformers import AutoModelForCausalLM

    from streampro.learners.attention import install_selective_forward, register_attention

    model = AutoModelForCausalLM.from_pretrained(
        tiny_path, dtype=torch.float32, attn_implementation=register_attention()
    )
    assert install_selective_forward(model)
    return model.eval()


@pytest.mark.parametrize("pack", [True, False])
def test_selective_last_layer_equals_the_reference(tiny_model, selective_model, pack: bool) -> None:
    """Last layer, norm and LM head only at the scored tokens: same logprobs and gradients."""
    from streampro.learners.worker import score_tokens

    batch = _batch([37, 20, 45, 11, 29], pack=pack, seed=7)
    need = batch["loss_mask"] > 0
    kw = {"dtype": torch.float32, "temperature": 1.0, "with_entropy": True}
    grads = []
    for model, attention in ((tiny_model, "dense"), (selective_model, "varlen")):
        model.zero_grad()
        lp, ent, pred = score_tokens(model, batch, need, attention=attention, **kw)
        (lp * need).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if attention == "dense":
            ref = (lp.detach(), ent, pred)
    scored = need & (batch["position_ids"] > 0)
    torch.testing.assert_close(lp.detach()[scored], ref[0][scored], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent[scored], ref[1][scored], rtol=0, atol=1e-5)
    assert torch.equal(pred[scored], ref[2][scored])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


def test_selective_forward_with_nothing_scored_keeps_every_weight(selective_model) -> None:
    from streampro.learners.worker import score_tokens

    batch = _batch([12, 9], pack=True, seed=1)
    need = torch.zeros_like(batch["loss_mask"], dtype=torch.bool)
    selective_model.zero_grad()
    lp, _, _ = score_tokens(
        selective_model,
        batch,
        need,
        attention="varlen",
        dtype=torch.float32,
        temperature=1.0,
        with_entropy=False,
    )
    lp.sum().backward()
    assert all(p.grad is not None for p in selective_model.parameters())
