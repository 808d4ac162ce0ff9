"""The threshold decoder: its pure rule on a 6-chunk stream worked by hand, its config, and
`decode.mode=threshold` on a real vLLM CPU engine with the tiny text policy."""

from __future__ import annotations

import math

import pytest

from streampro.actors.decode import ThresholdSampling, calibrated_p, fire_all
from streampro.actors.episode import CalibratedStep, calibrated_steps
from streampro.actors.policy_eval import PolicyEval, decision_probs
from streampro.config import ConfigError, DecodeConfig, RolloutConfig, load_config
from streampro.types import Step, Trajectory

SHIFT = math.log(3.0)
# Two-token probabilities q of `</Response>` at 6 chunks: l_r = log q, l_s = log(1 - q).
# p = sigmoid(logit(q) - log 3) = q / (q + 3 (1 - q)):
#   q = 1/2 -> 1/4,  1/4 -> 1/10,  9/10 -> 3/4,  3/4 -> 1/2
Q = [0.5, 0.25, 0.9, 0.75, 0.25, 0.5]
P = [0.25, 0.1, 0.75, 0.5, 0.1, 0.25]


def test_calibrated_p_takes_the_shift_off_the_logit_difference():
    got = [calibrated_p(math.log(q), math.log(1 - q), SHIFT) for q in Q]
    assert got == pytest.approx(P, abs=1e-12)
    assert calibrated_p(-0.3, -1.2, 0.0) == pytest.approx(1 / (1 + math.exp(-0.9)), abs=1e-12)
    assert calibrated_p(0.0, 800.0, 0.0) == 0.0 and calibrated_p(800.0, 0.0, 0.0) == 1.0


def test_fire_on_six_chunks():
    F, R = False, True
    # p >= 0.4 at chunks 3 (0.75) and 4 (0.5)
    assert fire_all(P, threshold=0.4) == [F, F, R, R, F, F]
    # one refractory chunk silences chunk 4
    assert fire_all(P, threshold=0.4, refractory=1) == [F, F, R, F, F, F]
    # 0.25 fires at once, then 2 quiet chunks; 0.5 fires, then 2 quiet chunks
    assert fire_all(P, threshold=0.2, refractory=2) == [R, F, F, R, F, F]
    # integrate to 0.55: 0.25, 0.35, 1.10 fires (reset); 0.5, 0.6 fires (reset); 0.25
    assert fire_all(P, threshold=0.55, integrate=True) == [F, F, R, F, R, F]
    # ... with 1 refractory chunk: chunk 4 quiet and adds nothing; 0.1, 0.35 stay under
    assert fire_all(P, threshold=0.55, integrate=True, refractory=1) == [F, F, R, F, F, F]
    assert fire_all(P, threshold=0.0) == [R] * 6
    assert fire_all(P, threshold=1.0) == [F] * 6


def test_decode_config():
    assert DecodeConfig().mode == "sample" and load_config(None, []).decode == DecodeConfig()
    cfg = load_config(None, ["decode.mode=threshold", "decode.threshold=0.5", "decode.shift=3"])
    assert (cfg.decode.mode, cfg.decode.threshold, cfg.decode.shift) == ("threshold", 0.5, 3.0)
    with pytest.raises(ConfigError, match="decode.mode must be one of sample, threshold"):
        DecodeConfig(mode="greedy")
    with pytest.raises(ConfigError, match=r"decode.threshold must be in \[0, 1\], got 1.5"):
        DecodeConfig(threshold=1.5)
    assert DecodeConfig(threshold=1.5, integrate=True).threshold == 1.5  # a sum may pass 1
    with pytest.raises(ConfigError, match="decode.refractory_chunks must be >= 0, got -1"):
        DecodeConfig(refractory_chunks=-1)


