"""The StreamPro-Bench task table (docs/method.md): dimension, default window and tau.

A window is [lo, hi] seconds added to an answer's point time (or to the start and the end
of its interval); tau is (early, late). Everything that needs a task default reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dimension: str  # PU, TR or PA
    window: tuple[float, float]
    tau: tuple[float, float]  # (early, late)
    interval: bool  # True when the answer is an event interval [start, end]
    iou: bool = False  # S_acc is the IoU of the answered span (TG)


TASKS: dict[str, TaskSpec] = {
    # Perception: during the event -> window [start, end + 3].
    "EU": TaskSpec("EU", "PU", (0.0, 3.0), (4.0, 4.0), interval=True),
    "OU": TaskSpec("OU", "PU", (-3.0, 3.0), (4.0, 4.0), interval=False),
    "AA": TaskSpec("AA", "PU", (0.0, 5.0), (6.0, 6.0), interval=False),
    # Temporal reasoning.
    "TP": TaskSpec("TP", "TR", (0.0, 3.0), (4.0, 4.0), interval=True),
    "TG": TaskSpec("TG", "TR", (-3.0, 3.0), (4.0, 4.0), interval=False, iou=True),
    # Proactive agency: GP answers in [-3, 0] around the previous step's completion;
    # RF's best time is 3 s before the hazard, window [-1, +3], tau 2 early / 4 late.
    "GP": TaskSpec("GP", "PA", (-3.0, 0.0), (4.0, 4.0), interval=False),
    "RF": TaskSpec("RF", "PA", (-1.0, 3.0), (2.0, 4.0), interval=False),
}

DIMENSIONS = ("PU", "TR", "PA")
PROACTIVE_TASKS = frozenset(t for t, s in TASKS.items() if s.dimension == "PA")

# Custom tasks (not in the table) give their dimension; their windows and taus default to:
CUSTOM_WINDOW = (0.0, 0.0)
CUSTOM_TAU = (4.0, 4.0)


@dataclass(frozen=True)
class ResolvedAnswer:
    """One ground-truth item with its task defaults applied (what scorers work on)."""

    best: float  # best response time: `time`, or `start` of an interval
    lo: float  # acceptance window [lo, hi] in absolute seconds
    hi: float
    tau_early: float
    tau_late: float
    text: str
    span: tuple[float, float] | None  # true interval for TG answers


def resolve_answer(answer: dict, task: str) -> ResolvedAnswer:
    """Apply the task's default window/tau to a manifest answer dict (already validated)."""
    spec = TASKS.get(task)
    window = answer.get("window") or (spec.window if spec else CUSTOM_WINDOW)
    tau = answer.get("tau")
    if tau is None:
        tau = spec.tau if spec else CUSTOM_TAU
    tau_e, tau_l = (float(tau), float(tau)) if isinstance(tau, (int, float)) else map(float, tau)
    if answer.get("time") is not None:
        best = start = end = float(answer["time"])
    else:
        start, end = float(answer["start"]), float(answer["end"])
        best = start
    span = answer.get("span")
    return ResolvedAnswer(
        best=best,
        lo=start + float(window[0]),
        hi=end + float(window[1]),
        tau_early=tau_e,
        tau_late=tau_l,
        text=str(answer.get("text", "")),
        span=(float(span[0]), float(span[1])) if span else None,
    )
