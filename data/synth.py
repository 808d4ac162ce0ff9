"""StreamPro-Synth: render the seven tasks as H.264 MP4 files plus a manifest.

Sample i of task j draws everything from `np.random.default_rng([seed, j, i])`, so a sample
does not depend on how many others are generated, and the same arguments give the same bytes
(pinned x264 settings, bitexact muxing). Named splits start from disjoint seeds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streampro.data.parallel import ordered_map
from streampro.data.rubric import build_rubric
from streampro.data.schema import Sample, write_manifest
from streampro.data.synth_scene import Scene, SceneParams, render
from streampro.data.synth_tasks import GENERATORS
from streampro.data.video import write_video
from streampro.errors import UserError

if TYPE_CHECKING:
    from streampro.config import SynthConfig

TASK_ORDER = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")
SPLIT_SEEDS = {"train": 0, "val": 10**6, "test": 2 * 10**6, "dev": 3 * 10**6}
LATE_QUESTION_P = 0.25  # share of samples whose question arrives at 1-3 s instead of 0 s
MIN_DURATION = 20  # every task's events fit in 20 s
MAX_DURATION = 600  # 10-minute streams: 3x the default 200-turn window


def check_params(p: SceneParams, min_duration: float, max_duration: float) -> None:
    """Reject knob values the generators cannot honour, naming the config key."""
    problems = []
    if p.width < 16 or p.height < 16 or p.width % 2 or p.height % 2:
        problems.append(f"synth.width/height must be even and >= 16, got {p.width}x{p.height}")
    if p.video_fps < 2:
        problems.append(
            f"synth.video_fps must be >= 2 (events start one frame into a second), "
            f"got {p.video_fps}"
        )
    if not MIN_DURATION <= min_duration <= max_duration <= MAX_DURATION:
        problems.append(
            f"synth.min_duration/max_duration must satisfy {MIN_DURATION} <= min <= max <= "
            f"{MAX_DURATION}, got {min_duration:g}, {max_duration:g}"
        )
    if not p.speed > 0:
        problems.append(f"synth.speed must be > 0, got {p.speed}")
    if not 0 <= p.distractors <= 5:
        problems.append(f"synth.distractors must be in 0..5, got {p.distractors}")
    if p.max_events < 1:
        problems.append(f"synth.max_events must be >= 1, got {p.max_events}")
    if not 0.05 <= p.object_size <= 0.4:
        problems.append(f"synth.object_size must be in [0.05, 0.4], got {p.object_size}")
    if problems:
        raise UserError("; ".join(problems))


def make_sample(
    task: str, index: int, seed: int, p: SceneParams, min_duration: float, max_duration: float
) -> tuple[Sample, Scene]:
    """One sample's manifest row and scene (no rendering)."""
    rng = np.random.default_rng([seed, TASK_ORDER.index(task), index])
    duration = int(rng.integers(int(min_duration), int(max_duration) + 1))
    q = 0 if rng.random() >= LATE_QUESTION_P else int(rng.integers(1, 4))
    scene = GENERATORS[task](rng, p, duration, q)
    sid = f"{task.lower()}-{seed}-{index:04d}"
    sample = Sample(
        id=sid,
        video=f"videos/{sid}.mp4",
        task=task,
        question=scene.question,
        query_time=float(q),
        answers=scene.answers,
        duration=float(duration),
        meta={**scene.meta, "synth": {"seed": seed, "index": index, **asdict(p)}},
    )
    windows = [(r.lo, r.hi) for r in sample.resolved()]
    sample.rubric = build_rubric(
        windows=windows,
        keywords=scene.keywords,
        forbidden=scene.forbidden,
        duration=float(duration),
        increasing=scene.increasing,
    )
    return sample, scene


def synthesize(
    out: str | Path,
    *,
    per_task: int,
    seed: int,
    params: SceneParams,
    min_duration: float,
    max_duration: float,
    tasks: tuple[str, ...] = TASK_ORDER,
    progress: bool = True,
    workers: int = 0,
) -> list[Sample]:
    """Render per_task samples of each task into out/videos and write both manifests.

    `workers` processes render (0 = one per CPU); every video's bytes depend on its own
    seed only, so any count gives the same split."""

    check_params(params, min_duration, max_duration)
    if per_task < 1:
        raise UserError(f"--per-task must be >= 1, got {per_task}")
    out = Path(out)
    jobs = [(task, i) for task in tasks for i in range(per_task)]
    render_one = partial(
        _render_sample,
        out=out,
        seed=seed,
        params=params,
        min_duration=min_duration,
        max_duration=max_duration,
    )
    samples = ordered_map(
        render_one, jobs, workers=workers, desc=f"synth {out.name}", progress=progress
    )
    write_manifest(samples, out / "manifest.jsonl")
    write_manifest(samples, out / "manifest.parquet")
    return samples


def _render_sample(
    job: tuple[str, int],
    *,
    out: Path,
    seed: int,
    params: SceneParams,
    min_duration: float,
    max_duration: float,
) -> Sample:
    """Render one (task, index) job's video under out/ and return its manifest row."""
    task, i = job
    sample, scene = make_sample(task, i, seed, params, min_duration, max_duration)
    assert sample.duration is not None  # make_sample always sets it
    n_frames = int(sample.duration) * params.video_fps
    write_video(
        out / sample.video,
        render(scene, n_frames, params.width, params.height),
        fps=params.video_fps,
    )
    return sample


def scene_params(s: SynthConfig) -> SceneParams:
    """SynthConfig -> the flat rendering knobs (the one place that unpacks it)."""
    return SceneParams(
        width=s.width,
        height=s.height,
        video_fps=s.video_fps,
        speed=s.speed,
        distractors=s.distractors,
        max_events=s.max_events,
        object_size=s.object_size,
    )


def split_per_task(s: SynthConfig, split: str) -> int:
    """Samples per task of a split: val and test may be smaller (synth.eval_per_task), and the
    dev split (decoder tuning, diagnostics) has its own size (synth.dev_per_task)."""
    if split == "dev":
        return s.dev_per_task
    return s.eval_per_task if split != "train" and s.eval_per_task > 0 else s.per_task


def split_dir(s: SynthConfig, split: str) -> Path:
    """Default folder of a split: synth.out/<split>-<hash of the knobs>, so a cached split is
    reused only by the settings that made it (changing a knob renders a new one)."""
    knobs = {
        k: v for k, v in asdict(s).items() if k not in ("out", "eval_per_task", "dev_per_task")
    }
    knobs["per_task"] = split_per_task(s, split)
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:10]
    return Path(s.out) / f"{split}-{digest}"


def synth_split(
    s: SynthConfig,
    *,
    split: str = "train",
    out: str | Path | None = None,
    seed: int | None = None,
    per_task: int | None = None,
    progress: bool = True,
    workers: int = 0,
) -> Path:
    """Render one split (default folder `split_dir`, seed from the split's range) with
    `workers` processes (0 = one per CPU); returns the manifest.jsonl path."""
    if split not in SPLIT_SEEDS:
        raise UserError(f"unknown split {split!r} (train, val, test or dev)")
    folder = Path(out) if out else split_dir(s, split)
    synthesize(
        folder,
        per_task=split_per_task(s, split) if per_task is None else per_task,
        seed=SPLIT_SEEDS[split] if seed is None else seed,
        params=scene_params(s),
        min_duration=s.min_duration,
        max_duration=s.max_duration,
        progress=progress,
        workers=workers,
    )
    return folder / "manifest.jsonl"
