"""Memory per GPU (or per CPU process) of a job's learner ranks and engines, before it starts.

Pure arithmetic over a model's parameter counts and shapes (`streampro.model_size`, counted
on the meta device) and the config. The terms follow the ZeRO paper's
accounting: per trainable parameter, mixed precision holds a bf16 weight and gradient plus
fp32 master weight, Adam m and v (2 + 2 + 12 bytes); fp32 training holds 4 + 4 + 8. ZeRO
stage 1 partitions the optimizer states over the ranks, stage 2 also the gradients, stage 3
also the weights. Activations are counted per token of the longest row; gradient
checkpointing keeps one hidden state per layer plus one layer's full set during backward,
and backward through a layer holds the gradients of its activations beside them. A frozen
vision tower runs without autograd before the decoder's activations exist: its transient
(one block over the row's patches) is below the decoder's at the shipped shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from streampro.config import Config, learner_precision, policy_precision
from streampro.errors import UserError

if TYPE_CHECKING:  # annotations only: the arithmetic needs no torch or transformers
    from streampro.model_size import ModelSize

GB = 1e9


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    fix: str
    """What to change when this term is the one too large."""


def _bytes_of(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def learner_terms(cfg: Config, size: ModelSize, *, stage: str) -> list[Term]:
    """Per-rank memory of the learner in `stage` ('sft' or 'grpo')."""
    lc = cfg.learner
    prec = learner_precision(lc, cfg.policy)
    pb = _bytes_of(prec)
    n = max(1, lc.num_ranks)
    z = lc.zero_stage
    if lc.lora_rank > 0:
        trainable = size.lora_params
    else:
        trainable = size.total - (size.vision_params if lc.freeze_vision else 0)
    weights = (size.total * pb + size.lora_params * pb) / (n if z == 3 else 1)
    grads = trainable * pb / (n if z >= 2 else 1)
    optim = trainable * (12 if prec == "bf16" else 8) / (n if z >= 1 else 1)
    tokens, scored = _row_tokens(cfg, size, stage)
    ckpt = lc.gradient_checkpointing
    per_layer = size.layer_activations() * tokens * pb * lc.micro_batch
    if ckpt:  # one hidden state per layer, plus one layer recomputed in backward
        acts = size.layers * size.hidden * tokens * pb * lc.micro_batch + per_layer
    else:
        acts = size.layers * per_layer
    # the LM head meets only the scored tokens: logits, fp32 log-softmax and its gradient
    logits = scored * size.vocab * (pb + 4 + 4) * lc.micro_batch
    terms = [
        Term("weights", weights, "learner.zero_stage=3 or more ranks"),
        Term("gradients", grads, "learner.lora_rank, learner.freeze_vision or zero_stage>=2"),
        Term("optimizer states", optim, "learner.lora_rank or learner.zero_stage>=1"),
        Term(
            f"activations ({'checkpointed' if ckpt else 'no checkpointing'}, {tokens} tokens)",
            acts,
            "learner.gradient_checkpointing=true" if not ckpt else "a shorter max_seq_len",
        ),
        Term(
            "backward workspace (one layer's gradients)",
            per_layer,
            "a shorter max_seq_len",
        ),
        Term(f"logits ({scored} scored tokens)", logits, "a shorter window"),
    ]
    if size.vision_params and not lc.freeze_vision:
        frames = cfg.data.window_turns
        patches = frames * cfg.data.image_max_pixels // (size.vision_patch**2)
        per_block = patches * (6 * size.vision_hidden + 4 * size.vision_intermediate) * pb
        vis = per_block * (1 if ckpt else size.vision_depth)
        terms.append(Term(f"vision activations ({patches} patches)", vis, "learner.freeze_vision"))
    if stage == "grpo" and cfg.grpo.kl_coef > 0:
        terms.append(Term("reference model", size.total * pb, "grpo.kl_coef=0"))
    return terms


def window_tokens(cfg: Config, size: ModelSize) -> int:
    """Tokens of a full window: per turn its frame (patch codes, or image tokens after the
    2x2 merge) plus about 8 tokens of stamp, decision and turn markers."""
    d = cfg.data
    if d.codec == "image":
        frame = d.image_max_pixels // (size.vision_patch * 2) ** 2
    else:
        frame = d.patch_grid**2
    return d.window_turns * (frame + 8)


def _row_tokens(cfg: Config, size: ModelSize, stage: str) -> tuple[int, int]:
    """(tokens of the longest row, tokens scored in it): a full window, capped by the SFT
    row limit or the engines' context; scored = a decision per turn plus answer text."""
    cap = cfg.sft.max_seq_len if stage == "sft" else cfg.rollout.max_model_len
    longest = min(cap, window_tokens(cfg, size)) if cap > 0 else window_tokens(cfg, size)
    scored = min(longest, cfg.data.window_turns + 4 * cfg.rollout.max_answer_tokens)
    return longest, scored


