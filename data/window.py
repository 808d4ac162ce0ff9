"""The context window of a stream: the one definition used by SFT, rollout, learner and Serve.

A **turn** is one chunk with the decision after it (the user turn `<Xs-Ys>` + frame, the
assistant turn): at 1 fps, `turns` = 200 keeps the last 200 s. The system prompt and the
question are not turns; they always stay in the context (the question pinned after the
system prompt once its own place has left the window).

The window does not slide one turn per step. While it has room, the prompt only grows at its
end, so every decision's prompt extends the previous one and the prefix cache reuses all of
it. When a new turn would make it hold more than `turns` turns, the oldest `slide` turns
leave at once and a new **segment** starts: a new prompt prefix, appended to until the next
slide. A trajectory (or an SFT example) is the list of its segments; the learner trains one
row per segment, so each generated token is scored over exactly the ids the sampler saw, and
rows are bounded by the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from streampro.config import DataConfig

V = TypeVar("V")


@dataclass(frozen=True)
class Window:
    """How many turns a context holds and how many leave at once when it is full."""

    turns: int
    slide: int

    @classmethod
    def from_config(cls, data: DataConfig) -> Window:
        """The window of `data.window_turns` / `data.window_slide`."""
        return cls(data.window_turns, data.window_slide)

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ValueError(f"window turns must be >= 1, got {self.turns}")
        if not 1 <= self.slide <= self.turns:
            raise ValueError(f"window slide must be in [1, turns={self.turns}], got {self.slide}")

    def first_kept(self, num_turns: int, first: int) -> int:
        """First kept turn once the stream has `num_turns` turns (the newest included), given the
        current first kept turn: unchanged while the window has room, else advanced by whole
        slides until the turns fit."""
        over = num_turns - first - self.turns
        if over <= 0:
            return first
        return first + self.slide * -(-over // self.slide)  # ceil(over / slide) slides


@dataclass(frozen=True)
class SegmentSpan:
    """One segment as offsets into the full (unwindowed) dialogue.

    Its row is `prefix + full[start:end]`. Tokens before `own` belong to turns whose decisions
    an earlier segment made (or trained): in this row they are context only.
    """

    prefix: tuple[int, ...]
    """Pinned ids before the kept turns: the system prompt, and the question once pinned."""
    start: int
    """Offset of the first kept token in the full dialogue."""
    own: int
    """Offset from which this segment's decisions (generated / supervised tokens) start."""
    end: int
    """Offset after the segment's last token."""

    def row(self, full: Sequence[int]) -> list[int]:
        """The segment's token ids: exactly the prompt its decisions were sampled after."""
        return list(self.prefix) + list(full[self.start : self.end])

    def aligned(self, values: Sequence[V], fill: V) -> list[V]:
        """Values aligned with the full dialogue (masks, logprobs, classes) cut to this row:
        `fill` on the prefix and on tokens before `own`."""
        head = [fill] * (len(self.prefix) + self.own - self.start)
        return head + list(values[self.own : self.end])
