"""Streamo's streaming SFT data (github.com/maifoundations/Streamo) as this project's manifests.

Streamo publishes two layouts (dataset/example/ in its repository), JSON arrays or JSONL:

- raw: `video_path`, `task_type`, `question` as [{content, time}], `response` as
  [{content, st_time, end_time}] or [{content, time}] (times in seconds, often strings);
- stream: `messages` (system, then user turns `[question\\n]<Xs-Ys>\\n<stream>` alternating
  with assistant turns `</Silence>`, `</Standby>` or `</Response> text`) and `videos`.

Both map onto one manifest row per record, following Streamo's own converter
(scripts/convert_streaming_video.py), where a time T names the chunk `<(T-1)s-Ts>`:

- the question is asked at the start (query_time 0: the converter always asks it in the
  first chunk; later repeats are kept in meta.streamo_question_times);
- a response with st_time/end_time is given in the chunk after its event, `<end_time s -
  (end_time+1) s>`: its answer time is that chunk's end, end_time + 1 (the event span
  [st_time - 1, end_time] goes to meta.streamo_events); a response with `time` T is given in
  `<(T-1)s-Ts>`: answer time T. In the stream layout the answer time is the end of the
  chunk whose turn says `</Response>`, which agrees with the raw rule;
- `</Standby>` becomes silence, as in StreamPro (a stream has two decisions);
- the task is `streamo-<task_type>` with a dimension (PU unless --dimension says otherwise).

A record that cannot be read is skipped, counted and named (`ImportReport.problems`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streampro.data.schema import Sample, validate_row, write_manifest
from streampro.errors import UserError

SILENCE, STANDBY, RESPONSE = "</Silence>", "</Standby>", "</Response>"
STREAM = "<stream>"
_STAMP = re.compile(r"<\s*([0-9.]+)\s*s\s*-\s*([0-9.]+)\s*s\s*>")
DEFAULT_DIMENSION = "PU"


@dataclass
class ImportReport:
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One "file:record N (name): reason" per record that could not be read."""
    records: int = 0


class RecordError(ValueError):
    """One record is unreadable (the message says why)."""


