"""The streaming decision format (docs/method.md), shared by data, actors and rewards.

Every string a model reads or writes in a stream is defined here, so that the dialogue
builder, the rollout episode loop, the rewards and the tiny tokenizer agree on it.
"""

from __future__ import annotations

# Decision tokens: each must be ONE vocabulary entry (checked by tests/test_foundation.py).
SILENCE = "</Silence>"
RESPONSE = "</Response>"
DECISION_TOKENS = (SILENCE, RESPONSE)

# Chat markers (Qwen2 style, so real Qwen checkpoints read the same layout).
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
# Frame input of the patch codec is wrapped in these, then FRAME_TOKENS_PER_CHUNK tokens.
FRAME_START = "<|frame|>"
FRAME_END = "<|/frame|>"
# The image codec's placeholder: Qwen2.5-VL / Qwen3-VL's own vision tokens (their templates
# render `<|vision_start|><|image_pad|><|vision_end|>`; the pad repeats per merged patch).
VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
FRAME_TOKEN_FMT = "<|v{}|>"  # <|v0|> ... <|v{codebook-1}|>
DEFAULT_CODEBOOK_SIZE = 64
# How the tiny policy's tokenizer turns a patch into a token (policy.frame_tokens): its colour
# code alone; one token per (position, code), `<|v{code}@{pos}|>`, since 1-D RoPE alone does
# not say which patch is where; or per (position, code, changed since the previous chunk),
# changed ones `<|v{code}@{pos}*|>`, so that telling a change apart needs no attention.
FRAME_LAYOUTS = ("code", "position", "change")

SPECIAL_TOKENS = [ENDOFTEXT, PAD, IM_START, IM_END, SILENCE, RESPONSE, FRAME_START, FRAME_END]

SYSTEM_PROMPT = (
    "You watch a live video stream one second at a time. After each chunk, output "
    f"{SILENCE} to keep watching, or {RESPONSE} followed by your answer. Respond only when "
    "the event has concluded or the information is sufficient. No partial answers. "
    "No speculation."
)

# Decision classes used in masks and losses (-1 = not a decision token).
CLASS_NONE = -1
CLASS_SILENCE = 0
CLASS_RESPONSE = 1


def frame_token(i: int) -> str:
    """Name of codebook entry i of the patch codec."""
    return FRAME_TOKEN_FMT.format(i)


def frame_tokens(
    codebook_size: int = DEFAULT_CODEBOOK_SIZE, layout: str = "code", cells: int = 16
) -> list[str]:
    """All frame tokens of a layout (`cells` = patches per frame), in a fixed order (their ids
    are contiguous in the tiny tokenizer)."""
    if layout == "code":
        return [frame_token(i) for i in range(codebook_size)]
    flags = ("", "*") if layout == "change" else ("",)
    return [
        positional_frame_token(c, pos, bool(f))
        for f in flags
        for pos in range(cells)
        for c in range(codebook_size)
    ]


def positional_frame_token(code: int, pos: int, changed: bool = False) -> str:
    """Patch `pos` (row-major) with colour code `code`, marked when it changed."""
    return f"<|v{code}@{pos}{'*' if changed else ''}|>"


def fmt_seconds(t: float) -> str:
    """Seconds as the shortest exact text: 3.0 -> '3', 2.5 -> '2.5'."""
    return f"{t:g}"


def chunk_stamp(start: float, end: float) -> str:
    """The interval label of one chunk, e.g. `<0s-1s>` (docs/method.md)."""
    return f"<{fmt_seconds(start)}s-{fmt_seconds(end)}s>"
