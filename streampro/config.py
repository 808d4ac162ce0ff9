"""Structured configs: one dataclass per component, composed into `Config`.

Defaults are the paper's values (docs/method.md) where it gives one; `configs/default.yaml`
scales them down for the embedded CPU demo. Loading merges YAML and a dotlist onto the schema,
so an unknown key is an error that names it. Each dataclass checks its own values in
`__post_init__` (and `Config` the ones that span sections): this file is the one place that
says what a legal config is. A component is built from its own node (`X.from_config(node)`).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf  # noqa: F401  (MISSING re-exported)
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from streampro.errors import UserError


class ConfigError(UserError):
    """A config problem a user can fix; the CLI prints it on one line."""


# Legal values of the choice fields, read by the components that implement them.
SFT_LOSSES = ("ce", "focal", "cb_stream")
PRECISIONS = ("fp32", "bf16", "auto")
ATTENTION_MODES = ("varlen", "padded", "dense")
ADVANTAGES = ("grpo", "drgrpo", "loo")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token_mean", "seq_mean")
TURN_MATCHES = ("sum", "product")
ACC_JUDGES = ("exact", "token_f1", "embedding", "llm")
RUBRIC_JUDGES = ("rule", "llm")
CODECS = ("patch", "image")
DTYPES = ("float32", "bfloat16")


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: one line naming the field and its value."""
    if not ok:
        raise ConfigError(message)


