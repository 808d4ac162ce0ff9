"""Ray actors that run the policy: vLLM rollout actors, the streaming episode loop, Serve.

Names are imported on first use (PEP 562), so `streampro.actors.api` stays light (no vLLM or
Ray) for the learner and reward code that only needs `Sampling`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Sampling": "streampro.actors.api",
    "RolloutGroupAPI": "streampro.actors.api",
    "WorkerSpec": "streampro.actors.api",
    "StreamEpisode": "streampro.actors.episode",
    "DecisionEngine": "streampro.actors.engine",
    "RolloutWorker": "streampro.actors.rollout",
    "RolloutActor": "streampro.actors.rollout",
    "LocalRolloutGroup": "streampro.actors.rollout",
    "RayRolloutGroup": "streampro.actors.rollout",
    "make_rollout_group": "streampro.actors.rollout",
    "HFStreamPolicy": "streampro.actors.hf_loop",
    "StreamEnv": "streampro.actors.env",
    "write_trajectories": "streampro.actors.records",
    "read_trajectories": "streampro.actors.records",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'streampro.actors' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
