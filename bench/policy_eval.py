"""Evaluate a policy on a split: streaming decoding on the rollout group + StreamPro-F1.

Greedy decoding gives one trajectory per stream. Sampled decoding gives `n` per stream and
the scores are their mean: one sample per stream is noisy, and a numerical difference of
1e-6 (a reloaded vs a freshly loaded engine) can send a sampled stream down another path.
"""

from __future__ import annotations

import json
from pathlib import Path

from streampro.actors.api import RolloutGroupAPI, Sampling
from streampro.config import atomic_write_text


def eval_kwargs(cfg) -> dict:
    """Settings of every evaluation: greedy (eval.greedy) or the rollout temperature with
    eval.samples_per_stream samples per stream, and the configured S_acc judge (reward.acc_judge):
    SFT eval, GRPO val and the final test all score the same way."""
    from streampro.bench.evaluate import acc_judge_from_config

    greedy = cfg.eval.greedy
    return {
        "acc_judge": acc_judge_from_config(cfg),
        "max_answer_tokens": cfg.rollout.max_answer_tokens,
        "seed": cfg.run.seed,
        "temperature": 0.0 if greedy else cfg.rollout.temperature,
        "n": 1 if greedy else cfg.eval.samples_per_stream,
    }


def predict(
    rollout: RolloutGroupAPI,
    encoded: list,
    *,
    max_answer_tokens: int,
    seed: int = 0,
    temperature: float = 0.0,
    n: int = 1,
) -> list[dict[str, list[dict]]]:
    """Decisions over whole streams, n per stream: [{id: [{"time", "text"}, ...]}] * n."""
    sampling = Sampling(
        temperature=temperature, top_p=1.0, max_answer_tokens=max_answer_tokens, seed=seed
    )
    trajs = rollout.generate(samples=encoded, n=n, sampling=sampling)  # [s0e0..s0e(n-1), s1e0, ...]
    return [{t.sample_id: t.responses() for t in trajs[k::n]} for k in range(n)]


def mean_scores(runs: list[dict]) -> dict:
    """Field-wise mean of scores.json dicts with the same keys (numbers averaged, nesting kept)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_scores([r[k] for r in runs]) for k in first}
    if all(r == first for r in runs):
        return first  # counts that do not vary (n, n_gt, n_samples) stay integers
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(runs) / len(runs)
    return first


def evaluate(
    rollout: RolloutGroupAPI,
    encoded: list,
    *,
    max_answer_tokens: int,
    seed: int = 0,
    temperature: float = 0.0,
    n: int = 1,
    acc_judge=None,
    predictions_out: str | Path | None = None,
) -> dict:
    """scores.json of the policy on `encoded` (EncodedSample list), averaged over n samples per
    stream (`"samples_per_stream": n`); optionally keeps the first sample's predictions as
    JSONL ({"id", "responses"} per line, the `streampro eval` input format)."""
    from streampro.bench.f1 import score_predictions

    runs = predict(
        rollout,
        encoded,
        max_answer_tokens=max_answer_tokens,
        seed=seed,
        temperature=temperature,
        n=n,
    )
    if predictions_out is not None:
        lines = [
            json.dumps({"id": e.sample.id, "responses": runs[0].get(e.sample.id, [])})
            for e in encoded
        ]
        Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(predictions_out, "\n".join(lines) + "\n")
    rows = [e.sample.to_dict() for e in encoded]
    scores = mean_scores([score_predictions(rows, preds, acc_judge=acc_judge) for preds in runs])
    return {**scores, "samples_per_stream": n}


def always_silent(encoded: list) -> dict:
    """The do-nothing baseline: no response anywhere."""
    from streampro.bench.f1 import score_predictions

    return score_predictions([e.sample.to_dict() for e in encoded], {})
