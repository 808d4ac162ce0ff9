"""Evaluate a policy on a split: greedy streaming decoding on the rollout group + StreamPro-F1."""

from __future__ import annotations

import json
from pathlib import Path

from streampro.actors.api import RolloutGroupAPI, Sampling

from streampro.config import atomic_write_text


def eval_kwargs(cfg) -> dict:
    """Decoding settings of every evaluation: greedy (eval.greedy) or the rollout temperature."""
    return {"max_answer_tokens": cfg.rollout.max_answer_tokens, "seed": cfg.run.seed,
            "temperature": 0.0 if cfg.eval.greedy else cfg.rollout.temperature}


def predict(rollout: RolloutGroupAPI, encoded: list, *, max_answer_tokens: int, seed: int = 0,
            temperature: float = 0.0) -> dict[str, list[dict]]:
    """Decisions over whole streams (greedy at temperature 0): {id: [{"time", "text"}, ...]}."""
    sampling = Sampling(temperature=temperature, top_p=1.0, max_answer_tokens=max_answer_tokens, seed=seed)
    trajs = rollout.generate(samples=encoded, n=1, sampling=sampling)
    return {t.sample_id: t.responses() for t in trajs}


def evaluate(rollout: RolloutGroupAPI, encoded: list, *, max_answer_tokens: int, seed: int = 0,
             temperature: float = 0.0, acc_judge=None, predictions_out: str | Path | None = None) -> dict:
    """scores.json of the policy on `encoded` (EncodedSample list); optionally keeps the
    predictions as JSONL ({"id", "responses"} per line, the `streampro eval` input format)."""
    from streampro.bench.f1 import score_predictions

    preds = predict(rollout, encoded, max_answer_tokens=max_answer_tokens, seed=seed, temperature=temperature)
    if predictions_out is not None:
        lines = [json.dumps({"id": e.sample.id, "responses": preds.get(e.sample.id, [])}) for e in encoded]
        Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(predictions_out, "\n".join(lines) + "\n")
    return score_predictions([e.sample.to_dict() for e in encoded], preds, acc_judge=acc_judge)


def always_silent(encoded: list) -> dict:
    """The do-nothing baseline: no response anywhere."""
    from streampro.bench.f1 import score_predictions

    return score_predictions([e.sample.to_dict() for e in encoded], {})
