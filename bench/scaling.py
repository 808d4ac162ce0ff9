"""`streampro bench scaling --out DIR`: rollout throughput and GRPO step time against concurrent
streams, stream length and the number of rollout actors.

Each point is one synchronous GRPO step on synthetic streams (bench/rollout.py's workload: the
built-in policy with `</Silence>` raised to ~90%), with the run's own parts: a
`RayRolloutGroup` of `actors` engines, the reward pool and the learner group of the config.
The step's phases are timed apart (rollout, reward, learn, weight sync); rollout decisions/s
is the decisions of the step over its rollout phase. The learning rate is 0, so every point
samples from the same policy and the work per point depends on the axes alone.

Three sweeps, each over one `bench.scaling_*` list with the other two axes at their first
value: concurrent streams (`batch_samples` x `group_size` of the step), stream length in
seconds (steps at 1 fps) and rollout actors. Several actors on one machine split its cores:
their engines run unbound (`VLLM_CPU_OMP_THREADS_BIND=nobind`, one thread each) so that the OS
spreads them, in every point of the sweep alike. Writes scaling.json after every point
(`complete: false` until the sweep ends) and, at the end, one PNG per axis.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoTokenizer

from streampro.actors.api import RolloutGroupAPI, WorkerSpec
from streampro.bench.rollout import silence_biased_policy, synthetic_streams
from streampro.cluster.local import init_from_config
from streampro.config import Config, atomic_write_text
from streampro.data.pipeline import policy_folder
from streampro.data.window import Window
from streampro.errors import UserError
from streampro.hf_policy import pad_token_id
from streampro.learners.api import LearnerGroupAPI
from streampro.learners.group import make_learner_group
from streampro.learners.grpo_loop import GRPOStep
from streampro.learners.state import DataCursor
from streampro.rewards.api import RewardPoolAPI
from streampro.rewards.pool import make_reward_pool

if TYPE_CHECKING:
    from streampro.actors.rollout import RayRolloutGroup

AXES = ("streams", "length", "actors")
AXIS_LABEL = {
    "streams": "concurrent streams",
    "length": "stream length (s)",
    "actors": "rollout actors",
}
PHASES = ("rollout", "reward", "learn", "sync")
# each actor's engine unbound, one OMP thread: N actors on a small box spread over its cores
ACTOR_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}


def plan(cfg: Config) -> list[dict[str, int]]:
    """The sweep's points, deduplicated: each axis over its list, the others at their first
    value. Refuses empty lists and values below 1 in one line."""
    b = cfg.bench
    lists = {"streams": b.scaling_streams, "length": b.scaling_lengths, "actors": b.scaling_actors}
    for axis, values in lists.items():
        if not values or any(int(v) < 1 for v in values):
            raise UserError(f"bench.scaling_{axis}: need a non-empty list of values >= 1")
    base = {axis: int(values[0]) for axis, values in lists.items()}
    points: list[dict[str, int]] = []
    for axis, values in lists.items():
        for v in values:
            p = {**base, axis: int(v)}
            if p not in points:
                points.append(p)
    return points


def step_shape(streams: int, group_size: int) -> tuple[int, int]:
    """(batch_samples, group_size) of a GRPO step running `streams` episodes at once: the
    configured group size where it divides them, else one group of all of them."""
    g = group_size if streams % group_size == 0 else streams
    return streams // g, g


@dataclasses.dataclass
class Parts:
    """The run's parts a sweep point steps: the rollout group changes with the actor count."""

    model: str
    pad_id: int
    learner: LearnerGroupAPI
    pool: RewardPoolAPI
    rollout: RolloutGroupAPI | None = None
    version: int = 0


def _rollout_group(cfg: Config, model: str, actors: int) -> RayRolloutGroup:
    # lazy: actors.rollout imports vLLM, which only the benches that start engines need
    from streampro.actors.rollout import RayRolloutGroup

    r = cfg.rollout
    settings = dataclasses.replace(
        r,
        num_actors=actors,
        max_restarts=0,
        max_num_seqs=max(r.max_num_seqs, max(cfg.bench.scaling_streams)),
    )
    spec = dataclasses.replace(WorkerSpec.of(cfg, model), rollout=settings)
    return RayRolloutGroup(spec, env_vars=ACTOR_ENV)


def grpo_step(cfg: Config, parts: Parts, point: dict[str, int], work: Path) -> dict[str, Any]:
    """One synchronous GRPO step at `point`: phase seconds and rollout decisions/s."""
    if parts.rollout is None:
        raise ValueError("grpo_step needs a running rollout group (parts.rollout)")
    c = copy.deepcopy(cfg)
    c.grpo.batch_samples, c.grpo.group_size = step_shape(point["streams"], cfg.grpo.group_size)
    train = synthetic_streams(c.grpo.batch_samples, point["length"], seed=cfg.run.seed)
    step = GRPOStep(
        cfg=c,
        train=train,
        rollout=parts.rollout,
        pool=parts.pool,
        learner=parts.learner,
        cursor=DataCursor(len(train), cfg.run.seed),
        run_dir=work,
        pad_id=parts.pad_id,
    )
    parts.version += 1
    t0 = time.perf_counter()
    groups = step.collect(parts.version)
    t1 = time.perf_counter()
    learned = step.learn(groups)
    t2 = time.perf_counter()
    step.publish(parts.version)
    t3 = time.perf_counter()
    decisions = sum(len(t.steps) for t in groups.trajs)
    phases = {
        "rollout": groups.seconds["rollout"],
        "reward": groups.seconds["reward"],
        "learn": t2 - t1,
        "sync": t3 - t2,
    }
    return {
        **point,
        "batch_samples": c.grpo.batch_samples,
        "group_size": c.grpo.group_size,
        "decisions": decisions,
        "decisions_per_s": round(decisions / phases["rollout"], 2),
        "silence_rate": round(
            sum(s.decision == "silence" for t in groups.trajs for s in t.steps) / decisions, 3
        ),
        "step_s": round(t3 - t0, 3),
        "phase_s": {k: round(v, 3) for k, v in phases.items()},
        "lp_diff_max": learned.get("check/lp_diff_max"),
    }


