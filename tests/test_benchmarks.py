"""Public proactive benchmarks: readers, each benchmark's own scoring (hand-derived values on
the fixtures in tests/fixtures/benchmarks/, in the benchmarks' real field layout), the CLI, and
one end-to-end `streampro eval --benchmark` run per benchmark with the tiny policy."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from streampro.cli import main as cli_main
from streampro.data.benchmarks import BENCHMARKS, hms_seconds, read_benchmark
from streampro.errors import UserError
from streampro.rewards.benchmarks import (
    ovo_probe_responses,
    ovo_probe_score,
    score_benchmark,
)
from streampro.rewards.judges import ExactJudge

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
FILES = {
    "ovo-forward": FIXTURES / "ovo_forward.json",
    "streamingbench-proactive": FIXTURES / "streamingbench_proactive.json",
    "proactivevideoqa": FIXTURES / "proactivevideoqa.json",
}
# the videos each fixture names that exist (each fixture also names one that does not)
VIDEOS = {
    "ovo-forward": ["perception_test/rec1.mp4", "COIN/ssr2.mp4", "MovieNet/crr3.mp4"],
    "streamingbench-proactive": ["videos/sample_1_proactive.mp4", "videos/sample_2_proactive.mp4"],
    "proactivevideoqa": ["shot2story/v1.mp4", "shot2story/v2.mp4"],
}
# (streams, items, malformed, missing_video, other_tasks) of each fixture
COUNTS = {
    "ovo-forward": (4, 6, 1, 1, 1),
    "streamingbench-proactive": (3, 3, 1, 1, 0),
    "proactivevideoqa": (2, 4, 1, 1, 0),
}


def _videos(root: Path, name: str, source: list[Path] | None = None) -> Path:
    """The fixture's videos under root: empty files (readers only look them up) or copies
    of real videos."""
    for k, rel in enumerate(VIDEOS[name]):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if source:
            shutil.copy(source[k % len(source)], p)
        else:
            p.touch()
    return root


def _read(tmp_path: Path, name: str):
    return read_benchmark(name, FILES[name], _videos(tmp_path, name))


def resp(*pairs: tuple[float, str]) -> list[dict]:
    return [{"time": t, "text": x} for t, x in pairs]


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reader_counts_and_names_every_problem(tmp_path, name):
    data = _read(tmp_path, name)
    streams, items, malformed, missing, other = COUNTS[name]
    assert len(data.streams) == streams and data.items == items
    assert (len(data.malformed), len(data.missing_video), data.other_tasks) == (
        malformed,
        missing,
        other,
    )
    assert all(str(FILES[name]) in p for p in data.malformed + data.missing_video)


def test_reader_problem_lines(tmp_path):
    ovo = _read(tmp_path / "o", "ovo-forward")
    assert [s.sample.id for s in ovo.streams] == ["ovo-1", "ovo-2-0", "ovo-2-1", "ovo-3"]
    assert ovo.malformed[0].endswith(
        "item 4 (5): test_info[0].count: must be an integer >= 0, got 'two'"
    )
    assert "item 5 (6): video: not found" in ovo.missing_video[0]
    rec = ovo.streams[0]
    assert rec.sample.duration == 12.0 and rec.truth.probes == ((4.0, 0), (8.0, 1), (12.0, 2))
    sb = _read(tmp_path / "s", "streamingbench-proactive")
    assert "item 0 (./videos/sample_1_proactive.mp4): questions[2].time_stamp" in sb.malformed[0]
    q = sb.streams[1]  # asked at 0:00:05, due 0:00:15: played to the last poll, 19 s
    assert (q.sample.query_time, q.sample.duration, q.truth.due) == (5.0, 19.0, 15.0)
    pv = _read(tmp_path / "p", "proactivevideoqa")
    assert pv.malformed[0].endswith(
        "item 2 (v1-q1): answer[0].reply_timespan: end 3 before start 9"
    )
    turn = pv.streams[0].truth.turns[0]
    assert (turn.span, turn.related_end, turn.text) == ((4.0, 10.0), 7.0, "red square from left")
    assert pv.streams[0].sample.duration == 18.0  # played to the last reply span's end


def test_hms_seconds():
    assert hms_seconds("00:10:18", "t") == 618.0
    assert hms_seconds("0:04:49", "t") == 289.0
    with pytest.raises(ValueError, match="t: must be a time"):
        hms_seconds("10.5", "t")


@pytest.mark.parametrize(
    ("content", "msg"),
    [
        (None, "file not found"),
        ("{not json", "not a JSON file"),
        ('{"id": 1}', "expected a JSON list of OVO-Bench items"),
        ('[{"id": 1, "task": "REC"}]', "no usable ovo-forward item (1 read); first: "),
    ],
)
def test_a_bad_file_is_one_error(tmp_path, content, msg):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=re.escape(msg)):
        read_benchmark("ovo-forward", path, tmp_path)


# ----------------------------------------------------------------------------- OVO-Bench


def test_ovo_probe_rules():
    # the last response in (previous probe, t]; probes may repeat a time
    said = [(3.0, "a"), (4.0, "b"), (9.0, "c")]
    assert ovo_probe_responses(said, [4.0, 8.0, 12.0]) == ["b", None, "c"]
    assert ovo_probe_score("REC", "I count 1 and 2", 12) == 1  # digits joined: "12"
    assert ovo_probe_score("REC", "2 times", 2) == 1
    assert ovo_probe_score("REC", None, 0) == 0  # silence never scores, even for count 0
    assert ovo_probe_score("SSR", "Y", 1) == ovo_probe_score("CRR", "N", 0) == 1
    assert ovo_probe_score("SSR", "yes", 1) == 0  # "Yes" is matched case-sensitively
    assert ovo_probe_score("CRR", "Not yet", 0) == 1  # "No" inside the text counts


OVO_PERFECT = {
    "ovo-1": resp((4, "0"), (8, "1"), (12, "2")),
    "ovo-2-0": resp((5, "Yes"), (10, "No")),
    "ovo-2-1": resp((15, "Yes")),
    "ovo-3": resp((2, "No"), (6, "No"), (10, "Yes")),
}
# every response 1 s late, so it lands in the next probe's interval or after the last:
# REC: 4 -> none; 8 -> "0" (5 s) != 1; 12 -> "1" (9 s) != 2: 0/3.
# SSR: 5 -> none; 10 -> "Yes" (6 s) for type 0: 0; 15 -> none: 0/3.
# CRR: 2 -> none; 6 -> "No" (3 s) for type 0: 1; 10 -> "No" (7 s) for type 1: 0: 1/3.
OVO_LATE = {sid: [{**r, "time": r["time"] + 1} for r in rs] for sid, rs in OVO_PERFECT.items()}


@pytest.mark.parametrize(
    ("preds", "accs", "avg"),
    [
        (OVO_PERFECT, {"CRR": 1.0, "REC": 1.0, "SSR": 1.0}, 1.0),
        ({}, {"CRR": 0.0, "REC": 0.0, "SSR": 0.0}, 0.0),  # silent: every probe None
        (OVO_LATE, {"CRR": 1 / 3, "REC": 0.0, "SSR": 0.0}, 1 / 9),  # (0 + 0 + 1/3) / 3
    ],
    ids=["perfect", "silent", "late"],
)
def test_ovo_scores(tmp_path, preds, accs, avg):
    m = score_benchmark("ovo-forward", _read(tmp_path, "ovo-forward").streams, preds)
    assert {k: v["accuracy"] for k, v in m["tasks"].items()} == pytest.approx(accs)
    assert m["forward_avg"] == pytest.approx(avg)
    assert {k: v["n_probes"] for k, v in m["tasks"].items()} == {"CRR": 3, "REC": 3, "SSR": 3}


# ----------------------------------------------------------------------------- StreamingBench

# sb-0-0: asked 2, due 10, polls 3..14; sb-0-1: asked 5, due 15, polls 6..19;
# sb-1-0: asked 1, due 6, polls 2..10. Correct when the last poll is within 2 s of due.
SB_PERFECT = {
    "sb-0-0": resp((10, "Red square")),
    "sb-0-1": resp((15, "x")),
    "sb-1-0": resp((6, "y")),
}
# late: 13 (3 s late: wrong), 17 (2 s: right), 9 (3 s: wrong) -> 1/3
SB_LATE = {"sb-0-0": resp((13, "a")), "sb-0-1": resp((17, "b")), "sb-1-0": resp((9, "c"))}
# a response before the question (1 s) is never polled; the first polled one ends polling:
# sb-0-0 answers at 9 (1 s early: right) although it speaks again at 10
SB_EARLY = {"sb-0-0": resp((1, "a"), (9, "b"), (10, "c"))}


@pytest.mark.parametrize(
    ("preds", "acc", "times"),
    [
        (SB_PERFECT, 1.0, {"sb-0-0": 10, "sb-0-1": 15, "sb-1-0": 6}),
        ({}, 0.0, {"sb-0-0": 14, "sb-0-1": 19, "sb-1-0": 10}),  # silent: polled to due + 4
        (SB_LATE, 1 / 3, {"sb-0-0": 13, "sb-0-1": 17, "sb-1-0": 9}),
        (SB_EARLY, 1 / 3, {"sb-0-0": 9, "sb-0-1": 19, "sb-1-0": 10}),
    ],
    ids=["perfect", "silent", "late", "early"],
)
def test_streamingbench_scores(tmp_path, preds, acc, times):
    streams = _read(tmp_path, "streamingbench-proactive").streams
    m = score_benchmark("streamingbench-proactive", streams, preds)
    assert m["accuracy"] == pytest.approx(acc)
    assert m["tasks"]["Proactive Output"]["total"] == 3
    assert m["answer_times"] == times


# ----------------------------------------------------------------------------- ProactiveVideoQA

# turns: v1 [4, 10] "red square from left" (evidence ends 7), v1 [12, 18] "blue circle",
# v2 [2, 6] "green ball"; exact judge; start score 0.25.
PV_PERFECT = {
    "pvqa-v1-q0": resp((4, "red square from left"), (12, "blue circle")),
    "pvqa-v2-q0": resp((2, "green ball")),
}
# the right text at each span's end: omega 0.5 puts it mid-span: half at 0.25, half at 1
# -> 0.625 for every turn; omega 0 at the very end -> 0.25; omega 1 at the start -> 1
PV_LATE = {
    "pvqa-v1-q0": resp((10, "red square from left"), (18, "blue circle")),
    "pvqa-v2-q0": resp((6, "green ball")),
}


@pytest.mark.parametrize(
    ("preds", "expected"),
    [
        (PV_PERFECT, {"0.0": 1.0, "0.5": 1.0, "1.0": 1.0}),
        ({}, {"0.0": 0.25, "0.5": 0.25, "1.0": 0.25}),  # silent: start score everywhere
        (PV_LATE, {"0.0": 0.25, "0.5": 0.625, "1.0": 1.0}),
    ],
    ids=["perfect", "silent", "late"],
)
def test_pvqa_scores(tmp_path, preds, expected):
    streams = _read(tmp_path, "proactivevideoqa").streams
    m = score_benchmark("proactivevideoqa", streams, preds, judge=ExactJudge())
    assert m["pauc"] == pytest.approx(expected)
    assert (m["num_videos"], m["num_turns"]) == (2, 3)


def test_pvqa_judges_replies_so_far_and_drops_late_regressions(tmp_path):
    streams = _read(tmp_path, "proactivevideoqa").streams
    said = resp((5, "red square from left"), (6, "red square from left"), (8, "blue"))
    m = score_benchmark("proactivevideoqa", streams, {"pvqa-v1-q0": said}, judge=ExactJudge())
    # the repeat at 6 s is not judged; at 8 s the judge reads "red square from left blue"
    # (exact: 0) after the evidence ended at 7 s, below 1.0: dropped. Turn 1, omega 0.5:
    # x = 0.5, 0.5 s at 0.25 + 5.5 s at 1 = 5.625 / 6 = 0.9375; the other turns 0.25
    assert m["turns"]["pvqa-v1-q0"][0] == [(5.0, 1.0), (8.0, 0.0)]
    assert m["pauc"]["0.5"] == pytest.approx((0.9375 + 0.25 + 0.25) / 3)


def test_unknown_prediction_ids_are_an_error(tmp_path):
    streams = _read(tmp_path, "streamingbench-proactive").streams
    with pytest.raises(UserError, match="not in the benchmark, e.g. 'sb-9-9'"):
        score_benchmark("streamingbench-proactive", streams, {"sb-9-9": []})


# ----------------------------------------------------------------------------- CLI


def _eval(tmp_path: Path, name: str, videos: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--benchmark",
        name,
        "--annotations",
        str(FILES[name]),
        "--videos",
        str(videos),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def test_cli_scores_predictions(tmp_path, capsys):
    videos = _videos(tmp_path / "v", "streamingbench-proactive")
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "".join(json.dumps({"id": k, "responses": v}) + "\n" for k, v in SB_LATE.items())
    )
    assert (
        cli_main(_eval(tmp_path, "streamingbench-proactive", videos, "--predictions", str(preds)))
        == 0
    )
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert scores["skipped"] == {
        "malformed": 1,
        "missing_video": 1,
        "bad_video": 0,
        "other_tasks": 0,
    }
    assert len(scores["problems"]) == 2
    out = capsys.readouterr()
    assert "accuracy x100: 33.3" in out.out and "sample_3_missing.mp4" in out.err


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--benchmark", "ovo", "--annotations", "a", "--videos", "{tmp}"], "choose one of"),
        (["--benchmark", "ovo-forward", "--annotations", "a"], "needs --videos"),
        (
            ["--benchmark", "ovo-forward", "--annotations", "{tmp}/no.json", "--videos", "{tmp}"],
            "file not found",
        ),
        (["--annotations", "a"], "--manifest is required"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, msg):
    argv = ["eval", "--out", str(tmp_path / "o")] + [
        a.replace("{tmp}", str(tmp_path)) for a in argv
    ]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("streampro eval: error: ") and err.count("\n") == 1 and msg in err


# ----------------------------------------------------------------------------- end to end
# The tiny policy (untrained) plays each fixture's streams on synth-rendered videos through
# the episode loop and decoder of every evaluation; the scores must be the benchmark's own
# scoring of the predictions file it wrote.


@pytest.fixture(scope="module")
def synth_videos(tmp_path_factory) -> list[Path]:
    """Three 20-s StreamPro-Synth videos (64x64), laid out under each benchmark's names."""
    from streampro.data.synth import synthesize
    from streampro.data.synth_scene import SceneParams

    out = tmp_path_factory.mktemp("bench-synth")
    samples = synthesize(
        out,
        per_task=1,
        seed=3,
        params=SceneParams(width=64, height=64),
        min_duration=20,
        max_duration=20,
        tasks=("EU", "OU", "AA"),
        progress=False,
        workers=1,
    )
    return [s.video_path(out) for s in samples]


