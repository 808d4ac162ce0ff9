"""The threshold decoder's rule: a calibrated P(`</Response>`) per decision, and when to speak.

sft.loss=cb_stream weights the rare `</Response>` target up, which moves the policy's response
logit by about log(w_r / w_s) and smears P(`</Response>`) over the chunks around each event.
`decode.mode=threshold` reads the two decision tokens' logprobs (l_r, l_s), takes the shift
off, p = sigmoid(l_r - l_s - shift), and responds when p (or, integrate-and-fire, its sum
since the last response) reaches `decode.threshold`; a refractory period keeps the next
chunks silent. Pure Python: the episode loop (actors/rollout.py) asks the engine for l_r, l_s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streampro.actors.api import Sampling
from streampro.config import DecodeConfig, RolloutConfig, atomic_write_text
from streampro.errors import UserError


def calibrated_p(l_response: float, l_silence: float, shift: float) -> float:
    """sigmoid(l_response - l_silence - shift): scalars in, a probability in [0, 1] out."""
    z = float(l_response) - float(l_silence) - float(shift)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # no overflow for very negative z
    return e / (1.0 + e)


@dataclass(frozen=True)
class FireState:
    """The decoder's memory between decisions of one stream."""

    level: float = 0.0
    """integrate: the sum of p since the last response (0 otherwise)."""
    quiet: int = 0
    """Refractory chunks still to stay silent."""


def fire(
    state: FireState, p: float, *, threshold: float, integrate: bool, refractory: int
) -> tuple[bool, FireState]:
    """One decision: (respond?, next state). Silent while refractory (p is not added); else
    respond when p (integrate: the running sum plus p) is >= threshold, then reset the sum
    and start `refractory` silent chunks."""
    if state.quiet > 0:
        return False, FireState(state.level, state.quiet - 1)
    level = state.level + p if integrate else p
    if level >= threshold:
        return True, FireState(0.0, int(refractory))
    return False, FireState(level if integrate else 0.0, 0)


def fire_all(
    probs: Sequence[float], *, threshold: float, integrate: bool = False, refractory: int = 0
) -> list[bool]:
    """`fire` over a stream's probabilities [T] -> responds [T], from a fresh state."""
    state, out = FireState(), []
    for p in probs:
        respond, state = fire(
            state, p, threshold=threshold, integrate=integrate, refractory=refractory
        )
        out.append(respond)
    return out


@dataclass(frozen=True)
class ThresholdSampling(Sampling):
    """The Sampling of a threshold-decoded episode: the decision by `decode`, answers greedy."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @classmethod
    def of(
        cls, decode: DecodeConfig, rollout: RolloutConfig, *, seed: int = 0
    ) -> ThresholdSampling:
        """Greedy answers of the rollout's length, decisions by `decode`."""
        return cls(0.0, 1.0, rollout.max_answer_tokens, seed, decode=decode)


TUNED_FILE = "streampro_decode.json"
"""Beside a checkpoint's weights: the decoder settings tuned on the dev split, which eval,
`streampro eval --endpoint` and Serve read so a served policy decodes as it was scored."""


def save_tuned(checkpoint: str | Path, decode: DecodeConfig, *, stats: dict | None = None) -> Path:
    """Write `decode` (and how it was tuned) into the checkpoint folder; returns the file."""
    out = Path(checkpoint) / TUNED_FILE
    atomic_write_text(
        out, json.dumps({"decode": asdict(decode), "tuning": stats or {}}, indent=2) + "\n"
    )
    return out


def load_tuned(checkpoint: str | Path, default: DecodeConfig) -> DecodeConfig:
    """The checkpoint's tuned decoder when it has one, else `default` (a bad file raises)."""
    path = Path(checkpoint) / TUNED_FILE
    if not path.is_file():
        return default
    try:
        return DecodeConfig(**json.loads(path.read_text())["decode"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a tuned decoder file ({e})") from None
