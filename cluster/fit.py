"""Do a job's roles fit the cluster? Checked before any actor starts, so nothing waits forever.

Ray queues an actor it cannot place and `ray.get` on it then blocks for good: a GRPO job whose
rollout, reward and learner roles ask for more CPUs than the cluster has would hang without a
word. `role_demands` lists what a stage runs at once (from its config sections) and
`check_fit` compares it with what the cluster offers, in total and per node, naming the first
role that does not fit. Pure functions: `cluster.local.init_cluster` feeds them Ray's view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streampro.config import Config, rank_cpus
from streampro.errors import UserError

STAGES = ("sft", "grpo", "train", "eval")


@dataclass(frozen=True)
class RoleDemand:
    """`count` actors of one role, each asking for `cpus` CPUs and `gpus` GPUs."""

    role: str
    count: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        unit = "rank" if self.role == "learner" else "actor"
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.role} ({self.count} {unit}{'s' if self.count != 1 else ''} x {each})"


@dataclass(frozen=True)
class Capacity:
    """What a cluster offers: totals, and the most one node has (an actor needs one node)."""

    cpus: float
    gpus: float
    node_cpus: float
    node_gpus: float


def role_demands(cfg: Config, stage: str) -> list[list[RoleDemand]]:
    """The phases of a stage, each the roles that hold resources at the same time."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
    r, w, lc = cfg.rollout, cfg.reward, cfg.learner
    gpus_per_engine = r.num_gpus * max(1, r.tensor_parallel_size) if r.num_gpus else 0.0
    rollout = RoleDemand("rollout", r.num_actors, r.num_cpus, gpus_per_engine)
    reward = [RoleDemand("reward", w.num_actors, w.num_cpus, 0.0)] if w.num_actors else []

    def learner(objective: str) -> list[RoleDemand]:
        if lc.in_process:  # the driver's own process: nothing to place
            return []
        node = cfg.sft if objective == "sft" else cfg.grpo
        return [RoleDemand("learner", lc.num_ranks, rank_cpus(lc, node), lc.num_gpus)]

    grpo = [rollout, *reward, *learner("grpo")]
    if stage == "eval":
        return [[rollout]]
    if stage == "sft":  # its val passes run on engines beside the ranks
        return [[*learner("sft"), rollout]]
    if stage == "grpo":
        return [grpo]
    return [learner("sft"), grpo]  # train: SFT, then GRPO (engines may start during SFT)


def check_fit(phases: list[list[RoleDemand]], cap: Capacity, *, stage: str) -> None:
    """Raise a one-line UserError naming the first role that cannot be placed."""
    for roles in phases:
        used_cpus = used_gpus = 0.0
        placed: list[RoleDemand] = []
        for d in roles:
            if d.cpus > cap.node_cpus or d.gpus > cap.node_gpus:
                raise UserError(
                    f"cluster: {stage}: {d.describe()} cannot be placed: the largest node has "
                    f"{cap.node_cpus:g} CPU and {cap.node_gpus:g} GPU"
                )
            used_cpus += d.count * d.cpus
            used_gpus += d.count * d.gpus
            if used_cpus > cap.cpus + 1e-9 or used_gpus > cap.gpus + 1e-9:
                beside = f" beside {', '.join(p.describe() for p in placed)}" if placed else ""
                raise UserError(
                    f"cluster: {stage}: {d.describe()} does not fit{beside}: "
                    f"{_amount(used_cpus, cap.cpus, used_gpus, cap.gpus)} (raise "
                    "cluster.num_cpus / num_gpus, or lower the roles' num_cpus / num_gpus)"
                )
            placed.append(d)


def _amount(cpus: float, cap_cpus: float, gpus: float, cap_gpus: float) -> str:
    """'X CPU and Y GPU asked, the cluster has ...', leaving out an unbounded side."""
    if math.isinf(cap_cpus):  # `streampro plan` checks GPUs only
        return f"{gpus:g} GPU asked, the cluster has {cap_gpus:g} GPU"
    return f"{cpus:g} CPU and {gpus:g} GPU asked, the cluster has {cap_cpus:g} CPU and {cap_gpus:g} GPU"


def needed_cpus(phases: list[list[RoleDemand]]) -> float:
    """The most CPUs any phase holds at once."""
    return max((sum(d.count * d.cpus for d in roles) for roles in phases), default=0.0)
