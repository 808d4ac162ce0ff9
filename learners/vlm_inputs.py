"""Learner inputs of a VLM: pixel values, grids and mm_token_type_ids through the processor,
and per-token logprobs under the model's own mRoPE positions.

The sequences arrive as the dialogue holds them: token ids with each frame's placeholder
expanded (one pad per merged patch; see actors/vlm_prompt.py). `vlm_batch` runs the frames
through the processor's image processor (pixel_values, image_grid_thw), checks every
placeholder run against its image's grid, pads the rows, and asks the processor for
`mm_token_type_ids`: without them Qwen2.5-VL silently drops the multimodal positions
(logits off by 0.07-0.25) and Qwen3-VL raises. Position ids are left to the model, which
computes its mRoPE positions from the grids (`get_rope_index`). No DeepSpeed import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from streampro import vl_compat
from streampro.errors import UserError
from streampro.learners.losses import token_logprobs as scored_logprobs
from streampro.learners.packing import row_frames


def _runs(ids: Sequence[int], token: int) -> list[int]:
    """Lengths of the maximal runs of `token` in ids, in order."""
    out, n = [], 0
    for t in ids:
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


def vlm_batch(
    processor, seqs: Sequence[Sequence[int]], images: Sequence[Sequence[Any]], *, pad_id: int
) -> dict[str, torch.Tensor]:
    """Model inputs of B sequences (right-padded) and their frames (B lists of PIL images).

    Returns input_ids, attention_mask, mm_token_type_ids [B, T] and, when any image is
    given, pixel_values [P, C*t*p*p] and image_grid_thw [N, 3] (images in sequence order).
    """
    vl_compat.install()
    if len(seqs) != len(images):
        raise ValueError(f"{len(seqs)} sequences but {len(images)} image lists")
    image_id = processor.image_token_id
    merge = int(processor.image_processor.merge_size)
    flat = [img for row in images for img in row]
    out: dict[str, torch.Tensor] = {}
    grids = torch.zeros((0, 3), dtype=torch.long)
    if flat:
        pix = processor.image_processor(images=flat, return_tensors="pt")
        out["pixel_values"] = pix["pixel_values"]
        grids = pix["image_grid_thw"]
        out["image_grid_thw"] = grids
    want = (grids.prod(dim=-1) // merge**2).tolist()  # placeholder tokens per image
    k = 0
    for b, (ids, row) in enumerate(zip(seqs, images)):
        runs = _runs(ids, image_id)
        if runs != want[k : k + len(row)]:
            raise UserError(
                f"learner batch row {b}: image placeholder runs {runs} do not match its "
                f"{len(row)} image(s), which need {want[k : k + len(row)]}"
            )
        k += len(row)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, ids in enumerate(seqs):
        input_ids[b, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attn[b, : len(ids)] = 1
    out["input_ids"] = input_ids
    out["attention_mask"] = attn
    out["mm_token_type_ids"] = torch.tensor(
        processor.create_mm_token_type_ids(input_ids.tolist()), dtype=torch.long
    )
    return out


def vision_token_ids(processor, config) -> set[int]:
    """Ids that belong to images (pad, start, end): never targets of a loss."""
    ids = {processor.image_token_id}
    for name in ("vision_start_token_id", "vision_end_token_id", "video_token_id"):
        v = getattr(config, name, None)
        if v is not None:
            ids.add(int(v))
    return ids


def check_loss_mask(
    input_ids: torch.Tensor,  # [B, T]
    loss_mask: torch.Tensor,  # [B, T], 1 = token i is a target
    image_ids: set[int],
) -> None:
    """Raise when a loss mask selects an image token (a dialogue bug, never trained on)."""
    bad = loss_mask.bool() & torch.isin(input_ids, torch.tensor(sorted(image_ids)))
    if bool(bad.any()):
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"loss mask selects image token {int(input_ids[b, t])} at row {b}, pos {t}"
        )


def token_logprobs(
    model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1 under the model's mRoPE positions: [B, T-1].

    Padding positions hold whatever the model gives them; callers mask them.
    """
    logits = model(**batch, use_cache=False).logits  # [B, T, V]
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # [B, T-1, V]
    target = batch["input_ids"][:, 1:].unsqueeze(-1)  # [B, T-1, 1]
    return logp.gather(-1, target).squeeze(-1)  # [B, T-1]


def score_vlm_tokens(
    model,
    mb: dict[str, torch.Tensor],
    need: torch.Tensor,  # [B, T] bool
    *,
    processor,
    banned: Sequence[int],
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`learners.worker.score_tokens` for a VLM micro-batch (one sequence per row, its frames
    in mb["frames"]): logprobs [B, T], entropy [B, T] or None, argmax [B, T] of the tokens in
    `need`, under the model's own mRoPE positions. Only the needed columns meet the LM head.
    `banned` ids (vision tokens, never sampled) get -inf logits, as vLLM's bad_words gave them.
    """
    real = mb["seq_ids"] >= 0  # [B, T]
    seqs = [ids[r].tolist() for ids, r in zip(mb["input_ids"], real)]
    frames = [[Image.fromarray(f) for f in row] for row in row_frames(mb)]
    inputs = vlm_batch(processor, seqs, frames, pad_id=0)
    device = mb["input_ids"].device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    need = need & real
    need[:, 0] = False  # a sequence's first token has nothing before it
    rows, cols = need.nonzero(as_tuple=True)  # [N], [N]
    keep, inv = torch.unique(cols - 1, return_inverse=True)  # logits predicting each token
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = out.logits[rows, inv]  # [N, V]
    if banned:
        logits = logits.index_fill(-1, torch.tensor(list(banned), device=device), float("-inf"))
    lp_n, ent_n, pred_n = scored_logprobs(
        logits,
        mb["input_ids"][rows, cols],
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
        temperature=temperature,
    )
    shape, idx = mb["input_ids"].shape, (rows, cols)
    lp = lp_n.new_zeros(shape).index_put(idx, lp_n)  # [B, T], differentiable
    ent = ent_n.new_zeros(shape).index_put(idx, ent_n) if ent_n is not None else None
    pred = torch.full(shape, -1, dtype=torch.long, device=device).index_put(idx, pred_n)
    return lp, ent, pred
