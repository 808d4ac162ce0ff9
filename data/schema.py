"""The stream sample format: typed samples, validation, and JSONL / Parquet I/O.

A manifest is JSONL (one sample per line) or Parquet with the same columns. Validation
reports every problem as "file:line: field: message" (line = 1-based row for Parquet), not
only the first. docs/data.md documents the format for users.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import pyarrow as pa

from streampro.errors import UserError
from streampro.tasks import TASKS, ResolvedAnswer, resolve_answer

log = logging.getLogger(__name__)

SAMPLE_FIELDS = (
    "id",
    "video",
    "task",
    "question",
    "query_time",
    "answers",
    "rubric",
    "meta",
    "dimension",
    "duration",
)
ANSWER_FIELDS = ("time", "start", "end", "text", "span", "window", "tau")
MAX_LISTED = 20  # problems spelled out in a ManifestError message (all are in .problems)


class ManifestError(UserError):
    """A manifest that cannot be used; `.problems` lists every "file:line: field: message"."""

    def __init__(self, path: str | os.PathLike, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        shown = "; ".join(problems[:MAX_LISTED])
        more = f"; ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(problems)} problem(s): {shown}{more}")


@dataclass
class Answer:
    """One ground-truth item: a point (`time`) or an interval (`start`, `end`)."""

    time: float | None = None
    start: float | None = None
    end: float | None = None
    text: str = ""
    span: tuple[float, float] | None = None
    """True interval of a TG answer (S_acc = IoU)."""
    window: tuple[float, float] | None = None
    """[lo, hi] added to the point (or to start and end); None = the task's default."""
    tau: float | tuple[float, float] | None = None
    """One tolerance or (early, late); None = the task's default."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name in ANSWER_FIELDS:
            v = getattr(self, name)
            if v is not None:
                d[name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        """Build from an already validated dict (see `validate_row`)."""
        tau = d.get("tau")
        return cls(
            time=_opt_float(d.get("time")),
            start=_opt_float(d.get("start")),
            end=_opt_float(d.get("end")),
            text=str(d.get("text", "")),
            span=_opt_pair(d.get("span")),
            window=_opt_pair(d.get("window")),
            tau=_opt_pair(tau) if isinstance(tau, (list, tuple)) else _opt_float(tau),
        )


@dataclass
class Sample:
    """One stream: a video, a question asked at `query_time`, and its ground truth."""

    id: str
    video: str
    """Path relative to the manifest's folder, or absolute."""
    task: str
    question: str
    query_time: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    rubric: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    dimension: str | None = None
    """Required for custom tasks; the task table's dimension otherwise."""
    duration: float | None = None
    """Stream length in seconds (chunks past it are dropped); None = the whole video."""

    def to_dict(self) -> dict[str, Any]:
        """The manifest row (None-valued optional fields are left out)."""
        d: dict[str, Any] = {
            "id": self.id,
            "video": self.video,
            "task": self.task,
            "question": self.question,
            "query_time": self.query_time,
            "answers": [a.to_dict() for a in self.answers],
            "rubric": list(self.rubric),
            "meta": self.meta,
        }
        if self.dimension is not None:
            d["dimension"] = self.dimension
        if self.duration is not None:
            d["duration"] = self.duration
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        """Validate and build; raises ManifestError listing every problem."""
        problems = validate_row(d)
        if problems:
            raise ManifestError(f"sample {d.get('id', '?')!r}", problems)
        return cls(
            id=d["id"],
            video=d["video"],
            task=d["task"],
            question=d["question"],
            query_time=float(d.get("query_time", 0.0)),
            answers=[Answer.from_dict(a) for a in d.get("answers") or []],
            rubric=list(d.get("rubric") or []),
            meta=dict(d.get("meta") or {}),
            dimension=d.get("dimension"),
            duration=_opt_float(d.get("duration")),
        )

    def video_path(self, manifest_dir: str | os.PathLike) -> Path:
        p = Path(self.video)
        return p if p.is_absolute() else Path(manifest_dir) / p

    def get_dimension(self) -> str:
        return self.dimension or TASKS[self.task].dimension

    def resolved(self) -> list[ResolvedAnswer]:
        """Answers with the task's default window and tau applied (what scorers use)."""
        return [resolve_answer(a.to_dict(), self.task) for a in self.answers]


# ----------------------------------------------------------------------------- validation


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_pair(v: Any) -> tuple[float, float] | None:
    return None if v is None else (float(v[0]), float(v[1]))


