"""Records that cross component boundaries (rollout -> rewards -> learner -> storage).

Plain dataclasses of Python lists, so they pickle cheaply through Ray and turn into
Arrow rows without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Step:
    """One decision of an episode, made at the end of the chunk [start, end)."""

    time: float
    """Chunk end in seconds: a response here has this time (SPEC.md section 1)."""
    decision: str
    """'silence', 'response' or 'invalid' (anything else the policy wrote)."""
    text: str
    """Answer text after `</Response>` (stripped), '' otherwise."""
    raw: str
    """The step's whole decoded output, for the format reward."""
    version: int = 0
    """Policy version that produced this step."""


@dataclass
class Trajectory:
    """A whole streaming episode of one sample, as one token sequence."""

    sample_id: str
    episode: int
    """Index of this episode within its group (0..G-1)."""
    token_ids: list[int]
    """The full dialogue: prompt, chunk turns and the policy's decisions."""
    gen_mask: list[int]
    """1 where the policy generated the token (decisions and answer text), else 0."""
    logprobs: list[float]
    """Sampling logprob of each generated token (0.0 where gen_mask is 0)."""
    steps: list[Step] = field(default_factory=list)
    version: int = 0
    """Policy version at the start of the episode."""
    prompt_len: int = 0
    """Tokens before the first generated token (system prompt, question, first chunk)."""

    def responses(self) -> list[dict]:
        """The trajectory's responses in the scorer's format: {"time", "text"}."""
        return [{"time": s.time, "text": s.text} for s in self.steps if s.decision == "response"]

    def step_outputs(self) -> list[str]:
        return [s.raw for s in self.steps]


@dataclass
class RewardResult:
    """Total reward and its components for one trajectory."""

    total: float
    fmt: float
    turn: float
    traj: float
    fallback: int = 0
    """Judge calls that failed or timed out and were given the fallback score."""
