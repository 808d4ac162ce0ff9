"""Structured configs: one dataclass per component, composed into `Config`.

Defaults are the paper's values (docs/method.md) where it gives one; `configs/default.yaml`
scales them down for the embedded CPU demo. Loading merges YAML and a dotlist onto the schema,
so an unknown key is an error that names it. Each dataclass checks its own values in
`__post_init__` (and `Config` the ones that span sections): this file and the two it
composes (`config_base`: legal values and checks; `config_train`: the training sections) say
what a legal config is. A component is built from its own node (`X.from_config(node)`).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf  # noqa: F401  (MISSING re-exported)
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from streampro import tokens as T
from streampro.config_base import (  # noqa: F401  (re-exported: the components read them here)
    ACC_JUDGES,
    ADVANTAGES,
    ATTENTION_MODES,
    CODECS,
    DTYPES,
    KL_ESTIMATORS,
    LOSS_AGGS,
    PRECISIONS,
    RUBRIC_JUDGES,
    SFT_LOSSES,
    TRACKERS,
    TURN_MATCHES,
    WANDB_MODES,
    ConfigError,
    require,
    require_choice,
)
from streampro.config_train import (
    GRPOConfig,
    LearnerConfig,
    RewardConfig,
    RolloutConfig,
    SFTConfig,
)


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
    trackers: list[str] = field(default_factory=lambda: ["tensorboard", "jsonl"])
    """Where each stage's metrics go, the same scalars to each: 'tensorboard' (<stage>/tb),
    'wandb' (<run dir>/wandb, one run per stage) and 'jsonl'. <stage>/metrics.jsonl is written
    whatever this says: the reports and `run.resume` read it."""
    wandb_project: str = "streampro"
    """Project of the wandb runs (wandb in trackers)."""
    wandb_mode: str = ""
    """wandb's mode: 'offline' (files only, no network or account; `wandb sync` uploads them
    later), 'online' or 'disabled'; empty = the WANDB_MODE environment variable, else offline."""

    def __post_init__(self) -> None:
        require_choice(self.resume, ("auto", "never"), "run.resume")
        require(self.log_every >= 1, f"run.log_every must be >= 1, got {self.log_every}")
        for name in self.trackers:
            require_choice(name, TRACKERS, "run.trackers")
        require_choice(self.wandb_mode, WANDB_MODES, "run.wandb_mode")


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
    colocate: bool | None = None
    """GRPO: the learner and the vLLM engines share the same GPUs and take turns (engines
    sleep at rollout.sleep_level while the learner trains; weights through CUDA IPC on GPU,
    rollout.weight_transfer_backend=ipc, or a blob in memory on CPU). Unset (auto): on when
    both roles ask for a fraction of a GPU (learner.num_gpus and rollout.num_gpus in (0, 1)),
    which is how Ray puts them on the same GPUs; off otherwise, and on CPU. Not yet run on a
    GPU (docs/cluster.md)."""


@dataclass
class SynthConfig:
    out: str = ".cache/streampro/synth"
    """Folder of the generated benchmark (one sub-folder per split)."""
    per_task: int = 8
    """Samples per task of each split."""
    eval_per_task: int = 0
    """Samples per task of the val and test splits (0 = per_task)."""
    dev_per_task: int = 30
    """Samples per task of the dev split (its own seeds): the threshold decoder is tuned and
    the diagnostics bench runs there, never on val or test (30 x 7 tasks = 210 streams)."""
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
    dev: str = ""
    """Dev manifest (decoder tuning, `streampro bench diagnose`); empty = the synth dev split."""
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
    frame_tokens: str = "code"
    """Tiny policy: what one patch token says. 'code': its colour code alone (where it is comes
    from 1-D RoPE only); 'position': its code and patch position (one token per pair);
    'change': code, position, and whether the code changed since the previous chunk."""

    def __post_init__(self) -> None:
        require_choice(self.dtype, DTYPES, "policy.dtype")
        require_choice(self.frame_tokens, T.FRAME_LAYOUTS, "policy.frame_tokens")


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


DECODE_MODES = ("sample", "threshold")


@dataclass
class DecodeConfig:
    mode: str = "sample"
    """'sample': each decision is generated as eval.greedy says (the policy's own argmax or
    samples); 'threshold': respond when the calibrated P(`</Response>`) crosses `threshold`,
    then write the answer greedily (actors/decode.py)."""
    threshold: float = 0.5
    """Respond when the calibrated probability (or, with `integrate`, its sum since the last
    response) is >= this. In [0, 1] without `integrate`."""
    shift: float = 0.0
    """Logit shift taken off `</Response>` vs `</Silence>`: p = sigmoid(l_r - l_s - shift).
    To undo sft.loss=cb_stream set log(w_r / w_s) of its class weights, about
    log(n_silence / n_response) of the SFT split's decisions while those counts are far below
    1 / (1 - sft.beta) (e.g. 3.0 for 20 silences per response); 0 = the policy as trained."""
    integrate: bool = False
    """Integrate-and-fire: sum the calibrated probabilities since the last response and
    respond when the sum crosses `threshold` (the sum restarts at 0 after a response)."""
    refractory_chunks: int = 0
    """Chunks after a response that stay silent whatever p is (and add nothing to the sum)."""
    response_bias: float = 0.0
    """'sample' only: a constant added to the `</Response>` logit while sampling decisions (vLLM
    logit_bias, on every token of a decision: a negative bias also makes a stray `</Response>`
    in the answer text rarer): a global response rate, the baseline a trained policy must
    beat. Evaluation only (`streampro eval`, decode.bias_sweep); Serve refuses it."""
    tune_thresholds: list[float] = field(default_factory=list)
    """`streampro train`: thresholds the threshold decoder tries on the dev split, for the SFT
    and for the GRPO policy; the best dev W-Avg is saved with the checkpoint
    (streampro_decode.json), which eval and Serve then use. Empty: no tuning."""
    bias_sweep: list[float] = field(default_factory=list)
    """`streampro train`: `</Response>` logit biases tried on the dev split for the SFT policy
    in sample mode; the best is the logit-bias baseline scored on test. Empty: none."""

    def __post_init__(self) -> None:
        require_choice(self.mode, DECODE_MODES, "decode.mode")
        top = float("inf") if self.integrate else 1.0
        require(
            0.0 <= self.threshold <= top,
            f"decode.threshold must be in [0, {top:g}], got {self.threshold}",
        )
        require(
            all(0.0 <= t <= top for t in self.tune_thresholds),
            f"decode.tune_thresholds must lie in [0, {top:g}], got {list(self.tune_thresholds)}",
        )
        require(
            self.refractory_chunks >= 0,
            f"decode.refractory_chunks must be >= 0, got {self.refractory_chunks}",
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
    """Chunk requests the deployment works on at once, all ingress replicas together (each
    takes its share, ceil(max_inflight / ingress_replicas)); beyond it 429 with Retry-After."""
    max_session_inflight: int = 2
    """Chunk requests of one session in progress at once on an ingress replica (they run one
    after the other; the rest wait); beyond it 429 with Retry-After."""
    max_queued_requests: int = 256
    """Ray Serve's own bound on the requests its HTTP proxy queues for the ingress replicas
    (the deployment's `max_queued_requests`); beyond it the proxy answers 429 with
    Retry-After (a plain-text body) before the ingress sees the request."""
    session_ttl_s: float = 3600.0
    """Sessions idle this long are closed by a background task."""
    expire_every_s: float = 10.0
    """How often the background task looks for idle sessions."""
    retry_after_s: int = 1
    """Retry-After (seconds) sent with a 429 over a limit or a 503 at capacity."""
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
    bench_runs: list[str] = field(default_factory=lambda: ["levels"])
    """`bench serve` runs, in order: 'levels' (serve.bench_sessions), 'overload' (2 x
    serve.max_inflight sessions: the 429 share and the admitted requests' latency), 'fault'
    (one engine replica killed mid-run; needs a local deployment, serve.min_replicas >= 2)."""
    bench_fault_sessions: int = 32
    """Concurrent sessions of the `bench serve` fault run."""
    eval_concurrency: int = 8
    """Sessions `streampro eval --endpoint/--checkpoint` streams at once."""
    eval_speed: float = 0.0
    """Clock of `eval --endpoint`: stream seconds per wall second (0 = as fast as answered)."""

    def __post_init__(self) -> None:
        require_choice(self.engine, ("vllm", "hf"), "serve.engine")
        for name in (
            "ingress_replicas",
            "max_sessions",
            "max_inflight",
            "max_session_inflight",
            "max_queued_requests",
            "retry_after_s",
            "bench_fault_sessions",
        ):
            value = getattr(self, name)
            require(value >= 1, f"serve.{name} must be >= 1, got {value}")
        for run in self.bench_runs:
            require_choice(run, ("levels", "overload", "fault"), "serve.bench_runs")


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
    diagnose_dev_streams: int = 0
    """`bench diagnose`: dev streams evaluated, taken evenly over the tasks (0 = all)."""
    diagnose_long_streams: int = 70
    """`bench diagnose`: 3x-longer dev streams evaluated (0 = all; each costs 3x the
    decisions of a dev stream)."""
    real_width_layers: int = 2
    """`bench real-width`: text layers and vision blocks kept of the public shapes."""

    def __post_init__(self) -> None:
        require_choice(self.dtype, DTYPES, "bench.dtype")
        require(
            self.real_width_layers >= 1,
            f"bench.real_width_layers must be >= 1, got {self.real_width_layers}",
        )


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
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        """The rules that span sections."""
        d, r, lc = self.data, self.rollout, self.learner
        if self.cluster.colocate is None:  # auto: roles that split GPUs share them
            self.cluster.colocate = 0 < lc.num_gpus < 1 and 0 < r.num_gpus < 1
        require(
            d.codec != "image" or self.policy.name_or_path != "tiny",
            "data.codec=image needs a vision-language policy (policy.name_or_path=tiny-vl, or "
            "a Qwen2.5-VL / Qwen3-VL folder); 'tiny' reads patch tokens",
        )
        require(
            self.policy.frame_tokens == "code"
            or (self.policy.name_or_path == "tiny" and d.codec == "patch"),
            "policy.frame_tokens other than 'code' builds the 'tiny' policy's tokenizer: it "
            "needs policy.name_or_path=tiny and data.codec=patch",
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
            f"{lc.num_gpus:g}, in_process={lc.in_process}); set rollout.weight_transfer_backend="
            "ipc for GPUs shared by colocation, or '' for the HF-folder sync",
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