def _is_num(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_pair(v: Any, name: str, out: list[str], *, positive: bool = False) -> bool:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_num(x) for x in v):
        out.append(f"{name}: must be a list of two finite numbers, got {v!r}")
        return False
    if positive and not all(x > 0 for x in v):
        out.append(f"{name}: must be positive, got {list(v)}")
        return False
    return True


def _validate_answer(a: Any, i: int, query_time: float, out: list[str]) -> None:
    name = f"answers[{i}]"
    if not isinstance(a, dict):
        out.append(f"{name}: must be an object, got {type(a).__name__}")
        return
    for k in a:
        if k not in ANSWER_FIELDS:
            out.append(f"{name}.{k}: unknown field")
    present = {k: a.get(k) for k in ("time", "start", "end") if a.get(k) is not None}
    for k, v in present.items():
        if not _is_num(v):
            out.append(f"{name}.{k}: must be a finite number, got {v!r}")
    if "time" in present and ("start" in present or "end" in present):
        out.append(f"{name}: give either time or start/end, not both")
    elif "time" not in present and ("start" not in present or "end" not in present):
        out.append(f"{name}: needs time, or both start and end")
    nums = {k: v for k, v in present.items() if _is_num(v)}
    for k in ("time", "start"):
        if k in nums and nums[k] < query_time:
            out.append(f"{name}.{k}: {nums[k]:g} is before query_time {query_time:g}")
    if "start" in nums and "end" in nums and nums["end"] < nums["start"]:
        out.append(f"{name}.end: {nums['end']:g} is before start {nums['start']:g}")
    if not isinstance(a.get("text"), str) or not a["text"].strip():
        out.append(f"{name}.text: must be a non-empty string (the answer a response says)")
    if (
        a.get("window") is not None
        and _check_pair(a["window"], f"{name}.window", out)
        and a["window"][0] > a["window"][1]
    ):
        out.append(f"{name}.window: lo {a['window'][0]:g} > hi {a['window'][1]:g}")
    if (
        a.get("span") is not None
        and _check_pair(a["span"], f"{name}.span", out)
        and a["span"][0] > a["span"][1]
    ):
        out.append(f"{name}.span: start {a['span'][0]:g} > end {a['span'][1]:g}")
    tau = a.get("tau")
    if tau is not None:
        if isinstance(tau, (list, tuple)):
            _check_pair(tau, f"{name}.tau", out, positive=True)
        elif not _is_num(tau) or tau <= 0:
            out.append(f"{name}.tau: must be a positive number or [early, late], got {tau!r}")


def validate_row(d: Any) -> list[str]:
    """Every problem of one manifest row, as "field: message" (empty = valid)."""
    if not isinstance(d, dict):
        return [f"row: must be a JSON object, got {type(d).__name__}"]
    out: list[str] = [f"{k}: unknown field" for k in d if k not in SAMPLE_FIELDS]
    for k in ("id", "video", "task", "question"):
        if not isinstance(d.get(k), str) or not d.get(k):
            out.append(f"{k}: required non-empty string" + ("" if k in d else " (missing)"))
    task, dim = d.get("task"), d.get("dimension")
    if dim is not None and (not isinstance(dim, str) or not dim):
        out.append(f"dimension: must be a non-empty string, got {dim!r}")
    elif isinstance(task, str) and task:
        if task not in TASKS and dim is None:
            out.append(f"task: unknown task {task!r} (known: {', '.join(TASKS)}) needs a dimension")
        elif task in TASKS and dim is not None and dim != TASKS[task].dimension:
            out.append(f"dimension: {dim!r} contradicts task {task} ({TASKS[task].dimension})")
    qt = d.get("query_time", 0.0)
    if not _is_num(qt) or qt < 0:
        out.append(f"query_time: must be a finite number >= 0, got {qt!r}")
        qt = 0.0
    dur = d.get("duration")
    if dur is not None and (not _is_num(dur) or dur <= 0):
        out.append(f"duration: must be a positive finite number, got {dur!r}")
    answers = d.get("answers", [])
    if not isinstance(answers, list):
        out.append(f"answers: must be a list, got {type(answers).__name__}")
    else:
        for i, a in enumerate(answers):
            _validate_answer(a, i, float(qt), out)
    rubric = d.get("rubric", [])
    if not isinstance(rubric, list) or not all(isinstance(r, str) for r in rubric):
        out.append("rubric: must be a list of strings")
    if not isinstance(d.get("meta", {}), dict):
        out.append("meta: must be an object")
    return out


