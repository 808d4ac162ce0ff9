"""Manifest schema: JSONL/Parquet round trip and every validation error, named."""

from __future__ import annotations

import json

import pytest

from streampro.data.schema import (
    Answer,
    ManifestError,
    Sample,
    load_manifest,
    validate_row,
    write_manifest,
)
from streampro.tasks import resolve_answer


def _samples() -> list[Sample]:
    return [
        Sample(
            id="eu-1",
            video="videos/eu-1.mp4",
            task="EU",
            question="q1",
            query_time=0.0,
            answers=[
                Answer(start=10.0, end=14.0, text="red square from left"),
                Answer(time=31.0, text="4-9", span=(4.0, 9.0), window=(-3.0, 3.0), tau=4.0),
                Answer(time=52.0, text="x", tau=(2.0, 4.0)),
            ],
            rubric=["must respond at least 3 times"],
            meta={"k": [1, 2], "s": "v"},
            duration=60.0,
        ),
        Sample(
            id="my-1",
            video="/abs/v.webm",
            task="MY",
            question="q2",
            query_time=2.5,
            answers=[],
            dimension="PU",
        ),
    ]


def test_jsonl_and_parquet_round_trip_identically(tmp_path):
    samples = _samples()
    write_manifest(samples, tmp_path / "m.jsonl")
    write_manifest(samples, tmp_path / "m.parquet")
    from_jsonl, p1 = load_manifest(tmp_path / "m.jsonl")
    from_parquet, p2 = load_manifest(tmp_path / "m.parquet")
    assert p1 == p2 == []
    assert from_jsonl == samples == from_parquet
    assert [s.to_dict() for s in from_parquet] == [s.to_dict() for s in samples]
    row = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert row["answers"][1] == {
        "time": 31.0,
        "text": "4-9",
        "span": [4.0, 9.0],
        "window": [-3.0, 3.0],
        "tau": 4.0,
    }
    assert "dimension" not in row and row["duration"] == 60.0
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_video_path_and_task_defaults(tmp_path):
    s, custom = _samples()
    assert s.video_path(tmp_path) == tmp_path / "videos/eu-1.mp4"
    assert str(custom.video_path(tmp_path)) == "/abs/v.webm"
    assert (s.get_dimension(), custom.get_dimension()) == ("PU", "PU")
    eu, tg, rf = s.resolved()
    assert (eu.best, eu.lo, eu.hi, eu.tau_early) == (10.0, 10.0, 17.0, 4.0)  # EU: [start, end+3]
    assert (tg.lo, tg.hi, tg.span) == (28.0, 34.0, (4.0, 9.0))
    assert (rf.tau_early, rf.tau_late) == (2.0, 4.0)
    r = resolve_answer({"time": 20.0, "text": "t"}, "RF")
    assert (r.lo, r.hi, r.tau_early, r.tau_late) == (19.0, 23.0, 2.0, 4.0)


BASE = {
    "id": "a",
    "video": "v.mp4",
    "task": "OU",
    "question": "q",
    "query_time": 5.0,
    "answers": [{"time": 6.0, "text": "now red"}],
}

INVALID = [  # (change to BASE, expected field and words in the message)
    ({"answers": [{"time": 4.0, "text": "t"}]}, "answers[0].time: 4 is before query_time 5"),
    (
        {"answers": [{"start": 3.0, "end": 9.0, "text": "t"}]},
        "answers[0].start: 3 is before query_time",
    ),
    ({"answers": [{"start": 9.0, "end": 7.0, "text": "t"}]}, "answers[0].end: 7 is before start 9"),
    (
        {"answers": [{"time": 6.0, "text": "t", "window": [3, -3]}]},
        "answers[0].window: lo 3 > hi -3",
    ),
    ({"task": "XX"}, "task: unknown task 'XX'"),
    (
        {"answers": [{"time": float("nan"), "text": "t"}]},
        "answers[0].time: must be a finite number",
    ),
    (
        {"answers": [{"time": float("inf"), "text": "t"}]},
        "answers[0].time: must be a finite number",
    ),
    ({"query_time": float("nan")}, "query_time: must be a finite number"),
    (
        {"answers": [{"time": 6.0, "start": 6.0, "end": 7.0, "text": "t"}]},
        "give either time or start/end",
    ),
    ({"answers": [{"start": 6.0, "text": "t"}]}, "answers[0]: needs time, or both start and end"),
    ({"answers": [{"time": 6.0, "text": ""}]}, "answers[0].text: must be a non-empty string"),
    ({"answers": [{"time": 6.0, "text": "t", "tau": -1}]}, "answers[0].tau: must be a positive"),
    ({"answers": [{"time": 6.0, "text": "t", "span": [9, 4]}]}, "answers[0].span: start 9 > end 4"),
    ({"answers": [{"time": 6.0, "text": "t", "when": 1}]}, "answers[0].when: unknown field"),
    ({"id": ""}, "id: required non-empty string"),
    ({"querytime": 1.0}, "querytime: unknown field"),
    ({"duration": -1}, "duration: must be a positive"),
    ({"dimension": "TR"}, "dimension: 'TR' contradicts task OU (PU)"),
    ({"rubric": "must"}, "rubric: must be a list of strings"),
]


@pytest.mark.parametrize("change,message", INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_each_invalid_case_names_its_field(change, message):
    problems = validate_row({**BASE, **change})
    assert any(message in p for p in problems), problems


def test_custom_task_with_dimension_is_valid():
    assert validate_row({**BASE, "task": "XX", "dimension": "PU"}) == []


def test_load_reports_every_problem_with_file_and_line(tmp_path):
    good = dict(BASE)
    lines = [
        json.dumps(good),
        json.dumps({**BASE, "id": "b", "answers": [{"time": 1.0, "text": "t"}], "task": "ZZ"}),
        "",
        "{not json",
        json.dumps(good),  # duplicate id
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    problems = e.value.problems
    assert any(p.startswith(f"{path}:2: answers[0].time") for p in problems)
    assert any(p.startswith(f"{path}:2: task: unknown task 'ZZ'") for p in problems)
    assert any(p.startswith(f"{path}:4: json:") for p in problems)
    assert any(p.startswith(f"{path}:5: id: duplicate id 'a' (first on line 1)") for p in problems)
    assert len(problems) == 4 and "4 problem(s)" in str(e.value) and "\n" not in str(e.value)
    samples, skipped = load_manifest(path, skip_bad=True)  # skip, count, report
    assert [s.id for s in samples] == ["a"] and skipped == problems


def test_parquet_rows_are_validated_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**BASE, "answers": [{"time": 1.0, "text": "t"}], "meta": "{}"}, {**BASE, "id": "b"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m.parquet:1: answers\[0\].time: 1 is before"):
        load_manifest(tmp_path / "m.parquet")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        load_manifest(tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "missing.jsonl")
