"""StreamPro-F1 (docs/method.md): score any model's streaming
responses against a manifest, without a model and without opening a video.

Per sample, responses in time order each go to the first answer (in window order) they reach;
an answer keeps its best S = S_time * S_acc; a response reaching no answer scores 0 but counts.
Per task: micro P/R/F1 over its samples. Dimensions and w_avg weight task F1s by sample count;
avg is the mean of the dimensions present.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from streampro.config import atomic_write_text
from streampro.errors import UserError
from streampro.rewards.guard import Guard, GuardedAcc
from streampro.rewards.judges import AccJudge, ExactJudge
from streampro.rewards.pauc import START_SCORE, PaucAnswer, pauc, replies_to_judge
from streampro.rewards.scoring import (
    content_score,
    reaches,
    s_time,
    sorted_answers,
    sorted_responses,
)
from streampro.tasks import DIMENSIONS, TASKS, ResolvedAnswer


@dataclass(frozen=True)
class Match:
    """Where StreamPro-F1's greedy matching sends one response."""

    item: int
    """Index (window order) of the first answer the response reaches; -1 for none."""
    score: float
    """S = S_time * S_acc (0 without an answer)."""
    content: float | None
    """S_acc; None where the judge was not asked (no answer reached, or S_time = 0)."""


def greedy_matches(sample: dict, responses: list[dict], judge: AccJudge) -> tuple[list[Match], int]:
    """(one Match per response in input order, N_gt): each response, in time order, goes to
    the first answer (in window order) it reaches, matched already or not."""
    answers = sorted_answers(sample)
    task, question = sample["task"], str(sample.get("question", ""))
    out = [Match(-1, 0.0, None)] * len(responses)
    order = sorted(range(len(responses)), key=lambda i: float(responses[i]["time"]))  # stable
    for i in order:  # time order: judge calls (and a Guard's deadline) as the metric has them
        t, text = float(responses[i]["time"]), str(responses[i].get("text", ""))
        for j, ans in enumerate(answers):
            if reaches(t, ans, ans.tau_early, ans.tau_late):
                st = s_time(t, ans, ans.tau_early, ans.tau_late)
                if st > 0.0:  # S = 0 whatever the content: spare the judge call
                    sa = content_score(text, ans, task, judge, question)
                    out[i] = Match(j, st * sa, sa)
                else:
                    out[i] = Match(j, 0.0, None)
                break
    return out, len(answers)


def kept_sum(matches: list[Match], n_gt: int, *, without: int = -1) -> float:
    """sum S: each answer keeps its best match's S (response `without` left out)."""
    best = [0.0] * n_gt
    for i, m in enumerate(matches):
        if m.item >= 0 and i != without:
            best[m.item] = max(best[m.item], m.score)
    return sum(best)


def sample_stats(sample: dict, responses: list[dict], judge: AccJudge) -> tuple[float, int, int]:
    """(sum S, N_pred, N_gt) of one sample under prediction-first greedy matching."""
    matches, n_gt = greedy_matches(sample, responses, judge)
    return kept_sum(matches, n_gt), len(matches), n_gt


def sample_pauc(
    sample: dict,
    responses: list[dict],
    judge: AccJudge,
    *,
    answers: list[ResolvedAnswer] | None = None,
    omega: float = 0.5,
    start_score: float = START_SCORE,
) -> float:
    """PAUC (rewards/pauc.py) of one sample: each answer's window [lo, hi] is its reply span,
    and the replies inside it (each text once) are judged by S_acc against it (TG by IoU).
    `answers` defaults to all of the sample's."""
    task, question = sample["task"], str(sample.get("question", ""))
    replies = sorted_responses(responses)
    answers = sorted_answers(sample) if answers is None else answers
    points = [
        [
            (t, content_score(text, ans, task, judge, question))
            for t, text in replies_to_judge(replies, (ans.lo, ans.hi))
        ]
        for ans in answers
    ]
    spans = [PaucAnswer(span=(a.lo, a.hi)) for a in answers]  # no late-reply filter
    return pauc(points, spans, omega=omega, start_score=start_score)


