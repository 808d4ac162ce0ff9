"""PAUC (rewards/pauc.py): hand-derived areas, ProactiveVideoQA's late-reply filter, inputs."""

from __future__ import annotations

import pytest

from streampro.rewards.pauc import (
    START_SCORE,
    PaucAnswer,
    drop_late_regressions,
    pauc,
    replies_to_judge,
    span_auc,
)

SPAN = (10.0, 20.0)
POINTS = [(14.0, 0.5), (18.0, 1.0)]  # judge levels 1 and 2 of 0..2


@pytest.mark.parametrize(
    ("omega", "expected"),
    [
        # x = 4, 8: 4 s at 0.25 + 4 s at 0.5 + 2 s at 1.0 = 1 + 2 + 2 = 5 over 10
        (0.0, 0.5),
        # x = 2, 4: 2 s at 0.25 + 2 s at 0.5 + 6 s at 1.0 = 0.5 + 1 + 6 = 7.5 over 10
        # (the released units: 2*0.5 + 2*1 + 6*2 = 15 over 10*2 = 0.75 too)
        (0.5, 0.75),
        # x = 0, 0: the later reply's 1.0 holds over the whole span
        (1.0, 1.0),
    ],
)
def test_span_auc_hand_values(omega: float, expected: float) -> None:
    assert span_auc(POINTS, SPAN, omega=omega) == pytest.approx(expected)


def test_span_auc_edges() -> None:
    assert span_auc([], SPAN) == START_SCORE == 0.25  # no reply: start_score / max score
    # a reply at the span's start scoring 1: the whole area, whatever omega
    assert span_auc([(10.0, 1.0)], SPAN, omega=0.0) == pytest.approx(1.0)
    # a wrong reply (0) at the start is worse than silence: 0 over the span
    assert span_auc([(10.0, 0.0)], SPAN) == pytest.approx(0.0)
    # a right reply at the very end, omega 0.5: x = 5, 5 s at 0.25 + 5 s at 1 = 6.25 / 10
    assert span_auc([(20.0, 1.0)], SPAN) == pytest.approx(0.625)
    # one time given twice: the later score counts (the released code keys by time)
    assert span_auc([(10.0, 0.0), (10.0, 1.0)], SPAN) == pytest.approx(1.0)
    assert span_auc([(5.0, 0.5)], (5.0, 5.0)) == pytest.approx(0.5)  # zero-length span
    with pytest.raises(ValueError, match="outside"):
        span_auc([(12.0, 2.0)], SPAN)  # an unnormalised judge level


def test_drop_late_regressions() -> None:
    pts = [(2.0, 0.5), (4.0, 1.0), (7.0, 0.5), (9.0, 1.0)]
    # evidence ends at 5: 7 s scores 0.5 < 1.0 (the last within it) and goes; 9 s stays
    assert drop_late_regressions(pts, 5.0) == [(2.0, 0.5), (4.0, 1.0), (9.0, 1.0)]
    assert drop_late_regressions(pts, None) == pts
    assert drop_late_regressions([(7.0, 0.0)], 5.0) == [(7.0, 0.0)]  # one reply: never


def test_pauc_mean_over_turns() -> None:
    answers = [
        PaucAnswer(span=SPAN),
        PaucAnswer(span=(0.0, 10.0), related_end=5.0),
        PaucAnswer(span=(30.0, 40.0)),
    ]
    replies = [
        POINTS,  # 0.75 (above)
        # after the filter (2, 0.5), (4, 1.0), (9, 1.0); x = 1, 2, 4.5:
        # 1 s at 0.25 + 1 s at 0.5 + 2.5 s at 1 + 5.5 s at 1 = 0.25 + 0.5 + 8 = 8.75 / 10
        [(2.0, 0.5), (4.0, 1.0), (7.0, 0.5), (9.0, 1.0)],
        [],  # 0.25
    ]
    assert pauc(replies, answers) == pytest.approx((0.75 + 0.875 + 0.25) / 3)
    assert pauc([], []) == 0.0
    with pytest.raises(ValueError, match="outside span"):
        pauc([[(25.0, 1.0)]], [PaucAnswer(span=SPAN)])
    with pytest.raises(ValueError, match="reply lists"):
        pauc([], [PaucAnswer(span=SPAN)])


def test_replies_to_judge() -> None:
    said = [(21.0, "late"), (12.0, "a cat"), (9.0, "early"), (15.0, "a cat"), (20.0, "a dog")]
    # in [10, 20] inclusive, time order, the repeated "a cat" judged once
    assert replies_to_judge(said, SPAN) == [(12.0, "a cat"), (20.0, "a dog")]
