"""The learner check (the GPU script, run here on CPU at one layer): the public Qwen2.5-VL-3B
widths take an SFT and a GRPO step and report their peak beside `streampro plan`'s terms.
The 25% comparison needs rows long enough for the plan's terms to outweigh fixed allocations
(docs/results.md, "Memory plan": 2 layers, 64 frames); at this size it only must run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_learner_check_runs_at_real_width(tmp_path) -> None:
    out = tmp_path / "lc.json"
    cmd = [sys.executable, "-m", "streampro.bench.learner_check", "--layers", "1"]
    cmd += ["--frames", "8", "--frame-side", "112", "--lora-rank", "4", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    r = json.loads(out.read_text())
    assert r["layers"] == 1 and r["precision"] == "fp32" and r["device"] == "cpu"
    # 8 turns of 16 image tokens + 8 others; the scored ones: 8 decisions + 4 x 8 answer tokens
    assert r["tokens"] == 8 * 24 and r["scored_tokens"] == 40
    # one text layer and vision block of the real widths, the 151,936 x 2048 tied embedding
    assert r["params"] > 151936 * 2048
    weights = r["plan_terms_gb"]["weights"]
    assert r["peak_gb"] >= weights > 151936 * 2048 * 4 / 1e9  # at least the fp32 weights
