"""The reward pool's interface: one Protocol, an in-process and a Ray implementation."""

from __future__ import annotations

from typing import Protocol

from streampro.types import RewardResult, Trajectory


class RewardPoolAPI(Protocol):
    def score(self, *, samples: list[dict], trajectories: list[Trajectory]) -> list[RewardResult]:
        """Score trajectories[i] against samples[i] (a manifest row as a dict), in input order."""
        ...

    def shutdown(self) -> None: ...