# ----------------------------------------------------------------------------- I/O


def _parquet_schema():
    f64, pair = pa.float64(), pa.list_(pa.float64())
    answer = pa.struct(
        [
            ("time", f64),
            ("start", f64),
            ("end", f64),
            ("text", pa.string()),
            ("span", pair),
            ("window", pair),
            ("tau", pair),
        ]
    )
    return pa.schema(
        [
            ("id", pa.string()),
            ("video", pa.string()),
            ("task", pa.string()),
            ("question", pa.string()),
            ("query_time", f64),
            ("answers", pa.list_(answer)),
            ("rubric", pa.list_(pa.string())),
            ("meta", pa.string()),  # meta: JSON text
            ("dimension", pa.string()),
            ("duration", f64),
        ]
    )


def _to_parquet_row(s: Sample) -> dict[str, Any]:
    row = s.to_dict()
    row["meta"] = json.dumps(s.meta, sort_keys=True)
    for a in row["answers"]:
        if "tau" in a and not isinstance(a["tau"], list):
            a["tau"] = [a["tau"]]  # a scalar tau is stored as a one-element list
    return row


def _from_parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    """Undo the Parquet encoding: drop nulls, decode meta, one-element tau -> scalar."""
    d = {k: v for k, v in row.items() if v is not None}
    if isinstance(d.get("meta"), str):
        try:
            d["meta"] = json.loads(d["meta"])
        except json.JSONDecodeError as e:
            d["meta"] = f"<invalid JSON: {e}>"  # reported by validate_row
    answers = []
    for a in d.get("answers") or []:
        a = {k: v for k, v in a.items() if v is not None} if isinstance(a, dict) else a
        if isinstance(a, dict) and isinstance(a.get("tau"), list) and len(a["tau"]) == 1:
            a["tau"] = a["tau"][0]
        answers.append(a)
    if "answers" in d:
        d["answers"] = answers
    return d


def read_rows(path: str | os.PathLike) -> list[tuple[int, Any, str | None]]:
    """(line, row, parse error) for each non-blank JSONL line or Parquet row."""
    p = Path(path)
    if not p.is_file():
        raise ManifestError(p, [f"{p}: manifest not found"])
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ManifestError(p, [f"{p}: not a readable Parquet file: {e}"]) from None
        return [(i + 1, _from_parquet_row(r), None) for i, r in enumerate(rows)]
    out: list[tuple[int, Any, str | None]] = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line), None))
            except json.JSONDecodeError as e:
                out.append((i, None, f"json: {e.msg} at column {e.colno}"))
    return out


def load_manifest(
    path: str | os.PathLike, *, skip_bad: bool = False
) -> tuple[list[Sample], list[str]]:
    """Read and validate a manifest (.jsonl or .parquet).

    Returns (samples, problems). Unless skip_bad, any problem raises ManifestError listing all
    of them; with skip_bad, bad rows are left out and their problems returned (and logged).
    """
    samples: list[Sample] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    bad_rows = 0
    for line, row, err in read_rows(path):
        row_problems = [err] if err else validate_row(row)
        sid = row.get("id") if isinstance(row, dict) else None
        if isinstance(sid, str) and sid:
            if sid in first_line:
                row_problems.append(f"id: duplicate id {sid!r} (first on line {first_line[sid]})")
            else:
                first_line[sid] = line
        if row_problems:
            bad_rows += 1
            problems += [f"{path}:{line}: {m}" for m in row_problems]
            continue
        samples.append(Sample.from_dict(row))
    if problems and not skip_bad:
        raise ManifestError(path, problems)
    if problems:
        log.warning("%s: skipped %d bad sample(s) of %d", path, bad_rows, bad_rows + len(samples))
    return samples, problems


def write_manifest(samples: list[Sample], path: str | os.PathLike) -> Path:
    """Write .jsonl or .parquet (by suffix) atomically: temp file, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [_to_parquet_row(s) for s in samples], schema=_parquet_schema()
        )
        pq.write_table(table, tmp, compression="zstd")
    elif p.suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s.to_dict(), ensure_ascii=False) + "\n")
    else:
        raise UserError(f"{p}: manifest must end in .jsonl or .parquet")
    os.replace(tmp, p)
    return p
