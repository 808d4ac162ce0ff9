"""`streampro plan`: hand-derived memory terms, parameter counts that equal the built models',
and one-line refusals."""

from __future__ import annotations

import pytest

from streampro import tiny_vl
from streampro.cluster.plan import engine_terms, learner_terms
from streampro.config import load_config
from streampro.errors import UserError
from streampro.hf_policy import load_model
from streampro.lora import add_lora
from streampro.model_size import ModelSize, model_size
from streampro.plan import run_plan
from streampro.public_models import QWEN2_5_VL_3B, local_config, reduced_depth

SMALL = ModelSize(
    text_params=1000,
    head_params=0,
    vision_params=0,
    lora_params=0,
    layers=2,
    hidden=4,
    intermediate=8,
    q_dim=4,
    kv_dim=2,
    kv_heads=1,
    vocab=10,
)


def test_learner_terms_by_hand() -> None:
    cfg = load_config(
        None,
        [
            "learner.precision=fp32",
            "learner.num_ranks=2",
            "learner.zero_stage=2",
            "learner.micro_batch=1",
            "data.window_turns=10",
            "data.window_slide=5",
            "rollout.max_answer_tokens=8",
        ],
    )
    terms = {t.name.split(" (")[0]: t.bytes for t in learner_terms(cfg, SMALL, stage="sft")}
    # fp32: 4-byte weights (replicated below ZeRO-3), grads and Adam's 8 bytes split over 2
    assert terms["weights"] == 1000 * 4
    assert terms["gradients"] == 1000 * 4 / 2
    assert terms["optimizer states"] == 1000 * 8 / 2
    # a window: 10 turns x (16 patch tokens + 8) = 240 tokens; a layer saves per token
    # 4*4 (norms) + 4 (q) + 2*2 (k, v) + 4 (attention out) + 4*8 (SwiGLU) = 60 elements
    assert terms["activations"] == 2 * 60 * 240 * 4
    assert terms["backward workspace"] == 60 * 240 * 4  # one layer's activation gradients
    # scored: 10 decisions + 4 x 8 answer tokens = 42; logits, log-softmax and its grad
    assert terms["logits"] == 42 * 10 * (4 + 4 + 4)
    ckpt = load_config(
        None,
        [
            "learner.precision=fp32",
            "learner.micro_batch=1",
            "learner.gradient_checkpointing=true",
        ],
    )
    acts = {t.name.split(" (")[0]: t.bytes for t in learner_terms(ckpt, SMALL, stage="sft")}
    window = min(ckpt.sft.max_seq_len, ckpt.data.window_turns * 24)  # the SFT row cap
    assert acts["activations"] == (2 * 4 * window + 60 * window) * 4  # 2 hidden states + 1 layer
    engine = {t.name.split(" (")[0]: t.bytes for t in engine_terms(cfg, SMALL)}
    streams = cfg.grpo.batch_samples * cfg.grpo.group_size  # one engine holds all
    assert engine["KV cache"] == streams * 240 * (2 * 2 * 2 * 4)  # layers x (k, v) x kv_dim x 4


def test_meta_counts_equal_the_built_model(tmp_path) -> None:
    folder = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path)
    hf = local_config(folder)
    assert hf is not None
    size = model_size(hf, lora_rank=2)
    model = load_model(folder)
    assert size.total == sum(p.numel() for p in model.parameters())
    assert size.vision_params == sum(p.numel() for p in model.model.visual.parameters())
    add_lora(model, rank=2, alpha=4.0)
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert size.lora_params == lora
    # the public 3B shape: its model card's 3.75 B parameters, exactly as transformers builds it
    assert model_size(QWEN2_5_VL_3B, lora_rank=0).total == 3_754_622_976
    cut = model_size(reduced_depth(QWEN2_5_VL_3B, layers=2), lora_rank=0)
    assert cut.hidden == 2048 and cut.layers == 2 and cut.vocab == 151936


def test_plan_fits_and_refuses_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("STREAMPRO_JUDGE_URL", "http://127.0.0.1:9")  # the config needs one
    cfg = load_config("configs/qwen2_5_vl_3b.yaml")
    out = run_plan(cfg, gpus=8, gpu_memory_gb=80)
    assert sum(out["learner_sft"].values()) < 80e9
    with pytest.raises(UserError, match=r"learner \(4 ranks x 6 CPU \+ 1 GPU\) does not fit"):
        run_plan(cfg, gpus=1, gpu_memory_gb=80)
    flat = load_config("configs/qwen2_5_vl_3b.yaml", ["learner.gradient_checkpointing=false"])
    with pytest.raises(UserError) as err:
        run_plan(flat, gpus=8, gpu_memory_gb=80)
    assert "activations (no checkpointing" in str(err.value)
    assert "learner.gradient_checkpointing=true" in str(err.value)
    assert "\n" not in str(err.value)
