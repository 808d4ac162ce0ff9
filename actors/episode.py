"""The streaming episode: one code path from chunks to a Trajectory, for every policy runner.

`StreamEpisode` wraps the dialogue builder (`streampro.data.dialogue.StreamDialogue`, the
same code that lays out SFT targets) and records what a policy did: per step it hands out
the prompt for the next decision and takes back the generated ids and their logprobs.
The vLLM rollout, the transformers loop, the gymnasium env and the Serve deployment all
drive this class, so their token layouts cannot drift apart. Pure Python: no torch, vLLM
or Ray here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streampro import tokens as T
from streampro.data.dialogue import StreamDialogue, frame_token_counts, parse_decision
from streampro.data.window import Window
from streampro.types import Segment, Step, Trajectory

# (prompt ids, step index) -> (generated ids, their sampling logprobs)
AsyncDecide = Callable[[list[int], int], Awaitable[tuple[list[int], list[float]]]]


def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops AT `</Silence>` (the loop appends the turn end) or at `<|im_end|>`."""
    return [
        int(tokenizer.convert_tokens_to_ids(T.SILENCE)),
        int(tokenizer.convert_tokens_to_ids(T.IM_END)),
    ]


def max_decision_tokens(max_answer_tokens: int) -> int:
    """`</Response>` + answer text + `<|im_end|>`: the longest decision a step may write."""
    return 1 + int(max_answer_tokens) + 1


def request_seed(base: int, sample_index: int, episode: int, step: int) -> int:
    """Per-request sampling seed: a pure function of its position, so reruns (after a fault,
    on another actor) sample exactly the same tokens."""
    key = f"{int(base)}:{int(sample_index)}:{int(episode)}:{int(step)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits


@dataclass(frozen=True)
class Chunk:
    """One second of stream as the policy sees it: interval and frame (codes or image)."""

    start: float
    end: float
    codes: Sequence[int]
    image: Any = None
    """Image codec: the resized frame ([h, w, 3] uint8; Serve keeps it as PNG bytes) sent to
    the VLM; None with codes."""
    image_tokens: int = 0
    """Image codec: the frame's placeholder pads in the dialogue (its merged patches)."""


@dataclass
class CalibratedStep(Step):
    """A Step of the threshold decoder (actors/decode.py), with the probability it read."""

    p_response: float = 0.0
    """Calibrated P(`</Response>`) at this decision: sigmoid(l_r - l_s - decode.shift)."""


def calibrated_steps(steps: Sequence[Step], probs: Sequence[float]) -> list[Step]:
    """`steps` as CalibratedSteps, step i with probs[i] (one probability per step)."""
    if len(steps) != len(probs):
        raise ValueError(f"{len(steps)} steps but {len(probs)} probabilities")
    return [
        CalibratedStep(s.time, s.decision, s.text, s.raw, s.version, float(p))
        for s, p in zip(steps, probs)
    ]


def sample_chunks(encoded, image_tokens: Callable[[int, int], int] | None = None) -> list[Chunk]:
    """The chunks of an `EncodedSample` (streampro.data.encode), in stream order;
    `image_tokens(h, w)` sizes frames' placeholders (image codec)."""

    if len(encoded.times) != len(encoded.codes):
        raise ValueError(
            f"sample {encoded.sample.id!r}: {len(encoded.times)} chunk times "
            f"but {len(encoded.codes)} frame code lists"
        )
    frames = encoded.frames or [None] * len(encoded.times)
    sizes = frame_token_counts(encoded, image_tokens)
    return [
        Chunk(float(s), float(e), c, f, n)
        for (s, e), c, f, n in zip(encoded.times, encoded.codes, frames, sizes)
    ]


