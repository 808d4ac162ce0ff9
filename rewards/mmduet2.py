"""MMDuet2's GRPO reward (`reward.kind=mmduet2`), scored with our judges.

R = w_pauc PAUC - w_repetition REP - w_outspan OUT (MMDuet2's defaults 3 / 3 / 2), from
yellow-binary-tree/MMDuet2 `rl/verl/recipe/proactive/reward_function.py`
(`pauc_reward_function`); docs/rewards.md gives each rule and where ours differs:

- PAUC: per answer span [lo, hi] whose start the episode reached, the area under the step
  curve of the judged replies inside it (`rewards/pauc.py`), averaged over those spans.
- REP: over the replies in time order, a verbatim repeat of an earlier reply scores 1, a new
  text the judge's score against all earlier texts (the first reply 0); in-span replies after
  a span's first text are counted a second time, as the released code does.
- OUT: the share of the steps outside every answer span at which the policy replied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streampro.config import RewardConfig
from streampro.rewards.f1 import sample_pauc
from streampro.rewards.judges import AccJudge
from streampro.rewards.pauc import replies_to_judge
from streampro.rewards.scoring import sorted_answers, sorted_responses
from streampro.tasks import ResolvedAnswer


@dataclass(frozen=True)
class MMDuet2Reward:
    """The reward and its three terms for one trajectory."""

    total: float
    pauc: float
    repetition: float
    outspan: float


def reached_answers(answers: list[ResolvedAnswer], last_step: float | None) -> list[ResolvedAnswer]:
    """The answers whose span starts no later than the episode's last step (the released code
    skips a span its truncated input never reached); none without steps."""
    if last_step is None:
        return []
    return [a for a in answers if a.lo <= last_step]


def repetition_marks(
    replies: list[tuple[float, str]],
    answers: list[ResolvedAnswer],
    judge: AccJudge,
    question: str,
) -> list[float]:
    """REP's list: one mark per reply in time order (1 for a verbatim repeat of an earlier text;
    a new text the judge's score against the earlier texts joined, 0 for the first), then again
    the mark of each new text that is not the first text of a reached span holding it."""
    seen: list[str] = []
    new_text_mark: dict[int, float] = {}  # reply index -> its mark, for first occurrences only
    marks: list[float] = []
    for i, (_t, text) in enumerate(replies):
        if text in seen:
            marks.append(1.0)
            continue
        mark = (
            float(judge.score(response=text, reference=" ".join(seen), question=question))
            if seen
            else 0.0
        )
        seen.append(text)
        new_text_mark[i] = mark
        marks.append(mark)
    for ans in answers:
        in_span = replies_to_judge(replies, (ans.lo, ans.hi))
        for t, text in in_span[1:]:
            i = next(k for k, r in enumerate(replies) if r == (t, text))
            if i in new_text_mark:
                marks.append(new_text_mark[i])
    return marks


def outspan_share(
    step_times: Sequence[float], reply_times: Sequence[float], answers: list[ResolvedAnswer]
) -> float:
    """OUT: of the steps outside every reached span, the share that replied (0 when none)."""
    in_span = {t for t in step_times if any(a.lo <= t <= a.hi for a in answers)}
    out_steps = [t for t in step_times if t not in in_span]
    if not out_steps:
        return 0.0
    return sum(t not in in_span for t in reply_times) / len(out_steps)


def mmduet2_reward(
    sample: dict,
    responses: list[dict],
    step_times: Sequence[float],
    *,
    judge: AccJudge,
    config: RewardConfig,
) -> MMDuet2Reward:
    """MMDuet2's reward of one trajectory: `responses` [{"time", "text"}], `step_times` the
    time of every step (silent ones too: OUT counts them); `judge` scores PAUC's replies
    against the answer texts (TG by IoU, as R_turn) and the repetition of each new text."""
    question = str(sample.get("question", ""))
    replies = sorted_responses(responses)
    answers = reached_answers(sorted_answers(sample), max(step_times, default=None))
    p = sample_pauc(
        sample,
        responses,
        judge,
        answers=answers,
        omega=config.mmduet2_omega,
        start_score=config.mmduet2_start_score,
    )
    marks = repetition_marks(replies, answers, judge, question)
    rep = sum(marks) / len(marks) if marks else 0.0
    out = outspan_share(step_times, [t for t, _ in replies], answers)
    total = (
        config.mmduet2_w_pauc * p
        - config.mmduet2_w_repetition * rep
        - config.mmduet2_w_outspan * out
    )
    return MMDuet2Reward(total=total, pauc=p, repetition=rep, outspan=out)
