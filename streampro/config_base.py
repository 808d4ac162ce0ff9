"""The vocabulary every config section shares: the error type, the legal values of the choice
fields, and the one-line checks each dataclass runs in `__post_init__`."""

from __future__ import annotations

from streampro.errors import UserError


class ConfigError(UserError):
    """A config problem a user can fix; the CLI prints it on one line."""


# Legal values of the choice fields, read by the components that implement them.
SFT_LOSSES = ("ce", "focal", "cb_stream")
PRECISIONS = ("fp32", "bf16", "auto")
ATTENTION_MODES = ("varlen", "padded", "dense")
ADVANTAGES = ("grpo", "drgrpo", "loo")
CREDITS = ("trajectory", "decision")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token_mean", "seq_mean")
TURN_MATCHES = ("sum", "product")
ACC_JUDGES = ("exact", "token_f1", "embedding", "llm")
RUBRIC_JUDGES = ("rule", "llm")
CODECS = ("patch", "image")
DTYPES = ("float32", "bfloat16")
TRACKERS = ("tensorboard", "wandb", "jsonl")
WANDB_MODES = ("", "offline", "online", "disabled")
REWARD_KINDS = ("streampro", "mmduet2")


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: one line naming the field and its value."""
    if not ok:
        raise ConfigError(message)


def require_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    require(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")
