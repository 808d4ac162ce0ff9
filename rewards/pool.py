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

from streampro.cluster.resources import ROLE_UNIT, actor_options
from streampro.config import Config, RewardConfig
from streampro.errors import UserError
from streampro.rewards.api import RewardPoolAPI
from streampro.rewards.credit import add_credit
from streampro.rewards.guard import Guard, GuardedAcc, GuardedRubric
from streampro.rewards.judges import AccJudge, OpenAIChat, make_acc_judge
from streampro.rewards.mmduet2 import mmduet2_reward
from streampro.rewards.rubric import LLMRubricJudge, RubricJudge, RuleJudge
from streampro.rewards.scoring import (
    format_reward,
    rubric_marks,
    total_reward,
    traj_score,
    turn_reward,
)
from streampro.types import RewardResult, Trajectory

Item = tuple[dict, list[dict], list[str], list[float]]
"""(sample row, responses [{"time", "text"}], raw step outputs, step times) of one trajectory."""


def to_items(samples: list[dict], trajectories: list[Trajectory]) -> list[Item]:
    if len(samples) != len(trajectories):
        raise ValueError(f"{len(samples)} samples for {len(trajectories)} trajectories")
    return [
        (s, t.responses(), t.step_outputs(), [st.time for st in t.steps])
        for s, t in zip(samples, trajectories)
    ]


class RewardScorer:
    """Scores items with the reward `reward.kind` names: R = w_fmt R_fmt + w_turn R_turn +
    w_traj R_traj ('streampro'), or MMDuet2's ('mmduet2', rewards/mmduet2.py, with the same
    S_acc judge: R_fmt then unweighted, turn = PAUC, traj = minus the weighted penalties).
    Also the Ray actor.

    Built from the reward section; `acc_judge` / `traj_judge` objects, when given, replace the
    judges it names (tests, benches). traj_judge 'rule' is the rule judge, then the llm judge
    for free text when llm_url is set. timeout_s bounds the non-inline judge calls of one item
    together; `threads` items are scored concurrently when a judge waits on the network.
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        acc_judge: AccJudge | None = None,
        traj_judge: RubricJudge | None = None,
        credit: bool = False,
    ) -> None:
        r = self.config = config
        self.credit = credit  # grpo.credit=decision: each response's F1 credit too
        self.acc: AccJudge = acc_judge or make_acc_judge(
            r.acc_judge,
            llm_url=r.llm_url,
            llm_model=r.llm_model,
            api_key_env=r.llm_api_key_env,
            timeout_s=r.timeout_s,
        )
        self.rubric_judges: list[RubricJudge] = (
            [traj_judge] if traj_judge is not None else _rubric_judges(r)
        )
        waits = not getattr(self.acc, "inline", False) or not all(
            getattr(j, "inline", False) for j in self.rubric_judges
        )
        self.threads = max(1, r.threads) if waits else 1  # threads only help network-bound judges

    def pid(self) -> int:
        """The process id (tells a restarted actor from the original)."""
        return os.getpid()

    def score_item(
        self,
        sample: dict,
        responses: list[dict],
        step_outputs: list[str],
        step_times: list[float] | None = None,
    ) -> RewardResult:
        """One trajectory; `step_times` (every step's time) only mmduet2 reads, and needs."""
        r = self.config
        guard = Guard(r.timeout_s)
        acc = GuardedAcc(self.acc, guard, r.fallback_score)
        judges = [GuardedRubric(j, guard) for j in self.rubric_judges]
        fmt = format_reward(step_outputs)
        if r.kind == "mmduet2":
            if step_times is None:
                raise ValueError("reward.kind=mmduet2 needs every step's time (step_times)")
            mm = mmduet2_reward(sample, responses, step_times, judge=acc, config=r)
            return RewardResult(
                total=mm.total,
                fmt=fmt,
                turn=mm.pauc,
                traj=mm.total - r.mmduet2_w_pauc * mm.pauc,
                fallback=acc.fallbacks,
            )
        turn = turn_reward(sample, responses, r.tau, acc=acc, match=r.turn_match)
        traj, no_verdict = traj_score(rubric_marks(sample, responses, judges), r.fallback_score)
        total = total_reward(fmt, turn, traj, w_fmt=r.w_fmt, w_turn=r.w_turn, w_traj=r.w_traj)
        return RewardResult(
            total=total, fmt=fmt, turn=turn, traj=traj, fallback=acc.fallbacks + no_verdict
        )

    def score_one(self, item: Item) -> RewardResult:
        """score_item, plus (with `credit`) each response's StreamPro-F1 credit
        (rewards/credit.py), whose judge calls get their own deadline and fallbacks."""
        result = self.score_item(*item)
        if self.credit:
            acc = GuardedAcc(self.acc, Guard(self.config.timeout_s), self.config.fallback_score)
            add_credit(result, item[0], item[1], acc)
            result.fallback += acc.fallbacks
        return result

    def score_batch(self, items: Sequence[Item]) -> list[RewardResult]:
        if self.threads == 1 or len(items) <= 1:
            return [self.score_one(it) for it in items]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(items))) as ex:
            return list(ex.map(self.score_one, items))  # map keeps input order


