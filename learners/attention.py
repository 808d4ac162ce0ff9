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

import sys
import time
from collections.abc import Sequence

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

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
    precision: str,
    *,
    hidden: int = 512,
    intermediate: int = 1536,
    margin: float = 1.2,
    trials: int = 3,
) -> tuple[str, dict[str, float]]:
    """'auto' -> 'bf16' when the model's own MLP matmul ([4096 tokens, hidden] @ [hidden,
    intermediate]) runs `margin` times faster in bf16 than in fp32, else 'fp32'.

    Small models gain little (the 128-wide tiny policy: ~1.1x here), while a CPU with
    AVX512-BF16 runs a 512-wide model ~2.5x faster in bf16 and one without it ~100x slower.
    fp32 and bf16 are timed in alternation, best of `trials`, so a busy neighbour slows both
    alike. A slow bf16 is found with one call: at under a tenth of fp32's rate the timed
    loop is skipped (it would cost seconds on such a machine).
    """
    if precision != "auto":
        return precision, {}
    shape = (4096, hidden, intermediate)
    fp32 = bf16 = 0.0
    for _ in range(trials):
        fp32 = max(fp32, matmul_gflops(torch.float32, shape=shape, seconds=0.1))
        probe = matmul_gflops(torch.bfloat16, shape=shape, seconds=0.0)
        if probe < 0.1 * fp32:
            bf16 = max(bf16, probe)
            break
        bf16 = max(bf16, matmul_gflops(torch.bfloat16, shape=shape, seconds=0.1))
    choice = "bf16" if bf16 > margin * fp32 else "fp32"
    return choice, {"fp32_gflops": fp32, "bf16_gflops": bf16}


def install_selective_forward(model: torch.nn.Module) -> bool:
    """Let `model(input_ids=..., position_ids=..., streampro_segments=S, streampro_keep=K)`
    run the last decoder layer's queries, MLP, final norm and LM head only at the flat
    positions K (the ones whose logits a loss or metric reads); every other call is the
    model's own forward. Exact: the same operations on a subset of positions.

    Set on the instance (so DeepSpeed's engine forward, hooks included, still wraps it).
    Returns False, changing nothing, for architectures without the Llama/Qwen2 layer layout.
    """
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not layers or not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "norm")):
        return False
    last = layers[-1]
    attn = getattr(last, "self_attn", None)
    if attn is None or hasattr(attn, "q_norm") or getattr(attn, "sliding_window", None):
        return False
    original = model.forward

    def forward(*args, streampro_keep: torch.Tensor | None = None, **kwargs):
        if streampro_keep is None:
            return original(*args, **kwargs)
        return _selective_forward(model, streampro_keep=streampro_keep, **kwargs)

    model.forward = forward
    # a plain flag (Module.__setattr__ is typed for tensors and submodules only)
    object.__setattr__(model, "streampro_selective", True)
    return True


class _Logits:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits  # [1, N, V]


def _selective_forward(
    model,
    *,
    input_ids: torch.Tensor,  # [1, M]
    position_ids: torch.Tensor,  # [1, M]
    streampro_segments: Sequence[tuple[int, int]],
    streampro_keep: torch.Tensor,  # [N] sorted flat positions
    **_,
) -> _Logits:
    base = model.model
    h = base.embed_tokens(input_ids)  # [1, M, D]
    pos = base.rotary_emb(h, position_ids)  # (cos, sin) [1, M, Dh]
    for layer in base.layers[:-1]:
        h = layer(
            h,
            attention_mask=None,
            position_ids=position_ids,
            position_embeddings=pos,
            streampro_segments=streampro_segments,
        )
    h = _last_layer_at(base.layers[-1], h, pos, streampro_segments, streampro_keep)
    return _Logits(model.lm_head(base.norm(h)))


def _last_layer_at(
    layer,
    h: torch.Tensor,  # [1, M, D]
    pos: tuple[torch.Tensor, torch.Tensor],
    segments: Sequence[tuple[int, int]],
    keep: torch.Tensor,  # [N]
) -> torch.Tensor:  # [1, N, D]
    """A Llama/Qwen2 decoder layer whose queries (and so output, MLP) are only at keep."""
    a = layer.self_attn
    rope = sys.modules[type(a).__module__].apply_rotary_pos_emb
    m, n, hd = h.shape[1], keep.numel(), a.head_dim
    x = layer.input_layernorm(h)  # [1, M, D]
    heads, kv_heads = a.q_proj.out_features // hd, a.k_proj.out_features // hd
    q = a.q_proj(x[:, keep]).view(1, n, heads, hd).transpose(1, 2)  # [1, H, N, Dh]
    k = a.k_proj(x).view(1, m, kv_heads, hd).transpose(1, 2)  # [1, Hkv, M, Dh]
    v = a.v_proj(x).view(1, m, kv_heads, hd).transpose(1, 2)
    cos, sin = pos
    q = rope(q, q, cos[:, keep], sin[:, keep])[0]
    k = rope(k, k, cos, sin)[0]
    bounds = torch.searchsorted(keep, torch.tensor([s for s, _ in segments] + [m]))
    outs = []
    for (start, end), lo, hi in zip(segments, bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi == lo:
            continue
        key_pos = torch.arange(start, end, device=h.device)  # [L]
        mask = key_pos[None, :] <= keep[lo:hi, None]  # [n_seg, L] causal within the sequence
        out, _ = sdpa_attention_forward(
            a,
            q[:, :, lo:hi],
            k[:, :, start:end],
            v[:, :, start:end],
            mask[None, None],
            scaling=a.scaling,
            dropout=0.0,
        )
        outs.append(out)  # [1, n_seg, H, Dh]
    if outs:
        att = torch.cat(outs, dim=1).reshape(1, n, heads * hd)  # [1, N, H * Dh]
    else:  # nothing scored: keep every weight in the graph (zero gradients, as before)
        att = q.new_zeros(1, 0, a.o_proj.in_features) + 0.0 * (q.sum() + k.sum() + v.sum())
    o = a.o_proj(att)  # [1, N, D]
    h = h[:, keep] + o
    return h + layer.mlp(layer.post_attention_layernorm(h))
