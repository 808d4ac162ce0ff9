"""reward.kind=mmduet2: MMDuet2's R = 3 PAUC - 3 REP - 2 OUT on small trajectories, each value
derived by hand below (exact judge, omega 0.5, start score 0.125).

The sample has two answer spans, A [10, 20] 'red square' and B [30, 40] 'blue circle', and the
episode has a step every second at t = 1..50: 22 steps lie inside a span (11 each), 28 outside.
PAUC of one span = area under the step curve / (width 10 x 1): the curve is 0.125 until the
first judged reply, placed at (t - lo) x 0.5, then that reply's score to the span's end.
"""

from __future__ import annotations

import pytest

from streampro.config import ConfigError, RewardConfig, load_config
from streampro.rewards.judges import ExactJudge
from streampro.rewards.mmduet2 import mmduet2_reward
from streampro.rewards.pool import InProcessRewardPool, RewardScorer
from streampro.types import Segment, Step, Trajectory

SAMPLE = {
    "id": "eu-1",
    "task": "EU",
    "question": "Tell me what appears.",
    "answers": [
        {"start": 10.0, "end": 20.0, "text": "red square", "window": [0, 0]},
        {"start": 30.0, "end": 40.0, "text": "blue circle", "window": [0, 0]},
    ],
}
STEPS = [float(t) for t in range(1, 51)]
CFG = RewardConfig(kind="mmduet2")


def score(replies: list[tuple[float, str]], steps: list[float] = STEPS):
    responses = [{"time": t, "text": text} for t, text in replies]
    return mmduet2_reward(SAMPLE, responses, steps, judge=ExactJudge(), config=CFG)


def test_perfect():
    # A: the right text at 10 -> x = 0, score 1 over the whole width: 10 / 10 = 1; B alike.
    # REP marks: red (first) 0, blue (exact vs 'red square') 0 -> 0.  OUT: 0 of 28 -> 0.
    # R = 3 x 1 = 3
    r = score([(10.0, "red square"), (30.0, "blue circle")])
    assert (r.pauc, r.repetition, r.outspan, r.total) == (1.0, 0.0, 0.0, 3.0)


def test_silent():
    # no reply: each span stays at the start score 0.125 -> PAUC 0.125; no REP mark; OUT 0/28.
    # R = 3 x 0.125 = 0.375
    r = score([])
    assert (r.pauc, r.repetition, r.outspan, r.total) == (0.125, 0.0, 0.0, 0.375)


def test_late():
    # A: reply at 18 -> x = 8 x 0.5 = 4: area 4 x 0.125 + 6 x 1 = 6.5 -> 0.65.
    # B: reply at 40 (the span's end) -> x = 5: area 5 x 0.125 + 5 x 1 = 5.625 -> 0.5625.
    # PAUC = (0.65 + 0.5625) / 2 = 0.60625; R = 3 x 0.60625 = 1.81875
    r = score([(18.0, "red square"), (40.0, "blue circle")])
    assert r.pauc == pytest.approx(0.60625)
    assert (r.repetition, r.outspan) == (0.0, 0.0)
    assert r.total == pytest.approx(1.81875)


def test_repetitive_verbatim():
    # 'red square' at 10, 12 and 14 (all in A), 'blue circle' at 30.
    # PAUC: A judges 'red square' once (the repeats are not judged again): 1; B: 1 -> 1.
    # REP marks in time order: 0 (first), 1, 1 (verbatim repeats), 0 (blue vs the earlier
    # text) -> 2 / 4 = 0.5 (no span holds a second new text).  R = 3 - 3 x 0.5 = 1.5
    r = score(
        [(10.0, "red square"), (12.0, "red square"), (14.0, "red square"), (30, "blue circle")]
    )
    assert (r.pauc, r.repetition, r.outspan, r.total) == (1.0, 0.5, 0.0, 1.5)


def test_repetitive_judged_and_counted_twice_in_span():
    # 'Red square' at 10, 'red square!' at 12 (a new text the exact judge finds equal to the
    # earlier one), 'blue circle' at 30.
    # PAUC: A's points (10, 1), (12, 1): x = 0 and 1, area 1 x 1 + 9 x 1 = 10 -> 1; B: 1 -> 1.
    # REP marks: 0 (first), 1 ('red square!' vs 'Red square'), 0 ('blue circle' vs 'Red square
    # red square!'), then A's second new text again: 1 (as the released code) -> 2 / 4 = 0.5.
    # R = 3 - 1.5 = 1.5
    r = score([(10.0, "Red square"), (12.0, "red square!"), (30.0, "blue circle")])
    assert (r.pauc, r.repetition, r.outspan, r.total) == (1.0, 0.5, 0.0, 1.5)


