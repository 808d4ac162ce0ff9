"""The DeepSpeed learner group: local vs Ray, 1 vs 2 ZeRO-2 ranks, exact resume, HF export.

Real parts: DeepSpeed engines over gloo (DS_ACCELERATOR=cpu), Ray actors in a placement
group, the tiny Qwen2 policy. A group trains one objective (its spec's): three SFT steps and
two GRPO steps are run by an in-process rank and by 2 Ray ranks; everything else compares
against those reference runs. Groups are built from config nodes (`LearnerSpec`), as
`make_learner_group` builds them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streampro.config import load_config
from streampro.learners.group import (
    LocalLearnerGroup,
    RayLearnerGroup,
    make_learner_group,
)
from streampro.learners.losses import cb_stream_weights
from streampro.learners.packing import PackItem, collate, plan_rows
from streampro.learners.worker import LearnerSpec

pytestmark = pytest.mark.slow

SETTINGS = [
    "learner.zero_stage=2",
    "learner.micro_batch=1",
    "learner.micro_batch_tokens=0",
    "learner.precision=fp32",
    "sft.lr=1e-3",
    "sft.warmup_steps=2",
    "sft.loss=cb_stream",
    "grpo.lr=1e-3",
    "run.seed=0",
]
ATOL = 1e-6  # fp32: 2 ranks reduce the same gradients in another order


def spec(objective: str, *overrides: str) -> LearnerSpec:
    """The spec a config with SETTINGS (and `overrides`) gives a group of `objective`."""
    return LearnerSpec.from_config(load_config(None, [*SETTINGS, *overrides]), objective=objective)


def make_batch(seed: int, objective: str) -> dict[str, torch.Tensor]:
    """6 dialogues packed into rows of <= 96 tokens: mostly silence, some responses and text."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(6):
        n = int(torch.randint(16, 48, (1,), generator=g))
        mask = (torch.rand(n, generator=g) < 0.35).long()
        mask[0] = 0
        dc = torch.where(mask > 0, (torch.rand(n, generator=g) < 0.15).long(), torch.full((n,), -1))
        kw = (
            {"decision_class": dc.tolist()}
            if objective == "sft"
            else {"advantages": [float(torch.randn(1, generator=g))] * n, "old_logprobs": [0.0] * n}
        )
        items.append(
            PackItem(torch.randint(0, 1000, (n,), generator=g).tolist(), mask.tolist(), **kw)
        )
    return collate(
        items, plan_rows([len(i.input_ids) for i in items], max_len=96, pack=True), pad_id=0
    )


def run_steps(group, objective: str, steps: range) -> list[dict[str, float]]:
    out = []
    for k in steps:
        batch = make_batch(k, objective)
        if objective == "grpo":
            batch["old_logprobs"] = group.logprobs(batch=batch)  # on-policy: ratio starts at 1
        out.append(group.train_step(batch=batch, objective=objective))
    return out