class StreamEpisode:
    """One episode's dialogue plus the policy's record (generated mask, logprobs, steps)."""

    def __init__(
        self,
        tokenizer,
        *,
        sample_id: str,
        question: str,
        query_time: float,
        episode: int = 0,
        window: Window,
        version: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.sample_id = sample_id
        self.episode = episode
        self.version = version
        self.dialogue = StreamDialogue(
            tokenizer,
            question=question,
            query_time=query_time,
            window=window,
        )
        self.steps: list[Step] = []
        # aligned with the full dialogue; segments cut them (data/window.py)
        self._gen_mask: list[int] = []
        self._logprobs: list[float] = []
        self._seg_first_step: list[int] = []
        self._images: list[Any] = []  # each chunk's frame (image codec), by turn index
        self._has_image: list[bool] = []  # kept after release_images: segments name the frames
        self._released = 0  # turns before it hold no frame any more (release_images)
        self._pending: Chunk | None = None

    @classmethod
    def for_sample(
        cls,
        tokenizer,
        encoded,
        *,
        episode: int = 0,
        window: Window,
        version: int = 0,
    ) -> StreamEpisode:
        s = encoded.sample
        return cls(
            tokenizer,
            sample_id=s.id,
            question=s.question,
            query_time=float(s.query_time),
            episode=episode,
            window=window,
            version=version,
        )

    def add_chunk(self, chunk: Chunk) -> list[int]:
        """Append one chunk turn; returns the prompt (token ids) for the decision after it."""
        if self._pending is not None:
            raise RuntimeError("add_chunk called twice without a decision in between")
        self.dialogue.add_chunk(
            chunk.start, chunk.end, chunk.codes, image_tokens=chunk.image_tokens
        )
        self._images.append(chunk.image)
        self._has_image.append(chunk.image is not None)
        if len(self.dialogue.segments()) > len(self._seg_first_step):  # a new segment opened
            self._seg_first_step.append(len(self.steps))
        self._pending = chunk
        return self.dialogue.context()

    def context_images(self) -> list[Any]:
        """The frames of the context `add_chunk` returned, in placeholder order (image codec)."""
        return [im for im in self._images[self.dialogue.first_turn :] if im is not None]

    def release_images(self) -> None:
        """Forget the frames of turns that left the window (a live Serve session holds only its
        context's frames, however long it runs); `segments()` still names them."""
        for j in range(self._released, self.dialogue.first_turn):
            self._images[j] = None
        self._released = max(self._released, self.dialogue.first_turn)

    def add_decision(
        self, gen_ids: Sequence[int], logprobs: Sequence[float], *, version: int | None = None
    ) -> Step:
        """Append the policy's decision (as generated) and record it as a Step."""

        if self._pending is None:
            raise RuntimeError("add_decision called before add_chunk")
        gen_ids = [int(t) for t in gen_ids]
        if len(logprobs) != len(gen_ids):
            raise ValueError(f"{len(gen_ids)} generated ids but {len(logprobs)} logprobs")
        start = len(self.dialogue.token_ids)
        self._pad_to(start)
        self.dialogue.add_decision(gen_ids, generated=True)
        full = self.dialogue.token_ids
        if list(full[start : start + len(gen_ids)]) != gen_ids:
            raise RuntimeError("dialogue did not append the generated ids verbatim")
        self._gen_mask += [1] * len(gen_ids)
        self._logprobs += [float(x) for x in logprobs]
        self._pad_to(len(full))  # the turn end the policy did not write: unmasked
        decision, text, raw = parse_decision(self.tokenizer, gen_ids)
        step = Step(
            time=self._pending.end,
            decision=decision,
            text=text,
            raw=raw,
            version=self.version if version is None else int(version),
        )
        self.steps.append(step)
        self._pending = None
        return step

    def _pad_to(self, n: int) -> None:
        extra = n - len(self._gen_mask)
        self._gen_mask += [0] * extra
        self._logprobs += [0.0] * extra

    def segments(self) -> list[Segment]:
        """The episode so far as window segments, each exactly as its prompts were sent."""
        ids = [int(t) for t in self.dialogue.token_ids]
        self._pad_to(len(ids))
        return [
            Segment(
                token_ids=span.row(ids),
                gen_mask=span.aligned(self._gen_mask, 0),
                logprobs=span.aligned(self._logprobs, 0.0),
                first_step=first,
                image_chunks=[j for j in self.dialogue.span_turns(span) if self._has_image[j]],
            )
            for span, first in zip(self.dialogue.segments(), self._seg_first_step)
        ]

    def trajectory(self) -> Trajectory:
        return Trajectory(
            sample_id=self.sample_id,
            episode=self.episode,
            segments=self.segments(),
            steps=list(self.steps),
            version=self.version,
        )


async def run_episode(
    episode: StreamEpisode,
    chunks: Sequence[Chunk],
    decide: AsyncDecide,
    *,
    version: Callable[[], int] | None = None,
) -> Trajectory:
    """Walk the stream: per chunk, one decision from `decide`; returns the whole trajectory."""
    for i, chunk in enumerate(chunks):
        prompt = episode.add_chunk(chunk)
        ids, lps = await decide(prompt, i)
        episode.add_decision(ids, lps, version=version() if version else None)
    return episode.trajectory()
