"""The learner check (the GPU script, run here on CPU): one SFT and one GRPO step, whose peak
of live tensors (the profiler's memory timeline, as `max_memory_allocated` on a GPU) is
compared with `streampro plan`'s terms for one ZeRO-0 rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _check(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "lc.json"
    cmd = [sys.executable, "-m", "streampro.bench.learner_check", *args, "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def test_plan_holds_tiny_vl_peak(tmp_path) -> None:
    r = _check(tmp_path, "--arch", "tiny_vl", "--frames", "50", "--frame-side", "112")
    # 50 turns of 16 image tokens + 8 others; scored: 50 decisions + 4 x 8 answer tokens
    assert r["tokens"] == 50 * 24 and r["scored_tokens"] == 82
    assert 0.75 <= r["peak_over_plan"] <= 1.25, r


@pytest.mark.slow
def test_learner_check_runs_at_real_width(tmp_path) -> None:
    r = _check(
        tmp_path, "--layers", "1", "--frames", "8", "--frame-side", "112", "--lora-rank", "4"
    )
    assert r["layers"] == 1 and r["precision"] == "fp32" and r["device"] == "cpu"
    assert r["tokens"] == 8 * 24 and r["scored_tokens"] == 40
    # one text layer and vision block of the real widths, the 151,936 x 2048 tied embedding
    assert r["params"] > 151936 * 2048
    assert r["plan_terms_gb"]["weights"] > 151936 * 2048 * 4 / 1e9  # at least the fp32 weights
    assert 0.75 <= r["peak_over_plan"] <= 1.25, r
