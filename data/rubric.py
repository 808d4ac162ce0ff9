"""Rubric checkpoints that the rule judge can check (the templates of the rewards contract).

Each checkpoint is exactly one of TEMPLATES, numbers printed with `{:g}`. `parse_checkpoint`
maps a string back to (kind, args); a string that matches none is for an LLM judge only.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

from streampro.tokens import fmt_seconds as _g

_NUM = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
_WORD = r"'([^']+)'"
TEMPLATES: dict[str, str] = {
    "at_least": r"must respond at least {n} times",
    "at_most": r"must respond at most {n} times",
    "not_before": r"shall not respond before {t}s",
    "between": r"must respond between {a}s and {b}s",
    "not_between": r"shall not respond between {a}s and {b}s",
    "mention": r"must mention {word}",
    "not_mention": r"shall not mention {word}",
    "mention_between": r"must mention {word} between {a}s and {b}s",
    "min_gap": r"shall not respond twice within {d}s",
    "increasing": r"must report increasing numbers",
}
PATTERNS: dict[str, re.Pattern[str]] = {
    kind: re.compile(
        "^" + re.sub(r"\{(\w+)\}", lambda m: _WORD if m.group(1) == "word" else _NUM, t) + "$"
    )
    for kind, t in TEMPLATES.items()
}


def parse_checkpoint(text: str) -> tuple[str, tuple] | None:
    """'must respond at least 2 times' -> ('at_least', (2.0,)); None if no template matches."""
    for kind, pat in PATTERNS.items():
        m = pat.match(text.strip())
        if m:
            return kind, tuple(
                g if "mention" in kind and i == 0 else float(g) for i, g in enumerate(m.groups())
            )
    return None


def at_least(n: int) -> str:
    return f"must respond at least {n} times"


def at_most(n: int) -> str:
    return f"must respond at most {n} times"


def not_before(t: float) -> str:
    return f"shall not respond before {_g(t)}s"


def between(a: float, b: float) -> str:
    return f"must respond between {_g(a)}s and {_g(b)}s"


def not_between(a: float, b: float) -> str:
    return f"shall not respond between {_g(a)}s and {_g(b)}s"


def mention(word: str) -> str:
    return f"must mention '{word}'"


def not_mention(word: str) -> str:
    return f"shall not mention '{word}'"


def mention_between(word: str, a: float, b: float) -> str:
    return f"must mention '{word}' between {_g(a)}s and {_g(b)}s"


def min_gap(d: float) -> str:
    return f"shall not respond twice within {_g(d)}s"


INCREASING = "must report increasing numbers"


def build_rubric(
    *,
    windows: Sequence[tuple[float, float]],
    keywords: Sequence[str],
    forbidden: Sequence[str],
    duration: float,
    gap: float = 2.0,
    increasing: bool = False,
    max_items: int = 10,
    min_items: int = 6,
) -> list[str]:
    """6-10 checkpoints that a perfect response trajectory satisfies.

    windows: each answer's acceptance window [lo, hi] (absolute seconds); keywords: one word of
    each answer's text; forbidden: words no correct answer contains (hallucination checks);
    gap: correct responses are at least this far apart.
    """
    order = sorted(range(len(windows)), key=lambda i: windows[i])
    wins = [windows[i] for i in order]
    kws = [keywords[i] for i in order]
    items = [at_least(len(wins)), at_most(len(wins))]
    if wins and wins[0][0] >= 1:
        items.append(not_before(math.floor(wins[0][0])))
    items += [mention_between(k, lo, hi) for k, (lo, hi) in list(zip(kws, wins))[:3]]
    items += [not_mention(w) for w in forbidden[:2]]
    if increasing:
        items.append(INCREASING)
    quiet = _quiet_stretch(wins, duration)
    if quiet:
        items.append(not_between(*quiet))
    if len(wins) > 1:
        items.append(min_gap(gap))
    for lo, hi in wins:  # top up with plain timing checks
        if len(items) >= min_items:
            break
        items.append(between(lo, hi))
    if len(items) < min_items and kws:
        items.append(mention(kws[0]))
    return list(dict.fromkeys(items))[:max_items]


def _quiet_stretch(wins: list[tuple[float, float]], duration: float) -> tuple[float, float] | None:
    """The longest whole-second stretch (>= 2 s) between windows, or after the last one."""
    bounds = [(hi, lo2) for (_, hi), (lo2, _) in itertools.pairwise(wins)]
    if wins:
        bounds.append((wins[-1][1], duration))
    best = None
    for hi, lo in bounds:
        a, b = math.floor(hi) + 1, math.ceil(lo) - 1 if lo < duration else math.floor(duration)
        if b - a >= 2 and (best is None or b - a > best[1] - best[0]):
            best = (float(a), float(b))
    return best
