"""vLLM rollout on a real CPU engine in the session's local Ray: trajectories, prefix cache,
weight sync, local vs Ray agreement, and an actor killed during `generate`.

One Ray actor (engine) for the module, plus one in-process engine for the local group; the
policy is the tiny model made to stay silent at ~90% of steps, as a streaming policy does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from streampro.actors.api import IN_MEMORY, Sampling, WorkerSpec
from streampro.bench.rollout import perturbed_copy, silence_biased_policy, synthetic_streams
from streampro.config import RolloutConfig
from streampro.data.window import Window

pytestmark = pytest.mark.slow

MAX_ANSWER = 6
SETTINGS = RolloutConfig(
    num_actors=1,
    num_cpus=1,
    max_restarts=1,
    max_answer_tokens=MAX_ANSWER,
    kv_cache_gb=0.25,
    max_num_seqs=64,
    max_model_len=4096,
)


@pytest.fixture(scope="module")
def policy(tiny_path, tmp_path_factory) -> str:
    return silence_biased_policy(tiny_path, tmp_path_factory.mktemp("policy") / "biased")


@pytest.fixture(scope="module")
def group(ray_local, policy):
    from streampro.actors.rollout import RayRolloutGroup

    g = RayRolloutGroup(
        WorkerSpec(policy, SETTINGS, dtype="float32", seed=0, window=Window(200, 50))
    )
    yield g
    g.shutdown()


@pytest.fixture(scope="module")
def hf_model(policy):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()


def _ids(traj) -> list[list[int]]:
    return [seg.token_ids for seg in traj.segments]


def _max_logprob_diff(model, trajs) -> float:
    from streampro.actors.hf_loop import score_logprobs

    return max(
        abs(a - b)
        for t in trajs
        for seg in t.segments
        for a, b, m in zip(seg.logprobs, score_logprobs(model, seg.token_ids), seg.gen_mask)
        if m
    )


def _generated_runs(traj) -> list[list[int]]:
    runs, cur = [], []
    for seg in traj.segments:
        for tok, m in zip(seg.token_ids + [0], seg.gen_mask + [0]):
            if m:
                cur.append(tok)
            elif cur:
                runs.append(cur)
                cur = []
    return runs


def test_trajectories_are_consistent(group, policy, hf_model, tmp_path):
    """Order, steps, masks and logprobs: the episode replays to the same tokens, and
    transformers re-scoring the whole sequence gives vLLM's sampling logprobs."""
    from transformers import AutoTokenizer

    from streampro.actors.episode import StreamEpisode, sample_chunks, stop_token_ids
    from streampro.actors.records import read_trajectories, write_trajectories

    samples = synthetic_streams(3, 10, seed=1)
    trajs = group.generate(
        samples=samples,
        n=2,
        sampling=Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=3),
    )
    assert [(t.sample_id, t.episode) for t in trajs] == [
        (s.sample.id, e) for s in samples for e in range(2)
    ]
    tok = AutoTokenizer.from_pretrained(policy)
    stops = set(stop_token_ids(tok))
    decisions = set()
    for t, enc in zip(trajs, [s for s in samples for _ in range(2)]):
        assert [s.time for s in t.steps] == [float(e) for _, e in enc.times]
        runs = _generated_runs(t)
        assert len(runs) == len(t.steps) == 10
        assert all(r[-1] in stops or len(r) == MAX_ANSWER + 2 for r in runs)
        for seg in t.segments:
            assert all(lp == 0.0 for lp, m in zip(seg.logprobs, seg.gen_mask) if not m)
            assert all(lp <= 0.0 for lp in seg.logprobs)
        replay = StreamEpisode.for_sample(tok, enc, episode=t.episode, window=Window(200, 50))
        for chunk, ids in zip(sample_chunks(enc), runs):
            replay.add_chunk(chunk)
            replay.add_decision(ids, [0.0] * len(ids))
        r = replay.trajectory()
        assert [(g.token_ids, g.gen_mask) for g in r.segments] == [
            (g.token_ids, g.gen_mask) for g in t.segments
        ]
        assert [s.decision for s in r.steps] == [s.decision for s in t.steps]
        decisions |= {s.decision for s in t.steps}
    assert "silence" in decisions and "invalid" in decisions
    assert _max_logprob_diff(hf_model, trajs) < 1e-3
    assert read_trajectories(write_trajectories(tmp_path / "t.parquet", trajs)) == trajs


def test_seeded_and_prefix_cached(group):
    """Same seed -> same tokens; another seed -> other tokens; prefix-cache hits > 90% of the
    prompt tokens on 60-second streams. 24 streams start together: their first prompts
    (~4700 tokens) exceed one step's token budget (4096), which crashed seeded sampling on
    CPU while prefills could be split."""
    samples = synthetic_streams(4, 60, seed=2)
    s = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=5)
    before = group.cache_stats()
    a = group.generate(samples=samples, n=6, sampling=s)
    after = group.cache_stats()
    hit_rate = (after["hits"] - before["hits"]) / (after["queries"] - before["queries"])
    assert hit_rate > 0.9, hit_rate
    b = group.generate(samples=samples[:1], n=3, sampling=s)
    assert [_ids(t) for t in b] == [_ids(t) for t in a[:3]]
    c = group.generate(
        samples=samples[:1],
        n=3,
        sampling=Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=6),
    )
    assert [_ids(t) for t in c] != [_ids(t) for t in a[:3]]


