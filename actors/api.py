"""The rollout group's interface: one Protocol, an in-process and a Ray implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from streampro.types import Trajectory

if TYPE_CHECKING:
    from streampro.data.encode import EncodedSample


@dataclass
class Sampling:
    """Per-call sampling settings of an episode's decisions."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_answer_tokens: int = 24
    seed: int = 0
    """Base seed; episode i of sample j derives its own from it."""


class RolloutGroupAPI(Protocol):
    def generate(
        self, *, samples: list[EncodedSample], n: int, sampling: Sampling
    ) -> list[Trajectory]:
        """n episodes per sample, returned grouped and in order: [s0e0..s0e(n-1), s1e0, ...]."""
        ...

    def sync_weights(self, *, version: int, source: str) -> float:
        """Load new weights from an HF folder into every engine in place; returns seconds."""
        ...

    def shutdown(self) -> None: ...
