"""The learner check (the GPU script, run here on CPU at one layer): the public Qwen2.5-VL-3B
widths take an SFT and a GRPO step, and the measured peak lands near `streampro plan`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_learner_check_at_real_width_matches_the_plan(tmp_path) -> None:
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
    assert 0.75 <= r["peak_over_plan"] <= 1.25  # the plan's 25% promise, measured
