"""`streampro sft` end to end on the smoke config, and exact resume of the SFT loop.

Real parts: StreamPro-Synth videos, the data layer's dialogue builder, DeepSpeed ranks, the
vLLM rollout group for the greedy val evaluation (which loads the exported HF folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streampro.config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory, tiny_path) -> str:
    """The smoke train and val splits, rendered once for this module."""
    from streampro.data.synth import synth_split

    out = tmp_path_factory.mktemp("synth")
    cfg = load_config(SMOKE, [f"synth.out={out}"])
    for split in ("train", "val"):
        synth_split(cfg.synth, split=split, progress=False)
    return str(out)


def _overrides(synth_dir: str, tiny_path: str, tmp: Path, run: str) -> list[str]:
    models = str(Path(tiny_path).parent)  # reuse the session's tiny policy build
    return [
        f"synth.out={synth_dir}",
        f"policy.cache_dir={models}",
        f"data.cache_dir={tmp / 'cache'}",
        f"run.dir={tmp / run}",
        "cluster.role_resources=false",
    ]


def test_sft_cli_smoke(ray_local, synth_dir, tiny_path, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from streampro.cli import main

    over = [*_overrides(synth_dir, tiny_path, tmp_path, "run"), "sft.answer_window=4"]
    rc = main(["sft", "--config", SMOKE, *over])
    assert rc == 0
    run = tmp_path / "run"
    summary = json.loads((run / "sft_summary.json").read_text())
    # 7 dialogues (one per task) plus one answer row per response (sft.answer_window)
    assert summary["steps"] == 2 and summary["data"]["examples"] > 7
    for key in ("val", "always_silent"):
        assert set(summary[key]) >= {"tasks", "dimensions", "avg", "w_avg"}
    assert summary["always_silent"]["w_avg"] == 0.0  # no response scores nothing
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {
        "train/loss",
        "train/decision_acc",
        "train/silence_recall",
        "train/response_recall",
    } <= set(rows[0])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # the val predictions come from vLLM greedy decoding of the exported folder
    preds = (run / "val_predictions.jsonl").read_text().splitlines()
    assert len(preds) == summary["val"]["n_samples"] > 0
    assert (run / "eval" / "scores.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(summary["hf"])
    assert model.config.model_type == "qwen2"
    assert (Path(summary["hf"]) / "tokenizer.json").is_file()


def test_sft_resume_matches_uninterrupted(synth_dir, tiny_path, tmp_path) -> None:
    """Stop after step 2, resume (resume=auto): step 3 equals the uninterrupted step 3."""
    from streampro.learners.sft import run_sft

    def run(name: str, steps: int, resume: str) -> list[dict]:
        extra = [
            f"sft.max_steps={steps}",
            f"run.resume={resume}",
            "learner.in_process=true",
            "sft.global_batch=2",
            "sft.save_every=1",
        ]
        cfg = load_config(SMOKE, _overrides(synth_dir, tiny_path, tmp_path, name) + extra)
        run_sft(cfg, cfg.run.dir, evaluate=False)
        return [
            json.loads(x) for x in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()
        ]

    full = run("full", 3, "never")
    run("part", 2, "never")
    resumed = run("part", 3, "auto")
    assert [r["step"] for r in resumed] == [1, 2, 3]  # no duplicated rows after resume
    assert resumed[2]["train/loss"] == full[2]["train/loss"]
    assert resumed[2]["train/n_silence"] == full[2]["train/n_silence"]  # same data cursor


def test_sft_bad_config_is_one_line_error(tmp_path, capsys) -> None:
    from streampro.cli import main

    rc = main(
        [
            "sft",
            "--config",
            SMOKE,
            "sft.loss=dice",
            f"run.dir={tmp_path / 'r'}",
            f"synth.out={tmp_path / 'none'}",
            "data.train=" + str(tmp_path / "missing.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err and "Traceback" not in err


def test_sft_ablation_table(tmp_path) -> None:
    """Mean and sd per loss from run summaries (pure: no training)."""
    from streampro.bench.sft_ablation import markdown, plot, summarize

    def s(w: float, pu: float) -> dict:
        return {"val": {"w_avg": w, "dimensions": {"PU": pu, "TR": 0.0}}}

    table = summarize({"ce": [s(0.10, 0.2), s(0.20, 0.4)], "cb_stream": [s(0.30, 0.5)]})
    assert table["ce"]["w_avg"] == pytest.approx([15.0, 7.0710678], rel=1e-6)
    assert table["ce"]["dims"]["PU"] == pytest.approx([30.0, 14.1421356], rel=1e-6)
    assert table["cb_stream"]["w_avg"] == pytest.approx([30.0, 0.0])
    md = markdown(table, 0.0)
    assert "| ce | 15.0 ± 7.1 | 30.0 ± 14.1 | 0.0 ± 0.0 | 6.6 |" in md
    plot(table, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_engines_start_behind_sft_only_where_both_fit(ray_local) -> None:
    """`streampro train` starts vLLM during SFT only on CPUs and when the engines' CPUs plus
    SFT's fit the cluster (the fixture's local Ray: 8 CPUs); otherwise SFT could wait forever
    for a device or CPUs an engine holds."""
    from streampro.train import _engines_fit_beside_sft

    def fits(*overrides: str) -> bool:
        return _engines_fit_beside_sft(load_config(SMOKE, list(overrides)))

    assert fits("rollout.num_cpus=1", "sft.num_cpus=7")  # 1 + 7 = 8
    assert not fits("rollout.num_cpus=1", "sft.num_cpus=8")
    assert not fits("rollout.num_cpus=2", "rollout.num_actors=2", "sft.num_cpus=5")  # 4 + 5
    assert fits("learner.in_process=true", "sft.num_cpus=8")  # SFT takes no Ray CPUs then
    assert not fits("rollout.num_gpus=1")
    assert not fits("learner.num_gpus=1")
