"""Stream sessions under a KV cache too small for every stream's context at once, and the
budget bookkeeping on its own.

Real parts: a vLLM CPU engine with a ~4 k-token KV cache, the tiny policy, transformers as
the reference. Eight 30-s streams hold ~13 k tokens of context together: sessions must give
way to one request per step (their waiting KV would otherwise stall every stream), and every
decision's logprobs must still be those of the context the learner will score.
"""

from __future__ import annotations

import pytest
import torch

from streampro.actors.api import Sampling, WorkerSpec
from streampro.bench.rollout import logprob_max_abs_diff, silence_biased_policy, synthetic_streams
from streampro.config import RolloutConfig
from streampro.data.window import Window


@pytest.fixture(scope="module")
def policy(tiny_path, tmp_path_factory) -> str:
    return silence_biased_policy(tiny_path, tmp_path_factory.mktemp("sess") / "p", p_silence=0.8)


@pytest.mark.slow
def test_sessions_fall_back_when_the_kv_cache_is_short(policy, monkeypatch):
    from streampro.actors import engine_session
    from streampro.actors.rollout import LocalRolloutGroup

    # vLLM CPU takes VLLM_CPU_KVCACHE_SPACE (GiB, set for every test) over kv_cache_gb
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    settings = RolloutConfig(
        max_answer_tokens=4,
        kv_cache_gb=0.004,  # ~4 k tokens of the tiny policy's KV (1 KiB a token)
        max_num_seqs=16,
        max_model_len=2048,
    )
    group = LocalRolloutGroup(
        WorkerSpec(policy, settings, dtype="float32", seed=0, window=Window(200, 50))
    )
    try:
        engine = group.worker.engine
        cap = engine_session.kv_capacity(engine)
        assert 2048 <= cap < 8 * 30 * 40  # one context fits, all eight do not
        seen: list[int] = []
        fallbacks = []
        decide = engine_session.DecisionSession.decide

        async def watching(self, prompt_ids, params, images=()):
            d = await decide(self, prompt_ids, params, images)
            seen.append(engine_session._HELD.get(engine, 0))
            fallbacks.append(self.fallbacks)
            return d

        engine_session.DecisionSession.decide = watching
        try:
            trajs = group.generate(
                samples=synthetic_streams(8, 30, seed=1),
                n=1,
                sampling=Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=3),
            )
        finally:
            engine_session.DecisionSession.decide = decide
        assert [len(t.steps) for t in trajs] == [30] * 8  # every stream ran to its end
        assert max(seen) <= engine_session.SESSION_SHARE * cap  # sessions kept to budget
        assert max(fallbacks) > 0  # and some steps gave way to one request
        assert engine_session._HELD.get(engine, 0) == 0  # every session closed
        with torch.no_grad():
            assert logprob_max_abs_diff(policy, trajs) < 1e-3
    finally:
        group.shutdown()


class _Cache:
    num_gpu_blocks, block_size, enable_prefix_caching = 10, 32, True


class _Engine:
    """Just what the KV budget reads of a DecisionEngine (pure bookkeeping, no engine)."""

    reloads = 0

    def __init__(self) -> None:
        self.llm = type("LLM", (), {"vllm_config": type("C", (), {"cache_config": _Cache})})()


def test_sessions_share_at_most_their_budget_of_the_kv_cache():
    from streampro.actors.engine_session import _HELD, DecisionSession, kv_capacity

    engine = _Engine()
    a, b = DecisionSession(engine), DecisionSession(engine)  # type: ignore[arg-type]
    assert kv_capacity(engine) == 320  # type: ignore[arg-type]
    assert a._reserve(200)  # 200 of the 240 sessions may hold (75%)
    assert not b._reserve(100)  # would make 300
    assert a._reserve(230)  # a grows within the budget
    a._set_held(0)  # a closes
    assert b._reserve(100) and _HELD[engine] == 100
    assert not a._reserve(141) and a._reserve(140) and _HELD[engine] == 240


def test_a_session_continues_only_over_the_frames_it_holds():
    import numpy as np

    from streampro.actors.engine_session import DecisionSession

    engine = _Engine()
    s = DecisionSession(engine)  # type: ignore[arg-type]
    a, b = np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)
    s._fed, s._fed_images, s._reloads = [1, 2, 3], [a], 0
    assert s._extends([1, 2, 3, 4], [a, b])  # the held frame, then the new chunk's
    assert s._extends([1, 2, 3, 4], [a.copy(), b])  # the same pixels in another array
    assert not s._extends([1, 2, 3, 4], [b, b])  # another first frame: reopen
    assert not s._extends([1, 2, 3, 4], [])  # fewer frames than held (a slide)
    assert not s._extends([1, 2, 9, 4], [a, b])  # other ids
    engine.reloads = 1
    assert not s._extends([1, 2, 3, 4], [a, b])  # new weights: the held KV is stale