@pytest.fixture(scope="module")
def bench_cfg(tmp_path_factory):
    from streampro.config import load_config

    cache = tmp_path_factory.mktemp("bench-cache")
    return load_config(str(REPO / "configs" / "smoke.yaml"), [f"data.cache_dir={cache}"])


def _check_run(name: str, out: Path, data, scores: dict, tmp_path: Path, videos: Path) -> None:
    """Counts as the fixture's; metrics == the scorer on predictions.jsonl, in Python and
    through `streampro eval --benchmark --predictions`."""
    streams, items, malformed, missing, other = COUNTS[name]
    assert (scores["streams_scored"], scores["items"]) == (streams, items)
    assert scores["skipped"] == {
        "malformed": malformed,
        "missing_video": missing,
        "bad_video": 0,
        "other_tasks": other,
    }
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [s.sample.id for s in data.streams]
    preds = {x["id"]: x["responses"] for x in lines}
    again = score_benchmark(name, data.streams, preds, judge=ExactJudge())
    assert json.loads(json.dumps(again)) == scores["metrics"]
    re_out = tmp_path / "rescored"
    assert (
        cli_main(_eval(re_out, name, videos, "--predictions", str(out / "predictions.jsonl"))) == 0
    )
    rescored = json.loads((re_out / "out" / "scores.json").read_text())
    assert rescored["metrics"] == scores["metrics"]