def require_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    require(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class RunConfig:
    dir: str = ""
    """Run folder; empty = runs/<command>-<timestamp> under the current folder."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    resume: str = "never"
    """'auto' continues from the run folder's last checkpoint; 'never' starts fresh."""
    log_every: int = 1
    """Write metrics every N optimiser steps."""

    def __post_init__(self) -> None:
        require_choice(self.resume, ("auto", "never"), "run.resume")
        require(self.log_every >= 1, f"run.log_every must be >= 1, got {self.log_every}")


@dataclass
class ClusterConfig:
    address: str = ""
    """Empty = start a local Ray sized to the machine; 'auto' or 'ray://host:port' attaches."""
    num_cpus: int = 0
    """CPUs of the local Ray (0 = the machine's, raised to what the job's roles hold at once:
    on a small machine the roles take turns on the cores, so their declared CPUs may add up
    to more than it has). Set, it is a hard limit: roles that do not fit stop the job."""
    num_gpus: int = 0
    """GPUs of the local Ray (0 = detect)."""
    placement_timeout_s: float = 60.0
    """Attached to a cluster whose roles do not fit yet, wait this long for an autoscaler to
    add nodes before stopping with one line that names the role (local mode never waits)."""
    dashboard: bool = False
    """Start the dashboard (always bound to 127.0.0.1 in local mode)."""
    namespace: str = "streampro"
    """Ray namespace of the job's named actors."""
    runtime_env: str = ""
    """Runtime-env YAML for `streampro submit` (empty = cluster/runtime_env.yaml)."""
    role_resources: bool = True
    """Actors request a tiny custom resource named after their role (rollout, learner, reward,
    serve) so an autoscaler starts nodes of the right worker group. The local Ray and the
    KubeRay manifests provide them; set false to attach to a cluster whose nodes lack them."""


@dataclass
class SynthConfig:
    out: str = ".cache/streampro/synth"
    """Folder of the generated benchmark (one sub-folder per split)."""
    per_task: int = 8
    """Samples per task of each split."""
    eval_per_task: int = 0
    """Samples per task of the val and test splits (0 = per_task)."""
    width: int = 128
    """Frame width in pixels."""
    height: int = 128
    """Frame height in pixels."""
    video_fps: int = 4
    """Frame rate of the encoded videos (decoding samples them at data.fps)."""
    min_duration: float = 20.0
    """Shortest video, seconds."""
    max_duration: float = 90.0
    """Longest video, seconds (up to 600: 10-minute streams, 3x the default window)."""
    speed: float = 1.0
    """Speed multiplier of moving objects (difficulty knob)."""
    distractors: int = 1
    """Distractor objects per scene (difficulty knob)."""
    max_events: int = 4
    """Upper bound on events per video where a task has several (difficulty knob)."""
    object_size: float = 0.25
    """Object size as a fraction of the frame's width and height (0.25 = one 4x4-codec patch)."""


@dataclass
class DataConfig:
    train: str = ""
    """Train manifest (JSONL or Parquet); empty = the synth train split."""
    val: str = ""
    """Validation manifest; empty = the synth val split."""
    test: str = ""
    """Test manifest; empty = the synth test split."""
    fps: float = 1.0
    """Chunks per second of video (the paper: 1 fps)."""
    window_turns: int = 200
    """Context window in turns, a turn being one chunk and its decision (the paper: 200; at 1 fps
    200 turns = 200 s). The system prompt and the question always stay (data/window.py)."""
    window_slide: int = 50
    """Turns dropped at once when the window is full. Between slides the prompt only grows, so
    the prefix cache keeps hitting; each slide starts a new segment (one learner row)."""
    codec: str = "patch"
    """Frame codec: 'patch' (discrete frame tokens, text policies) or 'image' (frames as images
    for a vision-language policy: tiny-vl, Qwen2.5-VL, Qwen3-VL)."""
    image_max_pixels: int = 112 * 112
    """Image codec: each frame is resized once (aspect kept, sides multiples of the model's
    patch x merge) to at most this many pixels; the frame budget (Qwen2.5-VL: one image token
    per 28 x 28 pixels)."""
    patch_grid: int = 4
    """The patch codec cuts each frame into patch_grid x patch_grid patches (one token each)."""
    codebook_size: int = 64
    """Patch codec codebook entries (4 levels per RGB channel = 64)."""
    skip_bad: bool = False
    """Skip samples that fail validation or decoding (counted and reported) instead of failing."""
    cache_dir: str = ".cache/streampro/samples"
    """Arrow cache of decoded and tokenised samples."""
    workers: int = 0
    """Processes that render synth videos and decode/encode videos into the cache (0 = one
    per CPU); a video's result depends on that video alone, so any count gives the same bytes."""

    def __post_init__(self) -> None:
        require(
            self.window_turns >= 1 and 1 <= self.window_slide <= self.window_turns,
            "data.window_slide must be in [1, data.window_turns] and window_turns >= 1, "
            f"got window_turns={self.window_turns}, window_slide={self.window_slide}",
        )
        require_choice(self.codec, CODECS, "data.codec")
        require(self.fps > 0, f"data.fps must be > 0, got {self.fps}")


@dataclass
class PolicyConfig:
    name_or_path: str = "tiny"
    """'tiny' (built locally), or a local Hugging Face folder / hub id."""
    dtype: str = "float32"
    """float32 or bfloat16."""
    cache_dir: str = ".cache/streampro/models"
    """Where the tiny policy is built (content-addressed by its config)."""
    hidden_size: int = 128
    """Tiny policy: hidden size."""
    num_layers: int = 2
    """Tiny policy: transformer layers."""
    num_heads: int = 2
    """Tiny policy: attention heads (head_dim = hidden_size / num_heads)."""
    num_kv_heads: int = 1
    """Tiny policy: key/value heads."""
    intermediate_size: int = 256
    """Tiny policy: MLP width."""
    vocab_size: int = 1024
    """Tiny policy: BPE vocabulary before special and frame tokens are added."""
    max_position_embeddings: int = 16384
    """Tiny policy: longest context (a full 200-turn window of patch-codec turns is ~8.3 k)."""
    word_repeats: int = 0
    """Tiny policy: times the tokenizer's corpus repeats StreamPro-Synth's words as they appear
    mid-sentence, so each colour, shape or side is one token (" cyan"); 0 = the original
    corpus, where " cyan" and " circle" are " c"+"yan" and " c"+"ircle"."""

    def __post_init__(self) -> None:
        require_choice(self.dtype, DTYPES, "policy.dtype")


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
    GPU); 'nccl' (GPU only: whole GPUs for the learner ranks and the engines) = learner rank 0
    broadcasts them through vLLM's weight-transfer API (docs/vlm.md, GPU paths)."""
    weight_sync_timeout_s: float = 600.0
    """NCCL sync: each step (rendezvous, start, broadcast, finish) raises past this many s."""

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
            self.weight_transfer_backend in ("", "nccl"),
            "rollout.weight_transfer_backend must be '' or 'nccl', "
            f"got {self.weight_transfer_backend!r}",
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

    def __post_init__(self) -> None:
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


