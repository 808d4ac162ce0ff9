"""The three GRPO rewards (docs/method.md) as pure functions.

A sample is a manifest row as a dict; a response is `{"time": float, "text": str}`. Judges
are passed in; with none given, S_acc is the `exact` judge and rubrics use the rule judge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from streampro.config import TURN_MATCHES
from streampro.rewards.judges import AccJudge, ExactJudge, interval_from_text, interval_iou
from streampro.rewards.rubric import RubricJudge, RuleJudge
from streampro.tasks import PROACTIVE_TASKS, TASKS, ResolvedAnswer, resolve_answer
from streampro.tokens import IM_END, RESPONSE, SILENCE, SPECIAL_TOKENS

_EXACT = ExactJudge()
_RULE = RuleJudge()
_FRAME_TOKEN = re.compile(r"<\|v\d+\|>")


# ---- timing -----------------------------------------------------------------------------


def s_time(t: float, ans: ResolvedAnswer, tau_early: float, tau_late: float) -> float:
    """max(0, 1 - dt / tau): dt = 0 inside [lo, hi], lo - t before it (tau_early), t - hi after."""
    if t < ans.lo:
        dt, tau = ans.lo - t, tau_early
    elif t > ans.hi:
        dt, tau = t - ans.hi, tau_late
    else:
        return 1.0
    return max(0.0, 1.0 - dt / tau) if tau > 0 else 0.0


def reaches(t: float, ans: ResolvedAnswer, tau_early: float, tau_late: float) -> bool:
    """A response at t reaches an answer when lo - tau_early <= t <= hi + tau_late."""
    return ans.lo - tau_early <= t <= ans.hi + tau_late


def sorted_answers(sample: dict) -> list[ResolvedAnswer]:
    """The sample's answers with task defaults applied, in window order (stable by window start)."""
    answers = [resolve_answer(a, sample["task"]) for a in sample.get("answers") or []]
    return sorted(answers, key=lambda a: a.lo)


def sorted_responses(responses: Sequence[dict]) -> list[tuple[float, str]]:
    """(time, text) pairs in time order (stable: equal times keep their input order)."""
    return sorted(
        ((float(r["time"]), str(r.get("text", ""))) for r in responses), key=lambda r: r[0]
    )


# ---- content ----------------------------------------------------------------------------


def content_score(
    text: str, ans: ResolvedAnswer, task: str, judge: AccJudge, question: str = ""
) -> float:
    """S_acc in [0, 1]. Interval tasks (TG) score the IoU of the first two numbers of the
    response against `span` (or against the reference text's first two numbers); every other
    task asks the judge."""
    spec = TASKS.get(task)
    if spec is not None and spec.iou:
        span = ans.span or interval_from_text(ans.text)
        if span is not None:
            return interval_iou(interval_from_text(text), span)
    return float(judge.score(response=text, reference=ans.text, question=question))


# ---- R_fmt ------------------------------------------------------------------------------


def step_format_ok(output: str) -> bool:
    """`</Silence>` alone, or `</Response>` + non-empty text (surrounding whitespace and the
    turn's closing `<|im_end|>` ignored; the text may hold no special or frame token)."""
    s = output.strip()
    if s.endswith(IM_END):
        s = s[: -len(IM_END)].rstrip()
    if s == SILENCE:
        return True
    if not s.startswith(RESPONSE):
        return False
    text = s[len(RESPONSE) :].strip()
    return (
        bool(text)
        and not any(tok in text for tok in SPECIAL_TOKENS)
        and not _FRAME_TOKEN.search(text)
    )


def format_reward(step_outputs: list[str]) -> float:
    """R_fmt: the fraction of well-formed steps (0.0 for an episode without steps)."""
    if not step_outputs:
        return 0.0
    return sum(step_format_ok(o) for o in step_outputs) / len(step_outputs)


# ---- R_turn -----------------------------------------------------------------------------


def turn_reward(
    sample: dict,
    responses: list[dict],
    tau: float = 8.0,
    *,
    acc: AccJudge | None = None,
    match: str = "sum",
) -> float:
    """R_turn: GT-first matching with one tau on both sides. A match scores S' = S_time + S_acc
    in [0, 2] (`match="sum"`, the paper), or S_time * S_acc in [0, 1] (`"product"`: as
    StreamPro-F1 scores a match, so a well-timed wrong answer earns nothing).

    Answers in window order each take, among the unmatched responses that reach them, the one
    with the largest S' (ties: the earliest). Proactive tasks (GP, RF, custom tasks of dimension
    PA) exclude responses after the window's end. R_turn = 2 * sum S' / (N_pred + N_gt); 1 when both are 0.
    """
    if match not in TURN_MATCHES:
        raise ValueError(f"turn match must be one of {TURN_MATCHES}, got {match!r}")
    judge = acc or _EXACT
    task, question = sample["task"], str(sample.get("question", ""))
    answers = sorted_answers(sample)
    resp = sorted_responses(responses)
    if not answers and not resp:
        return 1.0
    no_late = task in PROACTIVE_TASKS or sample.get("dimension") == "PA"  # custom PA tasks too
    taken = [False] * len(resp)
    total = 0.0
    for ans in answers:
        best_i, best_s = -1, -1.0
        for i, (t, text) in enumerate(resp):
            if taken[i] or not reaches(t, ans, tau, tau) or (no_late and t > ans.hi):
                continue
            st, sa = s_time(t, ans, tau, tau), content_score(text, ans, task, judge, question)
            s = st * sa if match == "product" else st + sa
            if s > best_s:  # strict: the earliest response wins a tie
                best_i, best_s = i, s
        if best_i >= 0:
            taken[best_i] = True
            total += best_s
    return 2.0 * total / (len(resp) + len(answers))


# ---- R_traj -----------------------------------------------------------------------------


def rubric_marks(
    sample: dict, responses: list[dict], judges: Sequence[RubricJudge]
) -> list[bool | None]:
    """One verdict per rubric checkpoint: the first judge that can tell decides; None when
    none can (the caller gives it the fallback score and counts it)."""
    question = str(sample.get("question", ""))
    marks: list[bool | None] = []
    for checkpoint in sample.get("rubric") or []:
        verdict = None
        for judge in judges:
            verdict = judge.check(checkpoint, question=question, responses=responses)
            if verdict is not None:
                break
        marks.append(verdict)
    return marks


def traj_score(marks: list[bool | None], fallback_score: float = 0.0) -> tuple[float, int]:
    """(R_traj, fallbacks): the mean of the marks, None scoring `fallback_score`; a sample
    without rubric scores 1 (nothing to violate)."""
    if not marks:
        return 1.0, 0
    values = [fallback_score if m is None else float(m) for m in marks]
    return sum(values) / len(values), sum(m is None for m in marks)


def traj_reward(
    sample: dict,
    responses: list[dict],
    judge: RubricJudge | None = None,
    *,
    fallback_score: float = 0.0,
) -> float:
    """R_traj: the mean of the rubric checkpoints the judge marks passed (default: rule judge)."""
    return traj_score(rubric_marks(sample, responses, [judge or _RULE]), fallback_score)[0]


def total_reward(
    fmt: float,
    turn: float,
    traj: float,
    *,
    w_fmt: float = 0.1,
    w_turn: float = 0.45,
    w_traj: float = 0.45,
) -> float:
    """R = w_fmt R_fmt + w_turn R_turn + w_traj R_traj (the paper: 0.1 / 0.45 / 0.45)."""
    return w_fmt * fmt + w_turn * turn + w_traj * traj