@pytest.mark.slow
def test_cli_runs_the_policy_end_to_end(tmp_path, ray_local, tiny_path, synth_videos, bench_cfg):
    """`streampro eval --benchmark proactivevideoqa --checkpoint TINY` as a user runs it."""
    name = "proactivevideoqa"
    videos = _videos(tmp_path / "videos", name, synth_videos)
    argv = _eval(tmp_path, name, videos, "--checkpoint", tiny_path, "--config")
    argv += [str(REPO / "configs" / "smoke.yaml"), f"data.cache_dir={bench_cfg.data.cache_dir}"]
    assert cli_main(argv) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    data = read_benchmark(name, FILES[name], videos)
    _check_run(name, tmp_path / "out", data, scores, tmp_path, videos)


@pytest.fixture(scope="module")
def shared_rollout(ray_local, tiny_path, bench_cfg):
    """One engine for the three benchmarks (started after the CLI test's is shut down)."""
    from streampro.actors.rollout import make_rollout_group

    group = make_rollout_group(bench_cfg, tiny_path)
    yield group
    group.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_policy_end_to_end(tmp_path, name, synth_videos, shared_rollout, bench_cfg):
    from streampro.eval_benchmarks import run_benchmark

    videos = _videos(tmp_path / "videos", name, synth_videos)
    data = read_benchmark(name, FILES[name], videos)
    scores = run_benchmark(bench_cfg, data, tmp_path / "run", rollout=shared_rollout)
    assert (tmp_path / "run" / "scores.json").is_file()
    _check_run(name, tmp_path / "run", data, scores, tmp_path, videos)
