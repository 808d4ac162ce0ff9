"""`streampro eval --benchmark NAME --annotations FILE --videos DIR --out DIR`.

Reads a public proactive benchmark (data/benchmarks.py), plays every stream through the same
episode loop and decoder as every evaluation (`PolicyEval` on the rollout group), or reads
`--predictions`, and scores with the benchmark's own rules (rewards/benchmarks.py). Writes
DIR/scores.json (the metrics, skipped-item counts and every problem by name), and when a
policy runs, DIR/predictions.jsonl ({"id", "responses"} per stream) and DIR/streams.jsonl
(the streams as a manifest).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from streampro.actors.api import RolloutGroupAPI
from streampro.actors.policy_eval import PolicyEval, mean_scores
from streampro.actors.rollout import make_rollout_group
from streampro.config import Config, atomic_write_text
from streampro.data.benchmarks import BenchmarkData, BenchStream
from streampro.data.encode import EncodedSample, encode_manifest
from streampro.data.pipeline import frame_codec, policy_folder
from streampro.data.schema import write_manifest
from streampro.rewards.benchmarks import headline, score_benchmark
from streampro.rewards.f1 import load_predictions
from streampro.rewards.judges import eval_acc_judge


def run_benchmark(
    cfg: Config,
    data: BenchmarkData,
    out_dir: str | os.PathLike,
    *,
    predictions: str | os.PathLike | None = None,
    rollout: RolloutGroupAPI | None = None,
    model_path: str | None = None,
) -> dict:
    """scores.json of a benchmark read by `read_benchmark`: of `predictions` when given, else
    of the policy (`model_path`, default policy.name_or_path) on `rollout` (a fresh group when
    None, shut down after; Ray must be initialised)."""
    for line in data.malformed + data.missing_video:
        print(line, file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bad_video: list[str] = []
    streams = data.streams
    if predictions is not None:
        skipped = len(data.malformed) + len(data.missing_video)
        ids = {s.sample.id for s in streams}
        preds, _ = load_predictions(predictions, ids, ignore_unknown=skipped > 0)
        runs = [preds]
    else:
        encoded, bad_video = _encode(cfg, streams, out / "streams.jsonl")
        kept = {e.sample.id for e in encoded}
        streams = [s for s in streams if s.sample.id in kept]
        runs = _play(cfg, encoded, out / "predictions.jsonl", rollout, model_path)
    judge = eval_acc_judge(cfg.eval, cfg.reward)
    metrics = mean_scores(
        [
            score_benchmark(
                data.name,
                streams,
                preds,
                judge=judge,
                fallback_score=cfg.reward.fallback_score,
                timeout_s=cfg.reward.timeout_s,
            )
            for preds in runs
        ]
    )
    scores = _report(data, metrics, bad_video, len(streams), len(runs))
    atomic_write_text(out / "scores.json", json.dumps(scores, indent=2) + "\n")
    return scores


def _encode(
    cfg: Config, streams: list[BenchStream], manifest: Path
) -> tuple[list[EncodedSample], list[str]]:
    """The streams' chunks under the configured codec (cached as every split's are); a video
    that cannot be decoded is named, not fatal."""
    write_manifest([s.sample for s in streams], manifest)
    encoded = encode_manifest(
        manifest,
        fps=cfg.data.fps,
        codec=frame_codec(cfg),
        cache_dir=cfg.data.cache_dir,
        skip_bad=True,
        progress=False,
        workers=cfg.data.workers,
    )
    kept = {e.sample.id for e in encoded}
    bad = [
        f"{s.sample.id}: video: cannot be decoded: {s.sample.video}"
        for s in streams
        if s.sample.id not in kept
    ]
    for line in bad:
        print(line, file=sys.stderr)
    return encoded, bad


def _play(
    cfg: Config,
    encoded: list[EncodedSample],
    predictions_out: Path,
    rollout: RolloutGroupAPI | None,
    model_path: str | None,
) -> list[dict[str, list[dict]]]:
    """Every decoding (PolicyEval: greedy, or eval.samples_per_stream seeded samples) of every
    stream; the first is kept as predictions.jsonl."""
    own = rollout is None
    group = make_rollout_group(cfg, model_path or policy_folder(cfg)) if own else rollout
    assert group is not None
    try:
        runs = PolicyEval.from_config(cfg).predict(group, encoded)
    finally:
        if own:
            group.shutdown()
    lines = [
        json.dumps({"id": e.sample.id, "responses": runs[0].get(e.sample.id, [])}) for e in encoded
    ]
    atomic_write_text(predictions_out, "\n".join(lines) + "\n")
    return runs


def _report(
    data: BenchmarkData,
    metrics: dict,
    bad_video: list[str],
    n_scored: int,
    n_runs: int,
) -> dict:
    return {
        "benchmark": data.name,
        "annotations": data.path,
        "metrics": metrics,
        "items": data.items,
        "streams_scored": n_scored,
        "samples_per_stream": n_runs,
        "skipped": {
            "malformed": len(data.malformed),
            "missing_video": len(data.missing_video),
            "bad_video": len(bad_video),
            "other_tasks": data.other_tasks,
        },
        "problems": data.malformed + data.missing_video + bad_video,
    }


def print_summary(scores: dict, out_dir: str | os.PathLike) -> None:
    skipped = "  ".join(f"{k} {v}" for k, v in scores["skipped"].items())
    print(headline(scores["benchmark"], scores["metrics"]))
    print(f"{scores['streams_scored']} streams from {scores['items']} items; skipped: {skipped}")
    print(f"wrote {Path(out_dir) / 'scores.json'}")
