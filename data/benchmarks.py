"""Readers of three public proactive-response benchmarks, as streams the policy plays.

Each benchmark's annotation file becomes `BenchStream`s: a `Sample` (the video, the question
asked at query_time, the stream's length) plus the ground truth its scorer needs
(rewards/benchmarks.py). docs/benchmarks.md cites the released file each layout comes from.

- `ovo-forward`: OVO-Bench's JSON list, forward active responding items only (REC, SSR, CRR;
  other tasks are counted and left out), probes `test_info[k].realtime` in seconds. One stream
  per item (per distinct step for SSR), played up to its last probe.
- `streamingbench-proactive`: StreamingBench's list of videos, each with `questions` carrying
  `time_stamp`, `ground_truth_time_stamp` (H:MM:SS) and `ground_truth_output`. One stream per
  question, asked at time_stamp, played to ground truth + 4 s (the evaluator's last poll).
- `proactivevideoqa`: ProactiveVideoQA's JSON list of `question_id`, `video`, `conversation`
  (the first turn is the question) and `answer` turns with `reply_timespan`, `content` and
  optionally `related_timespan`. One stream per item, played to the last reply span's end.

A malformed item or one whose video is missing is counted and named ("file: item N (id):
field: message"), never silently dropped; a file that cannot be read at all, or has no
readable item, raises UserError in one line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streampro.data.schema import Sample
from streampro.errors import UserError

OVO_FORWARD_TASKS = ("REC", "SSR", "CRR")
POLL_AFTER_S = 4.0
"""StreamingBench polls until ground truth + 4 s."""


@dataclass(frozen=True)
class OvoTruth:
    """One OVO-Bench forward stream: its probes (realtime, expected) in annotation order;
    expected is the REC count or the SSR / CRR type (1: Yes, 0: No)."""

    task: str
    probes: tuple[tuple[float, int], ...]
    item_id: str


@dataclass(frozen=True)
class PollTruth:
    """One StreamingBench proactive question: asked at `start`, due at `due` (seconds)."""

    start: float
    due: float
    output: str
    task_type: str


@dataclass(frozen=True)
class ReplyTurn:
    """One ProactiveVideoQA answer turn (a `rewards.pauc.SpanLike`)."""

    span: tuple[float, float]
    related_end: float | None
    text: str


@dataclass(frozen=True)
class ReplyTruth:
    question: str
    turns: tuple[ReplyTurn, ...]
    tag: str


Truth = OvoTruth | PollTruth | ReplyTruth


@dataclass
class BenchStream:
    sample: Sample
    """What the policy plays: absolute video path, question, query_time, duration."""
    truth: Truth


@dataclass
class BenchmarkData:
    name: str
    path: str = ""
    """The annotation file."""
    streams: list[BenchStream] = field(default_factory=list)
    items: int = 0
    """Annotation items read (streams may be more: SSR steps, StreamingBench questions)."""
    malformed: list[str] = field(default_factory=list)
    missing_video: list[str] = field(default_factory=list)
    other_tasks: int = 0
    """OVO-Bench items of backward / real-time tasks, not part of forward active responding."""


Found = tuple[str, BenchStream | str]
"""(stream id, the stream or what is wrong with it) as an item reader returns them."""


class ItemError(ValueError):
    """One item is malformed; the message is "field: what is wrong"."""


def _num(v: Any, name: str, *, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise ItemError(f"{name}: must be a finite number >= {lo:g}, got {v!r}")
    return float(v)


def _text(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ItemError(f"{name}: must be a non-empty string, got {v!r}")
    return v.strip()


def _list(v: Any, name: str) -> list:
    if not isinstance(v, list) or not v:
        raise ItemError(f"{name}: must be a non-empty list")
    return v


def _load_list(path: Path, what: str) -> list:
    """The file's top-level JSON list, or one UserError line."""
    if not path.is_file():
        raise UserError(f"--annotations {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--annotations {path}: not a JSON file ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"--annotations {path}: expected a JSON list of {what}")
    return data


# ----------------------------------------------------------------------------- OVO-Bench


def _ovo_question(task: str, item: dict, step: str) -> str:
    """The streaming form of OVO-Bench's forward prompts (utils/OVOBench.py build_prompt)."""
    if task == "REC":
        return f"How many times did they {_text(item.get('activity'), 'activity')}? Say the count."
    if task == "SSR":
        return f"Is the person performing this step now: {step}? Answer Yes or No."
    question = _text(item.get("question"), "question")
    return f"{question} Is there enough information to answer? Answer Yes or No."


def _ovo_streams(item: dict) -> list[tuple[str, OvoTruth]]:
    """(question, truth) per stream of one forward item; SSR gets one per distinct step."""
    task, iid = item["task"], str(item["id"])
    groups: dict[str, list[tuple[float, int]]] = {}
    for k, probe in enumerate(_list(item.get("test_info"), "test_info")):
        where = f"test_info[{k}]"
        if not isinstance(probe, dict):
            raise ItemError(f"{where}: must be an object")
        t = _num(probe.get("realtime"), f"{where}.realtime")
        key = "count" if task == "REC" else "type"
        expected = probe.get(key)
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise ItemError(f"{where}.{key}: must be an integer >= 0, got {expected!r}")
        if key == "type" and expected not in (0, 1):
            raise ItemError(f"{where}.type: must be 0 or 1, got {expected!r}")
        step = _text(probe.get("step"), f"{where}.step") if task == "SSR" else ""
        groups.setdefault(step, []).append((t, expected))
    return [
        (_ovo_question(task, item, step), OvoTruth(task, tuple(probes), iid))
        for step, probes in groups.items()
    ]


def _ovo_item(item: Any, videos: Path, n: int, data: BenchmarkData) -> list[Found]:
    if not isinstance(item, dict):
        raise ItemError("item: must be an object")
    if item.get("task") not in OVO_FORWARD_TASKS:
        if not isinstance(item.get("task"), str):
            raise ItemError(f"task: must be a string, got {item.get('task')!r}")
        data.other_tasks += 1
        return []
    if not isinstance(item.get("id"), (int, str)) or isinstance(item.get("id"), bool):
        raise ItemError(f"id: must be an integer or a string, got {item.get('id')!r}")
    video = _text(item.get("video"), "video")
    streams = _ovo_streams(item)
    out: list[Found] = []
    for k, (question, truth) in enumerate(streams):
        sid = f"ovo-{truth.item_id}" + (f"-{k}" if len(streams) > 1 else "")
        last = max(t for t, _ in truth.probes)
        sample = _sample(sid, videos / video, f"OVO-{truth.task}", question, 0.0, last)
        out.append((sid, BenchStream(sample, truth)))
    return out


# ----------------------------------------------------------------------------- StreamingBench


def hms_seconds(v: Any, name: str) -> float:
    """StreamingBench's "H:MM:SS" (or "MM:SS", "SS") in seconds, as its evaluator reads it."""
    parts = v.split(":") if isinstance(v, str) else []
    if not parts or not all(p.strip().isdigit() for p in parts):
        raise ItemError(f"{name}: must be a time like 00:01:05, got {v!r}")
    return float(sum(int(x) * 60**i for i, x in enumerate(reversed(parts))))


def _sb_item(entry: Any, videos: Path, index: int, data: BenchmarkData) -> list[Found]:
    """(question id, stream or its problem) of each question of one video entry."""
    if not isinstance(entry, dict):
        raise ItemError("item: must be an object")
    video = _text(entry.get("video_path"), "video_path")
    out: list[Found] = []
    for j, q in enumerate(_list(entry.get("questions"), "questions")):
        qid = f"sb-{index}-{j}"
        try:
            if not isinstance(q, dict):
                raise ItemError("must be an object")
            start = hms_seconds(q.get("time_stamp"), "time_stamp")
            due = hms_seconds(q.get("ground_truth_time_stamp"), "ground_truth_time_stamp")
            if due < start:
                raise ItemError(f"ground_truth_time_stamp: {due:g} s is before time_stamp")
            truth = PollTruth(
                start,
                due,
                _text(q.get("ground_truth_output"), "ground_truth_output"),
                str(q.get("task_type") or "Proactive Output"),
            )
            path = _sb_video(videos, video)
            question = _text(q.get("question"), "question")
            sample = _sample(qid, path, "SB-proactive", question, start, due + POLL_AFTER_S)
            out.append((qid, BenchStream(sample, truth)))
        except ItemError as e:
            out.append((qid, f"questions[{j}].{e}"))
    return out


def _sb_video(videos: Path, video_path: str) -> Path:
    """video_path as written ("./videos/x.mp4") under --videos, else its file name there."""
    direct = videos / os.path.normpath(video_path)
    return direct if direct.is_file() else videos / Path(video_path).name


# ----------------------------------------------------------------------------- ProactiveVideoQA


def _pair(v: Any, name: str) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise ItemError(f"{name}: must be [start, end], got {v!r}")
    s, e = _num(v[0], f"{name}[0]"), _num(v[1], f"{name}[1]")
    if e < s:
        raise ItemError(f"{name}: end {e:g} before start {s:g}")
    return s, e


def _pvqa_item(item: Any, videos: Path, n: int, data: BenchmarkData) -> list[Found]:
    if not isinstance(item, dict):
        raise ItemError("item: must be an object")
    qid = item.get("question_id")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool) or qid == "":
        raise ItemError(f"question_id: must be a non-empty string or integer, got {qid!r}")
    first = _list(item.get("conversation"), "conversation")[0]
    if not isinstance(first, dict) or first.get("role") != "user":
        raise ItemError("conversation[0]: must be the user's question {role: user, content}")
    question = _text(first.get("content"), "conversation[0].content")
    asked = _num(first.get("time", 0.0), "conversation[0].time")
    turns = []
    for k, a in enumerate(_list(item.get("answer"), "answer")):
        if not isinstance(a, dict):
            raise ItemError(f"answer[{k}]: must be an object")
        span = _pair(a.get("reply_timespan"), f"answer[{k}].reply_timespan")
        related = a.get("related_timespan")
        rel_end = None if related is None else _pair(related, f"answer[{k}].related_timespan")[1]
        turns.append(ReplyTurn(span, rel_end, _text(a.get("content"), f"answer[{k}].content")))
    tag = str(item.get("tag") or item.get("dataset_name") or "")
    end = max(t.span[1] for t in turns)
    path = videos / _text(item.get("video"), "video")
    sample = _sample(f"pvqa-{qid}", path, "PVQA", question, asked, max(end, asked + 1.0))
    return [(sample.id, BenchStream(sample, ReplyTruth(question, tuple(turns), tag)))]


