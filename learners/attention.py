"""Mask-free causal attention for the learner, and the start-up matmul measurement.

`ATTN_IMPL` is a transformers attention implementation registered under its own name. It
runs SDPA's causal kernel with no materialised mask in two layouts:
  - segments: the micro-batch's sequences laid end to end in one row (no padding), with
    `streampro_segments=[(start, end), ...]` passed to the model's forward; each sequence
    attends causally within itself (one SDPA call per sequence);
  - rows: one sequence per row (padding at the end): plain `is_causal=True` SDPA. Causal
    attention never lets a real token see the padding that follows it.
A 4-D additive mask, when one is passed, is used as is (the dense reference path).

`matmul_gflops` times square matmuls; the learner picks bf16 only where it beats fp32
(`learner.precision: auto`): some CPUs run bf16 ~4x faster (AMX), others ~100x slower.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

ATTN_IMPL = "streampro_causal"
_REGISTERED = False


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, T, Dh]
    key: torch.Tensor,  # [B, Hkv, T, Dh]
    value: torch.Tensor,  # [B, Hkv, T, Dh]
    attention_mask: torch.Tensor | None,  # [B, 1, T, T] additive, or None
    *,
    streampro_segments: Sequence[tuple[int, int]] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:  # ([B, T, H, Dh], None)
    """Causal SDPA per segment of a one-row layout, or over whole rows when no segments."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    if streampro_segments is None or attention_mask is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, is_causal=attention_mask is None, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"segment attention needs a one-row layout, got {query.shape[0]} rows")
    outs = []
    for start, end in streampro_segments:
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            None,
            is_causal=True,
            **kwargs,
        )
        outs.append(out)  # [1, L, H, Dh]
    return torch.cat(outs, dim=1), None


def _no_mask(*args, **kwargs) -> None:
    """The mask function of ATTN_IMPL: the kernel is causal by itself, so no mask is built."""


def register_attention() -> str:
    """Register ATTN_IMPL with transformers (idempotent); returns its name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_IMPL, segment_attention)
        AttentionMaskInterface.register(ATTN_IMPL, _no_mask)
        _REGISTERED = True
    return ATTN_IMPL


def matmul_gflops(
    dtype: torch.dtype,
    *,
    n: int = 512,
    shape: tuple[int, int, int] | None = None,
    seconds: float = 0.3,
) -> float:
    """Sustained GFLOP/s of [m, k] @ [k, n] matmuls in dtype (square n x n unless `shape`),
    timed for about `seconds` after one warm-up call."""
    m, k, n = shape or (n, n, n)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    torch.mm(a, b)  # warm-up (kernel selection, first-touch)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return 2.0 * m * k * n * reps / elapsed / 1e9


def pick_precision(
    precision: str, *, hidden: int = 512, intermediate: int = 1536, margin: float = 1.2
) -> tuple[str, dict[str, float]]:
    """'auto' -> 'bf16' when the model's own MLP matmul ([4096 tokens, hidden] @ [hidden,
    intermediate]) runs `margin` times faster in bf16 than in fp32, else 'fp32'.

    Small models gain nothing (a 128-wide tiny policy runs both at the same speed here),
    while a CPU with AVX512-BF16 runs a 512-wide model ~2.5x faster in bf16 and one without
    it ~100x slower. A slow bf16 is found with one call: at under a tenth of fp32's rate
    the timed loop is skipped (it would cost seconds on such a machine).
    """
    if precision != "auto":
        return precision, {}
    shape = (4096, hidden, intermediate)
    fp32 = matmul_gflops(torch.float32, shape=shape, seconds=0.2)
    probe = matmul_gflops(torch.bfloat16, shape=shape, seconds=0.0)
    bf16 = probe if probe < 0.1 * fp32 else matmul_gflops(torch.bfloat16, shape=shape, seconds=0.2)
    choice = "bf16" if bf16 > margin * fp32 else "fp32"
    return choice, {"fp32_gflops": fp32, "bf16_gflops": bf16}