def test_local_group_and_transformers_loop_agree_with_ray(group, policy):
    """Greedy: the in-process group, the Ray group and the transformers KV-cache loop give
    the same trajectories; sampled: local and Ray draw the same tokens (same seeds)."""
    from streampro.actors.hf_loop import HFStreamPolicy
    from streampro.actors.rollout import LocalRolloutGroup

    samples = synthetic_streams(2, 8, seed=4)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=0)
    sampled = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=9)
    ray_greedy = group.generate(samples=samples, n=1, sampling=greedy)
    ray_sampled = group.generate(samples=samples, n=2, sampling=sampled)
    local = LocalRolloutGroup(
        WorkerSpec(policy, SETTINGS, dtype="float32", seed=0, window=Window(200, 50))
    )
    try:
        assert [_ids(t) for t in local.generate(samples=samples, n=1, sampling=greedy)] == [
            _ids(t) for t in ray_greedy
        ]
        assert [_ids(t) for t in local.generate(samples=samples, n=2, sampling=sampled)] == [
            _ids(t) for t in ray_sampled
        ]
    finally:
        local.shutdown()
    hf = HFStreamPolicy(policy, max_answer_tokens=MAX_ANSWER, window=Window(200, 50))
    hf_greedy = hf.generate(samples=samples, n=1, sampling=greedy)
    assert [_ids(t) for t in hf_greedy] == [_ids(t) for t in ray_greedy]
    assert (
        max(
            abs(a - b)
            for x, y in zip(hf_greedy, ray_greedy)
            for a, b in zip(x.generated_logprobs(), y.generated_logprobs())
        )
        < 1e-3
    )


def test_sync_changes_outputs_and_keeps_agreement(group, policy, tmp_path):
    """Sync perturbed weights: the same seeded episodes come out different, steps carry the
    new version, and vLLM's logprobs equal transformers' on the new weights; syncing the old
    weights back restores the old trajectories exactly."""
    from transformers import AutoModelForCausalLM

    samples = synthetic_streams(2, 8, seed=6)
    s = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=1)
    before = group.generate(samples=samples, n=2, sampling=s)
    new = perturbed_copy(policy, tmp_path / "v1", scale=0.5, seed=1)
    assert group.sync_weights(version=1, source=new) >= 0.0
    after = group.generate(samples=samples, n=2, sampling=s)
    assert [_ids(t) for t in after] != [_ids(t) for t in before]
    assert {t.version for t in after} == {1} and {s.version for t in after for s in t.steps} == {1}
    new_model = AutoModelForCausalLM.from_pretrained(new, dtype=torch.float32).eval()
    assert _max_logprob_diff(new_model, after) < 1e-3
    group.sync_weights(version=2, source=policy)
    again = group.generate(samples=samples, n=2, sampling=s)
    assert [_ids(t) for t in again] == [_ids(t) for t in before]
    assert {t.version for t in again} == {2}
    # the same weights as a safetensors blob in memory (the colocated CPU handoff, no folder)
    (file,) = Path(new).glob("*.safetensors")
    group.sync_weights(version=1, source=IN_MEMORY, blob=file.read_bytes())
    in_memory = group.generate(samples=samples, n=2, sampling=s)
    assert [_ids(t) for t in in_memory] == [_ids(t) for t in after]
    group.sync_weights(version=2, source=policy)


def test_actor_killed_during_generate_reruns_its_episodes(group, policy):
    """SIGKILL the actor mid-rollout: Ray restarts it, it reloads the synced weights
    (version 3, the original policy) and the group re-runs the unfinished samples; every
    trajectory comes back exactly once and equal to an undisturbed run (seeded)."""
    import ray

    group.sync_weights(version=3, source=policy)
    samples = synthetic_streams(3, 30, seed=8)
    s = Sampling(temperature=1.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=2)
    reference = group.generate(samples=samples, n=2, sampling=s)
    actor = group.actors[0]
    pid = ray.get(actor.pid.remote())
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(out=group.generate(samples=samples, n=2, sampling=s))
    )
    reruns = group.reruns
    thread.start()
    deadline = time.time() + 60
    while ray.get(actor.status.remote())["inflight"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive()
    out = result["out"]
    assert group.reruns - reruns == 3  # all three samples were in flight on the one actor
    assert ray.get(actor.pid.remote()) != pid
    assert [(t.sample_id, t.episode) for t in out] == [
        (x.sample.id, e) for x in samples for e in range(2)
    ]
    assert [_ids(t) for t in out] == [_ids(t) for t in reference]
    assert ray.get(actor.status.remote())["version"] == 3