# ----------------------------------------------------------------------------- common


def _sample(
    sid: str, video: Path, task: str, question: str, query_time: float, end: float
) -> Sample:
    """A stream played from 0 s to `end` (the chunk ending at `end` is its last decision)."""
    return Sample(
        id=sid,
        video=str(video.resolve()),
        task=task,
        question=question,
        query_time=query_time,
        dimension="proactive",
        duration=max(end, 1.0),
    )


ItemReader = Callable[[Any, Path, int, BenchmarkData], list[Found]]
READERS: dict[str, tuple[ItemReader, str, str]] = {
    # name -> (reader of one item, what the list holds, the item's id field)
    "ovo-forward": (_ovo_item, "OVO-Bench items", "id"),
    "streamingbench-proactive": (_sb_item, "StreamingBench video entries", "video_path"),
    "proactivevideoqa": (_pvqa_item, "ProactiveVideoQA items", "question_id"),
}
BENCHMARKS = tuple(READERS)


def read_benchmark(
    name: str, annotations: str | os.PathLike, videos: str | os.PathLike
) -> BenchmarkData:
    """Every stream of a benchmark's annotation file, with its problems counted and named."""
    if name not in READERS:
        raise UserError(f"--benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    path, root = Path(annotations), Path(videos)
    if not root.is_dir():
        raise UserError(f"--videos {root}: not a folder")
    reader, what, id_field = READERS[name]
    data = BenchmarkData(name, str(path))
    seen: set[str] = set()
    for n, item in enumerate(_load_list(path, what)):
        data.items += 1
        label = item.get(id_field) if isinstance(item, dict) else None
        where = f"{path}: item {n}" + (f" ({label})" if label not in (None, "") else "")
        try:
            found = reader(item, root, n, data)
        except ItemError as e:
            found = [("", str(e))]
        for sid, got in found:
            _keep(data, seen, sid, got, where)
    if not data.streams:
        problems = data.malformed + data.missing_video
        first = f"; first: {problems[0]}" if problems else ""
        raise UserError(f"--annotations {path}: no usable {name} item ({data.items} read){first}")
    return data


def _keep(
    data: BenchmarkData, seen: set[str], sid: str, got: BenchStream | str, where: str
) -> None:
    """File one stream or one problem: malformed, duplicate id, or missing video."""
    if isinstance(got, str):
        data.malformed.append(f"{where}: {got}")
    elif sid in seen:
        data.malformed.append(f"{where}: id: duplicate stream id {sid!r}")
    elif not Path(got.sample.video).is_file():
        data.missing_video.append(f"{where}: video: not found: {got.sample.video}")
    else:
        seen.add(sid)
        data.streams.append(got)