def test_policy_eval_picks_the_decoder():
    plain = PolicyEval.from_config(load_config(None, []))
    assert not isinstance(plain.sampling, ThresholdSampling)
    cfg = load_config(None, ["decode.mode=threshold", "eval.greedy=false", "run.seed=5"])
    pe = PolicyEval.from_config(cfg)
    assert isinstance(pe.sampling, ThresholdSampling) and pe.n == 1
    assert (pe.sampling.temperature, pe.sampling.seed) == (0.0, 5)
    assert pe.sampling.decode == cfg.decode


def test_decision_probs_of_a_trajectory():
    steps = [Step(1.0, "silence", "", "</Silence>"), Step(2.0, "response", "hi", "</Response>hi")]
    traj = Trajectory("s", 0, [], calibrated_steps(steps, [0.25, 0.75]))
    assert isinstance(traj.steps[1], CalibratedStep) and traj.responses() == [
        {"time": 2.0, "text": "hi"}
    ]
    assert decision_probs(traj) == {
        "decisions": [{"time": 1.0, "p_response": 0.25}, {"time": 2.0, "p_response": 0.75}]
    }
    assert decision_probs(Trajectory("s", 0, [], steps)) == {} and decision_probs(None) == {}
    with pytest.raises(ValueError, match="2 steps but 1 probabilities"):
        calibrated_steps(steps, [0.5])


# ---- on a real engine -----------------------------------------------------------------------

ENGINE_SHIFT = 0.7


def _decision_prompts(traj) -> list[list[int]]:
    """The prompt of every decision: a segment's ids up to each generated run's first token."""
    out = []
    for seg in traj.segments:
        m = seg.gen_mask
        out += [seg.token_ids[:i] for i in range(len(m)) if m[i] and (i == 0 or not m[i - 1])]
    return out


async def _next_logprob(engine, prompt: list[int], tok: int) -> float:
    """log P(tok | prompt) over the whole vocabulary (vLLM's prompt logprobs)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    final = None
    async for out in engine.llm.generate(
        engine.prompt([*prompt, tok], []), params, request_id=f"check-{len(prompt)}-{tok}"
    ):
        final = out
    return float(final.prompt_logprobs[-1][tok].logprob)


@pytest.mark.slow
def test_threshold_decoding_on_the_vllm_engine(tiny_path):
    from streampro.actors.api import WorkerSpec
    from streampro.actors.rollout import LocalRolloutGroup
    from streampro.bench.rollout import synthetic_streams
    from streampro.data.window import Window

    settings = RolloutConfig(max_answer_tokens=4, kv_cache_gb=0.25, max_model_len=2048)
    group = LocalRolloutGroup(
        WorkerSpec(tiny_path, settings, dtype="float32", seed=0, window=Window(200, 50))
    )
    try:
        r_id, s_id = group.worker.decision_ids
        streams = synthetic_streams(1, 6, seed=2)
        for threshold, first in ((0.0, r_id), (1.0, s_id)):
            decode = DecodeConfig(mode="threshold", threshold=threshold, shift=ENGINE_SHIFT)
            (traj,) = group.generate(
                samples=streams, n=1, sampling=ThresholdSampling.of(decode, settings)
            )
            assert len(traj.steps) == 6
            if first == r_id:  # threshold 0: every chunk responds
                assert all(s.raw.startswith("</Response>") for s in traj.steps)
            else:  # threshold 1: none does
                assert [s.decision for s in traj.steps] == ["silence"] * 6
            prompts = _decision_prompts(traj)
            assert len(prompts) == 6
            engine = group.worker.engine
            for step, prompt in zip(traj.steps, prompts):
                l_r = group._run(_next_logprob(engine, prompt, r_id))
                l_s = group._run(_next_logprob(engine, prompt, s_id))
                want = math.exp(l_r) / (math.exp(l_r) + math.exp(l_s + ENGINE_SHIFT))
                assert isinstance(step, CalibratedStep)
                assert step.p_response == pytest.approx(want, abs=1e-4)
    finally:
        group.shutdown()
