"""The VLM path end to end on CPU: tiny-vl (a tiny random Qwen2.5-VL) with frames as images.

A real vLLM CPU engine rolls out image streams of 3x the window; a real DeepSpeed rank scores
the same rows through the processor (pixel values, grids, mm_token_type_ids, mRoPE). Known
answers: the learner's logprobs of every sampled token equal vLLM's (fp32, < 1e-3; measured
~1e-6), also after a weight sync that re-sends frames the engine has already seen; rows hold
exactly the frames of their window; the prefix cache hits across chunks; a folder without the
decision tokens trains once they are added; and `streampro train --config configs/tiny_vl.yaml`
runs SFT, two GRPO steps and the evaluations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streampro.actors.api import Sampling, WorkerSpec
from streampro.config import RolloutConfig
from streampro.data.window import Window

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WINDOW, SLIDE, CHUNKS = 6, 3, 18  # 3x the window: slides before chunks 6, 9, 12, 15
SIZES = [(56, 56), (56, 84)]  # 4 and 6 image tokens per frame (28-pixel merged patches)


@pytest.fixture(scope="module")
def vl_policy(tmp_path_factory) -> str:
    from streampro import tiny_vl

    return str(tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path_factory.mktemp("vl")))


def image_streams(n: int, steps: int, *, seed: int) -> list:
    """n EncodedSamples with the same question and times but their own seeded frames (blocky
    random images, two frame sizes)."""
    from streampro.data.encode import EncodedSample
    from streampro.data.schema import Answer, Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        blocks = rng.integers(0, 256, size=(steps, h // 14, w // 14, 3), dtype=np.uint8)
        frames = [np.kron(b, np.ones((14, 14, 1), dtype=np.uint8)) for b in blocks]
        s = Sample(
            id=f"img-{i}",
            video="img.mp4",
            task="AA",
            question="tell me when the picture changes colour",
            query_time=0.0,
            answers=[Answer(time=float(steps // 2), text="now")],
            duration=float(steps),
        )
        times = [(float(t), float(t + 1)) for t in range(steps)]
        out.append(EncodedSample(s, times, [[] for _ in times], frames))
    return out


@pytest.fixture(scope="module")
def rollout(vl_policy):
    from streampro.actors.rollout import LocalRolloutGroup

    settings = RolloutConfig(
        max_answer_tokens=4, kv_cache_gb=0.25, max_num_seqs=16, max_model_len=4096, block_size=32
    )
    group = LocalRolloutGroup(
        WorkerSpec(vl_policy, settings, dtype="float32", seed=0, window=Window(WINDOW, SLIDE))
    )
    yield group
    group.shutdown()


def weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


def _pad_id(path: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_learner_scores_image_streams_as_vllm_sampled_them(
    rollout, vl_policy, temperature, learner_spec
):
    """6 concurrent streams, same text, different frames: every generated token's learner
    logprob equals vLLM's, and each row holds exactly its window's frames."""
    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.grpo_loop import build_batch, logprob_agreement
    from streampro.learners.packing import PackItem, collate

    samples = image_streams(6, CHUNKS, seed=1)
    sampling = Sampling(temperature=temperature, top_p=1.0, max_answer_tokens=4, seed=5)
    trajs = rollout.generate(samples=samples, n=1, sampling=sampling)
    for t in trajs:
        assert len(t.steps) == CHUNKS
        assert [s.first_step for s in t.segments] == [0, 6, 9, 12, 15]
        # a segment's row holds the frames of the turns in its window, in order
        assert [s.image_chunks for s in t.segments] == [
            list(range(6)),
            list(range(3, 9)),
            list(range(6, 12)),
            list(range(9, 15)),
            list(range(12, 18)),
        ]
    batch = build_batch(trajs, torch.zeros(len(trajs)), pad_id=_pad_id(vl_policy), samples=samples)
    assert batch["frames"].shape[0] == sum(len(s.image_chunks) for t in trajs for s in t.segments)
    spec = learner_spec("grpo", f"rollout.temperature={temperature}", "learner.micro_batch=8")
    learner = LocalLearnerGroup(model_path=vl_policy, spec=spec)
    try:
        lp = learner.logprobs(batch=batch)  # [R, T]
        # the check has power: stream 0's first row under stream 2's frames (same size)
        a = trajs[0].segments[0]
        other = [samples[2].frames[j] for j in a.image_chunks]
        item = PackItem(a.token_ids, a.gen_mask, old_logprobs=a.logprobs, images=other)
        moved = learner.logprobs(batch=collate([item], [[0]], pad_id=_pad_id(vl_policy)))
    finally:
        learner.shutdown()
    check = logprob_agreement(batch["old_logprobs"], lp, batch["loss_mask"])
    assert check["check/lp_diff_max"] < 1e-3, check
    assert batch["loss_mask"].sum() == sum(t.num_generated for t in trajs)
    mask = torch.tensor(a.gen_mask, dtype=torch.bool)
    n = len(a.gen_mask)
    assert (moved[0, :n] - lp[0, :n])[mask].abs().max() > 1e-2  # frames change the policy


def test_prefix_cache_hits_on_image_streams(rollout):
    before = rollout.cache_stats()
    rollout.generate(
        samples=image_streams(4, CHUNKS, seed=2),
        n=1,
        sampling=Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=24, seed=3),
    )
    after = rollout.cache_stats()
    hit_rate = (after["hits"] - before["hits"]) / (after["queries"] - before["queries"])
    assert hit_rate > 0.5, hit_rate


def test_seen_frames_after_a_weight_sync(rollout, vl_policy, tmp_path, learner_spec):
    """One update, exported and synced: the engine re-reads frames it has already encoded under
    the old weights (a stale encoder cache once killed the engine) and its logprobs equal the
    learner's new ones. Then the engine goes back to the initial weights for other tests."""
    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.grpo_loop import build_batch, logprob_agreement

    samples = image_streams(2, 8, seed=4)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=9)
    pad = _pad_id(vl_policy)
    learner = LocalLearnerGroup(model_path=vl_policy, spec=learner_spec("grpo", "grpo.lr=1e-2"))
    try:
        first = rollout.generate(samples=samples, n=2, sampling=sampling)
        batch = build_batch(
            first, torch.tensor([1.0, -1.0, 0.5, -0.5]), pad_id=pad, samples=samples
        )
        before = learner.logprobs(batch=batch)
        batch["old_logprobs"] = before
        learner.train_step(batch=batch, objective="grpo")
        learner_after = learner.logprobs(batch=batch)
        learner.export_hf(path=str(tmp_path / "v1"))
        rollout.sync_weights(version=1, source=str(tmp_path / "v1"))
        again = rollout.generate(samples=samples, n=2, sampling=sampling)  # the same frames
        synced = build_batch(again, torch.zeros(4), pad_id=pad, samples=samples)
        lp = learner.logprobs(batch=synced)
    finally:
        learner.shutdown()
        rollout.sync_weights(version=0, source=vl_policy)
    mask = batch["loss_mask"].bool()
    moved = learner_after[mask] - before[mask]
    assert moved.abs().max() > 1e-2  # the update changed the policy
    check = logprob_agreement(synced["old_logprobs"], lp, synced["loss_mask"])
    assert check["check/lp_diff_max"] < 1e-3, check