@dataclass
class EvalConfig:
    max_samples: int = 0
    """Evaluate at most N samples per split (0 = all)."""
    greedy: bool = True
    """Greedy streaming decoding for evaluation (false: sample at rollout.temperature, seeded)."""
    samples_per_stream: int = 4
    """Sampled decoding (greedy false): episodes per stream; the scores are their mean."""
    acc_judge: str = ""
    """S_acc judge of every evaluation (SFT eval, GRPO val, test, `streampro eval`); empty =
    reward.acc_judge. Set 'exact' when training on a denser reward such as 'token_f1'."""

    def __post_init__(self) -> None:
        if self.acc_judge:
            require_choice(self.acc_judge, ACC_JUDGES, "eval.acc_judge")
        require(
            self.samples_per_stream >= 1,
            f"eval.samples_per_stream must be >= 1, got {self.samples_per_stream}",
        )


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """HTTP host of Ray Serve."""
    port: int = 8000
    """HTTP port of Ray Serve."""
    checkpoint: str = ""
    """HF folder of the policy to serve (empty = policy.name_or_path)."""
    min_replicas: int = 1
    """Engine (PolicyEngine) autoscaling lower bound."""
    max_replicas: int = 2
    """Engine (PolicyEngine) autoscaling upper bound."""
    num_cpus: float = 1.0
    """CPUs per engine replica."""
    num_gpus: float = 0.0
    """GPUs per engine replica."""
    engine: str = "vllm"
    """Decision engine of each replica: 'vllm', or 'hf' (transformers, CPU-light, no vLLM)."""
    temperature: float = 0.0
    """Sampling temperature of served decisions (0 = greedy)."""
    ingress_replicas: int = 1
    """HTTP ingress (StreamIngress) replicas. Session contexts live in the SessionStore, so
    any ingress replica continues any session."""
    max_sessions: int = 1024
    """Open sessions kept at most (all replicas together); one more is refused with 503 and
    Retry-After until one closes or expires."""
    max_inflight: int = 64
    """Chunk requests one ingress replica works on at once; beyond it 503 with Retry-After."""
    session_ttl_s: float = 3600.0
    """Sessions idle this long are closed by a background task."""
    expire_every_s: float = 10.0
    """How often the background task looks for idle sessions."""
    retry_after_s: int = 1
    """Retry-After (seconds) sent with a 503 at capacity."""
    max_body_bytes: int = 8 << 20
    """Largest request body accepted; a bigger one gets 413."""
    max_chunks_per_request: int = 64
    """Chunks in one POST .../chunks at most (422 beyond)."""
    max_image_pixels: int = 4096 * 4096
    """Largest image (width x height) decoded; a bigger one gets 413 before it is decoded."""
    max_question_chars: int = 2000
    """Longest question (422 beyond)."""
    decode_threads: int = 4
    """Threads per ingress replica that decode images (off the event loop)."""
    auth_token: str = ""
    """Bearer token every /v1 request must carry; empty = read it from the environment
    variable named by auth_token_env; both empty = no authentication. Prefer the variable
    (a Kubernetes secret, see cluster/kuberay/rayservice.yaml) over a token in a file."""
    auth_token_env: str = "STREAMPRO_SERVE_TOKEN"
    """Environment variable holding the bearer token, read by each ingress replica."""
    bench_sessions: list[int] = field(default_factory=lambda: [1, 8, 32])
    """Concurrent sessions of `streampro bench serve`, one measurement each."""
    bench_duration_s: float = 20.0
    """Seconds each `bench serve` level runs."""
    bench_endpoint: str = ""
    """`bench serve` against this URL (empty = a temporary local deployment)."""
    eval_concurrency: int = 8
    """Sessions `streampro eval --endpoint/--checkpoint` streams at once."""
    eval_speed: float = 0.0
    """Clock of `eval --endpoint`: stream seconds per wall second (0 = as fast as answered)."""

    def __post_init__(self) -> None:
        require_choice(self.engine, ("vllm", "hf"), "serve.engine")
        for name in ("ingress_replicas", "max_sessions", "max_inflight"):
            value = getattr(self, name)
            require(value >= 1, f"serve.{name} must be >= 1, got {value}")