def _rubric_judges(r: RewardConfig) -> list[RubricJudge]:
    def llm() -> RubricJudge:
        chat = OpenAIChat(
            r.llm_url, r.llm_model, api_key_env=r.llm_api_key_env, timeout_s=r.timeout_s
        )
        return LLMRubricJudge(chat)

    if r.traj_judge == "llm":
        return [llm()]
    return [RuleJudge()] + ([llm()] if r.llm_url else [])  # 'rule' (RewardConfig checks)


class InProcessRewardPool:
    """RewardPoolAPI in the calling process (tests, `num_actors=0`, small runs)."""

    def __init__(
        self,
        config: RewardConfig,
        *,
        acc_judge: AccJudge | None = None,
        traj_judge: RubricJudge | None = None,
        credit: bool = False,
    ) -> None:
        self.scorer = RewardScorer(
            config, acc_judge=acc_judge, traj_judge=traj_judge, credit=credit
        )

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
        config: RewardConfig,
        *,
        role_resource: bool = False,
        chunk_size: int = 0,
        acc_judge: AccJudge | None = None,
        traj_judge: RubricJudge | None = None,
        credit: bool = False,
    ) -> None:
        """M = config.num_actors actors of config.num_cpus each; `role_resource` asks for the
        'reward' custom resource; chunk_size 0 = one chunk per actor; judge objects and
        `credit` as in `RewardScorer` (each actor gets a copy)."""
        r = config
        if r.num_actors < 1:
            raise UserError(
                f"reward.num_actors: a Ray pool needs at least 1 actor, got {r.num_actors}"
            )
        import ray  # rewards/ imports with torch alone: Ray only where a Ray pool is built

        opts = actor_options("reward", num_cpus=r.num_cpus, memory_gb=r.memory_gb)
        if role_resource:
            opts["resources"] = {"reward": ROLE_UNIT}
        # a dead actor is restarted and its in-flight batch re-run there, as often
        actor_cls = ray.remote(RewardScorer).options(
            **opts, max_restarts=r.max_restarts, max_task_retries=r.max_restarts
        )
        kw = {"acc_judge": acc_judge, "traj_judge": traj_judge, "credit": credit}
        self.actors = [actor_cls.remote(r, **kw) for _ in range(r.num_actors)]
        self.chunk_size = chunk_size
        ray.get([a.pid.remote() for a in self.actors])  # fail fast on a bad judge setting

    def score(self, *, samples: list[dict], trajectories: list[Trajectory]) -> list[RewardResult]:
        import ray  # as in __init__

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
        import ray  # as in __init__

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


def make_reward_pool(cfg: Config) -> RewardPoolAPI:
    """The pool the config asks for: in-process when reward.num_actors is 0, else on Ray;
    with grpo.credit=decision it also scores each response's credit."""
    credit = cfg.grpo.credit == "decision"
    if cfg.reward.num_actors == 0:
        return InProcessRewardPool(cfg.reward, credit=credit)
    return RayRewardPool(cfg.reward, role_resource=cfg.cluster.role_resources, credit=credit)
