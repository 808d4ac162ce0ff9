"""Packing dialogues into rows, padding rows into a batch, and slicing batches for ranks.

Several dialogues share one row: position_ids restart at 0 for each, seq_ids name the
dialogue of every token (-1 = padding), and `attention_bias` turns seq_ids into a
block-diagonal causal mask so no token attends across dialogues. Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from streampro.learners.api import Batch

# Keys sliced along the row axis; everything in a Batch is [B, T] but the frames of a VLM
# batch (FRAME_KEYS: one entry per image, in row and placeholder order).
ROW_KEYS = (
    "input_ids",
    "position_ids",
    "seq_ids",
    "loss_mask",
    "decision_class",
    "advantages",
    "old_logprobs",
    "ref_logprobs",
    "is_weights",
)
FRAME_KEYS = ("frames", "frame_hw", "frame_row")


@dataclass
class PackItem:
    """One dialogue ready for training (token-aligned lists of equal length)."""

    input_ids: list[int]
    loss_mask: list[int]
    decision_class: list[int] | None = None
    advantages: list[float] | None = None
    old_logprobs: list[float] | None = None
    ref_logprobs: list[float] | None = None
    images: list | None = None
    """VLM rows: the frames ([h, w, 3] uint8) of the row's image placeholders, in order."""


def plan_rows(lengths: Sequence[int], *, max_len: int, pack: bool) -> list[list[int]]:
    """Group sequence indices into rows of at most max_len tokens (first fit, input order).

    First fit keeps the plan deterministic and order-preserving; without packing every
    sequence is its own row. A sequence longer than max_len gets a row alone (the caller
    truncates and counts it).
    """
    if not pack:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(max(max_len - n, 0))
    return rows


def collate(seqs: Sequence[PackItem], rows: list[list[int]], *, pad_id: int) -> Batch:
    """Pad packed rows to the longest one: a Batch with the keys of learners/api.py."""
    width = max(sum(len(seqs[i].input_ids) for i in row) for row in rows)
    b = len(rows)
    out: Batch = {
        "input_ids": torch.full((b, width), pad_id, dtype=torch.long),
        "position_ids": torch.zeros((b, width), dtype=torch.long),
        "seq_ids": torch.full((b, width), -1, dtype=torch.long),
        "loss_mask": torch.zeros((b, width), dtype=torch.float32),
    }
    optional = {
        "decision_class": (torch.long, -1),
        "advantages": (torch.float32, 0.0),
        "old_logprobs": (torch.float32, 0.0),
        "ref_logprobs": (torch.float32, 0.0),
    }
    for key, (dtype, fill) in optional.items():
        if getattr(seqs[rows[0][0]], key) is not None:
            out[key] = torch.full((b, width), fill, dtype=dtype)
    for r, row in enumerate(rows):
        pos = 0
        for j, i in enumerate(row):
            s = seqs[i]
            n = len(s.input_ids)
            sl = slice(pos, pos + n)
            out["input_ids"][r, sl] = torch.tensor(s.input_ids, dtype=torch.long)
            out["position_ids"][r, sl] = torch.arange(n)
            out["seq_ids"][r, sl] = j
            out["loss_mask"][r, sl] = torch.tensor(s.loss_mask, dtype=torch.float32)
            for key in optional:
                if key in out:
                    out[key][r, sl] = torch.tensor(getattr(s, key), dtype=out[key].dtype)
            pos += n
    if seqs[rows[0][0]].images is not None:
        if any(len(r) > 1 for r in rows):
            raise ValueError("rows with images hold one sequence each (no packing)")
        out |= collate_frames([seqs[r[0]].images or [] for r in rows])
    return out


def collate_frames(per_row: Sequence[Sequence]) -> Batch:
    """The frames of each row, padded to the largest: frames [N, H, W, 3] uint8, frame_hw
    [N, 2] (each frame's own size), frame_row [N] (its row)."""
    flat = [(r, f) for r, frames in enumerate(per_row) for f in frames]
    h = max((f.shape[0] for _, f in flat), default=1)
    w = max((f.shape[1] for _, f in flat), default=1)
    frames = torch.zeros((len(flat), h, w, 3), dtype=torch.uint8)
    for i, (_, f) in enumerate(flat):
        frames[i, : f.shape[0], : f.shape[1]] = torch.as_tensor(f)
    return {
        "frames": frames,
        "frame_hw": torch.tensor([f.shape[:2] for _, f in flat], dtype=torch.long).view(-1, 2),
        "frame_row": torch.tensor([r for r, _ in flat], dtype=torch.long),
    }


def row_frames(batch: Batch) -> list[list]:
    """The frames of each row of a batch, cropped to their own sizes (numpy, in order)."""
    out: list[list] = [[] for _ in range(batch["input_ids"].shape[0])]
    if "frames" not in batch:
        return out
    for f, (h, w), r in zip(batch["frames"], batch["frame_hw"].tolist(), batch["frame_row"]):
        out[int(r)].append(f[:h, :w].numpy())
    return out


