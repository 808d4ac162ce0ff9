"""The rollout group's interface: one Protocol, an in-process and a Ray implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from streampro.data.window import Window
from streampro.types import Trajectory

# `sync_weights(source=WEIGHT_TRANSFER)`: the learner already pushed the weights through
# vLLM's weight-transfer API (NCCL, GPU only); engines only drop their caches and take the
# version. Any other source is an HF folder that engines reload from disk.
WEIGHT_TRANSFER = "weight-transfer"
# `sync_weights(source=IN_MEMORY, blob=...)`: the weights come with the call, as the
# safetensors blob the learner made in memory (the colocated CPU handoff, no file).
IN_MEMORY = "in-memory"

if TYPE_CHECKING:
    from streampro.config import Config, RolloutConfig
    from streampro.data.encode import EncodedSample


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings of an episode's decisions."""

    temperature: float
    """0 = greedy."""
    top_p: float
    max_answer_tokens: int
    seed: int
    """Base seed; episode i of sample j derives its own from it."""
    response_bias: float = 0.0
    """Added to the `</Response>` logit of every sampled decision (vLLM logit_bias;
    decode.response_bias): a global response rate. 0 = the policy as trained. Threshold
    decoding ignores it (it has its own shift)."""

    @classmethod
    def from_config(cls, rollout: RolloutConfig, *, seed: int) -> Sampling:
        """Rollout sampling: `rollout.temperature`, `top_p` and `max_answer_tokens`."""
        return cls(rollout.temperature, rollout.top_p, rollout.max_answer_tokens, seed)

    @classmethod
    def greedy(cls, rollout: RolloutConfig, *, seed: int = 0) -> Sampling:
        """Greedy decoding with the rollout's answer length."""
        return cls(0.0, 1.0, rollout.max_answer_tokens, seed)


@dataclass(frozen=True)
class WorkerSpec:
    """What a rollout worker (one vLLM engine and its episode loop) is built from: the
    trainer, Serve, the benches and the tests build it once and the groups pass it on."""

    model_path: str
    rollout: RolloutConfig
    """The engine's settings and `max_answer_tokens`; a Ray group also reads its actors' here."""
    dtype: str
    """policy.dtype."""
    seed: int
    """run.seed (the engine's seed)."""
    window: Window
    """The context window, and so the frames a prompt holds."""
    sleep_mode: bool = False
    """cluster.colocate: the engine starts with vLLM's sleep mode, to free its GPU memory
    while the learner trains (GPU only: vLLM CPU refuses it, and there sleep frees nothing)."""

    @classmethod
    def of(cls, cfg: Config, model_path: str) -> WorkerSpec:
        """The spec a config gives for the policy at `model_path`."""
        return cls(
            model_path,
            cfg.rollout,
            dtype=cfg.policy.dtype,
            seed=cfg.run.seed,
            window=Window.from_config(cfg.data),
            sleep_mode=bool(cfg.cluster.colocate),
        )


class RolloutGroupAPI(Protocol):
    def generate(
        self, *, samples: list[EncodedSample], n: int, sampling: Sampling
    ) -> list[Trajectory]:
        """n episodes per sample, returned grouped and in order: [s0e0..s0e(n-1), s1e0, ...]."""
        ...

    def sync_weights(self, *, version: int, source: str, blob: bytes | None = None) -> float:
        """Load new weights from an HF folder into every engine in place (or, with source
        WEIGHT_TRANSFER, take weights the learner just sent over NCCL; with IN_MEMORY, load
        `blob`, a safetensors blob); returns seconds."""
        ...

    def weight_sync_client(self, *, timeout_s: float) -> Any:
        """vLLM's `VLLMWeightSyncClient` over every engine, for the learner's NCCL sender
        (actors/weight_transfer.py); each of its calls raises TimeoutError past timeout_s."""
        ...

    def shutdown(self) -> None: ...
