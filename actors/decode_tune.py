"""Pick a decoder on the dev split: the threshold decoder's threshold, and the logit-bias baseline.

Both are one rule: decode the dev streams under each candidate `DecodeConfig` and keep the one
with the best W-Avg. Tuning never reads val or test, so the test scores of a tuned decoder are
as honest as those of the policy's own sampling. `streampro train` tunes the SFT and the GRPO
policies (decode.tune_thresholds) and the SFT logit bias (decode.bias_sweep).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from streampro.actors.api import RolloutGroupAPI
from streampro.actors.policy_eval import PolicyEval
from streampro.config import Config, DecodeConfig
from streampro.data.encode import EncodedSample


def with_decode(cfg: Config, decode: DecodeConfig) -> Config:
    """`cfg` with another decoder (the rest of the config is shared, not copied)."""
    return dataclasses.replace(cfg, decode=decode)


def pick_best(
    cfg: Config,
    rollout: RolloutGroupAPI,
    dev: list[EncodedSample],
    candidates: Sequence[DecodeConfig],
    *,
    log: Callable[[str], None] = print,
) -> tuple[DecodeConfig, list[dict]]:
    """(the candidate with the best dev W-Avg, a row per candidate); ties go to the first."""
    rows = []
    for d in candidates:
        s = PolicyEval.from_config(with_decode(cfg, d)).run(rollout, dev)
        n_pred = sum(t["n_pred"] for t in s["tasks"].values())
        n_gt = sum(t["n_gt"] for t in s["tasks"].values())
        rows.append(
            {
                "decode": dataclasses.asdict(d),
                "w_avg": s["w_avg"],
                "responses_per_stream": n_pred / max(1, len(dev)),
                "answers_per_stream": n_gt / max(1, len(dev)),
            }
        )
        log(f"  dev: {_label(d)} -> W-Avg {100 * s['w_avg']:.1f}")
    best = max(range(len(rows)), key=lambda i: (rows[i]["w_avg"], -i))
    return candidates[best], rows


def threshold_candidates(decode: DecodeConfig) -> list[DecodeConfig]:
    """decode.tune_thresholds as threshold decoders (shift, integrate, refractory as set)."""
    return [
        dataclasses.replace(decode, mode="threshold", threshold=float(t))
        for t in decode.tune_thresholds
    ]


def bias_candidates(decode: DecodeConfig) -> list[DecodeConfig]:
    """decode.bias_sweep as sampling decoders with that bias on `</Response>`."""
    return [
        dataclasses.replace(decode, mode="sample", response_bias=float(b))
        for b in decode.bias_sweep
    ]


def _label(d: DecodeConfig) -> str:
    if d.mode == "threshold":
        return f"threshold {d.threshold:g}"
    return f"sample, bias {d.response_bias:+g}"