def weights(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


@pytest.fixture(scope="module")
def local_run(tiny_path, tmp_path_factory):
    """The SFT reference: one in-process rank runs 3 steps, exports, checkpoints at step 2."""
    root = tmp_path_factory.mktemp("local")
    group = LocalLearnerGroup(model_path=tiny_path, spec=spec("sft"))
    try:
        stats = run_steps(group, "sft", range(2))
        group.save_checkpoint(path=str(root / "ckpt"), client_state={"step": 2, "cursor": [0, 12]})
        stats += run_steps(group, "sft", range(2, 3))
        hf = group.export_hf(path=str(root / "hf"))
        probe = make_batch(99, "sft")
        lp = group.logprobs(batch=probe)
    finally:
        group.shutdown()
    return {"stats": stats, "hf": hf, "ckpt": str(root / "ckpt"), "probe": probe, "logprobs": lp}


@pytest.fixture(scope="module")
def grpo_run(tiny_path, tmp_path_factory):
    """The GRPO reference: one in-process rank runs 2 on-policy steps and exports."""
    root = tmp_path_factory.mktemp("grpo")
    group = LocalLearnerGroup(model_path=tiny_path, spec=spec("grpo"))
    try:
        stats = run_steps(group, "grpo", range(2, 4))
        hf = group.export_hf(path=str(root / "hf"))
    finally:
        group.shutdown()
    return {"stats": stats, "hf": hf}


def test_first_grpo_step_is_the_advantage_mean(grpo_run) -> None:
    # ratio = 1 at the first on-policy step, so the token-mean loss is -sum(A * mask) / N
    batch = make_batch(2, "grpo")
    expect = -float((batch["advantages"] * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    got = grpo_run["stats"][0]
    assert got["loss"] == pytest.approx(expect, abs=1e-5)
    assert got["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and got["clip_frac"] == 0.0
    assert [s["lr"] for s in grpo_run["stats"]] == [1e-3, 1e-3]  # GRPO has no warm-up


def test_entropy_bonus_alone_is_its_hand_value_and_raises_the_entropy(tiny_path) -> None:
    # zero advantages: the policy term has no gradient, the loss is -coef x mean entropy
    coef = 0.5
    group = LocalLearnerGroup(model_path=tiny_path, spec=spec("grpo", f"grpo.entropy_coef={coef}"))
    try:
        batch = make_batch(2, "grpo")
        batch["advantages"] = torch.zeros_like(batch["advantages"])
        batch["old_logprobs"] = group.logprobs(batch=batch)
        first = group.train_step(batch=batch, objective="grpo")
        second = group.train_step(batch=batch, objective="grpo")
    finally:
        group.shutdown()
    assert first["loss"] == pytest.approx(-coef * first["entropy"], rel=1e-5)
    assert second["entropy"] > first["entropy"]


def test_sft_metrics_use_global_counts(local_run) -> None:
    batch = make_batch(0, "sft")
    sup = batch["loss_mask"] > 0
    n_s, n_r = (
        int((sup & (batch["decision_class"] == 0)).sum()),
        int((sup & (batch["decision_class"] == 1)).sum()),
    )
    st = local_run["stats"][0]
    assert (st["n_silence"], st["n_response"]) == (n_s, n_r)
    beta = spec("sft").objective.beta  # sft.beta
    assert (st["w_silence"], st["w_response"]) == cb_stream_weights(n_s, n_r, beta)
    assert st["tokens"] == float(sup.sum()) and 0.0 <= st["decision_acc"] <= 1.0
    assert [s["lr"] for s in local_run["stats"]] == pytest.approx(
        [1e-3 / 3, 2e-3 / 3, 1e-3]
    )  # warm-up


@pytest.mark.parametrize("objective", ["sft", "grpo"])
def test_ray_two_ranks_zero2_match_one_rank(
    local_run, grpo_run, ray_local, tiny_path, tmp_path, objective: str
) -> None:
    """The same steps through the Ray transport, split over 2 ranks, give the in-process
    rank's losses and exported weights."""
    reference, steps = (local_run, range(3)) if objective == "sft" else (grpo_run, range(2, 4))
    # 2 CPUs a rank -> 2 torch threads a rank (Ray's OMP_NUM_THREADS; sft.num_cpus relies on it)
    two = spec(objective, "learner.num_ranks=2", "learner.num_cpus=2")
    group = RayLearnerGroup(model_path=tiny_path, spec=two)
    try:
        assert [i["threads"] for i in group.info()] == [2, 2]
        stats = run_steps(group, objective, steps)
        hf = group.export_hf(path=str(tmp_path / "hf"))
    finally:
        group.shutdown()
    for ray_st, loc_st in zip(stats, reference["stats"], strict=True):
        assert ray_st["loss"] == pytest.approx(loc_st["loss"], abs=ATOL)
        assert ray_st["tokens"] == loc_st["tokens"]
        if "w_silence" in loc_st:  # class weights from the global batch, not a rank's share
            assert (ray_st["w_silence"], ray_st["w_response"]) == (
                loc_st["w_silence"],
                loc_st["w_response"],
            )
    ray_w, loc_w = weights(hf), weights(reference["hf"])
    assert ray_w.keys() == loc_w.keys()
    for k in loc_w:
        torch.testing.assert_close(ray_w[k], loc_w[k], atol=ATOL, rtol=0)


def test_resume_gives_the_uninterrupted_loss_exactly(local_run, tiny_path) -> None:
    group = LocalLearnerGroup(model_path=tiny_path, spec=spec("sft"))
    try:
        state = group.load_checkpoint(path=local_run["ckpt"])
        resumed = run_steps(group, "sft", range(2, 3))
    finally:
        group.shutdown()
    assert state == {"step": 2, "cursor": [0, 12]}
    assert resumed[0]["loss"] == local_run["stats"][2]["loss"]  # bit-exact, not approx
    assert resumed[0]["lr"] == local_run["stats"][2]["lr"]  # the scheduler resumed too


def transformers_logprobs(folder: str, b: dict[str, torch.Tensor]) -> torch.Tensor:  # [B, T]
    """Logprobs of a packed batch under an exported folder, loaded by plain transformers."""
    from transformers import AutoModelForCausalLM

    from streampro.learners.losses import shifted_logprobs
    from streampro.learners.packing import attention_bias

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    with torch.no_grad():
        logits = model(
            input_ids=b["input_ids"],
            position_ids=b["position_ids"],
            attention_mask=attention_bias(b["seq_ids"], torch.float32),
        ).logits
    return shifted_logprobs(logits, b["input_ids"], position_ids=b["position_ids"])[0]


def test_export_loads_in_transformers(local_run) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_run["hf"])
    assert tok.convert_tokens_to_ids("</Silence>") != tok.unk_token_id
    b = local_run["probe"]
    lp = transformers_logprobs(local_run["hf"], b)
    scored = b["loss_mask"] > 0  # the learner scores only the tokens a loss reads
    assert scored.sum() > 0
    torch.testing.assert_close(lp[scored], local_run["logprobs"][scored], atol=1e-5, rtol=0)
    assert (local_run["logprobs"][~scored] == 0).all()


def test_bad_batch_is_rejected_before_work(local_run, tiny_path) -> None:
    from streampro.learners.group import check_batch

    batch = make_batch(0, "sft")
    with pytest.raises(ValueError, match="lacks key 'advantages'"):
        check_batch(batch, "grpo")
    with pytest.raises(ValueError, match="unknown objective"):
        check_batch(batch, "dpo")


def test_a_group_trains_only_its_own_objective(tiny_path) -> None:
    group = LocalLearnerGroup(model_path=tiny_path, spec=spec("sft"))
    try:
        with pytest.raises(ValueError, match="trains 'sft', not 'grpo'"):
            group.train_step(batch=make_batch(0, "grpo"), objective="grpo")
    finally:
        group.shutdown()


def test_precision_from_yaml_reaches_the_worker_unchanged(tiny_path, tmp_path: Path) -> None:
    """One config value end to end: learner.precision in a YAML file -> load_config ->
    make_learner_group -> the rank's spec and what its setup chose."""
    yaml = tmp_path / "learner.yaml"
    yaml.write_text(
        "learner:\n  precision: bf16\n  in_process: true\n  micro_batch_tokens: 0\n"
        "  zero_stage: 0\n"
    )
    cfg = load_config(yaml)
    group = make_learner_group(cfg, tiny_path, objective="sft")
    try:
        assert isinstance(group, LocalLearnerGroup)
        assert group.worker.spec.learner.precision == "bf16"
        assert group.worker.info()["precision"] == "bf16"
        assert [i["precision"] for i in group.info()] == ["bf16"]  # through the transport
    finally:
        group.shutdown()


def test_sft_num_cpus_overrides_the_learner_cpus_in_sft_only() -> None:
    from streampro.learners.group import rank_cpus

    cfg = load_config(None, ["learner.num_cpus=1", "sft.num_cpus=2"])
    assert (rank_cpus(cfg, "sft"), rank_cpus(cfg, "grpo")) == (2, 1)
    assert rank_cpus(load_config(None, ["learner.num_cpus=3"]), "sft") == 3  # 0 = learner's


def test_gradient_checkpointing_changes_memory_not_results(local_run, tiny_path, tmp_path) -> None:
    """learner.gradient_checkpointing recomputes activations in the backward pass: the same
    SFT losses and exported weights as the reference run without it."""
    group = LocalLearnerGroup(
        model_path=tiny_path, spec=spec("sft", "learner.gradient_checkpointing=true")
    )
    try:
        assert group.worker.engine.module.is_gradient_checkpointing
        stats = run_steps(group, "sft", range(3))
        hf = group.export_hf(path=str(tmp_path / "hf"))
    finally:
        group.shutdown()
    for got, ref in zip(stats, local_run["stats"]):
        assert got["loss"] == pytest.approx(ref["loss"], abs=ATOL)
    w, ref_w = weights(hf), weights(local_run["hf"])
    assert all(torch.allclose(w[k], ref_w[k], atol=ATOL) for k in ref_w)
