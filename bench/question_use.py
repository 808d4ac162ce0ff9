"""`streampro bench question-use --manifest M --out F.json`: does the policy read the question?

For each sample, the log-probability of its reference answers (the SFT targets' answer-text
tokens, teacher-forced, in the stream's own dialogue) is taken twice: under the sample's own
question and under another sample's question of the same task (the next one in the manifest
whose question differs). The answers, frames and times stay the same, so

    gain = (logp under the own question - logp under the swapped one) / answer tokens

is how much the question moves the answer, per token (nats). A policy that copies "green
circle" from "Tell me when a green circle enters" gains up to log(colours x shapes) over an
EU answer's tokens; a policy that ignores the question gains 0. Samples whose task has one
question only (AA) have no swap and are counted as skipped. Text policies (patch codec) only.

`attention` says where each head looks from the positions that predict answer tokens (own
question): mean entropy (nats), mean largest weight, and the weight on the question's tokens.
A head whose largest weight is ~1.0 has saturated: its softmax passes almost no gradient, so
it cannot learn to look elsewhere (e.g. at the colour word to copy).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from streampro.bench.baselines import encode
from streampro.config import Config
from streampro.data.dialogue import SFTExample, build_sft_example, vocab
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import policy_folder
from streampro.data.window import Window
from streampro.errors import UserError


def answer_logprob(model: PreTrainedModel, example: SFTExample) -> tuple[float, int]:
    """Sum of log p over an SFT example's answer-text targets (loss_mask 1, not a decision
    token), teacher-forced row by row; and how many such tokens."""
    total, count = 0.0, 0
    for row in example.rows:
        ids = torch.tensor([row.input_ids])  # [1, T]
        target = (torch.tensor(row.loss_mask) > 0) & (torch.tensor(row.decision_class) < 0)  # [T]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()  # [T-1, V], predicts ids[1:]
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]
        total += float(lp[target[1:]].sum())
        count += int(target[1:].sum())
    return total, count


def attention_sums(
    model: PreTrainedModel, example: SFTExample, question_ids: list[int]
) -> torch.Tensor:
    """[L, H, 4] sums over answer-predicting queries of (entropy, max weight, weight on the
    question's tokens, 1); the model must run eager attention (weights are returned)."""
    c = model.config
    sums = torch.zeros(c.num_hidden_layers, c.num_attention_heads, 4)
    q = len(question_ids)
    for row in example.rows:
        ids = row.input_ids
        target = (torch.tensor(row.loss_mask) > 0) & (torch.tensor(row.decision_class) < 0)  # [T]
        queries = target[1:].nonzero()[:, 0]  # [Q] positions t-1 that predict answer tokens
        start = next((i for i in range(len(ids) - q + 1) if ids[i : i + q] == question_ids), -1)
        if not len(queries) or start < 0:
            continue
        with torch.inference_mode():
            att = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        a = torch.stack([x[0] for x in att])[:, :, queries].float()  # [L, H, Q, T]
        entropy = -(a * a.clamp_min(1e-12).log()).sum(-1)  # [L, H, Q]
        on_q = a[..., start : start + q].sum(-1)  # [L, H, Q]
        sums += torch.stack([entropy, a.amax(-1), on_q, torch.ones_like(on_q)], -1).sum(2)
    return sums


def swapped_questions(encoded: Sequence[EncodedSample]) -> list[str | None]:
    """For each sample, the question of the next sample of its task (cyclic) that differs
    from its own; None when the task has no other question."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(encoded):
        by_task[e.sample.task].append(i)
    out: list[str | None] = [None] * len(encoded)
    for idx in by_task.values():
        for k, i in enumerate(idx):
            own = encoded[i].sample.question
            for j in idx[k + 1 :] + idx[:k]:
                if encoded[j].sample.question != own:
                    out[i] = encoded[j].sample.question
                    break
    return out


def run(cfg: Config, out_path: str, *, manifest: str) -> dict[str, Any]:
    """The gains per task (the dispatcher writes them to out_path, as for every JSON bench)."""
    if cfg.data.codec != "patch":
        raise UserError("bench question-use scores text policies only (data.codec=patch)")
    encoded = encode(cfg, manifest)
    folder = policy_folder(cfg)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    c = model.config
    att = torch.zeros(c.num_hidden_layers, c.num_attention_heads, 4)  # attention_sums totals
    own_lp: dict[str, float] = defaultdict(float)
    swap_lp: dict[str, float] = defaultdict(float)
    tokens: dict[str, int] = defaultdict(int)
    samples: dict[str, int] = defaultdict(int)
    skipped: dict[str, int] = defaultdict(int)

    window = Window.from_config(cfg.data)

    def example(e: EncodedSample) -> SFTExample:
        return build_sft_example(e, tokenizer, window=window)

    for e, other in zip(encoded, swapped_questions(encoded)):
        task = e.sample.task
        if other is None:
            skipped[task] += 1
            continue
        swapped = dataclasses.replace(e, sample=dataclasses.replace(e.sample, question=other))
        ex = example(e)
        own, n = answer_logprob(model, ex)
        att += attention_sums(model, ex, vocab(tokenizer).enc(e.sample.question))
        own_lp[task] += own
        swap_lp[task] += answer_logprob(model, example(swapped))[0]
        tokens[task] += n
        samples[task] += 1
    tasks = {
        t: {
            "samples": samples[t],
            "answer_tokens": tokens[t],
            "logp_own_question": round(own_lp[t], 4),
            "logp_swapped_question": round(swap_lp[t], 4),
            "gain_nats_per_token": round((own_lp[t] - swap_lp[t]) / max(tokens[t], 1), 5),
        }
        for t in sorted(samples)
    }
    gain_all = (sum(own_lp.values()) - sum(swap_lp.values())) / max(sum(tokens.values()), 1)
    print(f"{Path(manifest).name}: question gain {gain_all:.4f} nats/answer token")
    for t, r in tasks.items():
        print(f"  {t}: {r['gain_nats_per_token']:.4f} over {r['answer_tokens']} tokens")
    return {
        "policy": folder,
        "manifest": str(manifest),
        "gain_nats_per_token": round(gain_all, 5),
        "tasks": tasks,
        "skipped_single_question": dict(sorted(skipped.items())),
        "attention": attention_table(att),
    }


def attention_table(sums: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """{"layer{l}": {"head{h}": {"entropy", "max_weight", "question_weight"}}}: means."""
    if not sums[..., 3].any():  # no answer token was scored
        return {}
    mean = sums[..., :3] / sums[..., 3:].clamp_min(1)  # [L, H, 3]
    names = ("entropy", "max_weight", "question_weight")
    return {
        f"layer{li}": {
            f"head{h}": {k: round(float(v), 4) for k, v in zip(names, mean[li, h])}
            for h in range(mean.shape[1])
        }
        for li in range(mean.shape[0])
    }
