"""Long streams: every decision is trained under exactly the context it was sampled from.

A real vLLM CPU engine rolls out streams of 3.75x the window (30 chunks, window 8 turns
sliding by 4); the engine's `decide` is wrapped to record every prompt it receives. For each
decision, the learner's row (one per window segment) must start with exactly that prompt, and
the learner's logprobs of the sampled tokens (DeepSpeed rank, fp32) must equal vLLM's within
1e-4, at temperature 1.0 and 0.7.
"""

from __future__ import annotations

import pytest
import torch

from streampro.actors.api import Sampling, WorkerSpec
from streampro.actors.episode import request_seed
from streampro.bench.rollout import silence_biased_policy, synthetic_streams
from streampro.config import RolloutConfig
from streampro.data.window import Window

pytestmark = pytest.mark.slow

WINDOW, SLIDE, CHUNKS = 8, 4, 30  # slides before chunks 8, 12, ..., 28: 7 segments


@pytest.fixture(scope="module")
def policy(tiny_path, tmp_path_factory) -> str:
    # mostly silent, with answers now and then: decisions of 1 and of several tokens
    return silence_biased_policy(tiny_path, tmp_path_factory.mktemp("long") / "p", p_silence=0.7)


@pytest.fixture(scope="module")
def recorded(policy):
    """A local rollout group whose engine records, by seed, the token ids of every request
    it receives: ("full", ids) for a request (or a stream session's first input) carrying its
    whole prompt, ("delta", ids) for a session input appending to what the session holds."""
    from streampro.actors.rollout import LocalRolloutGroup

    settings = RolloutConfig(
        max_answer_tokens=4, kv_cache_gb=0.25, max_num_seqs=16, max_model_len=2048
    )
    group = LocalRolloutGroup(
        WorkerSpec(policy, settings, dtype="float32", seed=0, window=Window(WINDOW, SLIDE))
    )
    prompts: dict[int, tuple[str, list[int]]] = {}
    llm = group.worker.engine.llm
    generate = llm.generate

    def recording(prompt, params, *args, **kwargs):
        if isinstance(prompt, dict):  # one request with its whole prompt
            prompts[params.seed] = ("full", list(prompt["prompt_token_ids"]))
            return generate(prompt, params, *args, **kwargs)

        async def inputs():  # a stream session: its first input opens it with a whole prompt
            kind = "full"
            async for item in prompt:
                prompts[item.sampling_params.seed] = (kind, list(item.prompt["prompt_token_ids"]))
                kind = "delta"
                yield item

        return generate(inputs(), params, *args, **kwargs)

    llm.generate = recording
    yield group, prompts
    group.shutdown()


def _engine_context(record: tuple[str, list[int]], before: list[int] | None) -> list[int]:
    """What the engine held when it sampled a decision: a whole prompt, or (vLLM streaming
    input) what the session held after the last decision plus the appended ids. `before` =
    the last decision's context + its generated ids but the last (vLLM drops it: no KV)."""
    kind, ids = record
    if kind == "full":
        return ids
    assert before is not None, "a session input before any whole prompt"
    return before + ids


def _decision_starts(gen_mask: list[int]) -> list[int]:
    """Positions of each decision's first generated token in a segment row."""
    return [i for i, m in enumerate(gen_mask) if m and (i == 0 or not gen_mask[i - 1])]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_learner_rows_are_the_prompts_vllm_saw(recorded, policy, temperature, learner_spec):
    from transformers import AutoTokenizer

    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.grpo_loop import build_batch, logprob_agreement

    group, prompts = recorded
    samples = synthetic_streams(2, CHUNKS, seed=3)
    sampling = Sampling(temperature=temperature, top_p=1.0, max_answer_tokens=4, seed=17)
    trajs = group.generate(samples=samples, n=2, sampling=sampling)

    checked = 0
    for k, t in enumerate(trajs):
        index, episode = divmod(k, 2)
        assert len(t.steps) == CHUNKS
        assert [s.first_step for s in t.segments] == [0, 8, 12, 16, 20, 24, 28]
        for seg in t.segments:
            starts = _decision_starts(seg.gen_mask)
            before = None
            for j, pos in enumerate(starts):
                seed = request_seed(sampling.seed, index, episode, seg.first_step + j)
                if j == 0:  # a slide: the new segment's first prompt is sent whole
                    assert prompts[seed][0] == "full"
                context = _engine_context(prompts[seed], before)
                assert seg.token_ids[:pos] == context  # the row IS what vLLM held
                end = pos + next(k for k, m in enumerate(seg.gen_mask[pos:] + [0]) if not m)
                before = seg.token_ids[: end - 1]
                checked += 1
    assert checked == len(trajs) * CHUNKS

    tok = AutoTokenizer.from_pretrained(policy)
    frame_start = tok.convert_tokens_to_ids("<|frame|>")
    # rows are bounded by the window: at most 8 chunk turns each
    assert max(s.token_ids.count(frame_start) for t in trajs for s in t.segments) == WINDOW

    spec = learner_spec("grpo", f"rollout.temperature={temperature}", "learner.micro_batch=8")
    learner = LocalLearnerGroup(model_path=policy, spec=spec)
    try:
        batch = build_batch(trajs, torch.zeros(len(trajs)), pad_id=int(tok.pad_token_id or 0))
        assert batch["input_ids"].shape[0] == sum(len(t.segments) for t in trajs)
        lp = learner.logprobs(batch=batch)  # [R, T]
    finally:
        learner.shutdown()
    check = logprob_agreement(batch["old_logprobs"], lp, batch["loss_mask"])
    assert check["check/lp_diff_max"] < 1e-4, check
    assert batch["loss_mask"].sum() == sum(t.num_generated for t in trajs)