def attention_bias(seq_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # [B, 1, T, T]
    """Additive block-diagonal causal mask: 0 where query i may see key j, -inf-ish elsewhere.

    Works for eager and SDPA attention. Padding queries see themselves only, so their rows
    stay finite (no NaN from an all-masked softmax).
    """
    t = seq_ids.shape[1]
    same = seq_ids.unsqueeze(2) == seq_ids.unsqueeze(1)  # [B, T, T]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()  # [T, T]
    real = (seq_ids >= 0).unsqueeze(1)  # [B, 1, T] keys that are tokens
    allowed = same & causal & real
    allowed |= torch.eye(t, dtype=torch.bool, device=seq_ids.device)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias.unsqueeze(1)


def select_rows(batch: Batch, idx: Sequence[int]) -> Batch:
    """Rows idx of every [B, T] tensor, trimmed of trailing columns that are padding everywhere."""
    index = torch.as_tensor(list(idx), dtype=torch.long)
    out = {k: v.index_select(0, index) for k, v in batch.items() if k in ROW_KEYS}
    real = (out["seq_ids"] >= 0).any(dim=0).nonzero()
    width = int(real.max()) + 1 if real.numel() else 1
    out = {k: v[:, :width].contiguous() for k, v in out.items()}
    if "frames" in batch:  # the frames of the chosen rows, renumbered to their new rows
        pick = [
            (new, i)
            for new, old in enumerate(idx)
            for i in (batch["frame_row"] == old).nonzero().flatten().tolist()
        ]
        sel = torch.tensor([i for _, i in pick], dtype=torch.long)
        out["frames"] = batch["frames"].index_select(0, sel)
        out["frame_hw"] = batch["frame_hw"].index_select(0, sel)
        out["frame_row"] = torch.tensor([n for n, _ in pick], dtype=torch.long)
    return out


def empty_like_rows(batch: Batch) -> Batch:
    """A one-row, one-token micro-batch with nothing supervised: keeps collective counts equal."""
    out = {k: torch.zeros_like(v[:1, :1]) for k, v in batch.items() if k in ROW_KEYS}
    if "frames" in batch:  # no frames, but the keys that mark a VLM batch
        out |= {k: batch[k][:0] for k in FRAME_KEYS}
    return out


def assign_rows(
    batch: Batch, *, world_size: int, micro_batch: int, micro_batch_tokens: int = 0
) -> list[list[list[int]]]:
    """Row indices per rank per micro-batch: rows go by descending token count to the least
    loaded rank (balances compute). A micro-batch holds `micro_batch` rows, or, when
    `micro_batch_tokens` > 0, as many rows (in index order) as fit that many real tokens (a
    longer row goes alone). Every rank gets the same number of micro-batches, padded with
    empty lists, because ZeRO reduces gradients collectively at each backward.
    """
    n_rows = batch["input_ids"].shape[0]
    tokens = (batch["seq_ids"] >= 0).sum(dim=1).tolist()
    order = sorted(range(n_rows), key=lambda r: (-tokens[r], r))
    per_rank: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for r in order:
        k = min(range(world_size), key=lambda j: (load[j], len(per_rank[j]), j))
        per_rank[k].append(r)
        load[k] += tokens[r]
    split = [
        _split_by_tokens(sorted(rows), tokens, micro_batch_tokens)
        if micro_batch_tokens > 0
        else [sorted(rows)[i : i + micro_batch] for i in range(0, len(rows), micro_batch)]
        for rows in per_rank
    ]
    n_micro = max(1, max(len(mbs) for mbs in split))
    return [mbs + [[] for _ in range(n_micro - len(mbs))] for mbs in split]


def _split_by_tokens(rows: list[int], tokens: list[int], budget: int) -> list[list[int]]:
    """Consecutive rows grouped while their real tokens stay within budget."""
    out: list[list[int]] = []
    used = 0
    for r in rows:
        if out and used + tokens[r] <= budget:
            out[-1].append(r)
            used += tokens[r]
        else:
            out.append([r])
            used = tokens[r]
    return out


def materialize(batch: Batch, rows: list[int]) -> Batch:
    """The micro-batch of these rows; an empty list gives the empty placeholder micro-batch."""
    return select_rows(batch, rows) if rows else empty_like_rows(batch)


@dataclass
class FlatLayout:
    """A micro-batch's real tokens end to end in one row, and where its scored tokens sit.

    Token (b, t) is scored when `need[b, t]` and it is not the first token of its sequence;
    the logits that predict it are those of flat position keep[i] = flat(b, t) - 1.
    """

    input_ids: torch.Tensor  # [1, M] M = real tokens of the micro-batch
    position_ids: torch.Tensor  # [1, M]
    segments: list[tuple[int, int]]  # [start, end) of every sequence in the flat row
    keep: torch.Tensor  # [N] flat positions whose logits are needed
    rows: torch.Tensor  # [N] row b of each scored token
    cols: torch.Tensor  # [N] column t of each scored token
    targets: torch.Tensor  # [N] input_ids[b, t]


def flat_layout(batch: Batch, need: torch.Tensor) -> FlatLayout:  # need [B, T] bool
    """Drop padding, lay the sequences end to end, and index the tokens to score."""
    seq = batch["seq_ids"]  # [B, T]
    real = seq >= 0  # [B, T]
    flat_idx = real.reshape(-1).cumsum(0).view(real.shape) - 1  # [B, T] position in the flat row
    prev = torch.cat([torch.full_like(seq[:, :1], -2), seq[:, :-1]], dim=1)  # [B, T]
    first = real & (seq != prev)  # [B, T] first token of a sequence
    starts = flat_idx[first].tolist()  # row-major order == flat order
    m = int(real.sum())
    segments = list(zip(starts, starts[1:] + [m]))
    scored = need & real & ~first  # [B, T]
    rows, cols = scored.nonzero(as_tuple=True)  # row-major
    return FlatLayout(
        input_ids=batch["input_ids"][real].unsqueeze(0),
        position_ids=batch["position_ids"][real].unsqueeze(0),
        segments=segments,
        keep=flat_idx[rows, cols] - 1,
        rows=rows,
        cols=cols,
        targets=batch["input_ids"][rows, cols],
    )
