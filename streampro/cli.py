"""`streampro`: one entry point, one subcommand per stage.

Each subcommand parses its own flags plus `--config FILE` and trailing dotlist overrides
(`grpo.group_size=4`), then hands a resolved `Config` to the stage's `main(cfg, args)`.
Stages live in the packages; this file only wires them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from streampro.config import Config, load_config
from streampro.errors import UserError

# subcommand -> (module, function, help). The function is main(cfg, args) -> exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("streampro.data.commands", "synth_main", "render StreamPro-Synth videos + manifest"),
    "data": ("streampro.data.commands", "data_main", "check a manifest and its videos"),
    "sft": ("streampro.learners.sft", "main", "CB-Stream SFT warm-up on the DeepSpeed group"),
    "grpo": ("streampro.learners.grpo_loop", "main", "GRPO with vLLM rollouts and rewards"),
    "train": ("streampro.train", "main", "the main job: synth, SFT, GRPO, eval, report"),
    "plan": ("streampro.plan", "main", "per-GPU memory of the learner and engines; does it fit"),
    "eval": ("streampro.evaluate", "main", "StreamPro-F1 of predictions or a policy"),
    "serve": ("streampro.actors.serve.deploy", "main", "serve a policy with Ray Serve over HTTP"),
    "submit": ("streampro.cluster.submit", "main", "submit a streampro command as a Ray job"),
    "bench": ("streampro.bench.commands", "main", "performance and ablation benchmarks"),
    "report": ("streampro.report", "main", "plots and report.md of a run folder"),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config (default: schema defaults)")
    p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. grpo.group_size=4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streampro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        _ARGS.get(name, lambda _p: None)(p)
        if name != "submit":
            _add_common(p)
    return parser


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: synth.out/<split>)")
    p.add_argument("--per-task", type=int, default=None, help="samples per task")
    p.add_argument("--seed", type=int, default=None, help="seed (overrides the split's seed range)")
    p.add_argument("--split", choices=["train", "val", "test", "dev"], default="train")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["check", "import-streamo"],
        help="check: validate a manifest and its videos; import-streamo: Streamo JSON -> manifest",
    )
    p.add_argument("manifest", help="manifest.jsonl or manifest.parquet (import: Streamo JSON)")
    p.add_argument("--out", default=None, help="import-streamo: manifest to write")
    p.add_argument("--video-root", default=None, help="import-streamo: folder of Streamo videos")
    p.add_argument("--dimension", default=None, help="import-streamo: PU, TR or PA (default PU)")
    p.add_argument("--skip-bad", action="store_true", help="report bad samples but exit 0")
    p.add_argument("--no-video", action="store_true", help="do not open the videos")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, help="manifest with the ground truth")
    p.add_argument(
        "--predictions", default=None, help="JSONL of {id, responses}; omit to run the policy"
    )
    p.add_argument(
        "--endpoint", default=None, help="URL of a running `streampro serve`: replay through it"
    )
    p.add_argument(
        "--checkpoint", default=None, help="HF folder: replay through a temporary local serve"
    )
    p.add_argument("--out", required=True, help="folder for scores.json and report.md")
    p.add_argument(
        "--benchmark",
        default=None,
        help="ovo-forward | streamingbench-proactive | proactivevideoqa: score a public "
        "proactive benchmark instead of a manifest (docs/benchmarks.md)",
    )
    p.add_argument("--annotations", default=None, help="--benchmark: its annotation file")
    p.add_argument("--videos", default=None, help="--benchmark: the folder of its videos")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", default=None, help="HF folder to serve (default: serve.checkpoint)"
    )
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port)")
    p.add_argument("--detach", action="store_true", help="return after deploying")


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default=None, help="Ray dashboard URL (default: RAY_ADDRESS or local)"
    )
    p.add_argument(
        "--wait", action="store_true", help="stream the job's logs and exit with its status"
    )
    p.add_argument(
        "--runtime-env", default=None, help="runtime-env YAML (default: cluster/runtime_env.yaml)"
    )
    p.add_argument("--status", metavar="ID", default=None, help="print a job's status")
    p.add_argument("--stop", metavar="ID", default=None, help="stop a job")
    p.add_argument(
        "entrypoint", nargs=argparse.REMAINDER, help="-- <streampro subcommand and args>"
    )


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name",
        help=(
            "rollout | sft-ablation | grpo-async | autoscale | serve | perf | baselines | "
            "scaling | question-use | reward-alignment | real-width"
        ),
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON result file (perf, baselines, scaling, reward-alignment: a folder)",
    )
    p.add_argument("--quick", action="store_true", help="perf: tiny sizes, no vLLM or Ray")
    p.add_argument(
        "--manifest",
        default=None,
        help="baselines, question-use: the manifest to score; reward-alignment: the training "
        "manifest (default: the run's training split)",
    )
    p.add_argument(
        "--run", default=None, help="reward-alignment: a grpo or train run folder to read"
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=float, default=None, help="GPUs (default: cluster.num_gpus)")
    p.add_argument("--gpu-memory", type=float, default=None, help="GB per GPU (default: 80)")
    p.add_argument("--json", default=None, help="also write the plan to this JSON file")


_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "plan": _plan_args,
    "synth": _synth_args,
    "data": _data_args,
    "eval": _eval_args,
    "serve": _serve_args,
    "submit": _submit_args,
    "bench": _bench_args,
    "report": _report_args,
}


def _load_handler(command: str) -> Callable[[Config, argparse.Namespace], int] | None:
    module, func, _ = COMMANDS[command]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:  # the stage itself is missing, not one of its imports
            return None
        raise
    return getattr(mod, func, None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
        handler = _load_handler(args.command)
        if handler is None:
            print(f"streampro {args.command}: not implemented yet", file=sys.stderr)
            return 2
        return int(handler(cfg, args) or 0)
    except UserError as e:
        print(f"streampro {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"streampro {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
