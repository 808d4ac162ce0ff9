"""StreamEnv: a gymnasium env over the same episode logic as the rollout (no vLLM, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from streampro.actors.env import StreamEnv, candidate_answers
from streampro.data.encode import EncodedSample
from streampro.data.schema import Answer, Sample
from streampro.data.window import Window


@pytest.fixture(scope="module")
def tok(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


def _sample(duration: int = 8) -> EncodedSample:
    rng = np.random.default_rng(0)
    s = Sample(
        id="eu-0",
        video="v.mp4",
        task="EU",
        question="tell me when a red square enters",
        query_time=0.0,
        answers=[Answer(start=3.0, end=4.0, text="red square from the left")],
        rubric=["must respond at least 1 times", "shall not respond before 3s"],
        duration=float(duration),
    )
    times = [(float(t), float(t + 1)) for t in range(duration)]
    return EncodedSample(s, times, rng.integers(0, 64, size=(duration, 16)).tolist())


def _play(env: StreamEnv, actions: dict[float, int]):
    obs, info = env.reset(options={"index": 0})
    total, done, seen = 0.0, False, 0
    while not done:
        assert env.observation_space.contains(obs)
        end = float(obs["time"][1])
        obs, reward, done, truncated, info = env.step(actions.get(end, 0))
        assert not truncated
        total += reward
        seen += 1
    return total, info, seen


def test_env_episode_matches_the_sft_layout_and_scores(tok):
    """Responding where the SFT builder does gives its exact tokens, and the known reward:
    R_fmt 1, R_turn 2 (S_time 1 + S_acc 1), R_traj 1 -> 0.1 + 0.45*2 + 0.45 = 1.45."""
    from streampro.data.dialogue import build_sft_example

    enc = _sample()
    env = StreamEnv([enc], tok, window=Window(200, 50))
    sft = build_sft_example(enc, tok, window=Window(200, 50))
    assert sft.response_times == [3.0]  # first chunk end at or after the start, 3 s
    total, info, seen = _play(env, {3.0: 1})
    traj = info["trajectory"]
    assert seen == 8
    assert [s.token_ids for s in traj.segments] == [r.input_ids for r in sft.rows]
    assert [s.gen_mask for s in traj.segments] == [r.loss_mask for r in sft.rows]
    assert traj.responses() == [{"time": 3.0, "text": "red square from the left"}]
    assert total == pytest.approx(1.45)


def test_env_silent_and_invalid_policies(tok):
    """All silence: R_fmt 1, R_turn 0, R_traj 1/2 -> 0.325. A candidate past the sample's
    list is an invalid step (format 7/8, no response): 0.1*7/8 + 0.45*0.5 = 0.3125."""
    env = StreamEnv([_sample()], tok, max_candidates=3, window=Window(200, 50))
    assert candidate_answers(env.samples[0]) == ["red square from the left"]
    total, info, _ = _play(env, {})
    assert total == pytest.approx(0.325)
    assert {s.decision for s in info["trajectory"].steps} == {"silence"}
    total, info, _ = _play(env, {2.0: 3})
    assert [s.decision for s in info["trajectory"].steps].count("invalid") == 1
    assert total == pytest.approx(0.1 * 7 / 8 + 0.45 * 0.5)


def test_env_passes_the_gymnasium_checker(tok):
    from gymnasium.utils.env_checker import check_env

    env = StreamEnv(
        [_sample(4), _sample(6)], tok, reward_fn=lambda sample, traj: 0.0, window=Window(200, 50)
    )
    check_env(env, skip_render_check=True)
    with pytest.raises(ValueError, match="outside"):
        env.reset(seed=0)
        env.step(99)


def test_env_rejects_bad_samples(tok):
    s = _sample()
    s.sample.answers = [Answer(time=float(i), text=f"a{i}") for i in range(3)]
    with pytest.raises(ValueError, match="eu-0.*max_candidates=2"):
        StreamEnv([s], tok, max_candidates=2, window=Window(200, 50))