def engine_terms(cfg: Config, size: ModelSize) -> list[Term]:
    """Per-GPU memory of one vLLM engine: its weight shard and the KV cache of the streams it
    holds at once, each a full window (capped by rollout.max_model_len)."""
    r = cfg.rollout
    tp = max(1, r.tensor_parallel_size)
    eb = _bytes_of(policy_precision(cfg.policy))
    streams = -(-cfg.grpo.batch_samples * cfg.grpo.group_size // max(1, r.num_actors))
    streams = min(streams, r.max_num_seqs) if r.max_num_seqs > 0 else streams
    kv_shards = min(tp, max(1, size.kv_heads))  # KV heads split over TP, replicated past it
    per_token = size.layers * 2 * size.kv_dim * eb / kv_shards
    context = _row_tokens(cfg, size, "grpo")[0]
    return [
        Term("weights", size.total * eb / tp, "rollout.tensor_parallel_size"),
        Term(
            f"KV cache ({streams} streams x {context} tokens)",
            streams * context * per_token,
            "fewer streams per engine (rollout.num_actors, max_num_seqs) or a shorter window",
        ),
    ]


def check_terms(role: str, terms: list[Term], budget_gb: float) -> None:
    """Raise one line when the terms exceed the budget, naming the largest."""
    total = sum(t.bytes for t in terms) / GB
    if total <= budget_gb:
        return
    big = max(terms, key=lambda t: t.bytes)
    raise UserError(
        f"plan: {role} needs {total:.1f} GB per GPU, over its {budget_gb:.1f} GB: the largest "
        f"term is {big.name} at {big.bytes / GB:.1f} GB (try {big.fix})"
    )


def format_terms(role: str, terms: list[Term], budget_gb: float | None) -> str:
    lines = [f"{role}:"]
    lines += [f"  {t.name:<52} {t.bytes / GB:8.2f} GB" for t in terms]
    total = sum(t.bytes for t in terms) / GB
    tail = f" of {budget_gb:.1f} GB" if budget_gb else ""
    lines.append(f"  {'total':<52} {total:8.2f} GB{tail}")
    return "\n".join(lines)


# What a learner rank keeps on its GPU while colocated engines generate (no state offload)
RESIDENT = ("weights", "gradients", "optimizer states")


def colocated_turns(
    learner: list[Term], engine: list[Term], *, offload_states: bool = False
) -> dict[str, list[Term]]:
    """Per-GPU terms of each turn when the learner and an engine share the GPU
    (cluster.colocate): they are never both at their peak, so the GPU needs the larger turn,
    not the sum. The learner's turn: all its terms (a sleeping engine keeps neither weights
    nor KV cache on the GPU at level 1 or 2; level 1 parks the weights in host memory). The
    engines' turn: the engine's terms plus the learner's resident weights, gradients and
    optimizer states (its activations and logits are freed); with `offload_states`
    (`LearnerConfig.offloads_states`) the optimizer states wait in host memory instead."""
    resident = [r for r in RESIDENT if not (offload_states and r == "optimizer states")]
    kept = [
        Term(f"learner {t.name} (resident)", t.bytes, t.fix) for t in learner if t.name in resident
    ]
    return {"learner's turn": list(learner), "engines' turn": list(engine) + kept}
