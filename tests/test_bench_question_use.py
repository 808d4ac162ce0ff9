"""`bench question-use`: answer log-probs under the own vs a swapped question.

Known answers: the answer-text log-prob equals transformers' own masked-label loss on the
same row; the swap pairing is hand-derived; AA (one question for every sample) is skipped.
Real parts: rendered synth videos through PyAV, the data layer's SFT rows, the tiny policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from streampro.bench.question_use import answer_logprob, attention_sums, swapped_questions
from streampro.config import Config
from streampro.data.window import Window


def _cfg(tmp_path: Path) -> Config:
    cfg = Config()
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.policy.cache_dir = str(tmp_path / "models")
    return cfg


def _two_splits(synth_smoke: Path, out: Path) -> Path:
    """One manifest holding the train and test samples (two per task, their own videos)."""
    rows = []
    for split in ("train", "test"):
        for line in (synth_smoke / split / "manifest.jsonl").read_text().splitlines():
            row = json.loads(line)
            row["video"] = f"{synth_smoke / split / row['video']}"
            rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_swap_pairing() -> None:
    def e(task: str, q: str):
        return SimpleNamespace(sample=SimpleNamespace(task=task, question=q))

    enc = [e("EU", "a"), e("AA", "x"), e("EU", "a"), e("EU", "b"), e("AA", "x"), e("TG", "t")]
    assert swapped_questions(enc) == ["b", None, "b", "a", None, None]


def test_answer_logprob_matches_transformers_loss(synth_smoke, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from streampro.data.dialogue import build_sft_example
    from streampro.data.pipeline import encode_samples, policy_folder

    cfg = _cfg(tmp_path)
    enc = encode_samples(cfg, synth_smoke / "test" / "manifest.jsonl", progress=False)
    eu = next(x for x in enc if x.sample.task == "EU")
    folder = policy_folder(cfg)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ex = build_sft_example(eu, tok, window=Window.from_config(cfg.data))
    total, count = answer_logprob(model, ex)
    ref_total, ref_count = 0.0, 0
    for row in ex.rows:
        ids = torch.tensor([row.input_ids])
        keep = torch.tensor([(m > 0 and c < 0) for m, c in zip(row.loss_mask, row.decision_class)])
        labels = torch.where(keep, ids[0], torch.full_like(ids[0], -100))[None]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss  # mean NLL over kept targets
        ref_total -= float(loss) * int(keep.sum())
        ref_count += int(keep.sum())
    answer = tok(" " + eu.sample.answers[0].text).input_ids  # the answer text's own tokens
    assert count == ref_count and count >= len(answer) + 1  # text tokens + closing <|im_end|>
    assert total == pytest.approx(ref_total, rel=1e-5)


def test_attention_sums_of_uniform_attention(synth_smoke, tmp_path) -> None:
    """Zero query/key projections make every logit 0: the query at position t then weighs its
    t + 1 keys equally, so entropy log(t + 1), max weight 1 / (t + 1) and the question's q
    tokens q / (t + 1) (hand-derived), summed over the answer-predicting queries."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from streampro.data.dialogue import build_sft_example, vocab
    from streampro.data.pipeline import encode_samples, policy_folder

    cfg = _cfg(tmp_path)
    enc = encode_samples(cfg, synth_smoke / "test" / "manifest.jsonl", progress=False)
    eu = next(x for x in enc if x.sample.task == "EU")
    folder = policy_folder(cfg)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    ex = build_sft_example(eu, tok, window=Window.from_config(cfg.data))
    (row,) = ex.rows
    q = len(vocab(tok).enc(eu.sample.question))
    queries = [
        t - 1
        for t in range(1, len(row.input_ids))
        if row.loss_mask[t] and row.decision_class[t] < 0
    ]
    want = [
        sum(math.log(t + 1) for t in queries),
        sum(1 / (t + 1) for t in queries),
        sum(q / (t + 1) for t in queries),
        len(queries),
    ]
    sums = attention_sums(model, ex, vocab(tok).enc(eu.sample.question))  # [L, H, 4]
    assert sums.shape == (2, 2, 4)
    for head in sums.reshape(-1, 4):
        assert head.tolist() == pytest.approx(want, rel=1e-4)


def test_run_skips_single_question_tasks(synth_smoke, tmp_path) -> None:
    from streampro.bench.commands import main

    manifest = _two_splits(synth_smoke, tmp_path / "both.jsonl")
    out = tmp_path / "q.json"
    args = argparse.Namespace(name="question-use", out=str(out), manifest=str(manifest))
    assert main(_cfg(tmp_path), args) == 0
    res = json.loads(out.read_text())
    questions: dict[str, set[str]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        questions.setdefault(row["task"], set()).add(row["question"])
    single = {t: 2 for t, qs in questions.items() if len(qs) == 1}  # AA's is always the same
    assert "AA" in single and res["skipped_single_question"] == single
    assert set(res["tasks"]) == set(questions) - set(single)
    heads = res["attention"]["layer0"]["head0"]
    assert set(heads) == {"entropy", "max_weight", "question_weight"}
    assert 0 < heads["max_weight"] <= 1 and 0 <= heads["question_weight"] <= 1
    for r in res["tasks"].values():
        assert r["samples"] == 2 and r["answer_tokens"] > 0
        gain = (r["logp_own_question"] - r["logp_swapped_question"]) / r["answer_tokens"]
        assert r["gain_nats_per_token"] == pytest.approx(gain, abs=1e-4)


def test_missing_manifest_is_one_line_error(tmp_path) -> None:
    from streampro.bench.commands import main
    from streampro.errors import UserError

    args = argparse.Namespace(name="question-use", out=str(tmp_path / "q.json"), manifest=None)
    with pytest.raises(UserError, match="needs --manifest"):
        main(_cfg(tmp_path), args)