def run(cfg: Config, out_dir: str) -> dict[str, Any]:
    """Every point of the sweep; writes scaling.json and the plots into `out_dir`."""
    points = plan(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = copy.deepcopy(cfg)
    # same policy at every point (the step's work, not its learning, is measured); fixed work
    # per step (no resampling of equal-reward groups); phases one after another
    c.grpo.lr, c.grpo.dynamic_sampling, c.grpo.async_mode = 0.0, False, False
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-", dir=out))
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        init_from_config(c.cluster)
        model = silence_biased_policy(policy_folder(c), work / "policy")
        pool = make_reward_pool(c)
        learner = make_learner_group(c, model, objective="grpo")
        parts = Parts(
            model=model,
            pad_id=pad_token_id(AutoTokenizer.from_pretrained(model)),
            learner=learner,
            pool=pool,
        )
        try:
            for actors in sorted({p["actors"] for p in points}):
                rollout = parts.rollout = _rollout_group(c, model, actors)
                try:
                    warm = {"streams": 1, "length": 3, "actors": actors}
                    grpo_step(c, parts, warm, work)  # engine and learner warm-up, not reported
                    for p in (p for p in points if p["actors"] == actors):
                        rows.append(grpo_step(c, parts, p, work))
                        print(f"scaling {p}: {rows[-1]['decisions_per_s']} dec/s, "
                              f"step {rows[-1]['step_s']} s", flush=True)  # fmt: skip
                        # the points so far, so that a long sweep cut short keeps them
                        _write(out, _result(c, rows, time.perf_counter() - t_start), plot=False)
                finally:
                    rollout.shutdown()
                    parts.rollout = None
        finally:
            learner.shutdown()
            pool.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write(out, _result(c, rows, time.perf_counter() - t_start), plot=True)


def _write(out: Path, result: dict[str, Any], *, plot: bool) -> dict[str, Any]:
    result["complete"] = plot  # False while the sweep is still running
    result["plots"] = plots(result, out) if plot else []
    atomic_write_text(out / "scaling.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _result(cfg: Config, rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Rows grouped by axis (each axis' points in increasing order), with the settings."""
    b = cfg.bench
    lists = {"streams": b.scaling_streams, "length": b.scaling_lengths, "actors": b.scaling_actors}
    base = {axis: int(values[0]) for axis, values in lists.items()}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for axis, values in lists.items():
        wanted = [{**base, axis: v} for v in sorted({int(v) for v in values})]
        sweeps[axis] = [
            next(r for r in rows if all(r[k] == w[k] for k in AXES))
            for w in wanted
            if any(all(r[k] == w[k] for k in AXES) for r in rows)
        ]
    return {
        "config": {
            "base": base,
            "group_size": cfg.grpo.group_size,
            "window": dataclasses.asdict(Window.from_config(cfg.data)),
            "policy": "built-in tiny, P(silence)~0.9, lr 0 (the same policy at every point)",
            "actor_env": ACTOR_ENV,
            "learner_in_process": cfg.learner.in_process,
            "reward_actors": cfg.reward.num_actors,
        },
        "sweeps": sweeps,
        "wall_s": round(wall, 1),
    }


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """One PNG per axis: rollout decisions/s (left) and the GRPO step's phases (right)."""
    import matplotlib  # lazy: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for axis, rows in result["sweeps"].items():
        if not rows:
            continue
        xs = [r[axis] for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        a.plot(xs, [r["decisions_per_s"] for r in rows], marker="o")
        a.set_xlabel(AXIS_LABEL[axis])
        a.set_ylabel("rollout decisions/s")
        a.set_ylim(bottom=0)
        bottom = [0.0] * len(rows)
        pos = list(range(len(rows)))
        for ph in PHASES:
            vals = [r["phase_s"][ph] for r in rows]
            b.bar(pos, vals, bottom=bottom, label=ph)
            bottom = [x + y for x, y in zip(bottom, vals)]
        b.set_xticks(pos, [str(x) for x in xs])
        b.set_xlabel(AXIS_LABEL[axis])
        b.set_ylabel("GRPO step (s)")
        b.legend(fontsize=7)
        fixed = ", ".join(f"{k}={v}" for k, v in result["config"]["base"].items() if k != axis)
        fig.suptitle(f"scaling with {AXIS_LABEL[axis]} ({fixed})", fontsize=10)
        fig.tight_layout()
        name = f"scaling_{axis}.png"
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(out / name)
        made.append(name)
    return made


def main(cfg: Config, args: argparse.Namespace) -> int:
    out = args.out or "runs/bench-scaling"
    result = run(cfg, out)
    print(f"wrote {out}/scaling.json and {', '.join(result['plots'])} ({result['wall_s']} s)")
    return 0
