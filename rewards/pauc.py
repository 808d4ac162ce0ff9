"""PAUC, ProactiveVideoQA's metric for proactive replies, on already-judged replies.

ProactiveVideoQA (and MMDuet2's GRPO reward, rl/verl/recipe/proactive/reward_function.py)
score each ground-truth answer turn by the area under a step curve over its `reply_timespan`
[s, e]: the curve starts at `start_score` at s and jumps, at each judged reply's time, to that
reply's judge score; the area is divided by the full area (e - s) * max score. Replies are
pulled towards the span's start by `omega` (the reply at time t is placed at
s + (t - s) * (1 - omega)): omega = 0 rewards timeliness fully, omega = 1 ignores it.
An answer turn without any judged reply scores start_score. PAUC is the mean over turns.

Here scores are normalised to [0, 1] (the released code's judge levels 0..2 divided by 2, so
its start_score 0.5 is 0.25 here); the judge stays outside this module. The public API:

    pauc(replies, answers, *, omega=0.5, start_score=0.25) -> float
        replies[i]: [(time, score in [0, 1]), ...] the judged replies inside answers[i].span
        answers[i]: anything with `.span` (start, end) and `.related_end` (float or None)
    span_auc(points, span, *, omega=0.5, start_score=0.25) -> float     one answer turn
    drop_late_regressions(points, related_end) -> list[(time, score)]  ProactiveVideoQA's filter
    replies_to_judge(responses, span) -> [(time, text), ...]           what the judge is asked

docs/benchmarks.md cites the released files each rule comes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

START_SCORE = 0.25
"""The released start_score 0.5 over the judge's top level 2 (levels 0, 1, 2)."""
OMEGAS = (0.0, 0.5, 1.0)
"""ProactiveVideoQA reports PAUC at these omegas; 0.5 is the headline value."""


class SpanLike(Protocol):
    """An answer turn: its reply window and where its evidence ends (None: no filter)."""

    @property
    def span(self) -> tuple[float, float]: ...

    @property
    def related_end(self) -> float | None: ...


@dataclass(frozen=True)
class PaucAnswer:
    """A ProactiveVideoQA answer turn: `reply_timespan`, `related_timespan`'s end, `content`."""

    span: tuple[float, float]
    related_end: float | None = None
    text: str = ""


def _check_points(points: Sequence[tuple[float, float]]) -> None:
    for t, score in points:
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"PAUC: reply score {score!r} at {t!r} is outside [0, 1]")


def span_auc(
    points: Sequence[tuple[float, float]],
    span: tuple[float, float],
    *,
    omega: float = 0.5,
    start_score: float = START_SCORE,
) -> float:
    """Area ratio of one answer turn: points are (absolute time, score in [0, 1]) inside span.

    Two points at one time keep the later one (the released code keys scores by time). A
    zero-length span scores the last point (the limit of the area ratio as e - s -> 0).
    """
    _check_points(points)
    if not points:
        return start_score
    s, e = span
    by_time = dict(points)  # one score per time, the last given wins
    # sort by time, then pull towards s: with omega = 1 all x tie and the latest reply wins
    steps = [((t - s) * (1.0 - omega), y) for t, y in sorted(by_time.items())]
    width = e - s
    if width <= 0:
        return steps[-1][1]
    area, prev_x, prev_y = 0.0, 0.0, start_score
    for x, y in steps:
        area += (x - prev_x) * prev_y
        prev_x, prev_y = x, y
    area += (width - prev_x) * prev_y  # the last score holds to the span's end
    return area / width


def drop_late_regressions(
    points: Sequence[tuple[float, float]], related_end: float | None
) -> list[tuple[float, float]]:
    """ProactiveVideoQA's filter: a reply after the evidence ends (`related_timespan`'s end)
    that scores below the last reply within it likely answers the next turn, so it is dropped.
    Applies only to turns with two or more judged replies."""
    if related_end is None or len(points) <= 1:
        return list(points)
    kept, last_in_related = [], 0.0
    for t, score in sorted(dict(points).items()):
        if t <= related_end:
            last_in_related = score
        elif score < last_in_related:
            continue
        kept.append((t, score))
    return kept


def pauc(
    replies: Sequence[Sequence[tuple[float, float]]],
    answers: Sequence[SpanLike],
    *,
    omega: float = 0.5,
    start_score: float = START_SCORE,
) -> float:
    """Mean `span_auc` over answer turns (0.0 for no turn); replies[i] are the judged
    (time, score) of the replies inside answers[i].span, times outside it are an error."""
    if len(replies) != len(answers):
        raise ValueError(f"PAUC: {len(replies)} reply lists for {len(answers)} answers")
    if not answers:
        return 0.0
    total = 0.0
    for points, ans in zip(replies, answers):
        s, e = ans.span
        outside = [t for t, _ in points if not s <= t <= e]
        if outside:
            raise ValueError(f"PAUC: reply time {outside[0]!r} is outside span [{s!r}, {e!r}]")
        kept = drop_late_regressions(points, ans.related_end)
        total += span_auc(kept, ans.span, omega=omega, start_score=start_score)
    return total / len(answers)


def replies_to_judge(
    responses: Sequence[tuple[float, str]], span: tuple[float, float]
) -> list[tuple[float, str]]:
    """The replies the judge scores for one turn: those with s <= time <= e, in time order,
    each text only the first time it is said (a verbatim repeat is not judged again)."""
    s, e = span
    seen: set[str] = set()
    out = []
    for t, text in sorted(responses, key=lambda r: r[0]):
        if s <= t <= e and text not in seen:
            seen.add(text)
            out.append((t, text))
    return out
