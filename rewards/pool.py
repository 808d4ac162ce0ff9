"""The reward pool: `RewardScorer` scores one batch; `InProcessRewardPool` runs it in this
process, `RayRewardPool` on M CPU-only Ray actors. Both return `RewardResult`s in input order.

Only what scoring needs crosses to the actors (sample row, responses, step outputs), never
token ids or logprobs. A judge failure or timeout costs its item a fallback score (counted in
`RewardResult.fallback`), never the item; a dead actor is restarted by Ray and its in-flight
batch re-run there (max_restarts / max_task_retries), so every item comes back exactly once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from streampro.errors import UserError
from streampro.rewards.guard import Guard, GuardedAcc, GuardedRubric
from streampro.rewards.judges import ACC_JUDGES, AccJudge, OpenAIChat, make_acc_judge
from streampro.rewards.rubric import RUBRIC_JUDGES, LLMRubricJudge, RubricJudge, RuleJudge
from streampro.rewards.scoring import (
    format_reward,
    rubric_marks,
    total_reward,
    traj_score,
    turn_reward,
)
from streampro.types import RewardResult, Trajectory

if TYPE_CHECKING:
    from streampro.config import Config, RewardConfig
    from streampro.rewards.api import RewardPoolAPI

Item = tuple[dict, list[dict], list[str]]
"""(sample row, responses [{"time", "text"}], raw step outputs) of one trajectory."""


def to_items(samples: list[dict], trajectories: list[Trajectory]) -> list[Item]:
    if len(samples) != len(trajectories):
        raise ValueError(f"{len(samples)} samples for {len(trajectories)} trajectories")
    return [(s, t.responses(), t.step_outputs()) for s, t in zip(samples, trajectories)]


class RewardScorer:
    """Scores items with R = w_fmt R_fmt + w_turn R_turn + w_traj R_traj. Also the Ray actor.

    acc_judge: 'exact' | 'embedding' | 'llm' or an AccJudge object; traj_judge: 'rule' (rule
    judge, then the llm judge for free text when llm_url is set) | 'llm' or a RubricJudge.
    timeout_s bounds the non-inline judge calls of one item together; `threads` items are
    scored concurrently when a judge waits on the network.
    """

    def __init__(
        self,
        *,
        w_fmt: float = 0.1,
        w_turn: float = 0.45,
        w_traj: float = 0.45,
        tau: float = 8.0,
        turn_match: str = "sum",
        acc_judge: str | AccJudge = "exact",
        traj_judge: str | RubricJudge = "rule",
        llm_url: str = "",
        llm_model: str = "",
        llm_api_key_env: str = "",
        timeout_s: float = 30.0,
        fallback_score: float = 0.0,
        threads: int = 8,
    ) -> None:
        self.weights = {"w_fmt": w_fmt, "w_turn": w_turn, "w_traj": w_traj}
        self.tau, self.timeout_s, self.fallback_score = tau, timeout_s, fallback_score
        self.turn_match = turn_match
        self.acc: AccJudge = (
            make_acc_judge(
                acc_judge,
                llm_url=llm_url,
                llm_model=llm_model,
                api_key_env=llm_api_key_env,
                timeout_s=timeout_s,
            )
            if isinstance(acc_judge, str)
            else acc_judge
        )
        self.rubric_judges: list[RubricJudge] = _rubric_judges(
            traj_judge, llm_url, llm_model, llm_api_key_env, timeout_s
        )
        waits = not getattr(self.acc, "inline", False) or not all(
            getattr(j, "inline", False) for j in self.rubric_judges
        )
        self.threads = max(1, threads) if waits else 1  # threads only help network-bound judges

    def pid(self) -> int:
        """The process id (tells a restarted actor from the original)."""
        return os.getpid()

    def score_item(
        self, sample: dict, responses: list[dict], step_outputs: list[str]
    ) -> RewardResult:
        guard = Guard(self.timeout_s)
        acc = GuardedAcc(self.acc, guard, self.fallback_score)
        judges = [GuardedRubric(j, guard) for j in self.rubric_judges]
        fmt = format_reward(step_outputs)
        turn = turn_reward(sample, responses, self.tau, acc=acc, match=self.turn_match)
        traj, no_verdict = traj_score(rubric_marks(sample, responses, judges), self.fallback_score)
        total = total_reward(fmt, turn, traj, **self.weights)
        return RewardResult(
            total=total, fmt=fmt, turn=turn, traj=traj, fallback=acc.fallbacks + no_verdict
        )

    def score_batch(self, items: Sequence[Item]) -> list[RewardResult]:
        if self.threads == 1 or len(items) <= 1:
            return [self.score_item(*it) for it in items]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(items))) as ex:
            return list(ex.map(lambda it: self.score_item(*it), items))  # map keeps input order


def check_judge_settings(
    acc_judge: str | AccJudge,
    traj_judge: str | RubricJudge,
    llm_url: str,
    *,
    field: str = "reward.acc_judge",
) -> None:
    """The UserErrors RewardScorer would raise, checked before any actor starts (a failing
    actor constructor would surface as a Ray traceback instead of a one-line error), and at
    config load; `field` names the setting `acc_judge` came from."""
    if isinstance(acc_judge, str) and acc_judge not in ACC_JUDGES:
        raise UserError(
            f"{field}: unknown judge {acc_judge!r}; choose one of {', '.join(ACC_JUDGES)}"
        )
    if isinstance(traj_judge, str) and traj_judge not in RUBRIC_JUDGES:
        raise UserError(f"reward.traj_judge: unknown judge {traj_judge!r}; choose 'rule' or 'llm'")
    if "llm" in (acc_judge, traj_judge) and not llm_url:
        raise UserError(
            "the llm judge needs reward.llm_url (an OpenAI-compatible base URL); set it, "
            "or use acc_judge=exact and traj_judge=rule"
        )


def _rubric_judges(
    traj_judge: str | RubricJudge, llm_url: str, llm_model: str, api_key_env: str, timeout_s: float
) -> list[RubricJudge]:
    if not isinstance(traj_judge, str):
        return [traj_judge]

    def llm() -> RubricJudge:
        return LLMRubricJudge(
            OpenAIChat(llm_url, llm_model, api_key_env=api_key_env, timeout_s=timeout_s)
        )

    if traj_judge == "rule":
        return [RuleJudge()] + ([llm()] if llm_url else [])
    if traj_judge == "llm":
        return [llm()]
    raise UserError(f"reward.traj_judge: unknown judge {traj_judge!r}; choose 'rule' or 'llm'")


class InProcessRewardPool:
    """RewardPoolAPI in the calling process (tests, `num_actors=0`, small runs)."""

    def __init__(self, **scorer_kwargs: Any) -> None:
        """scorer_kwargs: the keyword arguments of RewardScorer."""
        self.scorer = RewardScorer(**scorer_kwargs)

    def score(self, *, samples: list[dict], trajectories: list[Trajectory]) -> list[RewardResult]:
        return self.scorer.score_batch(to_items(samples, trajectories))

    def shutdown(self) -> None:
        pass


class RayRewardPool:
    """RewardPoolAPI on `num_actors` CPU-only Ray actors, each a RewardScorer.

    A batch is cut into contiguous chunks, chunk k going to actor k mod M; results are
    concatenated back in input order. `resource` names an optional custom resource (e.g.
    "reward") requested per actor, for clusters whose reward worker group offers it.
    """

    def __init__(
        self,
        *,
        num_actors: int = 1,
        num_cpus: float = 0.5,
        memory_gb: float = 0.0,
        resource: str | None = None,
        max_restarts: int = 2,
        max_task_retries: int = 2,
        chunk_size: int = 0,
        **scorer_kwargs: Any,
    ) -> None:
        """scorer_kwargs: the keyword arguments of RewardScorer. chunk_size 0 = one chunk per actor."""
        import ray

        from streampro.cluster.resources import ROLE_UNIT, actor_options

        if num_actors < 1:
            raise UserError(
                f"reward.num_actors: a Ray pool needs at least 1 actor, got {num_actors}"
            )
        check_judge_settings(
            scorer_kwargs.get("acc_judge", "exact"),
            scorer_kwargs.get("traj_judge", "rule"),
            scorer_kwargs.get("llm_url", ""),
        )
        opts = actor_options("reward", num_cpus=num_cpus, memory_gb=memory_gb)
        if resource:
            opts["resources"] = {resource: ROLE_UNIT}
        actor_cls = ray.remote(RewardScorer).options(
            **opts, max_restarts=max_restarts, max_task_retries=max_task_retries
        )
        self.actors = [actor_cls.remote(**scorer_kwargs) for _ in range(num_actors)]
        self.chunk_size = chunk_size
        ray.get([a.pid.remote() for a in self.actors])  # fail fast on a bad judge setting

    def score(self, *, samples: list[dict], trajectories: list[Trajectory]) -> list[RewardResult]:
        import ray

        items = to_items(samples, trajectories)
        if not items:
            return []
        size = self.chunk_size or math.ceil(len(items) / len(self.actors))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        refs = [
            self.actors[k % len(self.actors)].score_batch.remote(chunk)
            for k, chunk in enumerate(chunks)
        ]
        results = [r for part in ray.get(refs) for r in part]
        assert len(results) == len(items), (len(results), len(items))
        return results

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


def scorer_settings(r: RewardConfig) -> dict[str, Any]:
    """`RewardScorer`'s keyword arguments from the reward section."""
    return {
        "w_fmt": r.w_fmt,
        "w_turn": r.w_turn,
        "w_traj": r.w_traj,
        "tau": r.tau,
        "turn_match": r.turn_match,
        "acc_judge": r.acc_judge,
        "traj_judge": r.traj_judge,
        "llm_url": r.llm_url,
        "llm_model": r.llm_model,
        "llm_api_key_env": r.llm_api_key_env,
        "timeout_s": r.timeout_s,
        "fallback_score": r.fallback_score,
        "threads": r.threads,
    }


def make_reward_pool(cfg: Config) -> RewardPoolAPI:
    """The pool the config asks for: in-process when reward.num_actors is 0, else on Ray."""
    r = cfg.reward
    scorer = scorer_settings(r)
    if r.num_actors == 0:
        return InProcessRewardPool(**scorer)
    return RayRewardPool(
        num_actors=r.num_actors,
        num_cpus=r.num_cpus,
        memory_gb=r.memory_gb,
        resource="reward" if cfg.cluster.role_resources else None,
        max_restarts=r.max_restarts,
        max_task_retries=r.max_restarts,
        **scorer,
    )
