"""Evaluate a policy on a split: streaming decoding on the rollout group + StreamPro-F1.

Greedy (and threshold, `decode.mode`) decoding gives one trajectory per stream. Sampled decoding gives `n` per stream and
the scores are their mean: one sample per stream is noisy, and a numerical difference of
1e-6 (a reloaded vs a freshly loaded engine) can send a sampled stream down another path.
SFT eval, GRPO val, the final test and `streampro eval` all score through `PolicyEval`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streampro.actors.api import RolloutGroupAPI, Sampling
from streampro.actors.decode import ThresholdSampling
from streampro.actors.episode import CalibratedStep
from streampro.config import Config, atomic_write_text
from streampro.data.encode import EncodedSample
from streampro.rewards.f1 import score_predictions
from streampro.rewards.judges import AccJudge, eval_acc_judge
from streampro.types import Trajectory

Predictions = dict[str, list[dict]]
"""{sample id: [{"time", "text"}, ...]}: one decoding of every stream."""


@dataclass(frozen=True)
class PolicyEval:
    """How every evaluation decodes and scores: greedy, or `n` seeded samples per stream."""

    sampling: Sampling
    n: int
    """Episodes per stream; the scores are their mean."""
    judge: AccJudge
    """S_acc judge of StreamPro-F1."""

    @classmethod
    def from_config(cls, cfg: Config) -> PolicyEval:
        """decode.mode=threshold (one decoding per stream), else eval.greedy, or
        eval.samples_per_stream samples at rollout.temperature seeded by run.seed, with
        decode.response_bias on the `</Response>` logit; the judge of eval.acc_judge (else
        reward.acc_judge)."""
        e = cfg.eval
        sampling: Sampling
        if cfg.decode.mode == "threshold":  # deterministic: one decoding per stream
            sampling, n = ThresholdSampling.of(cfg.decode, cfg.rollout, seed=cfg.run.seed), 1
        elif e.greedy:
            sampling, n = Sampling.greedy(cfg.rollout, seed=cfg.run.seed), 1
        else:
            sampling, n = Sampling.from_config(cfg.rollout, seed=cfg.run.seed), e.samples_per_stream
        if not isinstance(sampling, ThresholdSampling):  # decode.response_bias: sample mode only
            sampling = replace(sampling, response_bias=float(cfg.decode.response_bias))
        return cls(sampling, n, eval_acc_judge(e, cfg.reward))

    def predict(self, rollout: RolloutGroupAPI, encoded: list[EncodedSample]) -> list[Predictions]:
        """Decisions over whole streams, `n` decodings of every stream."""
        return self._responses(self._decode(rollout, encoded))

    def _decode(self, rollout: RolloutGroupAPI, encoded: list[EncodedSample]) -> list[Trajectory]:
        """n trajectories per stream: [s0e0..s0e(n-1), s1e0, ...]."""
        return rollout.generate(samples=encoded, n=self.n, sampling=self.sampling)

    def _responses(self, trajs: list[Trajectory]) -> list[Predictions]:
        n = self.n
        return [{t.sample_id: t.responses() for t in trajs[k::n]} for k in range(n)]

    def run(
        self,
        rollout: RolloutGroupAPI,
        encoded: list[EncodedSample],
        *,
        predictions_out: str | Path | None = None,
    ) -> dict:
        """scores.json of the policy on `encoded`, averaged over the n decodings
        (`"samples_per_stream": n`); optionally keeps the first decoding's predictions as
        JSONL ({"id", "responses"} per line, the `streampro eval` input format; the threshold
        decoder adds "decisions": [{"time", "p_response"}] of every chunk)."""
        trajs = self._decode(rollout, encoded)
        runs = self._responses(trajs)
        if predictions_out is not None:
            first = {t.sample_id: t for t in trajs[:: self.n]}
            lines = [
                json.dumps(
                    {"id": e.sample.id, "responses": runs[0].get(e.sample.id, [])}
                    | decision_probs(first.get(e.sample.id))
                )
                for e in encoded
            ]
            Path(predictions_out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(predictions_out, "\n".join(lines) + "\n")
        rows = [e.sample.to_dict() for e in encoded]
        scores = [score_predictions(rows, preds, acc_judge=self.judge) for preds in runs]
        return {**mean_scores(scores), "samples_per_stream": self.n}


def decision_probs(traj: Trajectory | None) -> dict:
    """{"decisions": [{"time", "p_response"}, ...]} of a threshold-decoded trajectory (every
    chunk's calibrated probability), {} for any other."""
    steps = traj.steps if traj is not None else []
    if not steps or not all(isinstance(s, CalibratedStep) for s in steps):
        return {}
    return {
        "decisions": [
            {"time": s.time, "p_response": s.p_response}
            for s in steps
            if isinstance(s, CalibratedStep)
        ]
    }


def mean_scores(runs: list[Any]) -> Any:
    """Field-wise mean of scores.json dicts with the same keys (numbers averaged, nesting kept)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_scores([r[k] for r in runs]) for k in first}
    if all(r == first for r in runs):
        return first  # counts that do not vary (n, n_gt, n_samples) stay integers
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(runs) / len(runs)
    return first


def always_silent(encoded: list[EncodedSample]) -> dict:
    """The do-nothing baseline: no response anywhere."""
    return score_predictions([e.sample.to_dict() for e in encoded], {})
