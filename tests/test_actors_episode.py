"""Pure logic of the actors area: episode records, seeds, Parquet records, the transformers loop.

No vLLM and no Ray here: the tiny policy through transformers only (seconds).
"""

from __future__ import annotations

import pytest
import torch

from streampro.actors.api import Sampling
from streampro.actors.episode import (
    StreamEpisode,
    max_decision_tokens,
    request_seed,
    sample_chunks,
    stop_token_ids,
)
from streampro.bench.rollout import synthetic_streams
from streampro.data.window import Window


@pytest.fixture(scope="module")
def tok(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


def test_request_seed_is_a_pure_function_of_position():
    a = request_seed(7, 3, 1, 12)
    assert a == request_seed(7, 3, 1, 12)
    others = {
        request_seed(7, 3, 1, 13),
        request_seed(7, 3, 2, 12),
        request_seed(7, 4, 1, 12),
        request_seed(8, 3, 1, 12),
    }
    assert a not in others and len(others) == 4
    assert 0 <= a < 2**63
    assert max_decision_tokens(24) == 26


def test_episode_records_mask_and_logprobs_against_the_dialogue(tok):
    """Replaying decisions through StreamEpisode gives the dialogue's tokens, and the generated
    mask is exactly the dialogue's loss mask (generated=True), with logprobs in place."""
    from streampro.data.dialogue import StreamDialogue, decision_ids

    enc = synthetic_streams(1, 5, seed=3)[0]
    silence = decision_ids(tok, "silence")
    answer = decision_ids(tok, "response", "red square")
    truncated = answer[:2]  # hit max_tokens: the loop closes the turn itself
    plan = [silence, answer, silence, truncated, silence]
    ep = StreamEpisode.for_sample(tok, enc, episode=4, version=2, window=Window(200, 50))
    dlg = StreamDialogue(
        tok, question=enc.sample.question, query_time=enc.sample.query_time, window=Window(200, 50)
    )
    lp_value = iter(range(1, 100))
    expected_lps = []
    for chunk, ids in zip(sample_chunks(enc), plan):
        prompt = ep.add_chunk(chunk)
        dlg.add_chunk(chunk.start, chunk.end, chunk.codes)
        assert prompt == dlg.context()
        lps = [-float(next(lp_value)) for _ in ids]
        expected_lps.append(lps)
        ep.add_decision(ids, lps, version=3)
        dlg.add_decision(ids)
    traj = ep.trajectory()
    (seg,) = traj.segments  # 5 turns: inside the window
    assert seg.token_ids == dlg.token_ids
    assert seg.gen_mask == dlg.loss_mask
    assert traj.generated_logprobs() == [x for lps in expected_lps for x in lps]
    assert all(lp == 0.0 for lp, m in zip(seg.logprobs, seg.gen_mask) if not m)
    assert seg.first_step == 0
    assert [s.decision for s in traj.steps] == [
        "silence",
        "response",
        "silence",
        "invalid",
        "silence",
    ]
    assert [s.time for s in traj.steps] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert traj.steps[1].text == "red square" and traj.responses() == [
        {"time": 2.0, "text": "red square"}
    ]
    assert traj.version == 2 and {s.version for s in traj.steps} == {3}
    assert (traj.sample_id, traj.episode) == (enc.sample.id, 4)


def test_episode_rejects_out_of_order_calls(tok):
    enc = synthetic_streams(1, 2)[0]
    ep = StreamEpisode.for_sample(tok, enc, window=Window(200, 50))
    with pytest.raises(RuntimeError):
        ep.add_decision([1], [0.0])
    ep.add_chunk(sample_chunks(enc)[0])
    with pytest.raises(ValueError, match="logprobs"):
        ep.add_decision([1, 2], [0.0])


def test_parquet_round_trip(tmp_path, tok):
    from streampro.actors.records import read_trajectories, write_trajectories
    from streampro.data.dialogue import decision_ids

    trajs = []
    for i, enc in enumerate(synthetic_streams(3, 4, seed=1)):
        ep = StreamEpisode.for_sample(tok, enc, episode=i, window=Window(200, 50))
        for j, chunk in enumerate(sample_chunks(enc)):
            ep.add_chunk(chunk)
            ids = (
                decision_ids(tok, "response", f"step {j}")
                if j == i
                else decision_ids(tok, "silence")
            )
            ep.add_decision(ids, [-0.1234567890123 * (k + 1) for k in range(len(ids))])
        trajs.append(ep.trajectory())
    path = write_trajectories(tmp_path / "t.parquet", trajs, extra={"reward": [0.5, 1.0, 0.0]})
    assert read_trajectories(path) == trajs
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="reward"):
        write_trajectories(tmp_path / "u.parquet", trajs, extra={"reward": [1.0]})


def test_hf_loop_kv_cache_matches_teacher_forcing(tiny_path):
    """The KV-cache loop's sampled logprobs equal a full re-score of its own trajectory, and
    the same seed gives the same trajectory (the cache is exact, sampling is seeded)."""
    from transformers import AutoModelForCausalLM

    from streampro.actors.hf_loop import HFStreamPolicy, score_logprobs

    hf = HFStreamPolicy(tiny_path, max_answer_tokens=4, window=Window(200, 50))
    enc = synthetic_streams(1, 6, seed=5)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=4, seed=11)
    a = hf.generate(samples=enc, n=2, sampling=sampling)
    b = hf.generate(samples=enc, n=2, sampling=sampling)
    assert [t.segments for t in a] == [t.segments for t in b]
    assert a[0].segments != a[1].segments  # episodes draw different seeds
    stops = set(stop_token_ids(hf.tokenizer))
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    for t in a:
        (seg,) = t.segments
        ref = score_logprobs(model, seg.token_ids)
        diffs = [abs(x - y) for x, y, m in zip(seg.logprobs, ref, seg.gen_mask) if m]
        assert diffs and max(diffs) < 1e-4
        assert len(t.steps) == 6
        # each step wrote at most 1 + 4 + 1 tokens, ending in a stop token unless at the cap
        runs, cur = [], []
        for tok_id, m in zip(seg.token_ids, seg.gen_mask):
            if m:
                cur.append(tok_id)
            elif cur:
                runs.append(cur)
                cur = []
        assert len(runs) == 6
        assert all(len(r) == 6 or (r[-1] in stops and len(r) < 6) for r in runs)


def test_sample_token_top_p_keeps_the_nucleus():
    from streampro.actors.hf_loop import sample_token

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    seen = {sample_token(logits, temperature=1.0, top_p=0.7, generator=g) for _ in range(200)}
    assert seen == {0, 1}
    assert sample_token(logits, temperature=0.0, top_p=1.0, generator=None) == 0
