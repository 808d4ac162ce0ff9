"""The streaming dialogue (docs/method.md) as token ids: the ONE layout used by SFT targets,
rollout prompts and serving.

Layout, concatenated segment by segment (never re-tokenised as one string):

    <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n
    <|im_start|>user\\n{question}<|im_end|>\\n                      (once, at query_time)
    <|im_start|>user\\n<Xs-Ys>{frame}<|im_end|>\\n<|im_start|>assistant\\n
    </Silence>                     | </Response> {text}<|im_end|>      (supervised / generated)
    <|im_end|>\\n                   | \\n                                (appended, unsupervised)

where {frame} is the patch codec's `<|frame|><|v..|>*N<|/frame|>`, or with the image codec the
VLM's own placeholder `<|vision_start|><|image_pad|>*n<|vision_end|>` (Qwen2.5-VL and Qwen3-VL
templates), n = the frame's merged patches; the frame itself travels beside the ids.

`loss_mask[i] = 1` means token i is a target (predicted from tokens < i), as learners/api.py
expects; `decision_class[i]` is 0 (silence) / 1 (response) at supervised decision tokens and
-1 elsewhere. The context a decision sees is windowed (data/window.py): a turn is one chunk
with its decision, and SFT rows, rollout prompts and learner rows are the window's segments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streampro import tokens as T
from streampro.data.window import SegmentSpan, Window
from streampro.errors import UserError
from streampro.tasks import resolve_answer

if TYPE_CHECKING:
    from streampro.data.encode import EncodedSample

EPS = 1e-6  # float slack when comparing chunk ends with answer times


class _Vocab:
    """Token ids of the fixed segments for one tokenizer (built once per tokenizer)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        ids = tokenizer.convert_tokens_to_ids
        self.silence, self.response = ids(T.SILENCE), ids(T.RESPONSE)
        self.im_start, self.im_end = ids(T.IM_START), ids(T.IM_END)
        self.frame_start, self.frame_end = ids(T.FRAME_START), ids(T.FRAME_END)
        self.vision = [ids(t) for t in (T.VISION_START, T.IMAGE_PAD, T.VISION_END)]
        need = [(T.SILENCE, self.silence), (T.RESPONSE, self.response)]
        need += [(T.IM_START, self.im_start), (T.IM_END, self.im_end)]
        missing = [t for t, i in need if not self.known(i)]
        if missing:
            raise UserError(
                f"tokenizer lacks the stream tokens {missing}: use a built-in policy, or "
                "streampro.hf_policy.extend_policy adds them"
            )
        self.nl = self.enc("\n")
        self.user_open = [self.im_start] + self.enc("user\n")
        self.assistant_open = [self.im_start] + self.enc("assistant\n")
        self.turn_close = [self.im_end] + self.nl
        self._check_template()
        self.specials = {self.silence, self.response, self.im_start}
        self.specials |= {
            i for i in [self.frame_start, self.frame_end, *self.vision] if self.known(i)
        }
        self._frame: dict[int, int] = {}
        # the frame layout the tokenizer was built with (streampro/tokens.py FRAME_LAYOUTS)
        self.layout = "code"
        for layout, probe in (("change", (0, 0, True)), ("position", (0, 0, False))):
            if self.known(self.tok.convert_tokens_to_ids(T.positional_frame_token(*probe))):
                self.layout = layout
                break
        self._positional: dict[tuple[int, int, bool], int] = {}

    def _check_template(self) -> None:
        """The dialogue lays turns out as the model's own chat template does, or refuses it:
        a model whose template differs (not Qwen's ChatML turns) would read a layout it was
        never trained on."""
        if not getattr(self.tok, "chat_template", None):
            return  # the tiny policy: no template, the layout is its own
        # data/ imports with torch alone; hf_policy brings transformers
        from streampro.hf_policy import turn_markers

        m = turn_markers(self.tok)
        ours = (tuple(self.user_open), tuple(self.assistant_open), tuple(self.turn_close))
        if (m.user_open, m.assistant_open, m.turn_close) != ours:
            raise UserError(
                "the policy's chat template lays out turns as "
                f"{self.tok.decode(list(m.user_open))!r} ... {self.tok.decode(list(m.turn_close))!r}"
                f", {self.tok.decode(list(m.assistant_open))!r}; the stream dialogue supports "
                "ChatML turns ('<|im_start|>user\\n' ... '<|im_end|>\\n', Qwen's)"
            )

    def known(self, tid: int | None) -> bool:
        return tid is not None and tid != self.tok.unk_token_id

    def frame_ids(
        self, codes: Sequence[int], image_tokens: int, prev: Sequence[int] = ()
    ) -> list[int]:
        """A chunk's frame as the dialogue holds it: patch tokens, or an image placeholder.
        `prev` is the previous chunk's codes (the change layout marks the patches that differ;
        none do in the first chunk)."""
        if image_tokens:
            if not all(self.known(i) for i in self.vision):
                raise UserError("data.codec=image: the policy's tokenizer has no image tokens")
            start, pad, end = self.vision
            return [start] + [pad] * image_tokens + [end]
        if not (self.known(self.frame_start) and self.known(self.frame_end)):
            raise UserError(
                "data.codec=patch needs the patch-token vocabulary of the 'tiny' policy; "
                "use data.codec=image for a vision-language model"
            )
        if self.layout == "code":
            return [self.frame_start] + [self.frame(c) for c in codes] + [self.frame_end]
        changed = [
            self.layout == "change" and len(prev) == len(codes) and p != c
            for p, c in zip(prev or codes, codes)
        ]
        pieces = [self.positional(c, i, f) for i, (c, f) in enumerate(zip(codes, changed))]
        return [self.frame_start] + pieces + [self.frame_end]

    def enc(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one _Vocab per tokenizer, kept for good)
    def stamp(self, start: float, end: float) -> tuple[int, ...]:
        return tuple(self.enc(T.chunk_stamp(start, end)))

    def positional(self, code: int, pos: int, changed: bool) -> int:
        key = (int(code), pos, changed)
        tid = self._positional.get(key)
        if tid is None:
            name = T.positional_frame_token(*key)
            tid = self.tok.convert_tokens_to_ids(name)
            if not self.known(tid):
                raise UserError(f"tokenizer lacks frame token {name} (grid or codebook larger?)")
            self._positional[key] = tid
        return tid

    def frame(self, code: int) -> int:
        tid = self._frame.get(code)
        if tid is None:
            tid = self.tok.convert_tokens_to_ids(T.frame_token(code))
            if tid is None or tid == self.tok.unk_token_id:
                raise UserError(
                    f"tokenizer lacks frame token {T.frame_token(code)} "
                    "(codebook larger than the tokenizer's?)"
                )
            self._frame[code] = tid
        return tid


