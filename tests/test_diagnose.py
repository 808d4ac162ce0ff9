"""`bench diagnose`: its pure metrics by hand, the chunk shuffle, and (slow) one end-to-end
run on the smoke config with the tiny policy as both checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from streampro.actors.decode import ThresholdSampling
from streampro.actors.episode import CalibratedStep
from streampro.bench.diagnose import (
    auroc,
    auroc_by_task,
    diagnose_checkpoint,
    plot,
    run,
    shuffle_chunks,
    sign_agreement,
    target_chunks,
    timing_scores,
)
from streampro.config import load_config
from streampro.data.encode import EncodedSample
from streampro.data.schema import Answer, Sample
from streampro.rewards import ExactJudge
from streampro.types import Step, Trajectory

REPO = Path(__file__).resolve().parents[1]


def row(sid: str, task: str, answers: list[dict]) -> dict:
    return {"id": sid, "video": "v.mp4", "task": task, "question": "q", "answers": answers}


def test_auroc_by_hand() -> None:
    # pairs: 0.9 beats all 3 negatives (3); 0.4 beats 0.1 (1), loses to 0.5, ties 0.4 (1/2)
    assert auroc([0.9, 0.4], [0.1, 0.5, 0.4]) == pytest.approx(4.5 / 6)
    assert auroc([0.8, 0.9], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.2, 0.3]) == 0.0
    assert auroc([0.3, 0.3], [0.3]) == 0.5
    assert auroc([], [0.1]) is None and auroc([0.1], []) is None


def test_auroc_equals_pair_counting() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40) / 4, rng.integers(0, 5, 60) / 4  # many ties
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(pos.tolist(), neg.tolist()) == pytest.approx(float(pairs))


def test_target_chunks_are_the_sft_response_chunks() -> None:
    # OU at 19.5: SFT responds at the first whole second at or after it, the chunk ending at 20
    s = row("a", "OU", [{"time": 19.5, "text": "green"}])
    times = [12.0, 13.0, 19.0, 20.0, 21.0, 27.0, 28.0]
    assert target_chunks(s, times) == [False, False, False, True, False, False, False]
    p = [0, 0.2, 1, 0.9, 0.5, 0, 0.1]
    got = auroc_by_task([s], {"a": [{"time": t, "p_response": q} for t, q in zip(times, p)]})
    # target {0.9} vs others {0, 0.2, 1, 0.5, 0, 0.1}: above 5 of 6
    assert got["OU"] == {"auroc": pytest.approx(5 / 6), "targets": 1, "others": 6}


def _encoded(n: int = 12) -> EncodedSample:
    sample = Sample(
        id="s1", video="v.mp4", task="OU", question="what?", query_time=2.0,
        answers=[Answer(time=5.0, text="green")],
    )  # fmt: skip
    times = [(float(i), float(i + 1)) for i in range(n)]
    frames = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(n)]
    return EncodedSample(sample, times, [[i, i + 100] for i in range(n)], frames)


def test_shuffle_permutes_frames_only_and_is_seeded() -> None:
    e = _encoded()
    s = shuffle_chunks(e, seed=0)
    assert s.sample == e.sample and s.times == e.times  # question, query time, answers kept
    assert s.codes != e.codes and sorted(s.codes) == sorted(e.codes)
    assert s.frames is not None
    assert [int(f[0, 0, 0]) for f in s.frames] == [c[0] for c in s.codes]  # one permutation
    assert shuffle_chunks(e, seed=0).codes == s.codes
    assert shuffle_chunks(e, seed=1).codes != s.codes
    assert e.codes == [[i, i + 100] for i in range(12)]  # the input is not touched


def test_timing_scores_count_content_right() -> None:
    samples = [
        # EU [10, 14]: window [10, 17], tau 4; 19 -> S_time 0.5, wrong text; 30 reaches none
        row("eu", "EU", [{"start": 10.0, "end": 14.0, "text": "red square from left"}]),
        # OU at 20: window [17, 23]; 24 -> S_time 0.75, right text
        row("ou", "OU", [{"time": 20.0, "text": "green"}]),
    ]
    preds = {
        "eu": [{"time": 19.0, "text": "blue"}, {"time": 30.0, "text": "red"}],
        "ou": [{"time": 24.0, "text": "green"}],
    }
    got = timing_scores(samples, preds, ExactJudge())
    eu, ou = got["tasks"]["EU"], got["tasks"]["OU"]
    assert eu["timing_f1"] == pytest.approx(1 / 3)  # P 0.5/2, R 0.5/1
    assert eu["content_acc"] == 0.0 and eu["matched"] == 1
    assert ou["timing_f1"] == pytest.approx(0.75) and ou["content_acc"] == 1.0
    assert got["w_avg"] == pytest.approx((1 / 3 + 0.75) / 2)


def test_sign_agreement_by_hand() -> None:
    # signs: marginal [+, -, 0, +], advantage [+, +, 0, -]: same at 0 and 2; non-zero 0, 1, 3
    got = sign_agreement([0.2, -0.1, 0.0, 0.3], [1.0, 0.5, 0.0, -2.0])
    assert got["agree"] == 0.5
    assert got["agree_nonzero"] == pytest.approx(1 / 3) and got["nonzero"] == 3
    assert got["zero_marginal"] == 1 and got["zero_advantage"] == 1
    assert sign_agreement([], [])["agree"] is None


def test_response_bias_reaches_the_sampling_params() -> None:
    from streampro.actors.engine import decision_params
    from streampro.actors.policy_eval import PolicyEval

    kw = {"stop_ids": [1], "max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0}
    assert decision_params(**kw, response_bias=-1.5, response_id=7).logit_bias == {7: -1.5}
    assert not decision_params(**kw).logit_bias  # bias 0: no logit_bias at all
    with pytest.raises(ValueError):
        decision_params(**kw, response_bias=1.0)
    pe = PolicyEval.from_config(load_config(None, ["decode.response_bias=-1.0"]))
    assert pe.sampling.response_bias == -1.0
    threshold = load_config(None, ["decode.response_bias=-1.0", "decode.mode=threshold"])
    assert PolicyEval.from_config(threshold).sampling.response_bias == 0.0


class FakeRollout:
    """Responds "green" at every chunk whose first code is even, more often the higher the
    bias; threshold decoding reads p = first code / 12 (no engine)."""

    def generate(self, *, samples, n, sampling) -> list[Trajectory]:
        out = []
        for e in samples:
            for k in range(n):
                steps = []
                for (_, end), c in zip(e.times, e.codes):
                    say = c[0] % 2 == 0 and (c[0] + k) % 4 < 2 + sampling.response_bias
                    step = Step(end, "response" if say else "silence", "green" if say else "", "")
                    if isinstance(sampling, ThresholdSampling):
                        step = CalibratedStep(*vars(step).values(), p_response=c[0] / 12)
                    steps.append(step)
                out.append(Trajectory(e.sample.id, k, [], steps))
        return out

    def sync_weights(self, *, version, source, blob=None) -> float:
        return 0.0


def test_diagnose_checkpoint_without_an_engine(tmp_path) -> None:
    cfg = load_config(None, ["eval.greedy=false", "eval.samples_per_stream=2"])
    dev = [
        _encoded(),
        dataclasses.replace(_encoded(), sample=dataclasses.replace(_encoded().sample, id="s2")),
    ]
    res = diagnose_checkpoint(
        FakeRollout(), cfg, {"dev": dev, "long": dev[:1]}, tmp_path, "x", [0.0, -1.0]
    )
    assert [s["bias"] for s in res["bias_sweep"]] == [0.0, -1.0]
    assert (
        res["bias_sweep"][1]["responses_per_stream"] < res["bias_sweep"][0]["responses_per_stream"]
    )
    # OU at 5 s, asked at 2 s: per stream one target (the chunk ending at 5) and 9 others
    assert res["auroc"]["OU"]["targets"] == 2 and res["auroc"]["OU"]["others"] == 2 * 9
    assert set(res["timing"]["tasks"]) == {"OU"} and res["length"]["long"]["all"]["streams"] == 1
    assert res["shuffle"]["drop_w_avg"] == pytest.approx(
        res["shuffle"]["real"]["w_avg"] - res["shuffle"]["shuffled"]["w_avg"]
    )
    plot({"x": res}, ["x"], tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 0


@pytest.mark.slow
def test_diagnose_end_to_end(tmp_path, tiny_path, ray_local) -> None:
    """Both checkpoints the same tiny policy: one engine, one weight sync, every section."""
    cfg = load_config(
        REPO / "configs" / "smoke.yaml",
        [f"synth.out={tmp_path / 'synth'}", f"data.cache_dir={tmp_path / 'cache'}",
         "synth.dev_per_task=1", "eval.max_samples=2", "eval.samples_per_stream=2",
         "decode.bias_sweep=[0.0,-2.0]", "bench.diagnose_long_streams=2"],
    )  # fmt: skip
    out = tmp_path / "diag"
    result = run(cfg, {"sft": tiny_path, "grpo": tiny_path}, out)
    saved = json.loads((out / "diagnose.json").read_text())
    assert (out / "diagnose.png").stat().st_size > 0
    for name in ("sft", "grpo"):
        r = saved[name]
        assert [s["bias"] for s in r["bias_sweep"]] == [0.0, -2.0]
        assert set(r["shuffle"]) >= {"real", "shuffled", "drop_w_avg"}
        assert r["length"]["long"]["all"]["streams"] == 2
        assert "all" in r["auroc"]
    assert result["baseline"]["sft_best_bias"] in (0.0, -2.0)