def test_prefix_cache_hits_across_segments(recorded):
    """Between slides each prompt extends the last, so the engine reuses nearly all of it."""
    group, _ = recorded
    samples = synthetic_streams(4, CHUNKS, seed=5)
    before = group.cache_stats()
    group.generate(
        samples=samples,
        n=1,
        sampling=Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=24, seed=2),
    )
    after = group.cache_stats()
    hit_rate = (after["hits"] - before["hits"]) / (after["queries"] - before["queries"])
    assert hit_rate > 0.75, hit_rate


def test_learner_step_synced_to_vllm_and_kept_weights(tiny_path, tmp_path, learner_spec):
    """One GRPO update of the tied-embedding tiny policy, exported and synced in place: vLLM's
    logprobs equal the learner's again (a stale tied LM head once made them differ by up to
    1.05). The learner also scores under the weights it kept from before the update, exactly
    as it did then (the async agreement check)."""
    from streampro.actors.rollout import LocalRolloutGroup
    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.grpo_loop import build_batch, logprob_agreement

    samples = synthetic_streams(2, 6, seed=3)
    sampling = Sampling(temperature=0.7, top_p=1.0, max_answer_tokens=4, seed=1)
    settings = RolloutConfig(
        max_answer_tokens=4, kv_cache_gb=0.25, max_num_seqs=16, max_model_len=4096
    )
    group = LocalRolloutGroup(
        WorkerSpec(tiny_path, settings, dtype="float32", seed=0, window=Window(200, 50))
    )
    spec = learner_spec("grpo", "grpo.lr=1e-2", "rollout.temperature=0.7")
    learner = LocalLearnerGroup(model_path=tiny_path, spec=spec)
    try:
        batch = build_batch(
            group.generate(samples=samples, n=2, sampling=sampling),
            torch.tensor([1.0, -1.0, 0.5, -0.5]),
            pad_id=0,
        )
        before = learner.logprobs(batch=batch)
        assert (
            logprob_agreement(batch["old_logprobs"], before, batch["loss_mask"])[
                "check/lp_diff_max"
            ]
            < 1e-5
        )
        learner.keep_weights(version=0)
        batch["old_logprobs"] = before
        learner.train_step(batch=batch, objective="grpo")
        after = learner.logprobs(batch=batch)
        kept = learner.logprobs(batch=batch, version=0)
        again = learner.logprobs(batch=batch)  # the current weights are back
        learner.export_hf(path=str(tmp_path / "v1"))
        group.sync_weights(version=1, source=str(tmp_path / "v1"))
        synced = build_batch(
            group.generate(samples=samples, n=2, sampling=sampling), torch.zeros(4), pad_id=0
        )
        lp = learner.logprobs(batch=synced)
    finally:
        learner.shutdown()
        group.shutdown()
    mask = batch["loss_mask"].bool()
    assert (after - before)[mask].abs().max() > 1e-2  # the update moved the policy
    assert torch.equal(kept, before)
    assert torch.equal(again, after)
    check = logprob_agreement(synced["old_logprobs"], lp, synced["loss_mask"])
    assert check["check/lp_diff_max"] < 1e-5, check


def test_bf16_learner_against_fp32_engine_is_checked_and_corrected(recorded, policy, learner_spec):
    """A mixed pair (learner.precision=bf16, fp32 engines): the logprobs differ past the fp32
    threshold but within the bf16 one, and a GRPO step trains with the truncated importance
    weights p_learner / p_vllm (capped) that correct for it."""
    from transformers import AutoTokenizer

    from streampro.config import load_config
    from streampro.learners.group import LocalLearnerGroup
    from streampro.learners.grpo_loop import (
        build_batch,
        check_threshold,
        logprob_agreement,
        rollout_correction,
    )
    from streampro.learners.grpo_loss import tis_weights

    cfg = load_config(None, ["learner.precision=bf16"])
    assert rollout_correction(cfg) and check_threshold(cfg) == cfg.grpo.logprob_check_max_bf16
    group, _ = recorded
    sampling = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=23)
    trajs = group.generate(samples=synthetic_streams(2, CHUNKS, seed=5), n=2, sampling=sampling)
    tok = AutoTokenizer.from_pretrained(policy)
    batch = build_batch(
        trajs, torch.tensor([1.0, -1.0, 0.5, -0.5]), pad_id=int(tok.pad_token_id or 0)
    )
    spec = learner_spec("grpo", "learner.precision=bf16", "learner.micro_batch=8")
    assert spec.precision == "bf16"
    learner = LocalLearnerGroup(model_path=policy, spec=spec)
    try:
        assert learner.info()[0]["precision"] == "bf16"
        vllm_lp = batch["old_logprobs"]
        batch["old_logprobs"] = learner.logprobs(batch=batch)  # [R, T] the bf16 learner's
        check = logprob_agreement(vllm_lp, batch["old_logprobs"], batch["loss_mask"])
        assert cfg.grpo.logprob_check_max < check["check/lp_diff_max"] < check_threshold(cfg)
        w = tis_weights(batch["old_logprobs"], vllm_lp, batch["loss_mask"], cap=2.0)
        on = batch["loss_mask"] > 0
        assert torch.all(w[on] > 0) and torch.all(w[on] <= 2.0) and torch.all(w[~on] == 0)
        assert abs(float(w[on].mean()) - 1.0) < 0.05  # close to 1: a small mismatch
        batch["is_weights"] = w
        stats = learner.train_step(batch=batch, objective="grpo")
    finally:
        learner.shutdown()
    assert stats["is_weight_mean"] == pytest.approx(float(w[on].mean()), rel=1e-4)