@functools.lru_cache(maxsize=16)
def vocab(tokenizer) -> _Vocab:
    return _Vocab(tokenizer)


def decision_ids(tokenizer, decision: str, text: str = "") -> list[int]:
    """The supervised/generated part of a decision: `</Silence>` or `</Response> {text}<|im_end|>`."""
    v = vocab(tokenizer)
    if decision == "silence":
        return [v.silence]
    if decision == "response":
        if not text.strip():
            raise ValueError("a response needs non-empty text")
        return [v.response] + v.enc(" " + text.strip()) + [v.im_end]
    raise ValueError(f"decision must be 'silence' or 'response', got {decision!r}")


def parse_decision(tokenizer, ids: Sequence[int]) -> tuple[str, str, str]:
    """Generated ids of one step -> (decision, text, raw).

    'silence': `</Silence>` alone; 'response': `</Response>` then non-empty text (the closing
    `<|im_end|>` optional); anything else 'invalid'. raw is the decoded output with special
    tokens, exactly as generated (the format reward reads it).
    """
    v = vocab(tokenizer)
    ids = list(ids)
    raw = tokenizer.decode(ids, skip_special_tokens=False)
    body = ids[:-1] if ids and ids[-1] == v.im_end else ids
    if body == [v.silence]:
        return "silence", "", raw
    if (
        body
        and body[0] == v.response
        and not any(i in v.specials or i == v.im_end for i in body[1:])
    ):
        text = tokenizer.decode(body[1:], skip_special_tokens=True).strip()
        if text:
            return "response", text, raw
    return "invalid", "", raw


