"""The rollout group's interface: one Protocol, an in-process and a Ray implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from streampro.types import Trajectory

# `sync_weights(source=WEIGHT_TRANSFER)`: the learner already pushed the weights through
# vLLM's weight-transfer API (NCCL, GPU only); engines only drop their caches and take the
# version. Any other source is an HF folder that engines reload from disk.
WEIGHT_TRANSFER = "weight-transfer"

if TYPE_CHECKING:
    from streampro.config import Config, RolloutConfig
    from streampro.data.encode import EncodedSample


@dataclass
class Sampling:
    """Per-call sampling settings of an episode's decisions."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_answer_tokens: int = 24
    seed: int = 0
    """Base seed; episode i of sample j derives its own from it."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a rollout worker (one vLLM engine and its episode loop) is built from: the
    trainer, Serve, the benches and the tests build it once and the groups pass it on."""

    model_path: str
    rollout: RolloutConfig
    """The engine's settings and `max_answer_tokens`; a Ray group also reads its actors' here."""
    dtype: str = "float32"
    """policy.dtype."""
    seed: int = 0
    """run.seed (the engine's seed)."""
    window_turns: int = 200
    """data.window_turns: the context window, and so the frames a prompt holds."""
    window_slide: int = 0
    """data.window_slide."""

    @classmethod
    def of(cls, cfg: Config, model_path: str) -> WorkerSpec:
        """The spec a config gives for the policy at `model_path`."""
        d = cfg.data
        return cls(
            model_path,
            cfg.rollout,
            dtype=cfg.policy.dtype,
            seed=cfg.run.seed,
            window_turns=d.window_turns,
            window_slide=d.window_slide,
        )


class RolloutGroupAPI(Protocol):
    def generate(
        self, *, samples: list[EncodedSample], n: int, sampling: Sampling
    ) -> list[Trajectory]:
        """n episodes per sample, returned grouped and in order: [s0e0..s0e(n-1), s1e0, ...]."""
        ...

    def sync_weights(self, *, version: int, source: str) -> float:
        """Load new weights from an HF folder into every engine in place (or, with source
        WEIGHT_TRANSFER, take weights the learner just sent over NCCL); returns seconds."""
        ...

    def weight_sync_client(self, *, timeout_s: float) -> Any:
        """vLLM's `VLLMWeightSyncClient` over every engine, for the learner's NCCL sender
        (actors/weight_transfer.py); each of its calls raises TimeoutError past timeout_s."""
        ...

    def shutdown(self) -> None: ...
