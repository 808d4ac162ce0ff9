"""Each proactive benchmark's own scoring, applied to a policy's streaming responses.

predictions map a stream id (data/benchmarks.py) to its responses [{"time", "text"}], the
`streampro eval --predictions` format. docs/benchmarks.md cites the released scorer each
rule follows, and says where a streaming policy needs an adapter rule of ours:

- OVO-Bench forward (utils/OVOBenchScore.py): a probe at realtime t is answered by the
  policy's last response since the previous probe (in (t_prev, t]; None when silent). REC:
  the digits of the response, joined, equal the count. SSR, CRR: "Y" for type 1 or "N" for
  type 0 exactly, else "Yes" (type 1) or "No" (type 0) inside the response. Accuracy per task
  over its probes; `forward_avg` is the mean of the task accuracies.
- StreamingBench proactive (src/data/count.py): polled at time_stamp + 1, + 2, ... up to
  ground truth + 4; the first poll whose second holds a response ends polling. The question
  is correct when that last poll is within 2 s of the ground truth. Accuracy per task_type.
- ProactiveVideoQA: PAUC (rewards/pauc.py) at omega 0, 0.5 and 1, averaged over answer turns;
  each distinct in-span reply is judged by the S_acc judge on all distinct replies of the
  span so far, joined by spaces, against the turn's content.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from streampro.data.benchmarks import (
    POLL_AFTER_S,
    BenchStream,
    OvoTruth,
    PollTruth,
    ReplyTruth,
    ReplyTurn,
)
from streampro.errors import UserError
from streampro.rewards.guard import Guard, GuardedAcc
from streampro.rewards.judges import AccJudge, ExactJudge
from streampro.rewards.pauc import OMEGAS, pauc, replies_to_judge

Predictions = dict[str, list[dict]]
SB_TOLERANCE_S = 2.0
"""StreamingBench: a proactive output within 2 s of the ground truth is correct."""


def _responses(predictions: Predictions, sid: str) -> list[tuple[float, str]]:
    """(time, text) of a stream's responses in time order (ties keep their input order)."""
    return sorted(
        ((float(r["time"]), str(r["text"])) for r in predictions.get(sid, [])), key=lambda r: r[0]
    )


# ----------------------------------------------------------------------------- OVO-Bench


def ovo_probe_responses(
    responses: Sequence[tuple[float, str]], times: Sequence[float]
) -> list[str | None]:
    """Per probe time, the last response in (previous distinct probe time, t]; None if none."""
    out: list[str | None] = []
    ordered = sorted(set(times))
    for t in times:
        k = ordered.index(t)
        lo = ordered[k - 1] if k else -math.inf
        said = [text for rt, text in responses if lo < rt <= t]
        out.append(said[-1] if said else None)
    return out


def ovo_probe_score(task: str, response: str | None, expected: int) -> int:
    """OVO-Bench's forward score of one probe (1 right, 0 wrong)."""
    if response is None:
        return 0
    if task == "REC":
        return int("".join(re.findall(r"\d+", response)) == str(expected))
    if (response == "N" and expected == 0) or (response == "Y" and expected == 1):
        return 1
    return int(("Yes" if expected == 1 else "No") in response)


def score_ovo(streams: Sequence[BenchStream], predictions: Predictions) -> dict:
    """{"tasks": {T: {accuracy, correct, n_probes}}, "forward_avg", "probes": {id: [0/1]}}."""
    hits: dict[str, list[int]] = {}
    per_stream: dict[str, list[int]] = {}
    for s in streams:
        truth = s.truth
        assert isinstance(truth, OvoTruth)
        said = ovo_probe_responses(
            _responses(predictions, s.sample.id), [t for t, _ in truth.probes]
        )
        marks = [ovo_probe_score(truth.task, r, e) for r, (_, e) in zip(said, truth.probes)]
        per_stream[s.sample.id] = marks
        hits.setdefault(truth.task, []).extend(marks)
    tasks = {
        task: {"accuracy": sum(m) / len(m), "correct": sum(m), "n_probes": len(m)}
        for task, m in sorted(hits.items())
    }
    accs = [t["accuracy"] for t in tasks.values()]
    return {
        "tasks": tasks,
        "forward_avg": sum(accs) / len(accs) if accs else 0.0,
        "probes": per_stream,
    }


# ----------------------------------------------------------------------------- StreamingBench