class StreamDialogue:
    """Builds one stream's dialogue turn by turn; `context()` is the next decision's prompt.

    The full dialogue only grows at its end (the question is appended when its time comes), so
    its views are flat lists. The context is windowed by `data.window.Window`: between slides
    it is `prefix + full[start:]`, growing append-only; `segments()` lists the spans.
    """

    def __init__(
        self,
        tokenizer,
        *,
        question: str,
        query_time: float,
        window: Window,
        system_prompt: str = T.SYSTEM_PROMPT,
    ) -> None:
        self.window = window
        self.v = vocab(tokenizer)
        self.query_time = query_time
        v = self.v
        self._system = [v.im_start] + v.enc(f"system\n{system_prompt}") + v.turn_close
        self._question_ids = v.user_open + v.enc(question) + v.turn_close
        self._asked = False
        self._q_offset = 0  # where the question sits in the full sequence
        self._turns: list[int] = []  # offset of each turn (its chunk) in the full sequence
        self._first = 0  # first turn kept in the context
        self._ids: list[int] = list(self._system)
        self._mask: list[int] = [0] * len(self._system)
        self._cls: list[int] = [T.CLASS_NONE] * len(self._system)
        # the current segment: context = prefix + ids[start:]; own = where its decisions begin
        self._prefix: tuple[int, ...] = ()
        self._start, self._own = 0, 0
        self._closed: list[SegmentSpan] = []
        self._open = False  # an assistant turn awaits its decision
        self._prev_codes: tuple[int, ...] = ()  # the last chunk's frame (change layout)

    def _append(
        self, ids: list[int], mask: int | list[int] = 0, cls: list[int] | None = None
    ) -> None:
        self._ids += ids
        self._mask += [mask] * len(ids) if isinstance(mask, int) else mask
        self._cls += cls if cls is not None else [T.CLASS_NONE] * len(ids)

    def _slide(self) -> None:
        """Drop the oldest turns if the new one does not fit: close the segment, open the next."""
        first = self.window.first_kept(len(self._turns) + 1, self._first)
        if first == self._first:
            return
        self._closed.append(SegmentSpan(self._prefix, self._start, self._own, len(self._ids)))
        self._first = first
        start = self._turns[first] if first < len(self._turns) else len(self._ids)
        pinned = self._asked and self._q_offset < start  # the question left with its turn
        self._prefix = tuple(self._system) + (tuple(self._question_ids) if pinned else ())
        self._start, self._own = start, len(self._ids)

    def add_chunk(
        self, start: float, end: float, frame_codes: Sequence[int] = (), *, image_tokens: int = 0
    ) -> None:
        """The question (once, when query_time <= start), the chunk turn, the assistant header.

        The frame is `frame_codes` (patch codec) or, when image_tokens > 0, an image
        placeholder of that many pads (image codec)."""
        if self._open:
            raise RuntimeError("add_decision() must follow add_chunk() before the next chunk")
        v = self.v
        self._slide()
        if not self._asked and self.query_time <= start + EPS:
            self._asked, self._q_offset = True, len(self._ids)
            self._append(self._question_ids)
        self._turns.append(len(self._ids))
        self._append(
            v.user_open
            + list(v.stamp(start, end))
            + v.frame_ids(frame_codes, image_tokens, self._prev_codes)
            + v.turn_close
            + v.assistant_open
        )
        self._open = True
        self._prev_codes = tuple(frame_codes)

    def add_decision(
        self,
        token_ids: Sequence[int],
        *,
        generated: bool = True,
        decision_class: int | None = None,
    ) -> None:
        """Append the decision tokens (masked in when generated) and close the turn (unmasked)."""
        if not self._open:
            raise RuntimeError("add_decision() without an open assistant turn")
        v, ids = self.v, list(token_ids)
        if decision_class is None:
            first = ids[0] if ids else None
            decision_class = {v.silence: T.CLASS_SILENCE, v.response: T.CLASS_RESPONSE}.get(
                first, T.CLASS_NONE
            )
        cls = [T.CLASS_NONE] * len(ids)
        if ids and generated:
            cls[0] = decision_class
        self._append(ids, int(generated), cls)
        # The policy stops AT </Silence> (and at <|im_end|> after an answer): close the turn.
        self._append(v.nl if ids and ids[-1] == v.im_end else v.turn_close)
        self._open = False

    @property
    def num_turns(self) -> int:
        """Chunks added so far (each with its decision, once made)."""
        return len(self._turns)

    @property
    def first_turn(self) -> int:
        """Index of the oldest turn still in the context (chunks before it have left)."""
        return self._first

    def span_turns(self, span: SegmentSpan) -> range:
        """Indices of the turns (chunks) whose tokens a segment's row holds, in order."""
        first = next(
            (j for j, off in enumerate(self._turns) if off >= span.start), len(self._turns)
        )
        last = next((j for j, off in enumerate(self._turns) if off >= span.end), len(self._turns))
        return range(first, last)

    def context(self) -> list[int]:
        """Prompt for the next decision: system prompt, the pinned question if its place has left
        the window, then the kept turns. Between slides each call extends the previous one."""
        return self._current().row(self._ids)

    def _current(self) -> SegmentSpan:
        return SegmentSpan(self._prefix, self._start, self._own, len(self._ids))

    def segments(self) -> list[SegmentSpan]:
        """Every segment so far, the open one last; each row starts with the system prompt."""
        return [*self._closed, self._current()]

    @property
    def token_ids(self) -> list[int]:
        """The whole dialogue (no window). A live view: do not modify."""
        return self._ids

    @property
    def loss_mask(self) -> list[int]:
        return self._mask

    @property
    def decision_class(self) -> list[int]:
        return self._cls


