"""Learner side of the NCCL weight sync: every parameter, whole, under the engine's names.

GPU only at run time (`rollout.weight_transfer_backend: nccl`, what the GPU configs ship); the
HF-folder reload is the CPU default and the fallback. What reaches vLLM is exactly what `export_hf` would write, without the disk:
  - names: the checkpoint names `save_pretrained` writes (transformers' own reverse weight
    conversion, e.g. a Qwen2.5-VL's `model.language_model.layers.0...` goes out as
    `model.layers.0...` and `model.visual...` as `visual...`), which vLLM's
    `model.load_weights` maps onto its modules as when it loads a folder;
  - a tied LM head is not sent (named_parameters lists the shared tensor once, under the
    embedding; vLLM ties its head to the embedding, and save_pretrained drops it too);
  - LoRA layers go out merged, W + (alpha / r) B @ A, under the base layer's name; the
    adapters themselves are never sent;
  - ZeRO-3 parameters are gathered one layer at a time (`deepspeed.zero.GatheredParameters`,
    a collective every rank joins in the same order) and copied out in the engine's dtype.
The vLLM side (client, `NCCLTrainerWeightTransferEngine`) is actors/weight_transfer.py.
Colocated (`rollout.weight_transfer_backend: ipc`, cluster.colocate) the same source goes
out through vLLM's `IPCTrainerWeightTransferEngine` instead (GPU only, never run here).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.core_model_loading import revert_weight_conversion

from streampro.actors.weight_transfer import IpcSender, NcclSender
from streampro.timeouts import run_with_timeout

LORA_A, LORA_B, BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer."
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SendItem:
    """One tensor the engines receive: its checkpoint name and the learner parameters it is
    made of (one, or a LoRA layer's base weight, A and B)."""

    name: str
    params: tuple[str, ...]


def plain_name(param: str) -> str:
    """A learner parameter's name without peft's LoRA wrapping (the base model's name)."""
    return param.replace(BASE, ".")


def is_adapter(param: str) -> bool:
    return ".lora_A." in param or ".lora_B." in param


def send_plan(params: list[str], rename: dict[str, str]) -> list[SendItem]:
    """What to send, in parameter order: adapters ride with their base weight (merged),
    every name is renamed to its checkpoint name; a name sent twice is an error."""
    have = set(params)
    out: list[SendItem] = []
    for p in params:
        if is_adapter(p):
            if p.replace(LORA_A, BASE + "weight").replace(LORA_B, BASE + "weight") not in have:
                raise ValueError(f"LoRA adapter {p} has no base layer weight")
            continue
        parts: tuple[str, ...] = (p,)
        if p.endswith(BASE + "weight"):
            stem = p[: -len(BASE + "weight")]
            parts = (p, stem + LORA_A, stem + LORA_B)
            missing = [q for q in parts[1:] if q not in have]
            if missing:
                raise ValueError(f"LoRA layer {stem} lacks {missing[0]}")
        out.append(SendItem(rename[plain_name(p)], parts))
    names = [i.name for i in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two parameters map to the checkpoint name {dup!r}")
    return out


_INDEX = re.compile(r"\.(\d+)(?=\.)")


def layer_key(name: str) -> str:
    """The name up to its outermost layer index ('model.layers.3'); '' when it has none."""
    m = _INDEX.search(name)
    return name[: m.end()] if m else ""


def gather_groups(items: list[SendItem]) -> list[list[SendItem]]:
    """Consecutive items of one layer (same outermost index) form one ZeRO-3 gather: one
    collective per layer, a layer's memory at a time; order is kept, so every rank's
    iteration (and the metadata the engines receive) is the same."""
    groups: list[list[SendItem]] = []
    last: str | None = None
    for it in items:
        key = layer_key(it.params[0])
        if not groups or key != last or key == "":
            # un-indexed parameters (embeddings, norm, head) are gathered one by one
            groups.append([])
        groups[-1].append(it)
        last = key
    return groups


def checkpoint_names(model: torch.nn.Module, names: list[str]) -> dict[str, str]:
    """name -> the key `save_pretrained` writes for it (transformers' reverse conversion).

    Each name gets a one-element tensor holding its index; a renaming keeps it, so the
    reverted dict says which name became which key. A conversion that is more than a
    rename (fusing or splitting tensors) has no one-to-one answer: refused."""
    probe = {n: torch.tensor([float(i)]) for i, n in enumerate(names)}
    out: dict[str, str] = {}
    for key, t in revert_weight_conversion(model, probe).items():
        if not isinstance(t, torch.Tensor) or t.numel() != 1:
            raise ValueError(
                f"{type(model).__name__}: checkpoint key {key!r} is not a rename of one "
                "parameter; NCCL weight sync cannot send this model (use the HF-folder sync)"
            )
        out[names[int(t.item())]] = key
    if len(out) != len(names):
        raise ValueError(f"{type(model).__name__}: {len(names) - len(out)} parameters lost")
    return out


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's whole shape; ZeRO-3 keeps only a partition (the shape in `ds_shape`)."""
    return tuple(getattr(p, "ds_shape", None) or p.shape)


class GatheredWeights:
    """The learner's weights as vLLM loads them: metadata without any gather, and an
    iteration that gathers one layer at a time (every rank must iterate, in step)."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        dtype: torch.dtype,
        lora_scale: float = 0.0,
        sender: bool = True,
    ) -> None:
        """sender=False (learner ranks > 0): iterate only to join the gathers, copy nothing."""
        self.params = dict(module.named_parameters())
        names = [plain_name(n) for n in self.params if not is_adapter(n)]
        self.items = send_plan(list(self.params), checkpoint_names(module, names))
        self.groups = gather_groups(self.items)
        self.dtype, self.lora_scale, self.sender = dtype, lora_scale, sender
        self._meta = [(i.name, dtype, full_shape(self.params[i.params[0]])) for i in self.items]

    def metadata(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return list(self._meta)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for group in self.groups:
            ps = [self.params[n] for it in group for n in it.params]
            out: list[tuple[str, torch.Tensor]]
            with _gathered(ps):
                if not self.sender:  # vLLM only iterates a non-sender's source
                    out = [(it.name, self.params[it.params[0]]) for it in group]
                else:
                    out = [(it.name, self._whole(it)) for it in group]
                if self.sender and out[0][1].is_cuda:
                    # the copies are read on vLLM's packing stream after the gathered
                    # storage is released: finish them first
                    torch.cuda.current_stream().synchronize()
            yield from out

    def _whole(self, it: SendItem) -> torch.Tensor:
        """An owned copy in the wire dtype (the gathered storage is freed after the layer)."""
        w = self.params[it.params[0]].detach()
        if len(it.params) == 3:  # LoRA: W + (alpha / r) B @ A
            a = self.params[it.params[1]].detach().float()  # [r, in]
            b = self.params[it.params[2]].detach().float()  # [out, r]
            return (w.float() + self.lora_scale * (b @ a)).to(self.dtype).contiguous()
        return w.to(dtype=self.dtype, copy=True).contiguous()


def _gathered(params: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    """ZeRO-3: the whole parameters for the duration (a collective); else nothing to do."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed  # only ZeRO-3 parameters get here: a rank that already runs DeepSpeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@dataclass(frozen=True)
class SyncGroup:
    """The NCCL rendezvous every learner rank is given (rank 0 hosts it)."""

    master_address: str
    master_port: int
    world_size: int
    timeout_s: float


class WeightSender:
    """One learner rank's part of the sync: rank 0 sends, every rank gathers."""

    def __init__(
        self,
        *,
        rank: int,
        module: torch.nn.Module,
        group: SyncGroup,
        client: Any,
        dtype: str,
        lora_scale: float = 0.0,
    ) -> None:
        if dtype not in WIRE_DTYPES:
            raise ValueError(
                f"weight sync dtype must be one of {sorted(WIRE_DTYPES)}, got {dtype!r}"
            )
        self.rank, self.timeout_s = rank, group.timeout_s
        self.source = GatheredWeights(
            module, dtype=WIRE_DTYPES[dtype], lora_scale=lora_scale, sender=rank == 0
        )
        self.sender: IpcSender | NcclSender
        if getattr(client, "backend", "nccl") == "ipc":  # colocated: the engines share our GPUs
            self.sender = run_with_timeout(
                lambda: IpcSender(rank=rank, client=client, source=self.source),
                timeout_s=group.timeout_s,
                what=f"IPC weight transfer setup of learner rank {rank}",
            )
            return
        self.sender = run_with_timeout(
            lambda: NcclSender(
                rank=rank,
                master_address=group.master_address,
                master_port=group.master_port,
                world_size=group.world_size,
                client=client,
                source=self.source,
            ),
            timeout_s=group.timeout_s,
            what=f"NCCL rendezvous of learner rank {rank} with the rollout engines",
        )

    def send(self, *, version: int) -> float:
        """Broadcast every parameter (rank 0) / join the gathers (others); returns seconds."""
        t0 = time.perf_counter()
        run_with_timeout(
            self.sender.send,
            timeout_s=self.timeout_s,
            what=f"sending weights v{version} from learner rank {self.rank}",
        )
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        self.sender.shutdown()
