"""`streampro bench NAME`: performance and ablation benchmarks, each writing one JSON file."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from streampro.config import Config, atomic_write_text
from streampro.errors import UserError

BENCHES = (
    "rollout",
    "sft-ablation",
    "grpo-async",
    "autoscale",
    "serve",
    "perf",
    "baselines",
    "scaling",
    "question-use",
    "reward-alignment",
)


def main(cfg: Config, args: argparse.Namespace) -> int:
    name = args.name
    if name in ("perf", "baselines", "scaling", "reward-alignment"):  # a folder: JSON, md, plots
        from importlib import import_module

        return import_module(f"streampro.bench.{name.replace('-', '_')}").main(cfg, args)
    out = Path(args.out or f"runs/bench-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if name == "rollout":
        from streampro.bench.rollout import run
    elif name == "sft-ablation":
        from streampro.bench.sft_ablation import run
    elif name == "grpo-async":
        from streampro.bench.grpo_async import run
    elif name == "autoscale":
        from streampro.cluster.autoscale import run
    elif name == "serve":
        from streampro.bench.serve import run
    elif name == "question-use":
        from streampro.bench.question_use import run as question_use

        if not args.manifest:
            raise UserError("bench question-use needs --manifest M (a JSONL or Parquet manifest)")
        run = functools.partial(question_use, manifest=args.manifest)
    else:
        raise UserError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHES)}")
    result = run(cfg, str(out))
    atomic_write_text(out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0