@dataclass
class SFTRow:
    """One window segment of an SFT dialogue: the context inference will use, with the targets
    of the decisions made under it (earlier turns in it are context only)."""

    input_ids: list[int]
    loss_mask: list[int]
    decision_class: list[int]
    image_chunks: list[int] = field(default_factory=list)
    """Chunks whose frames the row's image placeholders stand for, in order (image codec)."""


@dataclass
class SFTExample:
    rows: list[SFTRow]
    """One row per window segment (data/window.py): a single row unless the stream is long."""
    response_times: list[float]
    """Chunk end of each supervised response (what a perfect policy would answer)."""
    response_texts: list[str] = field(default_factory=list)
    unplaced: int = 0
    """Answers with no chunk end inside their window (video too short): not supervised."""


def plan_responses(
    task: str, answers: list[dict], ends: Sequence[float]
) -> tuple[dict[int, str], int]:
    """Chunk index -> answer text for the SFT targets, and the count of unplaceable answers.

    Each answer (in order of best time) takes the first free chunk end at or after its best
    time inside its window; failing that the latest free one before it inside the window.
    """
    plan: dict[int, str] = {}
    unplaced = 0
    resolved = sorted((resolve_answer(a, task) for a in answers), key=lambda r: r.best)
    for r in resolved:
        inside = [j for j, e in enumerate(ends) if r.lo - EPS <= e <= r.hi + EPS and j not in plan]
        after = [j for j in inside if ends[j] >= r.best - EPS]
        pick = after[0] if after else (inside[-1] if inside else None)
        if pick is None:
            unplaced += 1
        else:
            plan[pick] = r.text
    return plan, unplaced


def frame_token_counts(
    encoded: EncodedSample, image_tokens: Callable[[int, int], int] | None
) -> list[int]:
    """Placeholder pads of each chunk's frame: 0 for patch codes, image_tokens(h, w) for frames."""
    if encoded.frames is None:
        return [0] * len(encoded.times)
    if image_tokens is None:
        raise ValueError("frames (image codec) need image_tokens(h, w) to size their placeholders")
    return [image_tokens(int(f.shape[0]), int(f.shape[1])) for f in encoded.frames]


def build_sft_example(
    encoded: EncodedSample,
    tokenizer,
    *,
    window: Window,
    image_tokens: Callable[[int, int], int] | None = None,
) -> SFTExample:
    """The SFT dialogue of one encoded sample: respond where `plan_responses` says, else silence.

    Laid out in window segments exactly as inference sees the stream, so each target is trained
    under the context it will be predicted from. With frames (image codec), `image_tokens(h, w)`
    sizes each frame's placeholder (streampro.hf_policy.image_token_count).
    """
    s = encoded.sample
    plan, unplaced = plan_responses(
        s.task, [a.to_dict() for a in s.answers], [end for _, end in encoded.times]
    )
    dlg = StreamDialogue(
        tokenizer,
        question=s.question,
        query_time=s.query_time,
        window=window,
    )
    times, texts = [], []
    sizes = frame_token_counts(encoded, image_tokens)
    for j, ((start, end), codes) in enumerate(zip(encoded.times, encoded.codes)):
        dlg.add_chunk(start, end, codes, image_tokens=sizes[j])
        if j in plan:
            dlg.add_decision(decision_ids(tokenizer, "response", plan[j]))
            times.append(end)
            texts.append(plan[j])
        else:
            dlg.add_decision(decision_ids(tokenizer, "silence"))
    ids, mask, cls = dlg.token_ids, dlg.loss_mask, dlg.decision_class
    with_images = encoded.frames is not None
    rows = [
        SFTRow(
            seg.row(ids),
            seg.aligned(mask, 0),
            seg.aligned(cls, T.CLASS_NONE),
            list(dlg.span_turns(seg)) if with_images else [],
        )
        for seg in dlg.segments()
    ]
    return SFTExample(rows, times, texts, unplaced)
