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
    """Chunk end in seconds: a response here has this time (docs/method.md)."""
    decision: str
    """'silence', 'response' or 'invalid' (anything else the policy wrote)."""
    text: str
    """Answer text after `</Response>` (stripped), '' otherwise."""
    raw: str
    """The step's whole decoded output, for the format reward."""
    version: int = 0
    """Policy version that produced this step."""


@dataclass
class Segment:
    """A run of decisions sampled from append-only prompts (one window segment, data/window.py).

    Decision k of the segment was sampled after exactly `token_ids[:p_k]`, where p_k is the
    position of its first generated token: the learner scores the row as it is.
    """

    token_ids: list[int]
    """The windowed prompt at the segment's start, then every token appended until the next
    slide (chunk turns, the policy's decisions, turn ends)."""
    gen_mask: list[int]
    """1 where the policy generated the token within this segment, else 0 (earlier segments'
    decisions that are still in the window are context here)."""
    logprobs: list[float]
    """Sampling logprob of each generated token (0.0 where gen_mask is 0)."""
    first_step: int = 0
    """Index of the segment's first decision in the episode."""
    image_chunks: list[int] = field(default_factory=list)
    """Image codec: the chunks whose frames the row's image placeholders stand for, in order
    (frames travel with the encoded sample, not in the trajectory)."""


@dataclass
class Trajectory:
    """A whole streaming episode of one sample: what the policy saw and wrote, as segments."""

    sample_id: str
    episode: int
    """Index of this episode within its group (0..G-1)."""
    segments: list[Segment]
    """The episode's window segments, in order; one unless the stream outlasts the window."""
    steps: list[Step] = field(default_factory=list)
    version: int = 0
    """Policy version at the start of the episode."""

    @property
    def num_generated(self) -> int:
        """Tokens the policy generated over the whole episode."""
        return sum(sum(s.gen_mask) for s in self.segments)

    def generated_logprobs(self) -> list[float]:
        """Sampling logprobs of every generated token, in episode order."""
        return [lp for s in self.segments for lp, m in zip(s.logprobs, s.gen_mask) if m]

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
    credit_marginal: list[float] = field(default_factory=list)
    """grpo.credit=decision: per response (`Trajectory.responses` order), its marginal
    StreamPro-F1 (rewards/credit.py); empty otherwise."""
    credit_item: list[int] = field(default_factory=list)
    """Per response: the answer (window order) its text was judged against, -1 for none."""
    credit_content: list[float] = field(default_factory=list)
    """Per response: S_acc against that answer (0 where credit_item is -1)."""
