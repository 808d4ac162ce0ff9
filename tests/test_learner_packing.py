"""Packing: several dialogues per row give the same logprobs as each dialogue alone."""

from __future__ import annotations

import pytest
import torch

from streampro.learners.losses import shifted_logprobs
from streampro.learners.packing import PackItem, attention_bias, collate, plan_rows


def test_plan_rows_first_fit() -> None:
    assert plan_rows([5, 3, 4, 2, 9], max_len=8, pack=True) == [[0, 1], [2, 3], [4]]
    assert plan_rows([5, 3], max_len=8, pack=False) == [[0], [1]]


def test_collate_layout() -> None:
    b = collate(
        [
            PackItem([7, 8, 9], [0, 1, 1], [-1, 0, -1]),
            PackItem([5, 6], [0, 1], [-1, 1]),
            PackItem([4], [0], [-1]),
        ],
        [[0, 1], [2]],
        pad_id=0,
    )
    assert b["input_ids"].tolist() == [[7, 8, 9, 5, 6], [4, 0, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    assert b["seq_ids"].tolist() == [[0, 0, 0, 1, 1], [0, -1, -1, -1, -1]]
    assert b["decision_class"].tolist() == [[-1, 0, -1, -1, 1], [-1, -1, -1, -1, -1]]
    allowed = attention_bias(b["seq_ids"], torch.float32)[0, 0] == 0  # [T, T]
    assert allowed.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]


def test_packed_logprobs_equal_unpacked(tiny_path: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_path, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (13, 7, 21, 5)]
    items = [PackItem(s, [1] * len(s)) for s in seqs]
    batch = collate(items, [[0, 1, 2], [3]], pad_id=0)  # row 1 is mostly padding
    with torch.no_grad():
        bias = attention_bias(batch["seq_ids"], torch.float32)
        out = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=bias
        )
        packed, _, _ = shifted_logprobs(
            out.logits, batch["input_ids"], position_ids=batch["position_ids"]
        )
        assert torch.isfinite(out.logits).all()  # padding rows stay finite
        pos = {0: (0, 0), 1: (0, 13), 2: (0, 20), 3: (1, 0)}
        for i, s in enumerate(seqs):
            ids = torch.tensor([s])
            alone, _, _ = shifted_logprobs(model(input_ids=ids).logits, ids)
            r, start = pos[i]
            torch.testing.assert_close(
                packed[r, start : start + len(s)], alone[0], atol=1e-5, rtol=0
            )
    assert packed[0, 13] == 0 and packed[0, 20] == 0  # a sequence's first token has no prediction


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_bias_dtype(dtype: torch.dtype) -> None:
    bias = attention_bias(torch.tensor([[0, 0, -1]]), dtype)
    assert bias.dtype == dtype and bias.shape == (1, 1, 3, 3)
    assert bias[0, 0, 2, 2] == 0  # padding sees itself only
