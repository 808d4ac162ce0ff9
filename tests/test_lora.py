"""LoRA as a learner option (peft): only adapters train, exports merge them into whole weights.

Known answers: before any step the LoRA model scores exactly like the base (B starts at 0);
SFT steps lower the loss while every base weight stays bit-identical; the merged export, loaded
by plain transformers, scores like the learner's LoRA model; on a VLM no adapter lands in the
vision tower.
"""

from __future__ import annotations

import pytest
import torch
from test_learner_group import make_batch, transformers_logprobs, weights

from streampro.config import load_config
from streampro.learners.group import LocalLearnerGroup
from streampro.learners.worker import LearnerSpec

pytestmark = pytest.mark.slow


def sft_spec(*overrides: str) -> LearnerSpec:
    base = ["learner.micro_batch=2", "learner.micro_batch_tokens=0", "learner.precision=fp32"]
    return LearnerSpec.from_config(load_config(None, [*base, *overrides]), objective="sft")


def test_lora_trains_adapters_and_exports_merged_weights(tiny_path, tmp_path) -> None:
    base = LocalLearnerGroup(model_path=tiny_path, spec=sft_spec())
    probe = make_batch(99, "sft")
    try:
        base_lp = base.logprobs(batch=probe)
    finally:
        base.shutdown()
    group = LocalLearnerGroup(
        model_path=tiny_path, spec=sft_spec("sft.lr=1e-2", "learner.lora_rank=4")
    )
    try:
        torch.testing.assert_close(group.logprobs(batch=probe), base_lp, atol=1e-6, rtol=0)
        losses = [group.train_step(batch=make_batch(1, "sft"), objective="sft")["loss"]]
        losses += [group.train_step(batch=make_batch(1, "sft"), objective="sft")["loss"]]
        lora_lp = group.logprobs(batch=probe)
        module = group.worker.engine.module
        frozen = {n: p for n, p in module.named_parameters() if not p.requires_grad}
        trained = [n for n, p in module.named_parameters() if p.requires_grad]
        hf = group.export_hf(path=str(tmp_path / "hf"))
    finally:
        group.shutdown()
    assert losses[1] < losses[0]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    start = weights(tiny_path)
    for name, p in frozen.items():  # base weights untouched (names without peft's base_layer)
        key = name.replace(".base_layer.", ".")
        if key in start:
            assert torch.equal(p.detach(), start[key]), name
    merged = weights(hf)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    lp = transformers_logprobs(hf, probe)
    scored = probe["loss_mask"] > 0  # the tokens the learner scores
    torch.testing.assert_close(lp[scored], lora_lp[scored], atol=1e-5, rtol=0)
    assert (lp[scored] - base_lp[scored]).abs().max() > 1e-3  # the adapters did change the policy


def test_lora_targets_the_language_model_of_a_vlm(tmp_path) -> None:
    from streampro import tiny_vl
    from streampro.hf_policy import load_model
    from streampro.lora import add_lora

    folder = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path)
    model = load_model(folder)
    add_lora(model, rank=2, alpha=4.0)
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert adapted and not any("visual" in n for n in adapted)
    assert any(n.endswith("q_proj") for n in adapted) and any(
        n.endswith("down_proj") for n in adapted
    )
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())
