"""`StreamEnv`: a gymnasium environment over the streaming episode, for non-LLM policies.

The env walks a sample's stream with the same `StreamEpisode` as the vLLM rollout, so an
action becomes exactly the decision tokens an LLM policy would have written, and the
finished episode is a `Trajectory` the rewards and the learner accept (in `info`).

observation: {"frame": the chunk's frame codes, "time": [start, end]}
action:      0 = silence, 1 + i = respond with the sample's candidate answer i
             (a number past the sample's candidates is an invalid step: format reward 0)
reward:      0 per step; at the end the trajectory's total reward (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from streampro.actors.episode import StreamEpisode, sample_chunks
from streampro.config import RewardConfig
from streampro.data.dialogue import decision_ids, vocab
from streampro.data.encode import EncodedSample
from streampro.data.window import Window
from streampro.rewards import RewardScorer
from streampro.types import Trajectory

MAX_SECONDS = 1e7  # upper bound of the time observation (about 4 months of stream)
RewardFn = Callable[[dict, Trajectory], float]


def default_reward_fn() -> RewardFn:
    """R = 0.1 R_fmt + 0.45 R_turn + 0.45 R_traj with the rule judges (streampro.rewards)."""
    scorer = RewardScorer(RewardConfig())
    return lambda sample, traj: (
        scorer.score_item(sample, traj.responses(), traj.step_outputs()).total
    )


def candidate_answers(encoded) -> list[str]:
    """The sample's distinct answer texts, in order of first appearance."""
    return list(dict.fromkeys(a.text for a in encoded.sample.answers if a.text.strip()))


class StreamEnv(gym.Env):
    """One episode = one sample's stream; `reset(options={"index": i})` picks sample i."""

    metadata = {"render_modes": []}  # noqa: RUF012  (gymnasium's own instance attribute)

    def __init__(
        self,
        samples: list,
        tokenizer,
        *,
        max_candidates: int = 8,
        codebook_size: int = 64,
        window: Window,
        reward_fn: RewardFn | None = None,
    ) -> None:
        if not samples:
            raise ValueError("StreamEnv needs at least one sample")
        tpf = {len(c) for s in samples for c in s.codes}
        if len(tpf) != 1:
            raise ValueError(f"samples mix frame sizes {sorted(tpf)} (tokens per frame)")
        for s in samples:
            if len(candidate_answers(s)) > max_candidates:
                raise ValueError(
                    f"sample {s.sample.id!r}: {len(candidate_answers(s))} candidate "
                    f"answers > max_candidates={max_candidates}"
                )
        self.samples = samples
        self.tokenizer = tokenizer
        self.window = window
        self.reward_fn = reward_fn or default_reward_fn()
        self._frame_size = tpf.pop()
        self.observation_space = spaces.Dict(
            {
                "frame": spaces.MultiDiscrete(np.full(self._frame_size, codebook_size, np.int64)),
                "time": spaces.Box(0.0, MAX_SECONDS, shape=(2,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Discrete(1 + max_candidates)
        self._episode: StreamEpisode | None = None
        self._sample: EncodedSample | None = None
        self._chunks: list = []
        self._t = 0
        self._count = 0

    def _obs(self) -> dict[str, np.ndarray]:
        c = self._chunks[self._t]
        return {
            "frame": np.asarray(c.codes, dtype=np.int64),
            "time": np.asarray([c.start, c.end], dtype=np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(len(self.samples)))
        sample = self._sample = self.samples[index]
        self._chunks = sample_chunks(sample)
        if not self._chunks:
            raise ValueError(f"sample {sample.sample.id!r} has no chunks")
        self._episode = StreamEpisode.for_sample(
            self.tokenizer,
            sample,
            episode=self._count,
            window=self.window,
        )
        self._count += 1
        self._t = 0
        self._episode.add_chunk(self._chunks[0])
        return self._obs(), {
            "sample_id": sample.sample.id,
            "candidates": candidate_answers(sample),
        }

    def step(self, action: int):
        if self._episode is None or self._sample is None:
            raise RuntimeError("call reset() before step()")
        sample = self._sample
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside {self.action_space}")
        cands = candidate_answers(sample)
        a = int(action)
        if a == 0:
            ids = decision_ids(self.tokenizer, "silence")
        elif a - 1 < len(cands):
            ids = decision_ids(self.tokenizer, "response", cands[a - 1])
        else:  # no such candidate: `</Response><|im_end|>`, an empty (invalid) answer
            v = vocab(self.tokenizer)
            ids = [v.response, v.im_end]
        step = self._episode.add_decision(ids, [0.0] * len(ids))
        self._t += 1
        info: dict[str, Any] = {"decision": step.decision, "time": step.time}
        if self._t < len(self._chunks):
            self._episode.add_chunk(self._chunks[self._t])
            return self._obs(), 0.0, False, False, info
        traj = self._episode.trajectory()
        reward = float(self.reward_fn(sample.sample.to_dict(), traj))
        info["trajectory"] = traj
        last = {
            "frame": np.zeros(self._frame_size, dtype=np.int64),
            "time": np.asarray([self._chunks[-1].end] * 2, dtype=np.float32),
        }
        self._episode = None
        return last, reward, True, False, info