def test_folder_without_decision_tokens_trains(tmp_path, learner_spec):
    """A Qwen2.5-VL folder as a real checkpoint ships it (no </Silence>, </Response>): the
    tokens are added, SFT trains on image rows (vision tower frozen), and the export keeps
    the extended vocabulary."""
    from transformers import AutoTokenizer

    from streampro import tiny_vl
    from streampro.hf_policy import extend_policy, frame_tokens_fn
    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.sft import build_sft_data, make_batch

    src = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(stream_tokens=False), tmp_path / "src")
    assert len(AutoTokenizer.from_pretrained(src).encode("</Silence>")) > 1
    folder = str(extend_policy(src, tmp_path / "cache"))
    tok = AutoTokenizer.from_pretrained(folder)
    data = build_sft_data(
        image_streams(2, 8, seed=6),
        tok,
        window=Window(WINDOW, SLIDE),
        max_seq_len=4096,
        image_tokens=frame_tokens_fn(folder),
    )
    batch = make_batch(data, list(range(len(data.items))), max_seq_len=4096, pack=True, pad_id=0)
    assert int(batch["seq_ids"].max()) == 0  # rows with images are never packed
    spec = learner_spec("sft", "sft.lr=1e-3", "learner.freeze_vision=true")
    learner = LocalLearnerGroup(model_path=folder, spec=spec)
    try:
        first = learner.train_step(batch=batch, objective="sft")
        second = learner.train_step(batch=batch, objective="sft")
        out = learner.export_hf(path=str(tmp_path / "hf"))
    finally:
        learner.shutdown()
    assert second["loss"] < first["loss"]
    start, end = weights(folder), weights(out)  # learner.freeze_vision: the tower stays as it was
    tower = [k for k in start if "visual" in k]
    assert tower and all(torch.equal(start[k], end[k]) for k in tower)
    lm = [k for k in start if "layers" in k and "visual" not in k]
    assert lm and any(not torch.equal(start[k], end[k]) for k in lm)
    exported = AutoTokenizer.from_pretrained(out)
    assert exported.encode("</Silence>", add_special_tokens=False) == [
        tok.convert_tokens_to_ids("</Silence>")
    ]
    assert (Path(out) / "preprocessor_config.json").is_file()


