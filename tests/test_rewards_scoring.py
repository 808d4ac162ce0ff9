"""R_fmt, R_turn, R_traj and the rule judge: hand-derived values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streampro.rewards import (
    ExactJudge,
    RuleJudge,
    format_reward,
    interval_iou,
    normalize_text,
    s_time,
    total_reward,
    traj_reward,
    turn_reward,
)
from streampro.rewards.scoring import content_score, sorted_answers
from streampro.tasks import TASKS, resolve_answer


def sample(task: str, answers: list[dict], rubric: list[str] | None = None, **kw) -> dict:
    return {
        "id": "s",
        "video": "v.mp4",
        "task": task,
        "question": "q",
        "query_time": 0.0,
        "answers": answers,
        "rubric": rubric or [],
        "meta": {},
        **kw,
    }


def resp(*pairs: tuple[float, str]) -> list[dict]:
    return [{"time": t, "text": x} for t, x in pairs]


# ---- S_acc judges ---------------------------------------------------------------------------


def test_exact_normalisation():
    assert normalize_text("  Red   SQUARE, from the left!! ") == "red square from the left"
    assert normalize_text("pick-up the key_2 (v1.5)") == "pick-up the key_2 v1.5"
    assert normalize_text("Grün\tÉcran") == "grün écran"  # letters are Unicode letters
    j = ExactJudge()
    assert j.score(response="Red square; from left.", reference="red square from left.") == 1.0
    assert j.score(response="red square from left", reference="red square from left.") == 0.0
    assert j.score(response="blue", reference="green") == 0.0


def test_tg_iou_first_two_unsigned_numbers_either_order():
    tg = resolve_answer({"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}, "TG")
    assert content_score("from 9 to 4 s", tg, "TG", ExactJudge()) == 1.0
    assert content_score("it moved from 5s to 9s", tg, "TG", ExactJudge()) == pytest.approx(0.8)
    assert content_score("3 to 9, then 100", tg, "TG", ExactJudge()) == pytest.approx(5 / 6)
    assert content_score("-6 to 12", tg, "TG", ExactJudge()) == pytest.approx(3 / 8)  # unsigned
    assert content_score("at 7", tg, "TG", ExactJudge()) == 0.0  # one number: no interval
    # Without a span the reference text's first two numbers are the true interval.
    no_span = resolve_answer({"time": 31.0, "text": "4 to 9"}, "TG")
    assert content_score("4-9", no_span, "TG", ExactJudge()) == 1.0
    assert (
        interval_iou((3.0, 3.0), (3.0, 3.0)) == 1.0 and interval_iou((1.0, 2.0), (5.0, 6.0)) == 0.0
    )


# ---- timing ---------------------------------------------------------------------------------


def test_s_time_early_and_late_tolerances():
    rf = resolve_answer({"time": 50.0, "text": "watch out"}, "RF")  # window [49, 53], tau 2 / 4
    assert (rf.lo, rf.hi, rf.tau_early, rf.tau_late) == (49.0, 53.0, 2.0, 4.0)
    e, l = rf.tau_early, rf.tau_late
    assert [s_time(t, rf, e, l) for t in (48.0, 48.5, 47.0, 50.0, 54.0, 55.0, 57.0, 58.0)] == [
        0.5,
        0.75,
        0.0,
        1.0,
        0.75,
        0.5,
        0.0,
        0.0,
    ]
    eu = resolve_answer({"start": 10.0, "end": 14.0, "text": "x"}, "EU")  # window [10, 17]
    assert (eu.lo, eu.hi, eu.best) == (10.0, 17.0, 10.0)


# ---- R_fmt ----------------------------------------------------------------------------------


def test_format_reward():
    steps = [
        "</Silence>",
        "  </Silence>\n",
        "</Response> red square",
        "</Response> 4-9<|im_end|>",
        "</Response>",
        "</Response>   <|im_end|>",
        "</Silence> extra",
        "hello",
        "",
        "</Response> a </Silence>",
        "</Response> <|v3|>",
    ]
    assert format_reward(steps) == pytest.approx(4 / 11)
    assert format_reward([]) == 0.0
    assert format_reward(["</Silence>"] * 3) == 1.0


# ---- R_turn: one case per task type -----------------------------------------------------------

TURN_CASES = [
    # task, answers, responses, expected R_turn (tau = 8 both sides)
    (
        "EU",
        [{"start": 10.0, "end": 14.0, "text": "red square from left"}],
        [(19.0, "Red square, from left!")],
        1.75,
    ),  # dt 2 -> 0.75 + 1
    (
        "OU",
        [{"time": 20.0, "text": "green"}],
        [(25.0, "green"), (30.0, "green")],
        2 * 1.75 / 3,
    ),  # 25: dt 2; 30 unmatched, counts
    ("AA", [{"time": 30.0, "text": "teleport"}], [(26.0, "flicker")], 2 * 0.5 / 2),  # dt 4
    (
        "TP",
        [{"start": 5.0, "end": 5.0, "text": "1"}, {"start": 15.0, "end": 15.0, "text": "2"}],
        [(6.0, "1"), (12.0, "2")],
        2 * (2.0 + 1.625) / 4,
    ),  # 12 -> second answer: dt 3
    (
        "TG",
        [{"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}],
        [(36.0, "5 to 9")],
        2 * (0.75 + 0.8) / 2,
    ),  # window [28, 34]; IoU 0.8
    ("GP", [{"time": 40.0, "text": "pick up the key"}], [(35.0, "pick up the key")], 1.75),
    ("RF", [{"time": 50.0, "text": "watch out"}], [(48.0, "watch out")], 1.875),  # early dt 1
]


@pytest.mark.parametrize(
    "task,answers,responses,expected", TURN_CASES, ids=[c[0] for c in TURN_CASES]
)
def test_turn_reward_hand_values(task, answers, responses, expected):
    assert turn_reward(sample(task, answers), resp(*responses)) == pytest.approx(expected)


def test_turn_reward_gt_first_best_score_and_ties():
    # TP answers at 5 and 15 (windows [5, 8], [15, 18]). GT-first: the first answer takes the
    # response with the largest S' among those reaching it, even if a later answer wanted it.
    s = sample(
        "TP", [{"start": 5.0, "end": 5.0, "text": "1"}, {"start": 15.0, "end": 15.0, "text": "2"}]
    )
    assert turn_reward(s, resp((12.0, "2"))) == pytest.approx(2 * 0.5 / 3)  # taken by answer 1
    # Ties go to the earliest response (19 here); the other one stays unmatched but counts:
    # R_turn = 2 * 2 / (2 + 1).
    one = sample("OU", [{"time": 20.0, "text": "green"}])
    assert turn_reward(one, resp((21.0, "green"), (19.0, "green"))) == pytest.approx(4 / 3)
    # Where the tie matters: 21 and 23 both score S' = 2 for the answer at 20 (window [17, 23]);
    # taking 21 leaves 23 to the answer at 26 (S' = 2); taking 23 would leave it 21 (S' = 1.75).
    two = sample("OU", [{"time": 20.0, "text": "x"}, {"time": 26.0, "text": "x"}])
    assert turn_reward(two, resp((23.0, "x"), (21.0, "x"))) == 2.0
    # No answer and no response: staying silent was right.
    assert turn_reward(sample("AA", []), []) == 1.0
    assert turn_reward(sample("AA", []), resp((3.0, "alarm"))) == 0.0
    assert turn_reward(one, []) == 0.0


PRODUCT_CASES = [
    (
        "EU",
        [{"start": 10.0, "end": 14.0, "text": "red square from left"}],
        [(19.0, "red square from left")],
        0.75,
    ),  # dt 2: 0.75 * 1
    (
        "AA",
        [{"time": 30.0, "text": "teleport"}],
        [(26.0, "flicker")],
        0.0,
    ),  # well timed, wrong: 0.5 * 0
    ("TG", [{"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}], [(36.0, "5 to 9")], 0.75 * 0.8),
    ("OU", [{"time": 20.0, "text": "green"}], [(25.0, "green"), (30.0, "green")], 2 * 0.75 / 3),
]


@pytest.mark.parametrize(
    "task,answers,responses,expected", PRODUCT_CASES, ids=[c[0] for c in PRODUCT_CASES]
)
def test_turn_reward_product_hand_values(task, answers, responses, expected):
    # S = S_time * S_acc per match; R_turn = 2 * sum S / (N_pred + N_gt) in [0, 1]
    got = turn_reward(sample(task, answers), resp(*responses), match="product")
    assert got == pytest.approx(expected)


def test_turn_reward_product_matching_and_silence():
    two = sample("OU", [{"time": 20.0, "text": "x"}, {"time": 26.0, "text": "x"}])
    assert turn_reward(two, resp((23.0, "x"), (21.0, "x")), match="product") == 1.0
    assert turn_reward(sample("AA", []), [], match="product") == 1.0  # silence was right
    with pytest.raises(ValueError, match="turn match"):
        turn_reward(two, [], match="max")


def test_turn_reward_proactive_excludes_late_responses():
    late = resp((42.0, "pick up the key"))
    gp = sample("GP", [{"time": 40.0, "text": "pick up the key"}])  # window [37, 40]
    assert turn_reward(gp, late) == 0.0
    # The same window on a non-proactive task counts the late response: 0.75 + 1.
    ou = sample("OU", [{"time": 40.0, "text": "pick up the key", "window": [-3, 0]}])
    assert turn_reward(ou, late) == pytest.approx(1.75)
    rf = sample("RF", [{"time": 50.0, "text": "watch out"}])  # window [49, 53]
    assert turn_reward(rf, resp((53.0, "watch out"))) == 2.0  # at the window's end: inside
    assert turn_reward(rf, resp((54.0, "watch out"))) == 0.0
    # A custom task of the PA dimension is proactive too.
    custom = sample(
        "WARN", [{"time": 40.0, "text": "pick up the key", "window": [-3, 0]}], dimension="PA"
    )
    assert turn_reward(custom, late) == 0.0


def test_window_order_is_by_window_start():
    # Listed late-first; sorting by window start makes the early answer match first.
    s = sample("OU", [{"time": 30.0, "text": "b"}, {"time": 10.0, "text": "a"}])
    assert [a.text for a in sorted_answers(s)] == ["a", "b"]
    assert turn_reward(s, resp((10.0, "a"), (30.0, "b"))) == 2.0


# ---- R_traj and the rule judge -----------------------------------------------------------------

RESPONSES = resp((5.0, "The Red square entered"), (12.0, "count 1"), (20.0, "count 3, red-ish"))
RULE_CASES = [
    ("must respond at least 3 times", True),
    ("must respond at least 4 times", False),
    ("must respond at most 3 times", True),
    ("must respond at most 2 times", False),
    ("shall not respond before 5s", True),
    ("shall not respond before 5.5s", False),
    ("must respond between 10s and 12s", True),
    ("must respond between 13s and 19.5s", False),
    ("shall not respond between 13s and 19.5s", True),
    ("shall not respond between 0s and 5s", False),
    ("must mention 'red square'", True),
    ("must mention 'RED'", True),
    ("must mention 'squares'", False),
    ("must mention 'count'", True),
    ("must mention 'ish'", True),
    ("must mention 'coun'", False),
    ("shall not mention 'blue'", True),
    ("shall not mention 'Entered'", False),
    ("must mention 'count' between 12s and 12s", True),
    ("must mention 'red' between 6s and 19s", False),
    ("shall not respond twice within 7s", True),
    ("shall not respond twice within 7.5s", False),
    ("must report increasing numbers", True),
]


@pytest.mark.parametrize("checkpoint,passed", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rule_judge_templates(checkpoint, passed):
    assert RuleJudge().check(checkpoint, responses=RESPONSES) is passed


def test_rule_judge_edge_cases():
    j = RuleJudge()
    assert (
        j.check("must report increasing numbers", responses=resp((1.0, "2"), (2.0, "2"))) is False
    )
    assert (
        j.check("must report increasing numbers", responses=resp((2.0, "1"), (1.0, "0.5"))) is True
    )
    assert j.check("must report increasing numbers", responses=[]) is False  # nothing reported
    assert j.check("shall not respond twice within 2s", responses=resp((1.0, "a"))) is True
    assert j.check("must respond at least 1e+06 times", responses=[]) is False
    assert j.check("must report every bounce", responses=RESPONSES) is None  # free text
    assert j.check("must respond at least 2 time", responses=RESPONSES) is None


def test_traj_reward_and_total():
    s = sample(
        "TP",
        [],
        rubric=[
            "must respond at least 3 times",
            "shall not mention 'blue'",
            "must respond between 13s and 19.5s",
            "must report every bounce",
        ],
    )
    # 2 passed, 1 failed, 1 uncheckable -> fallback score.
    assert traj_reward(s, RESPONSES) == pytest.approx(2 / 4)
    assert traj_reward(s, RESPONSES, fallback_score=1.0) == pytest.approx(3 / 4)
    assert traj_reward(sample("TP", []), RESPONSES) == 1.0  # no rubric: nothing violated
    assert total_reward(1.0, 2.0, 0.5) == pytest.approx(0.1 + 0.9 + 0.225)
    assert total_reward(1.0, 1.0, 1.0, w_fmt=0.1, w_turn=0.9, w_traj=0.0) == pytest.approx(1.0)


# ---- properties -----------------------------------------------------------------------------

answer_st = st.fixed_dictionaries(
    {"time": st.integers(0, 120).map(float), "text": st.sampled_from(["a", "b", "1", "2-5"])}
)
response_st = st.fixed_dictionaries(
    {
        "time": st.floats(0, 150, allow_nan=False),
        "text": st.sampled_from(["a", "b", "1", "2-5", "4 to 5"]),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    task=st.sampled_from(sorted(TASKS)),
    answers=st.lists(answer_st, max_size=5),
    responses=st.lists(response_st, max_size=8),
    tau=st.sampled_from([3.0, 8.0]),
)
def test_turn_reward_in_0_2(task, answers, responses, tau):
    r = turn_reward(sample(task, answers), responses, tau)
    assert 0.0 <= r <= 2.0


@settings(max_examples=60, deadline=None)
@given(
    task=st.sampled_from(sorted(TASKS)),
    n=st.integers(1, 4),
    texts=st.lists(st.sampled_from(["red", "go left", "3"]), min_size=4, max_size=4),
)
def test_turn_reward_is_2_at_best_times_with_right_text(task, n, texts):
    answers = [{"time": 20.0 + 40 * k, "text": texts[k]} for k in range(n)]
    if TASKS[task].iou:
        answers = [
            {"time": 20.0 + 40 * k, "text": f"{k}-{k + 2}", "span": [k, k + 2]} for k in range(n)
        ]
    s = sample(task, answers)
    best = [{"time": a.best, "text": a.text} for a in sorted_answers(s)]
    assert turn_reward(s, best) == pytest.approx(2.0)
