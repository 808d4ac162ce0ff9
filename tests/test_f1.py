"""StreamPro-F1: hand-derived values per task, aggregation, properties and `streampro eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streampro.cli import main as cli_main
from streampro.errors import UserError
from streampro.rewards import ExactJudge
from streampro.rewards.f1 import (
    load_predictions,
    prf,
    sample_pauc,
    sample_stats,
    score_predictions,
    write_scores,
)
from streampro.rewards.scoring import sorted_answers
from streampro.tasks import TASKS


def sample(sid: str, task: str, answers: list[dict], **kw) -> dict:
    return {
        "id": sid,
        "video": f"videos/{sid}.mp4",
        "task": task,
        "question": "q",
        "query_time": 0.0,
        "answers": answers,
        "rubric": [],
        "meta": {},
        **kw,
    }


def resp(*pairs: tuple[float, str]) -> list[dict]:
    return [{"time": t, "text": x} for t, x in pairs]


# One case per task type: (task, answers, responses, expected (sum S, N_pred, N_gt)).
CASES = [
    (
        "EU",
        [{"start": 10.0, "end": 14.0, "text": "red square from left"}],  # window [10, 17], tau 4
        [(19.0, "Red square from left"), (30.0, "red")],
        (0.5, 2, 1),
    ),  # dt 2; 30 reaches none
    ("OU", [{"time": 20.0, "text": "green"}], [(24.0, "Green!")], (0.75, 1, 1)),  # [17, 23], dt 1
    ("AA", [{"time": 30.0, "text": "teleport"}], [(27.0, "teleport")], (0.5, 1, 1)),  # tau 6, dt 3
    (
        "TP",
        [{"start": 5.0, "end": 5.0, "text": "1"}, {"start": 15.0, "end": 15.0, "text": "2"}],
        [(6.0, "1"), (12.0, "2")],
        (1.0, 2, 2),
    ),  # 12 reaches answer 1 first: S_time 0 there
    (
        "TG",
        [{"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}],  # [28, 34], IoU
        [(36.0, "from 5 to 9")],
        (0.4, 1, 1),
    ),  # 0.5 * 0.8
    (
        "GP",
        [{"time": 40.0, "text": "pick up the key"}],  # [37, 40]: late
        [(42.0, "pick up the key")],
        (0.5, 1, 1),
    ),  # still counts in F1
    (
        "RF",
        [{"time": 50.0, "text": "watch out"}],  # [49, 53], tau 2/4
        [(48.0, "watch out"), (55.0, "watch out")],
        (0.5, 2, 1),
    ),  # early 0.5, late 0.5
]


@pytest.mark.parametrize("task,answers,responses,expected", CASES, ids=[c[0] for c in CASES])
def test_sample_stats_hand_values(task, answers, responses, expected):
    got = sample_stats(sample("x", task, answers), resp(*responses), ExactJudge())
    assert got[0] == pytest.approx(expected[0]) and got[1:] == expected[1:]


def test_prediction_first_greedy_and_best_per_answer():
    tp = sample(
        "x",
        "TP",
        [{"start": 5.0, "end": 5.0, "text": "1"}, {"start": 15.0, "end": 15.0, "text": "2"}],
    )
    # 12 s reaches answer 1 (reach [1, 12]) first and scores 0 there, though answer 2 would give it 0.25.
    assert sample_stats(tp, resp((12.0, "2")), ExactJudge()) == (0.0, 1, 2)
    # An answer keeps its best S; the worse duplicate still counts as a prediction.
    ou = sample("x", "OU", [{"time": 20.0, "text": "green"}])
    assert sample_stats(ou, resp((25.0, "green"), (22.0, "green")), ExactJudge()) == (1.0, 2, 1)
    # Early and late reach: RF reaches [47, 57]; OU [13, 27].
    rf = sample("x", "RF", [{"time": 50.0, "text": "w"}])
    assert sample_stats(rf, resp((46.9, "w"), (57.1, "w")), ExactJudge()) == (0.0, 2, 1)
    assert sample_stats(rf, resp((48.5, "w")), ExactJudge())[0] == pytest.approx(0.75)
    assert sample_stats(rf, resp((54.0, "w")), ExactJudge())[0] == pytest.approx(0.75)


def test_prf():
    assert prf(1.5, 3, 2) == pytest.approx((0.5, 0.75, 0.6))
    assert prf(0.0, 0, 0) == (0.0, 0.0, 0.0)
    assert prf(0.0, 2, 0) == (0.0, 0.0, 0.0)


def test_score_predictions_aggregation():
    samples = [
        sample("eu1", "EU", [{"start": 10.0, "end": 14.0, "text": "red"}]),
        sample("eu2", "EU", [{"start": 10.0, "end": 14.0, "text": "red"}]),
        sample("ou1", "OU", [{"time": 20.0, "text": "green"}]),
        sample("tg1", "TG", [{"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}]),
        sample("cu1", "CUSTOM", [{"time": 5.0, "text": "yes"}], dimension="XD"),  # window [5, 5]
    ]
    preds = {
        "eu1": resp((12.0, "red")),
        "eu2": resp((19.0, "red"), (30.0, "x")),
        "ou1": resp((24.0, "green")),
        "tg1": resp((33.0, "5 to 9")),
        "cu1": resp((6.0, "yes")),
    }
    s = score_predictions(samples, preds)
    eu = s["tasks"]["EU"]  # sum S 1.5, N_pred 3, N_gt 2
    assert (eu["precision"], eu["recall"], eu["f1"], eu["n"]) == pytest.approx((0.5, 0.75, 0.6, 2))
    assert s["tasks"]["OU"]["f1"] == pytest.approx(0.75)
    assert s["tasks"]["TG"]["f1"] == pytest.approx(0.8)
    assert s["tasks"]["CUSTOM"]["f1"] == pytest.approx(0.75)
    assert list(s["tasks"]) == ["EU", "OU", "TG", "CUSTOM"]
    assert s["dimensions"] == pytest.approx({"PU": (2 * 0.6 + 0.75) / 3, "TR": 0.8, "XD": 0.75})
    assert s["avg"] == pytest.approx((0.65 + 0.8 + 0.75) / 3)
    assert s["w_avg"] == pytest.approx((2 * 0.6 + 0.75 + 0.8 + 0.75) / 5)
    assert s["fallbacks"] == 0 and s["n_samples"] == 5
    # A sample without a line has no responses; an unknown id is an error.
    assert score_predictions(samples, {})["w_avg"] == 0.0
    with pytest.raises(UserError, match="not in the manifest"):
        score_predictions(samples, {"nope": []})


def test_failing_judge_scores_fallback_and_counts():
    class Broken:
        inline = True

        def score(self, *, response: str, reference: str, question: str = "") -> float:
            raise RuntimeError("judge down")

    samples = [sample("ou1", "OU", [{"time": 20.0, "text": "green"}])]
    s = score_predictions(
        samples, {"ou1": resp((20.0, "green"))}, acc_judge=Broken(), fallback_score=0.5
    )
    assert s["fallbacks"] == 1 and s["tasks"]["OU"]["f1"] == pytest.approx(0.5)


# ---- properties -------------------------------------------------------------------------------

TEXTS = ["red", "go left", "3", "blue square"]


@st.composite
def separated_samples(draw, n_samples: int = 4) -> list[dict]:
    """Samples whose answers are 40 s apart, so no response reaches two answers."""
    out = []
    for i in range(draw(st.integers(1, n_samples))):
        task = draw(st.sampled_from(sorted(TASKS)))
        answers = []
        for k in range(draw(st.integers(1, 3))):
            t0 = 10.0 + 40 * k + draw(st.integers(0, 5))
            if TASKS[task].iou:
                a = draw(st.integers(0, 20))
                answers.append({"time": t0, "text": f"{a}-{a + 3}", "span": [a, a + 3]})
            elif TASKS[task].interval and draw(st.booleans()):
                answers.append(
                    {
                        "start": t0,
                        "end": t0 + draw(st.integers(0, 4)),
                        "text": draw(st.sampled_from(TEXTS)),
                    }
                )
            else:
                answers.append({"time": t0, "text": draw(st.sampled_from(TEXTS))})
        out.append(sample(f"s{i}", task, answers))
    return out


responses_st = st.lists(
    st.fixed_dictionaries(
        {"time": st.floats(0, 160, allow_nan=False), "text": st.sampled_from(TEXTS + ["4-7", "x"])}
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(samples=separated_samples(), data=st.data())
def test_property_f1_in_unit_interval(samples, data):
    preds = {s["id"]: data.draw(responses_st) for s in samples}
    s = score_predictions(samples, preds)
    values = [v for t in s["tasks"].values() for v in (t["precision"], t["recall"], t["f1"])]
    assert all(
        0.0 <= v <= 1.0 for v in values + list(s["dimensions"].values()) + [s["avg"], s["w_avg"]]
    )


@settings(max_examples=80, deadline=None)
@given(samples=separated_samples())
def test_property_best_time_right_text_gives_f1_1(samples):
    preds = {
        s["id"]: [{"time": a.best, "text": a.text} for a in sorted_answers(s)] for s in samples
    }
    s = score_predictions(samples, preds)
    assert all(t["f1"] == pytest.approx(1.0) for t in s["tasks"].values())
    assert s["w_avg"] == pytest.approx(1.0) and s["avg"] == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(samples=separated_samples(), data=st.data())
def test_property_unreaching_response_never_raises_precision(samples, data):
    preds = {s["id"]: data.draw(responses_st) for s in samples}
    before = score_predictions(samples, preds)
    victim = data.draw(st.sampled_from(samples))
    extra = dict(preds)
    extra[victim["id"]] = preds[victim["id"]] + [
        {"time": data.draw(st.floats(300, 1000)), "text": "red"}
    ]
    after = score_predictions(samples, extra)
    for task, t in after["tasks"].items():
        assert t["precision"] <= before["tasks"][task]["precision"] + 1e-12
        assert t["recall"] == pytest.approx(before["tasks"][task]["recall"])


# ---- files and the CLI --------------------------------------------------------------------------


@pytest.fixture()
def manifest(tmp_path) -> Path:
    rows = [
        sample(
            "eu1",
            "EU",
            [{"start": 10.0, "end": 14.0, "text": "red"}],
            rubric=["must respond at least 1 times"],
        ),
        sample("tg1", "TG", [{"time": 31.0, "text": "4-9", "span": [4.0, 9.0]}]),
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_cli_writes_scores_and_report(tmp_path, manifest, capsys):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "eu1", "responses": [{"time": 12, "text": "Red!"}]}) + "\n")
    out = tmp_path / "out"
    assert (
        cli_main(
            ["eval", "--manifest", str(manifest), "--predictions", str(preds), "--out", str(out)]
        )
        == 0
    )
    scores = json.loads((out / "scores.json").read_text())
    assert scores["tasks"]["EU"]["f1"] == 1.0 and scores["tasks"]["TG"]["f1"] == 0.0
    assert scores["dimensions"] == {"PU": 1.0, "TR": 0.0}
    assert scores["avg"] == 0.5 and scores["w_avg"] == 0.5
    report = (out / "report.md").read_text()
    assert "| EU | 1 | 1 | 1 | 100.0 | 100.0 | 100.0 |" in report and "W-Avg" in report
    # Same inputs, same bytes.
    first = (out / "scores.json").read_bytes()
    write_scores(
        score_predictions(
            [json.loads(line) for line in manifest.read_text().splitlines()],
            {"eu1": [{"time": 12.0, "text": "Red!"}]},
        ),
        out,
    )
    assert (out / "scores.json").read_bytes() == first


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"id": "zz", "responses": []}', "id: 'zz' is not in the manifest"),
        ('{"id": "eu1"}', "responses: missing or not a list"),
        (
            '{"id": "eu1", "responses": [{"time": "soon", "text": "a"}]}',
            "responses[0].time: expected a finite number",
        ),
        (
            '{"id": "eu1", "responses": [{"time": 3, "text": 5}]}',
            "responses[0].text: expected a string",
        ),
        ('{"id": "eu1", "responses": [{"time": NaN, "text": "a"}]}', "responses[0].time"),
        ('{"id": "eu1", "responses": [', "json:"),
    ],
)
def test_bad_predictions_one_line_error(tmp_path, manifest, capsys, line, message):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "tg1", "responses": []}\n' + line + "\n")
    rc = cli_main(
        [
            "eval",
            "--manifest",
            str(manifest),
            "--predictions",
            str(preds),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and f"{preds}:2: {message}" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "o" / "scores.json").exists()


def test_eval_cli_errors(tmp_path, manifest, capsys):
    out = str(tmp_path / "o")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "eu1", "responses": []}\n{"id": "eu1", "responses": []}\n')
    assert (
        cli_main(["eval", "--manifest", str(manifest), "--predictions", str(dup), "--out", out])
        == 1
    )
    assert f"{dup}:2: id: duplicate id 'eu1'" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "eval",
                "--manifest",
                str(tmp_path / "none.jsonl"),
                "--predictions",
                str(dup),
                "--out",
                out,
            ]
        )
        == 1
    )
    assert "none.jsonl" in capsys.readouterr().err
    with pytest.raises(UserError, match="predictions file not found"):
        load_predictions(tmp_path / "missing.jsonl", {"eu1"})


def test_sampled_evaluation_averages_the_samples_of_each_stream():
    """PolicyEval with n=2: episode k of every stream forms replicate k; scores are the mean."""
    from dataclasses import dataclass

    from streampro.actors.api import Sampling
    from streampro.actors.policy_eval import PolicyEval
    from streampro.rewards.judges import ExactJudge
    from streampro.types import Step, Trajectory

    @dataclass
    class Enc:
        sample: object

    @dataclass
    class Row:
        row: dict
        id: str

        def to_dict(self) -> dict:
            return self.row

    ou = sample("ou", "OU", [{"time": 20.0, "text": "green"}])  # respond at 21 s: S = 1
    enc = [Enc(Row(ou, "ou"))]

    class Rollout:
        def generate(self, *, samples, n, sampling):
            hit = [Step(time=21.0, decision="response", text="green", raw="")]
            return [
                Trajectory(
                    sample_id="ou",
                    episode=e,
                    segments=[],
                    steps=hit if e == 0 else [],
                )
                for e in range(n)
            ]

    sampled = PolicyEval(Sampling(1.0, 1.0, 8, 0), 2, ExactJudge())
    scores = sampled.run(Rollout(), enc)  # type: ignore[arg-type]
    # replicate 0: P = R = F1 = 1; replicate 1: no response, all 0 -> means 0.5
    assert scores["tasks"]["OU"]["f1"] == pytest.approx(0.5)
    assert (
        scores["tasks"]["OU"]["n_pred"] == pytest.approx(0.5) and scores["tasks"]["OU"]["n_gt"] == 1
    )
    assert scores["samples_per_stream"] == 2 and scores["n_samples"] == 1
    one = PolicyEval(Sampling(0.0, 1.0, 8, 0), 1, ExactJudge()).run(Rollout(), enc)  # type: ignore[arg-type]
    assert one["tasks"]["OU"]["f1"] == 1.0 and one["samples_per_stream"] == 1


def test_pauc_next_to_f1_by_hand():
    # EU's window [10, 17] is the reply span; PAUC at omega 0.5, start score 0.25
    s = sample("eu1", "EU", [{"start": 10.0, "end": 14.0, "text": "red square from left"}])
    judge = ExactJudge()
    assert sample_pauc(s, [], judge) == pytest.approx(0.25)  # silent: the start score
    assert sample_pauc(s, resp((10.0, "red square from left")), judge) == pytest.approx(1.0)
    assert sample_pauc(s, resp((10.0, "blue")), judge) == pytest.approx(0.0)  # wrong at once
    # right at 14 s, placed at 10 + 4 * 0.5 = 12: 0.25 over 2 s, then 1 over 5 s, of 7 s
    late = resp((14.0, "red square from left"))
    assert sample_pauc(s, late, judge) == pytest.approx((0.25 * 2 + 5) / 7)
    scores = score_predictions([s], {"eu1": late})
    assert (
        scores["pauc"] == pytest.approx(5.5 / 7) and scores["tasks"]["EU"]["pauc"] == scores["pauc"]
    )