def test_train_command_on_the_tiny_vl_config(tmp_path):
    """`streampro train --config configs/tiny_vl.yaml` at the smallest budget: SFT, two GRPO
    steps with vLLM image rollouts (learner and vLLM agree at every step) and the evaluations."""
    run = tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "streampro.cli",
        "train",
        "--config",
        str(REPO / "configs/tiny_vl.yaml"),
        "synth.per_task=1",
        "synth.eval_per_task=1",
        "sft.max_steps=2",
        "grpo.max_steps=2",
        "grpo.eval_every=0",
        "eval.max_samples=2",
        "eval.samples_per_stream=1",
        "synth.dev_per_task=1",
        "decode.tune_thresholds=[0.0,1.0]",
        "decode.bias_sweep=[0.0,-1.0]",
        f"synth.out={tmp_path / 'synth'}",
        f"run.dir={run}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    # vLLM started on the initial weights behind SFT, then loaded SFT's: the lp checks below
    # would fail if the engines still held the initial policy
    assert summary["engines_started_during_sft"] is True
    assert {"val", "test"} <= set(summary["sft"]) and {"val", "test"} <= set(summary["grpo"])
    # GRPO's final val pass is the summary's (not run twice), its predictions copied for report
    grpo_val = json.loads((run / "grpo" / "grpo_summary.json").read_text())["val"]
    assert summary["grpo"]["val"] == grpo_val
    assert (run / "predictions" / "grpo-val.jsonl").read_text() == (
        run / "grpo" / "val_predictions.jsonl"
    ).read_text()
    steps = [json.loads(line) for line in (run / "grpo" / "metrics.jsonl").read_text().splitlines()]
    checks = [m["check/lp_diff_max"] for m in steps if "check/lp_diff_max" in m]
    assert len(checks) == 2 and max(checks) < 1e-3, checks
    _assert_decoders_tuned_on_dev(run, summary)


def _assert_decoders_tuned_on_dev(run: Path, summary: dict) -> None:
    """decode.tune_thresholds / bias_sweep: threshold 1 responds at no chunk, the dev winner
    is saved beside each checkpoint and scored on test with p of every chunk kept; the bias
    sweep runs for SFT only."""
    dec = summary["decoders"]
    assert set(dec["sft"]) == {"bias", "threshold"} and set(dec["grpo"]) == {"threshold"}
    for stage in ("sft", "grpo"):
        rows = dec[stage]["threshold"]["dev"]
        assert [r["decode"]["threshold"] for r in rows] == [0.0, 1.0]
        # threshold 0 speaks at every chunk, but a barely trained policy's greedy text rarely
        # closes within max_answer_tokens (invalid, not counted); threshold 1 never speaks
        assert rows[1]["responses_per_stream"] == 0 <= rows[0]["responses_per_stream"]
        preds = (run / "predictions" / f"{stage}-threshold-test.jsonl").read_text().splitlines()
        assert preds and all(json.loads(x)["decisions"] for x in preds)  # p of every chunk
        best = max(rows, key=lambda r: r["w_avg"])  # first of equals, as pick_best
        assert dec[stage]["threshold"]["decode"] == best["decode"]
        saved = json.loads(
            (Path(summary["checkpoints"][stage]) / "streampro_decode.json").read_text()
        )
        assert saved["decode"] == best["decode"] and saved["decode"]["mode"] == "threshold"
        assert "w_avg" in dec[stage]["threshold"]["test"]
    biases = [r["decode"]["response_bias"] for r in dec["sft"]["bias"]["dev"]]
    assert biases == [0.0, -1.0]
    assert "Decoders tuned on dev" in (run / "report.md").read_text()
