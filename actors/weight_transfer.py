"""The trainer side of vLLM's NCCL weight transfer, and its client to the rollout engines.

GPU only (NCCL); nothing here runs on a CPU machine except the pure parts (rank plan,
timeouts, the client over Ray actors), which tests/test_weight_sync.py covers.

How one sync goes (vLLM 0.32's `NCCLTrainerWeightTransferEngine`, driven from learner
rank 0, see learners/weight_sync.py):
  - once: rank 0 opens a TCP rendezvous and an NCCL group of 1 + sum(engine world sizes)
    ranks; each engine's workers join it at their own rank offset (`init_weight_transfer_engine`);
  - per version: `start_weight_update` on every engine, then `update_weights` (the workers
    receive) concurrently with rank 0's packed broadcast of every parameter, then
    `finish_weight_update` (vLLM's layerwise reload processes the new weights).
Colocated (cluster.colocate, backend 'ipc': actors/colocate.py orders sleep, wake and sync)
`IpcSender` drives vLLM's `IPCTrainerWeightTransferEngine` through the same client: no
rendezvous, rank 0 ships CUDA IPC handles of the learner's own tensors (GPU only, never run
in this project). Every call to an engine has a timeout and raises `TimeoutError`; the broadcast itself is
bounded by `streampro.timeouts.run_with_timeout` in the caller (a dead peer leaves NCCL
blocked forever, and NCCL has no timeout of its own here).

vLLM is imported lazily (this module is imported by learner ranks, which only need it on GPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

import ray
import torch

T = TypeVar("T")


def engine_rank_offsets(world_sizes: list[int]) -> tuple[list[int], int]:
    """NCCL rank offset of each engine's first worker, and the group's world size.

    Rank 0 is the trainer (the sender); engine i's workers (tensor x pipeline parallel ranks)
    follow those of engines 0..i-1. vLLM's worker computes its own rank as offset + its rank
    within the engine, so separate engines must be given different offsets (vLLM's own
    `RayVLLMWeightSyncClient` sends one offset to all, which only fits a single engine)."""
    if not world_sizes or any(w < 1 for w in world_sizes):
        raise ValueError(f"every engine needs >= 1 worker, got world sizes {world_sizes}")
    offsets, nxt = [], 1
    for w in world_sizes:
        offsets.append(nxt)
        nxt += w
    return offsets, nxt


class EngineActor(Protocol):
    """What the client needs of a rollout actor handle (actors/rollout.py `RolloutActor`)."""

    init_weight_transfer_engine: Any
    start_weight_update: Any
    update_weights: Any
    finish_weight_update: Any


class EngineSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over N rollout actors (Ray handles).

    Fans each control-plane call out to every engine and waits for all of them, at most
    `timeout_s`; gives each engine its own NCCL rank offset at init. Picklable (actor
    handles and numbers), so the learner's rank 0 can hold it."""

    def __init__(
        self, handles: list, world_sizes: list[int], *, timeout_s: float, backend: str = "nccl"
    ) -> None:
        if len(handles) != len(world_sizes):
            raise ValueError(f"{len(handles)} engines but {len(world_sizes)} world sizes")
        if backend not in ("nccl", "ipc"):
            raise ValueError(f"weight sync backend must be 'nccl' or 'ipc', got {backend!r}")
        self.handles, self.world_sizes, self.timeout_s = list(handles), world_sizes, timeout_s
        self.backend = backend  # the learner builds the matching sender (learners/weight_sync.py)
        self.offsets, self.world_size = engine_rank_offsets(world_sizes)

    def _wait(self, refs: list, what: str) -> None:
        try:
            ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"weight sync: {what} did not finish on {len(refs)} rollout engine(s) "
                f"within {self.timeout_s:g} s (rollout.weight_sync_timeout_s)"
            ) from None

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        if self.backend == "ipc":  # no rendezvous: the trainer's wire format only
            refs = [h.init_weight_transfer_engine.remote(dict(init_info)) for h in self.handles]
            self._wait(refs, "init_weight_transfer_engine (IPC)")
            return
        if int(init_info["world_size"]) != self.world_size:
            raise ValueError(
                f"NCCL world size {init_info['world_size']} != 1 trainer + "
                f"{sum(self.world_sizes)} engine workers"
            )
        refs = [
            h.init_weight_transfer_engine.remote({**init_info, "rank_offset": off})
            for h, off in zip(self.handles, self.offsets)
        ]
        self._wait(refs, "init_weight_transfer_engine (NCCL rendezvous)")

    def start_weight_update(self) -> None:
        self._wait([h.start_weight_update.remote() for h in self.handles], "start_weight_update")

    def update_weights(self, update_info: Any) -> None:
        refs = [h.update_weights.remote(update_info) for h in self.handles]
        self._wait(refs, "update_weights (NCCL receive)")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        refs = [h.finish_weight_update.remote(weight_version) for h in self.handles]
        self._wait(refs, "finish_weight_update")


class ParamSource(Protocol):
    """The learner's weights as the engines load them (learners/weight_sync.py)."""

    def metadata(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]: ...

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]: ...


def _vllm_source(source: ParamSource):
    """Adapt a ParamSource to vLLM's `WeightSource` (metadata as `ParamMeta`)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class Adapter(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(n, d, tuple(s)) for n, d, s in source.metadata()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter(source)

    return Adapter()


class _Sender:
    """A trainer rank's vLLM trainer-side weight-transfer engine (`self.engine`)."""

    engine: Any

    def send(self) -> None:
        """start_weight_update, update_weights (|| NCCL broadcast), finish_weight_update."""
        self.engine.send_weights()

    def shutdown(self) -> None:
        self.engine.shutdown()


class IpcSender(_Sender):
    """One colocated trainer rank's vLLM `IPCTrainerWeightTransferEngine` (never run on a GPU
    in this project): the engines on the same GPUs read the learner's tensors through CUDA
    IPC handles. Every rank iterates the source and joins vLLM's handle all-gather over the
    default process group (the learner's); rank 0 ships the merged handles via `client`."""

    def __init__(self, *, rank: int, client: Any, source: ParamSource) -> None:
        from vllm.distributed.weight_transfer.ipc_engine import (
            IPCTrainerInitInfo,
            IPCTrainerWeightTransferEngine,
        )

        # packed: bounded staging memory (vLLM's default chunk), as the NCCL path
        info = IPCTrainerInitInfo(rank=rank, packed=True)
        self.engine = IPCTrainerWeightTransferEngine.trainer_init(
            info, client=client, source=_vllm_source(source)
        )


class NcclSender(_Sender):
    """One trainer rank's vLLM `NCCLTrainerWeightTransferEngine` (rank 0 sends, packed).

    Every learner rank builds one and calls `send` each version: non-senders only iterate
    the source (their part of the ZeRO-3 gathers); rank 0 also drives the engines through
    `client` and broadcasts."""

    def __init__(
        self,
        *,
        rank: int,
        master_address: str,
        master_port: int,
        world_size: int,
        client: Any,
        source: ParamSource,
    ) -> None:
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        info = NCCLTrainerInitInfo(
            master_address=master_address,
            master_port=master_port,
            world_size=world_size,
            rank=rank,
            packed=True,  # chunks of up to 1 GiB, double-buffered: vLLM's default wire format
        )
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=client, source=_vllm_source(source)
        )
