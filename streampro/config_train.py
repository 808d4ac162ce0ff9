"""The training sections of the config: learner ranks, the SFT and GRPO objectives, rollout
sampling and the reward. `streampro.config` composes them into `Config`."""

from __future__ import annotations

from dataclasses import dataclass

from streampro.config_base import (
    ACC_JUDGES,
    ADVANTAGES,
    ATTENTION_MODES,
    CREDITS,
    KL_ESTIMATORS,
    LOSS_AGGS,
    PRECISIONS,
    REWARD_KINDS,
    RUBRIC_JUDGES,
    SFT_LOSSES,
    TURN_MATCHES,
    require,
    require_choice,
)


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    """Data-parallel ranks (Ray actors in one placement group)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage, 0 to 3."""
    precision: str = "auto"
    """fp32, bf16, or auto: the engines' own precision (policy.dtype), so that the learner
    scores the sampled tokens as vLLM did. A precision other than the engines' is a mixed
    pair: grpo.rollout_correction then corrects the ratio (see there)."""
    micro_batch: int = 4
    """Sequences per rank per forward/backward when micro_batch_tokens is 0 (gradient
    accumulation fills the rest)."""
    micro_batch_tokens: int = 16384
    """Real tokens per rank per forward/backward (rows are grouped up to this many; a longer
    row goes alone); 0 = count rows with micro_batch instead."""
    attention: str = "varlen"
    """Causal attention without dense masks: 'varlen' lays a micro-batch's sequences end to
    end and runs SDPA's causal kernel per sequence (no padding); 'padded' runs it over rows of
    one sequence each (packed micro-batches still take varlen); 'dense' builds the
    block-diagonal [B, 1, T, T] mask (the slow reference)."""
    num_cpus: float = 1.0
    """CPUs per rank (a CPU rank runs floor(num_cpus) torch threads: Ray sets OMP_NUM_THREADS
    from it); sft.num_cpus overrides it for SFT."""
    num_gpus: float = 0.0
    """GPUs per rank."""
    memory_gb: float = 0.0
    """Memory per rank (0 = undeclared)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    placement: str = "PACK"
    """Placement-group strategy of the ranks."""
    in_process: bool = False
    """Run the single rank inside the driver (DeepSpeed over one gloo rank, no Ray actor);
    needs num_ranks=1. Saves the actor start-up on small CPU runs."""
    freeze_vision: bool = False
    """VLM policies: keep the vision tower fixed and train the language model only (saves
    memory and time on small clusters; engines still receive the whole model)."""
    lora_rank: int = 0
    """> 0: train LoRA adapters (peft) of this rank on the language model's attention and MLP
    projections instead of all weights; each export merges them, so vLLM receives whole
    merged weights (no adapter support needed in the engines)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (update = lora_alpha / lora_rank * B @ A)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them (transformers' gradient checkpointing, non-reentrant): activation memory of about one
    layer instead of all, for ~1/3 more compute. Same results."""
    offload_states_while_generating: bool = True
    """cluster.colocate: move the optimizer states (Adam moments, fp32 master weights) to host
    memory while the engines generate, and back before the learner trains. Acts only where it
    frees GPU memory (`offloads_states`): GPU ranks with zero_stage >= 1; a CPU rank's states
    are already in host memory, and ZeRO 0's plain optimizer has no offload."""

    @property
    def lora_scale(self) -> float:
        """lora_alpha / lora_rank, what merging the adapters multiplies B @ A by (0 without)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank > 0 else 0.0

    def offloads_states(self, *, colocate: bool) -> bool:
        """Whether the optimizer states leave the GPU during generation (what the memory plan
        counts): colocated, switched on, GPU ranks, and a ZeRO optimizer (stage >= 1)."""
        on = self.offload_states_while_generating and colocate
        return on and self.num_gpus > 0 and self.zero_stage >= 1

    def __post_init__(self) -> None:
        require(self.num_ranks >= 1, f"learner.num_ranks must be >= 1, got {self.num_ranks}")
        require(
            self.zero_stage in (0, 1, 2, 3),
            f"learner.zero_stage must be 0-3, got {self.zero_stage}",
        )
        require_choice(self.precision, PRECISIONS, "learner.precision")
        require_choice(self.attention, ATTENTION_MODES, "learner.attention")
        require(self.micro_batch >= 1, f"learner.micro_batch must be >= 1, got {self.micro_batch}")
        require(
            self.micro_batch_tokens >= 0,
            f"learner.micro_batch_tokens must be >= 0, got {self.micro_batch_tokens}",
        )
        require(
            not self.in_process or self.num_ranks == 1,
            f"learner.in_process=true needs learner.num_ranks=1, got {self.num_ranks}",
        )
        require(self.lora_rank >= 0, f"learner.lora_rank must be >= 0, got {self.lora_rank}")


@dataclass
class SFTConfig:
    loss: str = "cb_stream"
    """'cb_stream', 'ce' or 'focal' (docs/method.md)."""
    beta: float = 0.9999
    """CB-Stream effective-number beta."""
    lambda_text: float = 2.0
    """Weight of answer-text tokens."""
    focal_gamma: float = 2.0
    """Focal-loss gamma (decision tokens)."""
    answer_window: int = 0
    """Also train each answer's text (not its decision) under a window of this many turns,
    where the question sits a few turns back (0 = off; the dialogue rows are unchanged)."""
    lr: float = 1e-5
    """Peak learning rate."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    epochs: int = 1
    """Passes over the train split."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = no limit)."""
    num_cpus: float = 0.0
    """CPUs per learner rank during SFT (0 = learner.num_cpus). SFT runs without rollouts (in
    `streampro train` the engines only start up beside it, then idle), so a small machine can
    give it the cores the engines take during GRPO (a CPU rank runs floor(num_cpus) torch
    threads: Ray sets OMP_NUM_THREADS from it)."""
    global_batch: int = 16
    """Sequences per optimiser step, all ranks together."""
    max_seq_len: int = 4096
    """Longest dialogue in tokens (longer ones are truncated and counted) and widest packed row."""
    pack: bool = True
    """Pack dialogues into the padding of a batch's rows (a row never exceeds the longest
    dialogue of its batch: with a dense mask wider rows cost more than they save)."""
    eval_every: int = 0
    """Evaluate on val every N steps (0 = at the end only)."""
    save_every: int = 50
    """Checkpoint every N steps."""
    keep_checkpoints: int = 2
    """Checkpoints kept."""

    def __post_init__(self) -> None:
        require_choice(self.loss, SFT_LOSSES, "sft.loss")
        require(0.0 <= self.beta < 1.0, f"sft.beta must be in [0, 1), got {self.beta}")
        require(
            self.global_batch >= 1 and self.epochs >= 1 and self.max_seq_len >= 2,
            "sft.global_batch and sft.epochs must be >= 1 and sft.max_seq_len >= 2, got "
            f"{self.global_batch}, {self.epochs}, {self.max_seq_len}",
        )
        require(
            self.save_every >= 1 and self.keep_checkpoints >= 1,
            "sft.save_every and sft.keep_checkpoints must be >= 1, got "
            f"{self.save_every}, {self.keep_checkpoints}",
        )


@dataclass
class RolloutConfig:
    num_actors: int = 1
    """vLLM rollout actors (one engine each)."""
    max_answer_tokens: int = 24
    """Longest answer text per response."""
    temperature: float = 1.0
    """Sampling temperature (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling: must stay 1.0 (refused at load otherwise), since the learner's logprobs
    are exact only for the full distribution at `temperature`."""
    enable_prefix_caching: bool = True
    """vLLM prefix caching (carries the stream: each step costs its new tokens)."""
    enforce_eager: bool = True
    """No CUDA graphs / torch.compile: a faster start. On CPU compiling works: 1.14x the tiny
    policy's decisions/s, but each engine starts ~20 s later (docs/results.md, "Compiled vs eager")."""
    kv_cache_gb: float = 1.0
    """VLLM_CPU_KVCACHE_SPACE on CPU."""
    gpu_memory_utilization: float = 0.5
    """vLLM GPU memory fraction."""
    tensor_parallel_size: int = 1
    """Tensor parallel degree of each engine."""
    max_num_seqs: int = 256
    """Concurrent sequences per engine."""
    num_cpus: float = 1.0
    """CPUs per rollout actor."""
    num_gpus: float = 0.0
    """GPUs per rollout actor."""
    memory_gb: float = 0.0
    """Memory per rollout actor (0 = undeclared)."""
    max_restarts: int = 2
    """Ray restarts of a dead rollout actor."""
    block_size: int = 32
    """KV-cache block (tokens): prefix caching reuses whole blocks, and a step adds ~25 tokens."""
    max_model_len: int = 0
    """Longest context of an engine (0 = the model's own limit)."""
    weight_transfer_backend: str = ""
    """'' = each GRPO step's weights reach the engines as an HF folder they reload (CPU and
    GPU; with cluster.colocate, as a safetensors blob in memory instead); 'nccl' (GPU only: whole GPUs
    for the learner ranks and the engines) = learner rank 0 broadcasts them through vLLM's
    weight-transfer API (docs/vlm.md, GPU paths); 'ipc' (GPU only, cluster.colocate) = CUDA IPC
    handles of the learner's tensors, read in place by engines on the same GPUs."""
    weight_sync_timeout_s: float = 600.0
    """Weight sync: each step (rendezvous, start, broadcast, finish; colocated: each sleep and
    wake) raises past this many seconds."""
    sleep_level: int = 1
    """cluster.colocate: how the engines sleep while the learner trains. 1 = weights offloaded
    to CPU memory, KV cache dropped; 2 = both dropped (less host memory; every wake reloads
    the weights)."""

    def __post_init__(self) -> None:
        # the learner scores logits / temperature over the full vocabulary; a nucleus would
        # make its ratio and gradient those of another distribution than the one sampled
        require(
            self.top_p == 1.0,
            f"rollout.top_p={self.top_p} is not supported: GRPO's learner logprobs are exact "
            "only for full-vocabulary sampling (set rollout.top_p=1.0)",
        )
        require(
            self.temperature > 0.0,
            f"rollout.temperature must be > 0 (GRPO samples), got {self.temperature}",
        )
        require(self.num_actors >= 1, f"rollout.num_actors must be >= 1, got {self.num_actors}")
        require(
            self.weight_transfer_backend in ("", "nccl", "ipc"),
            "rollout.weight_transfer_backend must be '', 'nccl' or 'ipc', "
            f"got {self.weight_transfer_backend!r}",
        )
        require(
            self.sleep_level in (1, 2),
            f"rollout.sleep_level must be 1 or 2, got {self.sleep_level}",
        )
        require(
            self.weight_sync_timeout_s > 0,
            f"rollout.weight_sync_timeout_s must be > 0, got {self.weight_sync_timeout_s}",
        )
        require(
            self.tensor_parallel_size <= 1 or self.num_gpus in (0, 1),
            f"rollout.tensor_parallel_size={self.tensor_parallel_size} places one worker per "
            f"GPU: rollout.num_gpus must be 1 (GPUs per worker), got {self.num_gpus:g}",
        )


@dataclass
class RewardConfig:
    kind: str = "streampro"
    """The GRPO reward: 'streampro', w_fmt R_fmt + w_turn R_turn + w_traj R_traj (the paper),
    or 'mmduet2', MMDuet2's w_pauc PAUC - w_repetition REP - w_outspan OUT (docs/rewards.md).
    Both score content with acc_judge."""
    w_fmt: float = 0.1
    """Weight of R_fmt (the paper: 0.1)."""
    w_turn: float = 0.45
    """Weight of R_turn (the paper: 0.45)."""
    w_traj: float = 0.45
    """Weight of R_traj (the paper: 0.45)."""
    tau: float = 8.0
    """R_turn tolerance in seconds, both sides (the paper: 8)."""
    turn_match: str = "sum"
    """How R_turn scores a matched response: 'sum', S_time + S_acc in [0, 2] (the paper), or
    'product', S_time * S_acc in [0, 1], as StreamPro-F1 scores a match (a well-timed wrong
    answer earns nothing; see `streampro bench reward-alignment`)."""
    acc_judge: str = "exact"
    """S_acc judge of the GRPO reward, and of evaluation unless eval.acc_judge is set: 'exact',
    'token_f1' (word-overlap F1, partial credit), 'embedding' or 'llm'."""
    traj_judge: str = "rule"
    """Rubric judge: 'rule' or 'llm'."""
    llm_url: str = ""
    """OpenAI-compatible endpoint of the llm judge (base URL)."""
    llm_model: str = ""
    """Model name sent to the llm judge."""
    llm_api_key_env: str = ""
    """Environment variable holding the llm judge's API key (empty = no Authorization header)."""
    timeout_s: float = 30.0
    """Per-item judge timeout."""
    fallback_score: float = 0.0
    """Score recorded when a judge fails or times out (counted)."""
    num_actors: int = 1
    """Reward actors in the pool (0 = score in the driver process, no Ray actors)."""
    num_cpus: float = 0.5
    """CPUs per reward actor."""
    memory_gb: float = 0.0
    """Memory per reward actor (0 = undeclared)."""
    max_restarts: int = 2
    """Ray restarts of a dead reward actor; its in-flight batch is retried as often."""
    threads: int = 8
    """Items each reward actor scores concurrently when a judge waits on the network (llm)."""
    mmduet2_w_pauc: float = 3.0
    """kind=mmduet2: weight of PAUC (MMDuet2's reward_function.py: 3)."""
    mmduet2_w_repetition: float = 3.0
    """kind=mmduet2: weight of the repetition penalty REP (MMDuet2: 3; its run scripts 2)."""
    mmduet2_w_outspan: float = 2.0
    """kind=mmduet2: weight of the out-of-span penalty OUT (MMDuet2: 2; its run scripts 0.5)."""
    mmduet2_omega: float = 0.5
    """kind=mmduet2: PAUC's time discount: a reply at t counts from lo + (t - lo)(1 - omega)
    (MMDuet2's floor_time_score_weight: 0.5); 0 = timeliness counts fully, 1 = not at all."""
    mmduet2_start_score: float = 0.125
    """kind=mmduet2: PAUC's curve before the first judged reply of a span, in [0, 1] (MMDuet2:
    0.5 on its 0-4 judge scale)."""

    def __post_init__(self) -> None:
        require_choice(self.kind, REWARD_KINDS, "reward.kind")
        for name in ("mmduet2_omega", "mmduet2_start_score"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"reward.{name} must be in [0, 1], got {value}")
        require_choice(self.turn_match, TURN_MATCHES, "reward.turn_match")
        require_choice(self.acc_judge, ACC_JUDGES, "reward.acc_judge")
        require_choice(self.traj_judge, RUBRIC_JUDGES, "reward.traj_judge")
        require(
            "llm" not in (self.acc_judge, self.traj_judge) or bool(self.llm_url),
            "the llm judge needs reward.llm_url (an OpenAI-compatible base URL); set it, "
            "or use acc_judge=exact and traj_judge=rule",
        )
        require(self.num_actors >= 0, f"reward.num_actors must be >= 0, got {self.num_actors}")


@dataclass
class GRPOConfig:
    group_size: int = 8
    """Trajectories per sample, G (the paper: 8)."""
    batch_samples: int = 16
    """Samples per step, B (the paper: global batch 16)."""
    lr: float = 1e-6
    """Learning rate (the paper: 1e-6)."""
    epochs: int = 1
    """Passes over the train split (the paper: 1)."""
    max_steps: int = 0
    """Stop after this many steps (0 = epochs decide)."""
    mini_batches: int = 1
    """Clipped updates per step (mini-batches of the step's trajectories)."""
    clip_low: float = 0.2
    """Lower ratio clip epsilon."""
    clip_high: float = 0.2
    """Upper ratio clip epsilon (DAPO clip-higher: e.g. 0.28)."""
    advantage: str = "grpo"
    """'grpo' ((r-mean)/(std+eps)), 'drgrpo' (no std scaling) or 'loo' (leave-one-out)."""
    adv_eps: float = 1e-6
    """Epsilon of the std normalisation."""
    credit: str = "trajectory"
    """'trajectory': one group advantage per trajectory on all its generated tokens (the
    paper's GRPO); 'decision': per-decision credit from each response's marginal
    StreamPro-F1 with a leave-one-out baseline per chunk, answer text from its S_acc against
    the group's (learners/credit.py, docs/learners.md). `advantage` applies to 'trajectory'."""
    credit_horizon: int = 0
    """credit=decision: a decision's return sums the decision rewards of this many chunks
    from its own (0 = to the end of the stream)."""
    kl_coef: float = 0.0
    """KL coefficient to the reference (0 skips the reference model)."""
    kl_estimator: str = "k3"
    """'k1', 'k2' or 'k3'."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss subtracts entropy_coef x the mean entropy of the sampling
    distribution at the generated tokens (as verl's entropy_coeff), against entropy collapse."""
    loss_agg: str = "token_mean"
    """'token_mean' (over the global batch) or 'seq_mean'."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and draw fresh samples in their place (DAPO);
    such groups are counted either way (metric adv/equal_reward_groups)."""
    max_resample_rounds: int = 3
    """Dynamic sampling: extra rounds of drawing replacements before training on fewer groups."""
    async_mode: bool = False
    """Roll out step k+1 while the learner trains step k (one step off-policy)."""
    logprob_check_max: float = 1e-3
    """Warn (once) when the max |vLLM - learner| logprob on generated tokens, measured under
    the sampling weights at each check (`logprob_check_every`), exceeds this (0 = never warn;
    the metrics are logged)."""
    logprob_check_max_bf16: float = 5e-2
    """The same threshold where the learner or the engines score in bf16 (its 8-bit mantissa
    moves logprobs by ~1e-2)."""
    rollout_correction: str = "auto"
    """Truncated importance sampling (verl's rollout_correction, OpenRLHF's
    is_correction_type): 'tis' multiplies each generated token's policy-gradient term by
    min(p_learner_old / p_vllm, rollout_correction_cap), vLLM's logprobs being the behaviour
    policy; 'none' never; 'auto' = tis exactly when learner and engines score at different
    precisions (a mixed pair). Synchronous GRPO only: async mode already takes vLLM's
    logprobs as the old policy."""
    rollout_correction_cap: float = 2.0
    """Upper bound of the per-token importance weight of rollout_correction."""
    logprob_check_every: int = 1
    """Run that check at every N-th step (steps 0, N, 2N, ...; 0 = never). Free in synchronous
    mode (it compares the recomputed old logprobs), so it runs at every step there; with
    async_mode each check costs the learner a forward pass over the batch under the weights
    its rollout sampled from, and checking at fewer steps shortens a learn-bound step."""
    eval_every: int = 0
    """Val F1 every N steps (0 = at the end only)."""
    save_every: int = 10
    """Checkpoint every N steps."""
    keep_checkpoints: int = 2
    """Checkpoints kept."""

    def __post_init__(self) -> None:
        require(
            self.group_size >= 2 and self.batch_samples >= 1,
            "grpo.group_size must be >= 2 and grpo.batch_samples >= 1, got "
            f"{self.group_size}, {self.batch_samples}",
        )
        require_choice(self.advantage, ADVANTAGES, "grpo.advantage")
        require_choice(self.credit, CREDITS, "grpo.credit")
        require(
            self.credit_horizon >= 0,
            f"grpo.credit_horizon must be >= 0 (0 = to the end), got {self.credit_horizon}",
        )
        require_choice(self.kl_estimator, KL_ESTIMATORS, "grpo.kl_estimator")
        require_choice(self.loss_agg, LOSS_AGGS, "grpo.loss_agg")
        require_choice(self.rollout_correction, ("auto", "none", "tis"), "grpo.rollout_correction")
        require(
            self.rollout_correction_cap >= 1.0,
            f"grpo.rollout_correction_cap must be >= 1, got {self.rollout_correction_cap}",
        )
        require(
            self.logprob_check_every >= 0,
            f"grpo.logprob_check_every must be >= 0 (0 = never), got {self.logprob_check_every}",
        )
        require(
            self.save_every >= 1 and self.keep_checkpoints >= 1,
            "grpo.save_every and grpo.keep_checkpoints must be >= 1, got "
            f"{self.save_every}, {self.keep_checkpoints}",
        )
