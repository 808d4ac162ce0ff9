"""run.seed reaches the built-in policy's weights; sampling settings the learner cannot match
are refused at load; every evaluation scores with the configured judge; the learner's
logprobs are those of logits / temperature."""

from __future__ import annotations

import filecmp
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streampro.config import ConfigError, PolicyConfig, load_config
from streampro.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


def test_run_seed_sets_the_tiny_policy_weights(tmp_path):
    from streampro.tiny import policy_path

    small = {"hidden_size": 64, "intermediate_size": 128, "vocab_size": 512}
    a = policy_path(PolicyConfig(cache_dir=str(tmp_path / "a"), **small), seed=0)
    a2 = policy_path(PolicyConfig(cache_dir=str(tmp_path / "b"), **small), seed=0)
    b = policy_path(PolicyConfig(cache_dir=str(tmp_path / "a"), **small), seed=1)
    names = ["model.safetensors", "config.json", "tokenizer.json"]
    _, mismatch, errors = filecmp.cmpfiles(a, a2, names, shallow=False)
    assert not mismatch and not errors  # same seed: the same bytes
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].dim() == 2)  # other init


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.top_p=0.9", "rollout.top_p=0.9 is not supported"),
        ("rollout.temperature=0", "rollout.temperature must be > 0"),
        ("data.window_slide=300", "data.window_slide must be in [1, data.window_turns]"),
        ("reward.turn_match=max", "reward.turn_match must be one of sum, product, got 'max'"),
        ("grpo.logprob_check_every=-1", "grpo.logprob_check_every must be >= 0"),
        ("bench.dtype=float16", "bench.dtype must be one of float32, bfloat16, got 'float16'"),
    ],
)
def test_unsupported_sampling_is_refused_at_load(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_refusal_is_one_line_without_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "grpo", "rollout.top_p=0.5", f"run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "rollout.top_p=0.5" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_evaluation_uses_the_configured_judge():
    from streampro.actors.policy_eval import PolicyEval
    from streampro.rewards.judges import ExactJudge

    cfg = load_config(None, ["reward.acc_judge=exact"])
    assert isinstance(PolicyEval.from_config(cfg).judge, ExactJudge)
    cfg = load_config(None, ["reward.acc_judge=llm", "reward.llm_url=http://127.0.0.1:9"])
    judge = PolicyEval.from_config(cfg).judge
    assert type(judge).__name__ != "ExactJudge"
    # a denser training reward, evaluated with the benchmark's exact judge
    cfg = load_config(None, ["reward.acc_judge=token_f1", "eval.acc_judge=exact"])
    assert isinstance(PolicyEval.from_config(cfg).judge, ExactJudge)
    with pytest.raises(ConfigError, match="eval.acc_judge must be one of .*got 'fuzzy'"):
        load_config(None, ["eval.acc_judge=fuzzy"])


def test_learner_logprobs_follow_the_sampling_temperature():
    """Hand check: logits [2, 0] at T = 0.5 are [4, 0]: log p(0) = -log(1 + e^-4)."""
    from streampro.learners.losses import shifted_logprobs

    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # [B=1, T=2, V=2]
    ids = torch.tensor([[1, 0]])  # token 0 follows position 0
    lp, ent, _ = shifted_logprobs(logits, ids, with_entropy=True, temperature=0.5)
    assert lp[0, 1].item() == pytest.approx(-math.log1p(math.exp(-4.0)), abs=1e-6)
    p = torch.softmax(torch.tensor([4.0, 0.0]), 0)
    assert ent[0, 1].item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    lp1, _, _ = shifted_logprobs(logits, ids, temperature=1.0)
    assert lp1[0, 1].item() == pytest.approx(-math.log1p(math.exp(-2.0)), abs=1e-6)
