"""Rubric checkpoints (R_traj): the rule judge for the machine-checkable templates, and the
LLM judge for free text.

A rubric judge answers one checkpoint about one trajectory's responses
(`[{"time": s, "text": str}, ...]`): True (passed), False (failed) or None (it cannot tell,
e.g. the rule judge on a checkpoint that matches no template).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from typing import Protocol

from streampro.rewards.judges import JudgeError, OpenAIChat, unsigned_numbers


class RubricJudge(Protocol):
    inline: bool
    """True when a call is cheap local work that cannot hang."""

    def check(self, checkpoint: str, *, question: str, responses: list[dict]) -> bool | None:
        """Whether the responses satisfy the checkpoint; None when this judge cannot tell."""
        ...


# Numbers are printed with `{:g}` by the data generator: 3, 2.5, -1, 1e+06.
_NUM = r"(-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
_WORD = r"'(.+)'"

Check = Callable[[list[dict], tuple[str, ...]], bool]


def _times(rs: list[dict]) -> list[float]:
    return sorted(float(r["time"]) for r in rs)


def _in(r: dict, a: str, b: str) -> bool:
    return float(a) <= float(r["time"]) <= float(b)


def _mentions(text: str, word: str) -> bool:
    """Case-insensitive whole-word (or whole-phrase) occurrence."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _no_two_within(rs: list[dict], d: float) -> bool:
    ts = _times(rs)
    return all(b - a >= d for a, b in pairwise(ts))


def _increasing_numbers(rs: list[dict]) -> bool:
    # Numbers of all responses in time order; at least one must be reported.
    nums = [
        n for r in sorted(rs, key=lambda r: float(r["time"])) for n in unsigned_numbers(r["text"])
    ]
    return bool(nums) and all(b > a for a, b in pairwise(nums))


# (template, check). Order matters only where one template is a prefix of another.
RULES: list[tuple[re.Pattern[str], Check]] = [
    (re.compile(rf"must respond at least {_NUM} times"), lambda rs, g: len(rs) >= float(g[0])),
    (re.compile(rf"must respond at most {_NUM} times"), lambda rs, g: len(rs) <= float(g[0])),
    (
        re.compile(rf"shall not respond before {_NUM}s"),
        lambda rs, g: all(float(r["time"]) >= float(g[0]) for r in rs),
    ),
    (
        re.compile(rf"must respond between {_NUM}s and {_NUM}s"),
        lambda rs, g: any(_in(r, g[0], g[1]) for r in rs),
    ),
    (
        re.compile(rf"shall not respond between {_NUM}s and {_NUM}s"),
        lambda rs, g: not any(_in(r, g[0], g[1]) for r in rs),
    ),
    (
        re.compile(rf"must mention {_WORD} between {_NUM}s and {_NUM}s"),
        lambda rs, g: any(_in(r, g[1], g[2]) and _mentions(r["text"], g[0]) for r in rs),
    ),
    (
        re.compile(rf"must mention {_WORD}"),
        lambda rs, g: any(_mentions(r["text"], g[0]) for r in rs),
    ),
    (
        re.compile(rf"shall not mention {_WORD}"),
        lambda rs, g: not any(_mentions(r["text"], g[0]) for r in rs),
    ),
    (
        re.compile(rf"shall not respond twice within {_NUM}s"),
        lambda rs, g: _no_two_within(rs, float(g[0])),
    ),
    (re.compile(r"must report increasing numbers"), lambda rs, g: _increasing_numbers(rs)),
]


class RuleJudge:
    """Checks the rubric templates of the rewards contract exactly; None for anything else."""

    inline = True

    def check(self, checkpoint: str, *, question: str = "", responses: list[dict]) -> bool | None:
        text = checkpoint.strip()
        for pattern, rule in RULES:
            m = pattern.fullmatch(text)
            if m:
                return bool(rule(responses, m.groups()))
        return None


RUBRIC_PROMPT = """You check a streaming video assistant's answers against one requirement.
Question: {question}
Answers (time in seconds: text):
{answers}
Requirement: {checkpoint}
Does the assistant satisfy the requirement? Reply with yes or no only."""


class LLMRubricJudge:
    """Asks an OpenAI-compatible endpoint for a yes/no verdict on one checkpoint."""

    inline = False

    def __init__(self, client: OpenAIChat) -> None:
        self.client = client

    def check(self, checkpoint: str, *, question: str = "", responses: list[dict]) -> bool | None:
        answers = "\n".join(f"{float(r['time']):g}: {r['text']}" for r in responses) or "(none)"
        reply = (
            self.client.complete(
                RUBRIC_PROMPT.format(question=question, answers=answers, checkpoint=checkpoint)
            )
            .strip()
            .lower()
        )
        word = re.match(r"[a-z01]+", reply)
        verdict = word.group() if word else ""
        if verdict in ("yes", "1", "true"):
            return True
        if verdict in ("no", "0", "false"):
            return False
        raise JudgeError(f"llm rubric judge reply is not yes/no: {reply[:80]!r}")