def test_wrong_then_right_in_one_span():
    # A: 'green' at 10 scores 0 (x = 0), 'red square' at 12 scores 1 (x = 1):
    # area 1 x 0 + 9 x 1 = 9 -> 0.9; B: silent, 0.125 -> PAUC (0.9 + 0.125) / 2 = 0.5125.
    # REP: 0 (first), 0 ('red square' vs 'green'), A's second new text again 0 -> 0.
    # R = 3 x 0.5125 = 1.5375
    r = score([(10.0, "green"), (12.0, "red square")])
    assert r.pauc == pytest.approx(0.5125)
    assert (r.repetition, r.outspan) == (0.0, 0.0)
    assert r.total == pytest.approx(1.5375)


def test_out_of_span_replies():
    # 'noise' at 5 and 'more noise' at 45, outside both spans, beside the perfect replies.
    # PAUC 1 (only in-span replies are judged); REP marks 0, 0, 0, 0 (no text equals the earlier
    # ones joined); OUT: 2 replies at the 28 steps outside the spans -> 2 / 28 = 1 / 14.
    # R = 3 - 2 / 14 = 2.857142...
    r = score([(5.0, "noise"), (10.0, "red square"), (30.0, "blue circle"), (45.0, "more noise")])
    assert (r.pauc, r.repetition) == (1.0, 0.0)
    assert r.outspan == pytest.approx(1 / 14)
    assert r.total == pytest.approx(3 - 2 / 14)


def test_a_span_the_episode_never_reached_is_skipped():
    # steps 1..25: B starts at 30 > 25, so only A counts: PAUC 1. Inside A: 11 steps; outside:
    # 14, one reply ('hi' at 3) -> OUT 1 / 14.  REP: 0, 0 -> 0.  R = 3 - 2 / 14
    r = score([(3.0, "hi"), (10.0, "red square")], steps=[float(t) for t in range(1, 26)])
    assert (r.pauc, r.repetition) == (1.0, 0.0)
    assert r.outspan == pytest.approx(1 / 14)
    assert r.total == pytest.approx(3 - 2 / 14)


def _trajectory(replies: dict[float, str]) -> Trajectory:
    steps = [
        Step(time=t, decision="response", text=replies[t], raw=f"</Response> {replies[t]}")
        if t in replies
        else Step(time=t, decision="silence", text="", raw="</Silence>")
        for t in STEPS
    ]
    return Trajectory("eu-1", 0, [Segment([], [], [])], steps)


def test_the_pool_selects_the_reward_by_kind():
    # the late trajectory: MMDuet2's R 1.81875; fmt 1 (every step well formed, unweighted);
    # turn = PAUC 0.60625; traj = the weighted penalties, 0 here.
    traj = _trajectory({18.0: "red square", 40.0: "blue circle"})
    (res,) = InProcessRewardPool(CFG).score(samples=[SAMPLE], trajectories=[traj])
    assert res.total == pytest.approx(1.81875)
    assert (res.fmt, res.turn, res.traj) == (1.0, pytest.approx(0.60625), 0.0)
    # out of span: traj = -2 x 1/14
    traj = _trajectory({5.0: "noise", 10.0: "red square", 30.0: "blue circle"})
    (res,) = InProcessRewardPool(CFG).score(samples=[SAMPLE], trajectories=[traj])
    assert res.traj == pytest.approx(-2 / 28) and res.turn == 1.0
    # the default kind scores the same trajectory with StreamPro's R (R_turn: 2 x (2 + 2) / 5)
    (res,) = InProcessRewardPool(RewardConfig()).score(samples=[SAMPLE], trajectories=[traj])
    assert res.turn == pytest.approx(1.6)


def test_mmduet2_needs_the_step_times():
    with pytest.raises(ValueError, match="step_times"):
        RewardScorer(CFG).score_item(SAMPLE, [], ["</Silence>"])


def test_a_bad_kind_fails_at_load():
    with pytest.raises(ConfigError, match=r"reward.kind must be one of streampro, mmduet2"):
        load_config(None, ["reward.kind=pauc"])
    with pytest.raises(ConfigError, match=r"reward.mmduet2_omega must be in \[0, 1\]"):
        load_config(None, ["reward.mmduet2_omega=2"])
