#!/usr/bin/env bash
# The GPU paths on a GPU node (docs/vlm.md, "GPU paths"), after `pip install -e .[gpu]`:
# the tiny VLM of configs/tiny_vl.yaml through `streampro train` with the learner on one GPU
# and the vLLM engine on another: synth data, two SFT steps, VLM rollouts with images on the
# GPU engine, two GRPO steps whose weights go learner rank 0 -> engine over NCCL (vLLM's
# weight-transfer API), and evaluation. Then it writes what it measured to OUT_DIR/gpu_check.json.
# It fails loudly (non-zero exit, one FAILED line) on any error, and when the engine's
# logprobs after an NCCL sync disagree with the learner's (stale or corrupted weights).
#
# usage: bench/gpu_check.sh OUT_DIR        (PYTHON=... to pick the interpreter)
set -euo pipefail

OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN="$OUT/run"
PY=${PYTHON:-python}
# vLLM's and the learner's logprobs of the same tokens under the same (synced) weights, fp32
LP_TOL=${LP_TOL:-0.02}

die() {
  echo "gpu_check: FAILED: $*" >&2
  exit 1
}
trap 'die "command failed (line $LINENO); see the output above and $OUT/train.log"' ERR

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: run this on a GPU node"
NGPU=$(nvidia-smi -L | grep -c '^GPU ' || true)
[ "$NGPU" -ge 2 ] || die "found $NGPU GPU(s): NCCL needs the learner and the engine on two GPUs"
"$PY" -c "import torch, vllm; assert torch.cuda.is_available(), 'torch sees no CUDA'" ||
  die "torch with CUDA and vllm are needed (pip install -e .[gpu])"

# One key=value per line (tests/test_weight_sync.py loads these onto configs/tiny_vl.yaml).
# A large GRPO lr: an engine left with stale weights would then disagree by far more than LP_TOL.
OVERRIDES=(
  run.dir="$RUN"
  learner.num_gpus=1
  rollout.num_gpus=1
  rollout.weight_transfer_backend=nccl
  rollout.weight_sync_timeout_s=300
  rollout.gpu_memory_utilization=0.3
  sft.max_steps=2
  grpo.max_steps=2
  grpo.lr=1.0e-2
  grpo.eval_every=0
  eval.max_samples=4
)

T0=$(date +%s)
"$PY" -m streampro.cli train --config configs/tiny_vl.yaml "${OVERRIDES[@]}" 2>&1 |
  tee "$OUT/train.log"
T1=$(date +%s)

"$PY" - "$RUN" "$OUT/gpu_check.json" "$((T1 - T0))" "$LP_TOL" <<'EOF'
import json, os, sys
from pathlib import Path

run, out, seconds, tol = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(line) for line in (run / "grpo" / "metrics.jsonl").read_text().splitlines()]
steps = {int(r["step"]): r for r in rows if int(r["step"]) > 0}
if sorted(steps) != [1, 2]:
    sys.exit(f"gpu_check: FAILED: GRPO logged steps {sorted(steps)}, expected [1, 2]")
summary = json.loads((run / "summary.json").read_text())
import torch, vllm

result = {
    "gpu": torch.cuda.get_device_name(0),
    "num_gpus": torch.cuda.device_count(),
    "vllm": vllm.__version__,
    "torch": torch.__version__,
    "train_seconds": seconds,
    "timings": summary["timings"],
    "sync_seconds": {k: steps[k].get("time/sync") for k in steps},
    # step 2 rolls out with the weights sent over NCCL after step 1
    "lp_diff_max_after_nccl_sync": steps[2].get("check/lp_diff_max"),
    "lp_diff_mean_after_nccl_sync": steps[2].get("check/lp_diff_mean"),
    "step1_trained": "learn/loss" in steps[1],
    "reward": {k: steps[k].get("reward/total") for k in steps},
    "test_w_avg": {"sft": summary["sft"]["test"]["w_avg"], "grpo": summary["grpo"]["test"]["w_avg"]},
    "lp_tolerance": tol,
}
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
os.replace(tmp, out)
print(json.dumps(result, indent=2, sort_keys=True))
lp = result["lp_diff_max_after_nccl_sync"]
if lp is None:
    sys.exit("gpu_check: FAILED: step 2 kept no group (equal rewards): the post-sync agreement "
             "was not measured; rerun with another run.seed")
if not lp <= tol:
    sys.exit(f"gpu_check: FAILED: vLLM vs learner logprobs after the NCCL sync: max {lp} > {tol}")
EOF
echo "gpu_check: OK ($OUT/gpu_check.json)"
