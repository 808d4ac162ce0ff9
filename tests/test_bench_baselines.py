"""`bench baselines` on a small synth split: the oracle scores 1.0, always-silent 0.0.

Real parts: rendered synth videos decoded through PyAV, the data layer's SFT targets for the
oracle, rewards/f1.py for every score. The RLlib PPO trigger has its own slow test.
"""

from __future__ import annotations

import json

import pytest

from streampro.bench.baselines import run
from streampro.config import Config


def _cfg(synth_smoke, tmp_path) -> Config:
    cfg = Config()
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.train = str(synth_smoke / "train" / "manifest.jsonl")
    cfg.policy.cache_dir = str(tmp_path / "models")
    return cfg


def test_oracle_scores_one_and_silence_zero(synth_smoke, tmp_path) -> None:
    cfg = _cfg(synth_smoke, tmp_path)
    manifest = synth_smoke / "test" / "manifest.jsonl"
    res = run(cfg, str(manifest), str(tmp_path / "out"), ppo=False)
    b = res["baselines"]
    assert b["oracle"]["w_avg"] == pytest.approx(1.0)
    assert all(f1 == pytest.approx(1.0) for f1 in b["oracle"]["tasks"].values())
    assert b["always_silent"]["w_avg"] == 0.0 and b["always_silent"]["responses"] == 0
    # every chunk: one response per second of stream; fixed period: fewer
    assert b["most_frequent_every_chunk"]["responses"] > b["fixed_period"]["responses"] > 0
    assert 0.0 <= b["fixed_period"]["w_avg"] < 1.0
    saved = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert saved["baselines"]["oracle"]["w_avg"] == pytest.approx(1.0)
    assert "| oracle | 100.0 |" in (tmp_path / "out" / "baselines.md").read_text()


def test_missing_manifest_is_one_line_error(tmp_path) -> None:
    from streampro.errors import UserError

    with pytest.raises(UserError, match="manifest not found"):
        run(Config(), str(tmp_path / "nope.jsonl"), str(tmp_path / "out"), ppo=False)


@pytest.mark.slow
def test_ppo_trigger_trains_and_is_scored(synth_smoke, tmp_path) -> None:
    cfg = _cfg(synth_smoke, tmp_path)
    manifest = synth_smoke / "test" / "manifest.jsonl"
    res = run(cfg, str(manifest), str(tmp_path / "out"), ppo_seconds=5.0)
    ppo = res["baselines"]["ppo_trigger"]
    assert ppo["iterations"] >= 1 and ppo["train_samples"] > 0
    assert 0.0 <= ppo["w_avg"] <= 1.0
