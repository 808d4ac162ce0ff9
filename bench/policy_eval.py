"""Evaluate a policy on a split: greedy streaming decoding on the rollout group + StreamPro-F1."""

from __future__ import annotations

from streampro.actors.api import RolloutGroupAPI, Sampling


def predict(rollout: RolloutGroupAPI, encoded: list, *, max_answer_tokens: int, seed: int = 0
            ) -> dict[str, list[dict]]:
    """Greedy decisions over whole streams: {sample id: [{"time", "text"}, ...]}."""
    sampling = Sampling(temperature=0.0, top_p=1.0, max_answer_tokens=max_answer_tokens, seed=seed)
    trajs = rollout.generate(samples=encoded, n=1, sampling=sampling)
    return {t.sample_id: t.responses() for t in trajs}


def evaluate(rollout: RolloutGroupAPI, encoded: list, *, max_answer_tokens: int, seed: int = 0,
             acc_judge=None) -> dict:
    """scores.json of the policy on `encoded` (EncodedSample list)."""
    from streampro.bench.f1 import score_predictions

    preds = predict(rollout, encoded, max_answer_tokens=max_answer_tokens, seed=seed)
    return score_predictions([e.sample.to_dict() for e in encoded], preds, acc_judge=acc_judge)


def always_silent(encoded: list) -> dict:
    """The do-nothing baseline: no response anywhere."""
    from streampro.bench.f1 import score_predictions

    return score_predictions([e.sample.to_dict() for e in encoded], {})
