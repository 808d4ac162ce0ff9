"""Streamo's two data layouts (tests/fixtures/streamo/, written in the exact format of
maifoundations/Streamo's dataset/example/ files) import into valid manifests with the answer
times they state; unreadable records are counted and named; the CLI writes the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streampro.cli import main
from streampro.data.schema import load_manifest
from streampro.data.streamo import import_streamo

FIX = Path(__file__).parent / "fixtures" / "streamo"


def _answers(s) -> list[tuple[float, str]]:
    return [(a.time, a.text) for a in s.answers]


def test_raw_layout_times_follow_streamos_converter():
    rep = import_streamo(FIX / "raw_data.json")
    assert rep.problems == [] and rep.records == 3
    a, b, c = rep.samples
    # st_time 5, end_time 6: standby over <4s-5s>, <5s-6s>; the response comes in <6s-7s>.
    assert _answers(a) == [(7.0, "The ball is red.")]
    assert a.question == "What colour is the ball that enters from the left?"
    assert a.query_time == 0.0 and a.meta["streamo_question_times"] == [4.0]
    assert a.meta["streamo_events"] == [[4.0, 6.0]]
    assert (a.task, a.dimension, a.video) == ("streamo-QA", "PU", "videos/clip_a.mp4")
    assert _answers(b) == [(7.0, "It bounces off the top wall.")]
    # Times given as strings; a point response at time 8 is said in <7s-8s>.
    assert _answers(c) == [
        (3.0, "A circle appears in the centre."),
        (8.0, "The circle turns blue."),
    ]
    assert c.task == "streamo-Event Caption"


def test_stream_layout_agrees_with_raw_layout():
    raw = import_streamo(FIX / "raw_data.json")
    stream = import_streamo(FIX / "stream_format.json")
    assert stream.problems == [] and len(stream.samples) == 3
    for r, s in zip(raw.samples, stream.samples):
        assert _answers(s) == _answers(r)
        assert (s.question, s.query_time, s.video, s.task) == (
            r.question,
            r.query_time,
            r.video,
            r.task,
        )
        assert s.duration == 10.0
    # The question is repeated at <4s-5s> in the stream layout, as Streamo's converter does.
    assert stream.samples[0].meta["streamo_question_times"] == [0.0, 4.0]


def test_unstamped_stream_example_counts_chunks():
    rep = import_streamo(FIX / "streaming_video_example.json")
    (s,) = rep.samples
    # </Standby> is silence; responses after chunks 3 and 5 (one chunk per second).
    assert _answers(s) == [
        (3.0, "A man in a white t-shirt greets the camera"),
        (5.0, "He then walks over to a staircase"),
    ]
    assert s.question == "Find all significant events in the video and describe them."
    assert s.duration == 5.0 and s.video == "/path/to/video.mp4"


def test_unreadable_records_are_counted_and_named():
    rep = import_streamo(FIX / "mixed_bad.json", video_root="/data/streamo")
    assert rep.records == 6 and len(rep.samples) == 1 and len(rep.problems) == 5
    assert rep.samples[0].video == "/data/streamo/videos/clip_a.mp4"
    text = "\n".join(rep.problems)
    for needle in (
        "record 2 (no_question.mp4): question",
        "record 3 (bad_time.mp4): response[0].st_time: not a time",
        "record 4 (bad_turn.mp4): messages: turn 1: not a decision",
        "record 5 (no_video.mp4): no video",
        "record 6: not a JSON object",
    ):
        assert needle in text, text


def test_cli_import_writes_a_valid_manifest(tmp_path, capsys):
    out = tmp_path / "streamo.jsonl"
    assert main(["data", "import-streamo", str(FIX / "stream_format.json"), "--out", str(out)]) == 0
    samples, problems = load_manifest(out)
    assert problems == [] and [s.id for s in samples] == [f"streamo-{i:06d}" for i in (1, 2, 3)]
    assert "3 samples, 4 answers from 3 records; 0 unreadable" in capsys.readouterr().out
    # Unreadable records: named on stderr, exit 1 (0 with --skip-bad), good rows written.
    bad = [
        "data",
        "import-streamo",
        str(FIX / "mixed_bad.json"),
        "--out",
        str(tmp_path / "b.jsonl"),
    ]
    assert main(bad) == 1
    assert "5 unreadable record(s) skipped" in capsys.readouterr().out
    assert main([*bad, "--skip-bad"]) == 0
    assert len(load_manifest(tmp_path / "b.jsonl")[0]) == 1


def test_cli_import_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "import-streamo", str(tmp_path / "none.json"), "--out", "x.jsonl"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Streamo file not found" in err[0]
    (tmp_path / "junk.json").write_text(json.dumps([{"foo": 1}]))
    assert main(["data", "import-streamo", str(tmp_path / "junk.json"), "--out", "x.jsonl"]) == 1
    assert "no readable record" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["raw_data.json", "stream_format.json"])
def test_fixtures_are_streamos_format(name):
    """The fixtures keep Streamo's field names (a guard against drifting from its files)."""
    data = json.loads((FIX / name).read_text())
    keys = {
        "raw_data.json": {
            "video_name",
            "video_path",
            "task_type",
            "source",
            "question",
            "response",
        },
        "stream_format.json": {"messages", "videos", "video_name", "task_type", "source"},
    }[name]
    assert all(set(rec) == keys for rec in data)