def prf(sum_s: float, n_pred: int, n_gt: int) -> tuple[float, float, float]:
    """P = sum S / N_pred, R = sum S / N_gt, F1 = 2PR / (P + R); each 0 where undefined."""
    p = sum_s / n_pred if n_pred else 0.0
    r = sum_s / n_gt if n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f1


def _dimension(sample: dict) -> str:
    task = sample["task"]
    if sample.get("dimension"):
        return str(sample["dimension"])
    if task not in TASKS:
        raise UserError(f"sample {sample.get('id')!r}: custom task {task!r} needs a dimension")
    return TASKS[task].dimension


def _task_order(tasks: Iterable[str]) -> list[str]:
    table = [t for t in TASKS if t in tasks]
    return table + sorted(set(tasks) - set(table))


def score_predictions(
    samples: list[dict],
    predictions: dict[str, list[dict]],
    *,
    acc_judge: AccJudge | None = None,
    fallback_score: float = 0.0,
    timeout_s: float = 30.0,
    progress: bool = False,
) -> dict:
    """scores.json content: {"tasks": {T: {precision, recall, f1, n, n_pred, n_gt, pauc}},
    "dimensions": {D: f1}, "avg", "w_avg", "pauc", "n_samples", "fallbacks"}. PAUC
    (`sample_pauc`, omega 0.5) is the mean over the samples that have an answer.

    samples are manifest rows; predictions map sample id -> responses [{"time", "text"}]
    (an id without an entry has no response; an id not among the samples is an error).
    A judge call that fails or outlasts `timeout_s` per sample scores `fallback_score`.
    """

    ids = {s["id"] for s in samples}
    unknown = sorted(set(predictions) - ids)
    if unknown:
        raise UserError(
            f"predictions: {len(unknown)} id(s) not in the manifest, e.g. {unknown[0]!r}"
        )
    judge = acc_judge or ExactJudge()
    acc: dict[str, list[float]] = {}  # task -> [sum S, N_pred, N_gt, n samples]
    paucs: dict[str, list[float]] = {}  # task -> PAUC of each sample with an answer
    dims: dict[str, str] = {}
    fallbacks = 0
    for s in tqdm(samples, desc="StreamPro-F1", disable=not progress, leave=False):
        guarded = GuardedAcc(judge, Guard(timeout_s), fallback_score)
        sum_s, n_pred, n_gt = sample_stats(s, predictions.get(s["id"], []), guarded)
        if n_gt:
            paucs.setdefault(s["task"], []).append(
                sample_pauc(s, predictions.get(s["id"], []), guarded)
            )
        fallbacks += guarded.fallbacks
        row = acc.setdefault(s["task"], [0.0, 0.0, 0.0, 0.0])
        row[0] += sum_s
        row[1] += n_pred
        row[2] += n_gt
        row[3] += 1
        dim = _dimension(s)
        if dims.setdefault(s["task"], dim) != dim:
            raise UserError(
                f"manifest: task {s['task']!r} has samples in two dimensions "
                f"({dims[s['task']]!r} and {dim!r}; sample {s['id']!r})"
            )
    tasks: dict[str, dict] = {}
    for task in _task_order(acc):
        task_s, task_pred, task_gt, n = acc[task]
        p, r, f1 = prf(task_s, int(task_pred), int(task_gt))
        tasks[task] = {
            "precision": p,
            "recall": r,
            "f1": f1,
            "n": int(n),
            "n_pred": int(task_pred),
            "n_gt": int(task_gt),
            "pauc": _mean(paucs.get(task, [])),
        }
    dim_order = [d for d in DIMENSIONS if d in dims.values()] + sorted(
        set(dims.values()) - set(DIMENSIONS)
    )
    dimensions = {d: _weighted([tasks[t] for t in tasks if dims[t] == d]) for d in dim_order}
    return {
        "tasks": tasks,
        "dimensions": dimensions,
        "avg": sum(dimensions.values()) / len(dimensions) if dimensions else 0.0,
        "w_avg": _weighted(list(tasks.values())),
        "pauc": _mean([v for vals in paucs.values() for v in vals]),
        "n_samples": len(samples),
        "fallbacks": fallbacks,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _weighted(rows: list[dict]) -> float:
    """Task F1s weighted by their sample counts."""
    n = sum(r["n"] for r in rows)
    return sum(r["f1"] * r["n"] for r in rows) / n if n else 0.0


def load_predictions(
    path: str | os.PathLike, known_ids: set[str], *, ignore_unknown: bool = False
) -> tuple[dict[str, list[dict]], int]:
    """Read predictions JSONL ({"id", "responses": [{"time", "text"}]} per line).

    Returns (predictions, ignored): ids not in `known_ids` are an error unless ignore_unknown
    (then counted in `ignored`). Every problem is listed as "file:line: field: message".
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: predictions file not found")
    preds: dict[str, list[dict]] = {}
    problems: list[str] = []
    ignored = 0
    with p.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: json: {e.msg} at column {e.colno}")
                continue
            sid, responses, errs = _check_row(row)
            problems += [f"{where}: {m}" for m in errs]
            if errs:
                continue
            if sid not in known_ids:
                if ignore_unknown:
                    ignored += 1
                else:
                    problems.append(f"{where}: id: {sid!r} is not in the manifest")
            elif sid in preds:
                problems.append(f"{where}: id: duplicate id {sid!r}")
            else:
                preds[sid] = responses
    if problems:
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UserError(
            f"{len(problems)} problem(s) in predictions: {'; '.join(problems[:10])}{more}"
        )
    return preds, ignored


def _check_row(row: object) -> tuple[str, list[dict], list[str]]:
    if not isinstance(row, dict):
        return "", [], ["row: expected a JSON object"]
    sid, responses = row.get("id"), row.get("responses")
    errs = [] if isinstance(sid, str) and sid else ["id: missing or not a non-empty string"]
    if not isinstance(responses, list):
        return "", [], errs + ["responses: missing or not a list"]
    out: list[dict] = []
    for i, r in enumerate(responses):
        if not isinstance(r, dict):
            errs.append(f"responses[{i}]: expected an object")
            continue
        t, text = r.get("time"), r.get("text")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            errs.append(f"responses[{i}].time: expected a finite number, got {t!r}")
        elif not isinstance(text, str):
            errs.append(f"responses[{i}].text: expected a string, got {text!r}")
        else:
            out.append({"time": float(t), "text": text})
    return str(sid), out, errs


def report_markdown(scores: dict) -> str:
    """The scores as Markdown tables (values x100)."""
    lines = [
        "# StreamPro-F1",
        "",
        "| task | samples | responses | answers | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, s in scores["tasks"].items():
        lines.append(
            f"| {task} | {s['n']} | {s['n_pred']} | {s['n_gt']} | {100 * s['precision']:.1f} "
            f"| {100 * s['recall']:.1f} | {100 * s['f1']:.1f} |"
        )
    lines += ["", "| dimension | F1 |", "|---|---:|"]
    lines += [f"| {d} | {100 * f1:.1f} |" for d, f1 in scores["dimensions"].items()]
    lines += [
        "",
        f"**avg** (mean of dimensions): {100 * scores['avg']:.1f}  ",
        f"**W-Avg** (tasks weighted by samples): {100 * scores['w_avg']:.1f}  ",
        f"samples: {scores.get('n_samples', 0)}, judge fallbacks: {scores.get('fallbacks', 0)}",
        "",
    ]
    return "\n".join(lines)


def write_scores(scores: dict, out_dir: str | os.PathLike) -> Path:
    """Write out_dir/scores.json and out_dir/report.md (each atomically); returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(scores))
    return out
