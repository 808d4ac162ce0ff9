"""`streampro bench NAME`: performance and ablation benchmarks, each writing one JSON file
(or, for the folder benches, a folder of JSON, Markdown and plots)."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streampro.config import Config, atomic_write_text
from streampro.errors import UserError

# bench -> its module. Only the bench that runs is imported, as the CLI does with commands:
# between them the benches load vLLM, DeepSpeed, Ray Serve and RLlib, which one bench never
# needs all of.
BENCHES: dict[str, str] = {
    "rollout": "streampro.bench.rollout",
    "sft-ablation": "streampro.bench.sft_ablation",
    "grpo-async": "streampro.bench.grpo_async",
    "autoscale": "streampro.cluster.autoscale",
    "serve": "streampro.bench.serve",
    "perf": "streampro.bench.perf",
    "baselines": "streampro.bench.baselines",
    "scaling": "streampro.bench.scaling",
    "question-use": "streampro.bench.question_use",
    "reward-alignment": "streampro.bench.reward_alignment",
    "real-width": "streampro.bench.real_width",
    "diagnose": "streampro.bench.diagnose",
}
FOLDER_BENCHES = ("perf", "baselines", "scaling", "reward-alignment", "diagnose")
"""Their module's `main(cfg, args) -> exit code` writes a folder; every other bench's
`run(cfg, out_path) -> dict` returns the JSON written here to --out."""

JsonBench = Callable[[Config, str], dict[str, Any]]
FolderBench = Callable[[Config, argparse.Namespace], int]


def main(cfg: Config, args: argparse.Namespace) -> int:
    name = args.name
    if name not in BENCHES:
        raise UserError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHES)}")
    module = importlib.import_module(BENCHES[name])
    if name in FOLDER_BENCHES:
        folder_main: FolderBench = module.main
        return folder_main(cfg, args)
    out = Path(args.out or f"runs/bench-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    run: JsonBench = module.run
    if name == "question-use":
        if not args.manifest:
            raise UserError("bench question-use needs --manifest M (a JSONL or Parquet manifest)")
        run = functools.partial(module.run, manifest=args.manifest)
    result = run(cfg, str(out))
    atomic_write_text(out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0
