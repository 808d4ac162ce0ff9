"""A perfect policy scores full marks on StreamPro-Synth.

The oracle answers exactly where the SFT targets respond (`build_sft_example` over the real
encoded chunks) with the reference text; StreamPro-F1 must give every task F1 = 1 and R_turn
must be 2. This fails when a generator spaces events so closely that the response meant for
one answer still reaches the previous one (F1 gives each response to the first answer it
reaches), or when a target misses its window.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streampro.data.codec import PatchTokenCodec
from streampro.data.dialogue import build_sft_example, plan_responses
from streampro.data.encode import encode_manifest
from streampro.data.synth import TASK_ORDER, make_sample
from streampro.data.synth_scene import SceneParams
from streampro.data.synth_tasks import min_gap, oracle_time
from streampro.data.window import Window
from streampro.rewards import turn_reward
from streampro.rewards.f1 import score_predictions
from streampro.tasks import resolve_answer

CODEBOOK = 64
# More events than the smoke set: up to 4 per video and up to 60 s (still 64x64: fast).
DENSE = {
    "per_task": 3,
    "width": 64,
    "height": 64,
    "min_duration": 20,
    "max_duration": 60,
    "max_events": 4,
}


@pytest.fixture(scope="module")
def tok():
    from streampro.tiny import build_tokenizer

    return build_tokenizer(512, CODEBOOK)


@pytest.fixture(scope="module")
def synth_dense(tmp_path_factory) -> Path:
    from streampro.config import SynthConfig
    from streampro.data.synth import synth_split

    root = tmp_path_factory.mktemp("synth_dense")
    return synth_split(
        SynthConfig(out=str(root), **DENSE), split="test", out=root / "test", progress=False
    )


def oracle(manifest: Path, tok, cache: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """(manifest rows, sample id -> the SFT targets' responses [{"time", "text"}])."""
    rows, preds = [], {}
    for e in encode_manifest(
        manifest,
        fps=1.0,
        codec=PatchTokenCodec(4, CODEBOOK),
        cache_dir=cache,
        progress=False,
    ):
        ex = build_sft_example(e, tok, window=Window(200, 50))
        assert ex.unplaced == 0, e.sample.id
        assert len(ex.response_times) == len(e.sample.answers), e.sample.id
        rows.append(e.sample.to_dict())
        preds[e.sample.id] = [
            {"time": t, "text": x} for t, x in zip(ex.response_times, ex.response_texts)
        ]
    return rows, preds


def check_spacing(row: dict, responses: list[dict]) -> None:
    """Each response lies inside its own answer's window, on a whole second, and strictly after
    the previous answer's window end + late tau (beyond which F1 cannot give it to that one)."""
    answers = sorted((resolve_answer(a, row["task"]) for a in row["answers"]), key=lambda r: r.best)
    times = [r["time"] for r in responses]
    assert times == sorted(times) and [r["text"] for r in responses] == [a.text for a in answers]
    for k, (a, t) in enumerate(zip(answers, times)):
        assert t == int(t) and a.lo <= t <= a.hi, (row["id"], k, t, a)
        if k:
            prev = answers[k - 1]
            assert t > prev.hi + prev.tau_late, (row["id"], k, t, prev)


def assert_full_marks(rows: list[dict], preds: dict[str, list[dict]]) -> None:
    assert {r["task"] for r in rows} == set(TASK_ORDER)
    for row in rows:
        check_spacing(row, preds[row["id"]])
        assert turn_reward(row, preds[row["id"]]) == pytest.approx(2.0), row["id"]
    scores = score_predictions(rows, preds)
    f1 = {task: s["f1"] for task, s in scores["tasks"].items()}
    assert f1 == {task: pytest.approx(1.0) for task in TASK_ORDER}
    assert scores["w_avg"] == pytest.approx(1.0)


def test_oracle_scores_full_marks_on_the_smoke_set(synth_smoke, tok, tmp_path):
    rows, preds = [], {}
    for split in ("train", "val", "test"):
        r, p = oracle(synth_smoke / split / "manifest.jsonl", tok, tmp_path / "cache")
        rows += r
        preds.update(p)
    assert_full_marks(rows, preds)


def test_oracle_scores_full_marks_with_many_events(synth_dense, tok, tmp_path):
    rows, preds = oracle(synth_dense, tok, tmp_path / "cache")
    assert len(rows) == 3 * len(TASK_ORDER)
    assert max(len(r["answers"]) for r in rows) >= 3  # the set really has dense samples
    assert_full_marks(rows, preds)


@pytest.mark.parametrize(
    "knobs,durations",
    [
        ({}, (20, 20)),
        ({}, (20, 90)),
        ({"speed": 2.0, "max_events": 8}, (20, 90)),
        ({"speed": 0.5, "max_events": 8, "video_fps": 2}, (20, 40)),
    ],
)
def test_oracle_scores_full_marks_over_many_scenes(knobs, durations):
    """The same property on 20 scenes per task without rendering: whole-second chunk ends are
    what encoding yields at 1 fps (the rendered tests above check that path)."""
    params = SceneParams(width=64, height=64, **knobs)
    rows, preds = [], {}
    for task in TASK_ORDER:
        for i in range(20):
            sample = make_sample(task, i, 7, params, *durations)[0]
            assert durations[0] <= sample.duration <= durations[1]
            row = sample.to_dict()
            ends = [float(k + 1) for k in range(int(sample.duration))]
            plan, unplaced = plan_responses(task, row["answers"], ends)
            assert unplaced == 0, row["id"]
            rows.append(row)
            preds[row["id"]] = [{"time": ends[j], "text": x} for j, x in sorted(plan.items())]
    assert_full_marks(rows, preds)


def test_min_gap_known_values():
    # Event onsets one frame (0.25 s) into second k; the oracle answers at k + 1.
    onset = lambda k: k + 0.25
    # OU: window [-3, 3], late tau 4: reach k + 7.25, so the next oracle k' + 1 > 7.25: k' = 7.
    assert min_gap("OU", lambda k: {"time": onset(k)}) == 7
    # AA: window [0, 5], late tau 6: reach 11.25 -> 11.
    assert min_gap("AA", lambda k: {"time": onset(k)}) == 11
    # TP: interval [b, b], window [0, 3], late tau 4: reach 7.25 -> 7.
    assert min_gap("TP", lambda k: {"start": onset(k), "end": onset(k)}) == 7
    # EU: interval [o, o + 1] + 3, late tau 4: reach 8.25 -> 8.
    assert min_gap("EU", lambda k: {"start": onset(k), "end": onset(k) + 1}) == 8
    # GP at whole seconds, window [-3, 0], late tau 4: reach 4 -> 5.
    assert min_gap("GP", lambda k: {"time": float(k)}) == 5
    # RF 3 s before impact k, window [-1, 3] (ends at the impact), late tau 4: impacts 8 apart.
    assert min_gap("RF", lambda k: {"time": float(k - 3)}) == 8
    assert oracle_time(resolve_answer({"time": 12.0}, "GP")) == 12.0
    assert oracle_time(resolve_answer({"time": 4.25}, "OU")) == 5.0
    with pytest.raises(ValueError, match="inside"):
        oracle_time(resolve_answer({"time": 12.5}, "GP"))  # no whole second in [9.5, 12.5] after