@dataclass
class BenchConfig:
    streams: list[int] = field(default_factory=lambda: [1, 16, 64])
    """Concurrent streams measured by `bench rollout`."""
    steps: int = 60
    """Stream length in steps for `bench rollout` (600 = 10-minute streams at 1 fps)."""
    baselines: bool = True
    """`bench rollout` also runs the transformers KV-cache loop and vLLM without prefix caching
    (their cost grows with the window: turn off for long streams)."""
    dtype: str = "float32"
    """Weights of every rollout loop `bench rollout` and `bench perf` time (vLLM and both
    transformers loops, so they compare at equal precision): float32 or bfloat16."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of `bench sft-ablation`."""
    scaling_streams: list[int] = field(default_factory=lambda: [16, 32, 64])
    """`bench scaling`: concurrent streams of a GRPO step (the first is held on other axes)."""
    scaling_lengths: list[int] = field(default_factory=lambda: [30, 60, 120, 600])
    """`bench scaling`: stream lengths in seconds (the first is held on other axes)."""
    scaling_actors: list[int] = field(default_factory=lambda: [1, 2])
    """`bench scaling`: rollout actors (the first is held on other axes)."""

    def __post_init__(self) -> None:
        require_choice(self.dtype, DTYPES, "bench.dtype")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        """The rules that span sections."""
        d, r, lc = self.data, self.rollout, self.learner
        require(
            d.codec != "image" or self.policy.name_or_path != "tiny",
            "data.codec=image needs a vision-language policy (policy.name_or_path=tiny-vl, or "
            "a Qwen2.5-VL / Qwen3-VL folder); 'tiny' reads patch tokens",
        )
        require(
            d.codec != "image" or r.block_size % 32 == 0,
            f"rollout.block_size must be a multiple of 32 with images (vLLM), got {r.block_size}",
        )
        require(
            d.codec != "image" or self.serve.engine == "vllm",
            "serve.engine=hf serves text policies only: data.codec=image needs serve.engine=vllm",
        )
        # NCCL runs on GPUs only and refuses two ranks on one device: whole GPUs each side
        require(
            r.weight_transfer_backend != "nccl"
            or (r.num_gpus >= 1 and lc.num_gpus >= 1 and not lc.in_process),
            "rollout.weight_transfer_backend=nccl needs GPUs: rollout.num_gpus and "
            f"learner.num_gpus >= 1 with learner.in_process=false (got {r.num_gpus:g}, "
            f"{lc.num_gpus:g}, in_process={lc.in_process}); set "
            "rollout.weight_transfer_backend='' for the HF-folder sync",
        )


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Schema <- YAML file <- dotlist overrides; any unknown key or bad value is a ConfigError."""
    cfg = OmegaConf.structured(Config)
    try:
        if path:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"{p}: config file not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        out: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]  # runs __post_init__
    except ConfigError as e:
        raise ConfigError(f"{path or 'overrides'}: {e}") from None
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path or 'overrides'}: unknown config key '{key}'") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f"{path or 'overrides'}: {key}" if key else f"{path or 'overrides'}"
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    return out


def rank_cpus(learner: LearnerConfig, objective: SFTConfig | GRPOConfig) -> float:
    """CPUs of each learner rank: sft.num_cpus in SFT when set (SFT runs with no rollouts
    beside it), else learner.num_cpus."""
    if isinstance(objective, SFTConfig) and objective.num_cpus > 0:
        return objective.num_cpus
    return learner.num_cpus


def policy_precision(policy: PolicyConfig) -> str:
    """The engines' precision, 'fp32' or 'bf16' (policy.dtype)."""
    return "bf16" if policy.dtype == "bfloat16" else "fp32"


def learner_precision(learner: LearnerConfig, policy: PolicyConfig) -> str:
    """The learner's precision: learner.precision, with 'auto' = the engines'."""
    return policy_precision(policy) if learner.precision == "auto" else learner.precision


def mixed_precision(cfg: Config) -> bool:
    """Learner and engines score at different precisions (only by an explicit choice)."""
    return learner_precision(cfg.learner, cfg.policy) != policy_precision(cfg.policy)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def make_run_dir(cfg: Config, command: str) -> Path:
    """Create the run folder (default runs/<command>-<timestamp>) and write the resolved config."""
    if not cfg.run.dir:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.run.dir = str(Path("runs") / f"{command}-{stamp}")
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    return run_dir


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_dict(obj: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj))  # type: ignore[return-value]
