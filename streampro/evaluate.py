"""`streampro eval`: StreamPro-F1 of predictions or of a policy -> DIR/scores.json, report.md.

--predictions P     any model's predictions JSONL (no model run, no video opened)
--endpoint URL      the policy behind a running Serve API, videos replayed through it
--checkpoint DIR    the same through a temporary local deployment of DIR
(the policy folder's streampro_decode.json, the decoder tuned on the dev split, wins over
cfg.decode in every mode that runs a policy: Serve reads it, and so does evaluate_policy)
(none of them)      policy.name_or_path on the rollout group, decoded as every evaluation
                    of a run is (eval.greedy, eval.samples_per_stream, run.seed)

--benchmark NAME --annotations FILE --videos DIR scores a public proactive benchmark instead
of a manifest (streampro/eval_benchmarks.py): --predictions rescored, or the policy
(--checkpoint DIR, else policy.name_or_path) run on the rollout group.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from streampro.actors.decode import load_tuned
from streampro.actors.policy_eval import PolicyEval
from streampro.actors.rollout import make_rollout_group
from streampro.cluster.local import init_cluster
from streampro.config import Config
from streampro.data.benchmarks import read_benchmark
from streampro.data.pipeline import encode_samples, policy_folder
from streampro.data.schema import load_manifest
from streampro.errors import UserError
from streampro.eval_benchmarks import print_summary, run_benchmark
from streampro.replay import evaluate_endpoint
from streampro.rewards.f1 import load_predictions, score_predictions, write_scores
from streampro.rewards.judges import eval_acc_judge


def load_manifest_rows(
    path: str | os.PathLike, *, skip_bad: bool = False
) -> tuple[list[dict], int]:
    """(manifest rows as dicts, skipped bad rows), validated by the data layer's schema."""

    samples, problems = load_manifest(path, skip_bad=skip_bad)
    skipped = len({p.split(": ", 1)[0] for p in problems})  # problems are "file:line: ..."
    return [s.to_dict() for s in samples], skipped


def main(cfg: Config, args: argparse.Namespace) -> int:
    modes = [f for f in ("predictions", "endpoint", "checkpoint") if getattr(args, f, None)]
    if len(modes) > 1:
        raise UserError(f"give at most one of --{' / --'.join(modes)}")
    if getattr(args, "benchmark", None):
        return _eval_benchmark(cfg, args)
    if not getattr(args, "manifest", None):
        raise UserError("--manifest is required (or --benchmark with --annotations and --videos)")
    if getattr(args, "endpoint", None) or getattr(args, "checkpoint", None):
        return _eval_served(cfg, args)
    if not args.predictions:
        return _eval_policy(cfg, args)
    rows, skipped = load_manifest_rows(args.manifest, skip_bad=cfg.data.skip_bad)
    if skipped:
        print(f"{args.manifest}: skipped {skipped} bad sample(s) (data.skip_bad=true)")
    preds, ignored = load_predictions(
        args.predictions, {r["id"] for r in rows}, ignore_unknown=skipped > 0
    )
    if ignored:
        print(f"{args.predictions}: ignored {ignored} prediction(s) of samples not scored")
    scores = score_predictions(
        rows,
        preds,
        acc_judge=eval_acc_judge(cfg.eval, cfg.reward),
        fallback_score=cfg.reward.fallback_score,
        timeout_s=cfg.reward.timeout_s,
        progress=True,
    )
    out = write_scores(scores, args.out)
    dims = "  ".join(f"{d} {100 * v:.1f}" for d, v in scores["dimensions"].items())
    print(
        f"StreamPro-F1 x100: {dims}  avg {100 * scores['avg']:.1f}  "
        f"W-Avg {100 * scores['w_avg']:.1f}  ({scores['n_samples']} samples, "
        f"{scores['fallbacks']} judge fallbacks)"
    )
    print(f"wrote {out / 'scores.json'} and {out / 'report.md'}")
    return 0


def _eval_benchmark(cfg: Config, args: argparse.Namespace) -> int:
    """--benchmark NAME: the benchmark's own metrics of --predictions or of a policy run."""
    missing = [f"--{f}" for f in ("annotations", "videos") if not getattr(args, f, None)]
    if missing:
        raise UserError(f"--benchmark needs {' and '.join(missing)}")
    if args.manifest or args.endpoint:
        raise UserError("--benchmark takes no --manifest or --endpoint (its streams are its own)")
    data = read_benchmark(args.benchmark, args.annotations, args.videos)  # before Ray starts
    if not args.predictions:
        init_cluster(cfg, "eval")
    scores = run_benchmark(
        cfg, data, args.out, predictions=args.predictions, model_path=args.checkpoint
    )
    print_summary(scores, args.out)
    return 0


def _eval_served(cfg: Config, args: argparse.Namespace) -> int:
    """--endpoint URL, or --checkpoint DIR through a temporary local deployment."""

    if not Path(args.manifest).is_file():
        raise UserError(f"--manifest {args.manifest}: file not found")
    if args.endpoint:
        scores = evaluate_endpoint(cfg, args.endpoint, args.manifest, args.out)
    else:
        # Ray Serve, only for a temporary deployment
        from streampro.actors.serve.deploy import local_deployment, resolve_checkpoint

        with local_deployment(cfg, resolve_checkpoint(cfg, args.checkpoint)) as url:
            scores = evaluate_endpoint(cfg, url, args.manifest, args.out)
    print(f"StreamPro-F1 x100: W-Avg {100 * scores['w_avg']:.1f}  avg {100 * scores['avg']:.1f}")
    print(f"wrote {Path(args.out)}/predictions.jsonl, scores.json, report.md, timelines.png")
    return 0


def _eval_policy(cfg: Config, args: argparse.Namespace) -> int:
    """No predictions given: run the policy (policy.name_or_path) over the manifest."""

    init_cluster(cfg, "eval")
    scores = evaluate_policy(cfg, args.manifest, args.out)
    print(f"StreamPro-F1 x100: W-Avg {100 * scores['w_avg']:.1f}  avg {100 * scores['avg']:.1f}")
    print(f"wrote {Path(args.out) / 'scores.json'} and {Path(args.out) / 'predictions.jsonl'}")
    return 0


def evaluate_policy(
    cfg: Config,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_path: str | None = None,
) -> dict:
    """StreamPro-F1 of a policy run over a manifest (Ray must be initialised).

    Encodes the manifest, decodes streams on the rollout group with the settings of a run's
    own evaluations (`PolicyEval`: greedy, or eval.samples_per_stream samples at the
    rollout temperature, seeded by run.seed), keeps
    DIR/predictions.jsonl in the `--predictions` format and writes scores.json + report.md.
    """

    encoded = encode_samples(cfg, Path(manifest))
    if cfg.eval.max_samples:
        encoded = encoded[: cfg.eval.max_samples]
    folder = model_path or policy_folder(cfg)
    # the decoder the policy was tuned with: scored as Serve will decode it
    cfg = dataclasses.replace(cfg, decode=load_tuned(folder, cfg.decode))
    rollout = make_rollout_group(cfg, folder)
    try:
        out = Path(out_dir) / "predictions.jsonl"
        scores = PolicyEval.from_config(cfg).run(rollout, encoded, predictions_out=out)
    finally:
        rollout.shutdown()
    write_scores(scores, out_dir)
    return scores
