"""CLI handlers: `streampro synth` and `streampro data check`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from streampro.config import Config
from streampro.data.rubric import parse_checkpoint
from streampro.data.schema import load_manifest
from streampro.data.streamo import import_main
from streampro.data.synth import synth_split
from streampro.data.video import VideoError, chunk_count_for, count_chunks


def synth_main(cfg: Config, args: argparse.Namespace) -> int:
    manifest = synth_split(
        cfg.synth,
        split=args.split,
        out=args.out,
        seed=args.seed,
        per_task=args.per_task,
        workers=cfg.data.workers,
    )

    samples, _ = load_manifest(manifest)
    _print_summary(samples, manifest)
    return 0


def _print_summary(samples, manifest: Path, chunks: dict[str, int] | None = None) -> None:
    per_task = Counter(s.task for s in samples)
    answers: Counter[str] = Counter()
    for s in samples:
        answers[s.task] += len(s.answers)
    durs = [s.duration for s in samples if s.duration is not None]
    print(f"{manifest}: {len(samples)} samples")
    for task in sorted(per_task):
        line = f"  {task}: {per_task[task]} samples, {answers[task]} answers"
        if chunks is not None:
            line += f", {chunks.get(task, 0)} chunks"
        print(line)
    if durs:
        print(
            f"  duration: min {min(durs):g}s, mean {sum(durs) / len(durs):.1f}s, max {max(durs):g}s"
        )


def _check_videos(
    samples, manifest: Path, fps: float
) -> tuple[list[str], set[str], dict[str, int]]:
    """Decode every video once: (problems, ids of bad samples, chunks per task)."""

    problems: list[str] = []
    bad: set[str] = set()
    chunks: Counter[str] = Counter()
    seen: dict[Path, tuple[int, float] | str] = {}
    for s in tqdm(samples, desc="check videos", leave=False, file=sys.stderr):
        path = s.video_path(manifest.parent)
        if path not in seen:
            try:
                seen[path] = count_chunks(path, fps)
            except VideoError as e:
                seen[path] = str(e)
        got = seen[path]
        if isinstance(got, str):
            problems.append(f"{manifest}: sample {s.id!r}: video: {got}")
            bad.add(s.id)
            continue
        n, end = got
        length = min(end, s.duration) if s.duration else end
        late = [a for a in s.answers if (a.time if a.time is not None else a.start) > length]
        if late:
            problems.append(
                f"{manifest}: sample {s.id!r}: answers: {len(late)} answer(s) after "
                f"the stream's end ({length:g}s)"
            )
            bad.add(s.id)
        chunks[s.task] += min(n, chunk_count_for(s.duration, fps)) if s.duration else n
    return problems, bad, dict(chunks)


def data_main(cfg: Config, args: argparse.Namespace) -> int:
    """Validate a manifest and (unless --no-video) decode every video; exit 1 on problems."""
    if args.action == "import-streamo":
        return import_main(args)

    manifest = Path(args.manifest)
    samples, problems = load_manifest(manifest, skip_bad=True)  # collect every problem
    n_bad = len({p.split(": ", 1)[0] for p in problems})  # rows: "file:line: field: message"
    n_good, chunks = len(samples), None
    if not args.no_video:
        video_problems, bad_ids, chunks = _check_videos(samples, manifest, cfg.data.fps)
        problems += video_problems
        n_bad, n_good = n_bad + len(bad_ids), n_good - len(bad_ids)
    _print_summary(samples, manifest, chunks)
    rubric = [r for s in samples for r in s.rubric]
    if rubric:
        checkable = sum(parse_checkpoint(r) is not None for r in rubric)
        print(f"  rubric: {len(rubric)} checkpoints, {checkable} checkable by the rule judge")
    if not problems:
        print("ok")
        return 0
    for p in problems:
        print(p, file=sys.stderr)
    if args.skip_bad:
        print(
            f"{manifest}: {n_bad} bad sample(s) skipped (--skip-bad), {len(problems)} problem(s)",
            file=sys.stderr,
        )
        return 0 if n_good > 0 else 1
    print(f"{manifest}: {n_bad} bad sample(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1
