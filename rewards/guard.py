"""Per-item deadline and failure containment for judge calls.

A judge may raise, hang on a dead endpoint or sleep past its budget; scoring must still
return every item. Each item gets one `Guard`: its non-inline judge calls (network, user
code) share a deadline of `timeout_s` and run on a daemon thread that is abandoned if it
overruns; calls after the deadline are not made at all. Judges marked `inline` (local rules
that cannot hang) run on the calling thread. Any failure yields no value: the caller scores
the fallback and counts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from streampro.rewards.judges import AccJudge
from streampro.rewards.rubric import RubricJudge
from streampro.timeouts import run_with_timeout

log = logging.getLogger(__name__)
T = TypeVar("T")


class JudgeTimeout(TimeoutError):
    pass


class Guard:
    """The deadline of one item, and the first few judge errors met while scoring it."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.errors: list[str] = []

    def run(self, fn: Callable[[], T], *, inline: bool) -> T | None:
        """fn()'s value, or None when it raises, overruns or the item is out of time.
        Inline calls (local rules that cannot hang) run even after the deadline."""
        try:
            if inline:
                return fn()
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise JudgeTimeout("item deadline passed before the call")
            return run_with_timeout(fn, timeout_s=left, what="judge call", error=JudgeTimeout)
        except Exception as e:  # noqa: BLE001 - any judge failure becomes the fallback
            if len(self.errors) < 3:
                self.errors.append(f"{type(e).__name__}: {e}")
                log.warning("judge failed, fallback used: %s: %s", type(e).__name__, e)
            return None


class GuardedAcc:
    """An AccJudge whose failures score `fallback_score`, counted in `fallbacks`. Each
    (response, reference, question) is judged once: StreamPro-F1, PAUC and the credit of one
    item ask about the same pairs, and an llm judge call is the slow part."""

    def __init__(self, judge: AccJudge, guard: Guard, fallback_score: float) -> None:
        self.judge, self.guard, self.fallback_score = judge, guard, fallback_score
        self.inline = True
        self.fallbacks = 0
        self._seen: dict[tuple[str, str, str], float] = {}

    def score(self, *, response: str, reference: str, question: str = "") -> float:
        key = (response, reference, question)
        if key not in self._seen:
            self._seen[key] = self._judge(response, reference, question)
        return self._seen[key]

    def _judge(self, response: str, reference: str, question: str) -> float:
        value = self.guard.run(
            lambda: self.judge.score(response=response, reference=reference, question=question),
            inline=getattr(self.judge, "inline", False),
        )
        if value is None:
            self.fallbacks += 1
            return self.fallback_score
        return min(1.0, max(0.0, float(value)))


class GuardedRubric:
    """A RubricJudge whose failures return None (no verdict: `traj_score` scores the fallback
    and counts it)."""

    def __init__(self, judge: RubricJudge, guard: Guard) -> None:
        self.judge, self.guard = judge, guard
        self.inline = True

    def check(self, checkpoint: str, *, question: str = "", responses: list[dict]) -> bool | None:
        return self.guard.run(
            lambda: self.judge.check(checkpoint, question=question, responses=responses),
            inline=getattr(self.judge, "inline", False),
        )
