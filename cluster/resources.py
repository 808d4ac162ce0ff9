"""What each role asks Ray for: CPUs, GPUs, memory and one custom resource named after the role.

A pending actor's request is the autoscaler's demand, so the custom resource (`{"rollout":
0.001}`) is what sends rollout engines to the rollout worker group and learner ranks to the
learner group. The local Ray (`cluster.local.init_ray`) and the KubeRay manifests provide
these resources; everything else only calls `actor_options` / the placement-group helpers.
Ray is imported only inside the placement-group helpers: rewards/ imports this module and
imports with torch alone (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

ROLES = ("rollout", "learner", "reward", "serve")
"""Roles with their own custom resource (and KubeRay worker group, except serve)."""

ROLE_UNIT = 0.001
"""Amount of its role resource one actor (or bundle) requests: a node offering 1 unit hosts
up to 1000 of them, so the role resource routes actors and CPU/GPU/memory bound their number."""

LOCAL_ROLE_RESOURCES: dict[str, float] = {r: 1.0 for r in ROLES}
"""What the local single-node Ray offers, so that actors requesting a role can be placed."""


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def role_resources(role: str, *, custom: bool) -> dict[str, float]:
    """The custom-resource part of a request: {role: ROLE_UNIT}, or {} when custom is False."""
    _check_role(role)
    return {role: ROLE_UNIT} if custom else {}


def actor_options(
    role: str,
    *,
    num_cpus: float,
    num_gpus: float = 0.0,
    memory_gb: float = 0.0,
    custom: bool = False,
) -> dict[str, Any]:
    """kwargs for `ActorClass.options(**...)` of one actor of `role`.

    memory_gb <= 0 leaves memory undeclared; custom adds the role's custom resource.
    >>> actor_options("rollout", num_cpus=1, num_gpus=0, custom=True)
    {'num_cpus': 1, 'num_gpus': 0, 'resources': {'rollout': 0.001}}
    """
    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if memory_gb > 0:
        opts["memory"] = int(memory_gb * (1 << 30))
    extra = role_resources(role, custom=custom)
    if extra:
        opts["resources"] = extra
    return opts


def bundle(
    role: str,
    *,
    num_cpus: float,
    num_gpus: float = 0.0,
    memory_gb: float = 0.0,
    custom: bool = False,
) -> dict[str, float]:
    """One placement-group bundle in Ray's resource-name form ({"CPU": .., "GPU": .., role: ..})."""
    b: dict[str, float] = {"CPU": float(num_cpus)}
    if num_gpus > 0:
        b["GPU"] = float(num_gpus)
    if memory_gb > 0:
        b["memory"] = float(int(memory_gb * (1 << 30)))
    b.update(role_resources(role, custom=custom))
    return b


def role_placement_group(
    role: str,
    num_bundles: int,
    *,
    num_cpus: float,
    num_gpus: float = 0.0,
    memory_gb: float = 0.0,
    strategy: str = "PACK",
    custom: bool = False,
    name: str = "",
) -> PlacementGroup:
    """A placement group of `num_bundles` equal bundles for one role (not waited on:
    `ray.get(pg.ready())` blocks until placed, which with an autoscaler may mean new nodes)."""
    from ray.util.placement_group import placement_group  # lazy: rewards/ imports this module

    if num_bundles < 1:
        raise ValueError(f"num_bundles must be >= 1, got {num_bundles}")
    spec = bundle(role, num_cpus=num_cpus, num_gpus=num_gpus, memory_gb=memory_gb, custom=custom)
    return placement_group([dict(spec) for _ in range(num_bundles)], strategy=strategy, name=name)


def learner_placement_group(
    num_ranks: int,
    num_cpus: float,
    num_gpus: float,
    strategy: str = "PACK",
    *,
    memory_gb: float = 0.0,
    custom: bool = False,
) -> PlacementGroup:
    """One bundle per DeepSpeed rank; PACK keeps ranks on as few nodes as possible (fast
    all-reduce), STRICT_PACK forces one node, SPREAD the opposite."""
    return role_placement_group(
        "learner",
        num_ranks,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        memory_gb=memory_gb,
        strategy=strategy,
        custom=custom,
    )


def engine_placement_group(
    tensor_parallel_size: int, *, num_cpus: float, num_gpus: float = 1.0, custom: bool = False
) -> PlacementGroup:
    """Bundles of one tensor-parallel vLLM engine (one GPU each, STRICT_PACK: TP needs one
    node). Create the RolloutActor in bundle 0 with `in_placement_group(pg, 0)`; vLLM's Ray
    executor then places its TP workers in the same group."""
    return role_placement_group(
        "rollout",
        tensor_parallel_size,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        strategy="STRICT_PACK",
        custom=custom,
    )


def in_placement_group(
    pg: PlacementGroup, bundle_index: int, *, capture_child_tasks: bool = True
) -> dict[str, Any]:
    """`.options(**...)` kwargs that schedule an actor into bundle `bundle_index` of `pg`;
    the actor's own num_cpus/num_gpus are taken from that bundle."""
    # lazy: rewards/ imports this module
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg,
            placement_group_bundle_index=bundle_index,
            placement_group_capture_child_tasks=capture_child_tasks,
        )
    }