def sb_last_poll(responses: Sequence[tuple[float, str]], truth: PollTruth) -> float:
    """The time of StreamingBench's last poll: the first poll p (start + 1, + 2, ...) with a
    response in (p - 1, p], else the final poll at or before due + 4 s."""
    last = truth.start + math.floor(truth.due + POLL_AFTER_S - truth.start)
    p = truth.start + 1.0
    while p <= last:
        if any(p - 1.0 < t <= p for t, _ in responses):
            return p
        p += 1.0
    return last


def score_streamingbench(streams: Sequence[BenchStream], predictions: Predictions) -> dict:
    """{"tasks": {task_type: {accuracy, correct, total}}, "accuracy", "answer_times"}."""
    rows: dict[str, list[int]] = {}
    times: dict[str, float] = {}
    for s in streams:
        truth = s.truth
        assert isinstance(truth, PollTruth)
        last = sb_last_poll(_responses(predictions, s.sample.id), truth)
        times[s.sample.id] = last
        ok = int(abs(last - truth.due) <= SB_TOLERANCE_S)
        rows.setdefault(truth.task_type, []).append(ok)
    tasks = {
        k: {"accuracy": sum(v) / len(v), "correct": sum(v), "total": len(v)}
        for k, v in sorted(rows.items())
    }
    n = sum(t["total"] for t in tasks.values())
    return {
        "tasks": tasks,
        "accuracy": sum(t["correct"] for t in tasks.values()) / n if n else 0.0,
        "answer_times": times,
    }


# ----------------------------------------------------------------------------- ProactiveVideoQA


def judged_replies(
    responses: Sequence[tuple[float, str]], turn: ReplyTurn, question: str, judge: AccJudge
) -> list[tuple[float, float]]:
    """(time, score) of each distinct in-span reply, judged on all of them so far."""
    said: list[str] = []
    points = []
    for t, text in replies_to_judge(responses, turn.span):
        said.append(text)
        points.append(
            (t, judge.score(response=" ".join(said), reference=turn.text, question=question))
        )
    return points


def score_pvqa(streams: Sequence[BenchStream], predictions: Predictions, judge: AccJudge) -> dict:
    """{"pauc": {omega: value}, "num_videos", "num_turns", "turns": {id: [points per turn]}}
    (PAUC over all answer turns, each weighing the same, as the released stat_metric does)."""
    all_points: list[list[tuple[float, float]]] = []
    all_turns: list[ReplyTurn] = []
    detail: dict[str, list[list[tuple[float, float]]]] = {}
    for s in streams:
        truth = s.truth
        assert isinstance(truth, ReplyTruth)
        said = _responses(predictions, s.sample.id)
        pts = [judged_replies(said, turn, truth.question, judge) for turn in truth.turns]
        detail[s.sample.id] = pts
        all_points += pts
        all_turns += truth.turns
    return {
        "pauc": {str(w): pauc(all_points, all_turns, omega=w) for w in OMEGAS},
        "num_videos": len(streams),
        "num_turns": len(all_turns),
        "turns": detail,
    }


def score_benchmark(
    name: str,
    streams: Sequence[BenchStream],
    predictions: Predictions,
    *,
    judge: AccJudge | None = None,
    fallback_score: float = 0.0,
    timeout_s: float = 30.0,
) -> dict:
    """The benchmark's metrics of `predictions` (ids not among the streams are an error)."""
    unknown = sorted(set(predictions) - {s.sample.id for s in streams})
    if unknown:
        raise UserError(
            f"predictions: {len(unknown)} id(s) not in the benchmark, e.g. {unknown[0]!r}"
        )
    if name == "ovo-forward":
        return score_ovo(streams, predictions)
    if name == "streamingbench-proactive":
        return score_streamingbench(streams, predictions)
    if name == "proactivevideoqa":
        # a judge call that fails or outlasts timeout_s scores fallback_score, counted
        guarded = GuardedAcc(judge or ExactJudge(), Guard(timeout_s), fallback_score)
        return {**score_pvqa(streams, predictions, guarded), "fallbacks": guarded.fallbacks}
    raise UserError(f"--benchmark {name!r}: no scorer")


def headline(name: str, metrics: dict) -> str:
    """One line of the benchmark's main numbers, x100 as the benchmarks print them."""
    if name == "ovo-forward":
        tasks = "  ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in metrics["tasks"].items())
        return f"OVO-Bench forward x100: {tasks}  avg {100 * metrics['forward_avg']:.1f}"
    if name == "streamingbench-proactive":
        return f"StreamingBench proactive output accuracy x100: {100 * metrics['accuracy']:.1f}"
    pa = "  ".join(f"omega={w} {100 * v:.1f}" for w, v in metrics["pauc"].items())
    return f"ProactiveVideoQA PAUC x100: {pa}  ({metrics['num_turns']} turns)"