def _seconds(v: Any, what: str) -> float | None:
    """Streamo writes times as numbers or strings; '' or None means absent."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        t = float(v)
    except (TypeError, ValueError):
        raise RecordError(f"{what}: not a time in seconds: {v!r}") from None
    if not t >= 0:
        raise RecordError(f"{what}: negative or NaN time {v!r}")
    return t


def _common(rec: dict, *, index: int, layout: str, video: str, dimension: str) -> dict:
    task_type = str(rec.get("task_type") or "unknown").strip()
    meta = {"streamo_layout": layout, "streamo_record": index}
    for key in ("video_name", "source", "task_type"):
        if rec.get(key):
            meta[f"streamo_{key}"] = rec[key]
    return {
        "id": f"streamo-{index:06d}",
        "video": video,
        "task": f"streamo-{task_type}",
        "dimension": dimension,
        "meta": meta,
    }


def _video(rec: dict, video_root: str | None) -> str:
    path = rec.get("video_path")
    if not path:
        videos = rec.get("videos")
        path = videos[0] if isinstance(videos, list) and videos else videos
    if not isinstance(path, str) or not path.strip():
        raise RecordError("no video (video_path or videos[0])")
    return str(Path(video_root) / path) if video_root else path


def from_raw(rec: dict, *, index: int, video_root: str | None, dimension: str) -> dict:
    """A raw-layout record -> a manifest row (dict)."""
    questions = rec.get("question")
    if not isinstance(questions, list) or not questions:
        raise RecordError("question: must be a non-empty list of {content, time}")
    texts: list[str] = []
    for q in questions:
        t = q.get("content") if isinstance(q, dict) else None
        if not isinstance(t, str) or not t.strip():
            raise RecordError("question: every item needs a non-empty content")
        texts.append(t)
    responses = rec.get("response")
    if not isinstance(responses, list) or not responses:
        raise RecordError("response: must be a non-empty list")
    answers, events = [], []
    for i, r in enumerate(responses):
        if not isinstance(r, dict) or not str(r.get("content") or "").strip():
            raise RecordError(f"response[{i}]: needs a non-empty content")
        st = _seconds(r.get("st_time"), f"response[{i}].st_time")
        end = _seconds(r.get("end_time"), f"response[{i}].end_time")
        t = _seconds(r.get("time"), f"response[{i}].time")
        if st is not None and end is not None:
            if end < st:
                raise RecordError(f"response[{i}]: end_time {end:g} before st_time {st:g}")
            answers.append({"time": end + 1.0, "text": r["content"].strip()})
            events.append([max(0.0, st - 1.0), end])
        elif t is not None:
            answers.append({"time": t, "text": r["content"].strip()})
        else:
            raise RecordError(f"response[{i}]: needs st_time and end_time, or time")
    row = _common(
        rec, index=index, layout="raw", video=_video(rec, video_root), dimension=dimension
    )
    row.update(question=texts[0].strip(), query_time=0.0, answers=answers)
    times = [_seconds(q.get("time"), f"question[{k}].time") for k, q in enumerate(questions)]
    row["meta"]["streamo_question_times"] = [max(0.0, t - 1.0) for t in times if t is not None]
    if len(set(texts)) > 1:
        row["meta"]["streamo_other_questions"] = [t.strip() for t in texts[1:]]
    if events:
        row["meta"]["streamo_events"] = events
    return row


def _user_turn(content: str, k: int, fps: float) -> tuple[str, float, float]:
    """(question text or '', start, end) of one user turn; unstamped turns count chunks."""
    if STREAM not in content:
        raise RecordError(f"user turn {k}: no {STREAM}")
    m = _STAMP.search(content)
    if m:
        start, end = float(m.group(1)), float(m.group(2))
        text = content[: m.start()]
    else:
        start, end = k / fps, (k + 1) / fps
        text = content[: content.index(STREAM)]
    return text.strip(), start, end


def from_stream(
    rec: dict, *, index: int, video_root: str | None, dimension: str, fps: float
) -> dict:
    """A stream-layout record -> a manifest row (dict)."""
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("messages: must be a non-empty list")
    turns = [m for m in msgs if not (isinstance(m, dict) and m.get("role") == "system")]
    if len(turns) % 2 or not turns:
        raise RecordError("messages: user and assistant turns must alternate in pairs")
    question, q_start, asked, answers, end = "", 0.0, [], [], 0.0
    for k in range(0, len(turns), 2):
        user, bot = turns[k], turns[k + 1]
        if not isinstance(user, dict) or user.get("role") != "user":
            raise RecordError(f"messages: turn {k} is not a user turn")
        if not isinstance(bot, dict) or bot.get("role") != "assistant":
            raise RecordError(f"messages: turn {k + 1} is not an assistant turn")
        text, start, end = _user_turn(str(user.get("content", "")), k // 2, fps)
        if text:
            asked.append(start)
            if not question:
                question, q_start = text, start
        said = str(bot.get("content", "")).strip()
        if said.startswith(RESPONSE):
            reply = said[len(RESPONSE) :].strip()
            if not reply:
                raise RecordError(f"messages: turn {k + 1}: {RESPONSE} without text")
            answers.append({"time": end, "text": reply})
        elif said not in (SILENCE, STANDBY):
            raise RecordError(f"messages: turn {k + 1}: not a decision: {said[:40]!r}")
    if not question:
        raise RecordError("messages: no user turn carries a question")
    row = _common(
        rec, index=index, layout="stream", video=_video(rec, video_root), dimension=dimension
    )
    row.update(question=question, query_time=q_start, answers=answers, duration=end)
    row["meta"]["streamo_question_times"] = asked
    return row


def _records(path: Path) -> list[tuple[int, Any, str | None]]:
    """(record number, record, parse error) of a JSON array / object file or a JSONL file."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        out: list[tuple[int, Any, str | None]] = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    out.append((i, json.loads(line), None))
                except json.JSONDecodeError as e:
                    out.append((i, None, f"json: {e.msg} at column {e.colno}"))
        return out
    data = data if isinstance(data, list) else [data]
    return [(i, rec, None) for i, rec in enumerate(data, start=1)]


def import_streamo(
    path: str | os.PathLike,
    *,
    video_root: str | None = None,
    dimension: str = DEFAULT_DIMENSION,
    fps: float = 1.0,
) -> ImportReport:
    """Read a Streamo file (either layout, mixed is fine) into validated samples."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: Streamo file not found")
    report = ImportReport()
    for n, rec, err in _records(path):
        report.records += 1
        name = rec.get("video_name", "") if isinstance(rec, dict) else ""
        where = f"{path}:record {n}" + (f" ({name})" if name else "")
        try:
            if err:
                raise RecordError(err)
            if not isinstance(rec, dict):
                raise RecordError(f"not a JSON object ({type(rec).__name__})")
            if "messages" in rec:
                row = from_stream(rec, index=n, video_root=video_root, dimension=dimension, fps=fps)
            elif "question" in rec and "response" in rec:
                row = from_raw(rec, index=n, video_root=video_root, dimension=dimension)
            else:
                raise RecordError("neither layout: needs messages, or question and response")
            problems = validate_row(row)
            if problems:
                raise RecordError("; ".join(problems))
            report.samples.append(Sample.from_dict(row))
        except RecordError as e:
            report.problems.append(f"{where}: {e}")
    return report


def import_main(args) -> int:
    """`streampro data import-streamo FILE --out manifest.jsonl [--video-root DIR]`."""

    if not args.out:
        raise UserError("import-streamo needs --out (a .jsonl or .parquet manifest)")
    report = import_streamo(
        args.manifest, video_root=args.video_root, dimension=args.dimension or DEFAULT_DIMENSION
    )
    for p in report.problems:
        print(p, file=sys.stderr)
    if not report.samples:
        raise UserError(f"{args.manifest}: no readable record ({report.records} read)")
    out = write_manifest(report.samples, args.out)
    answers = sum(len(s.answers) for s in report.samples)
    print(
        f"{out}: {len(report.samples)} samples, {answers} answers from {report.records} "
        f"records; {len(report.problems)} unreadable record(s) skipped"
    )
    return 1 if report.problems and not args.skip_bad else 0
