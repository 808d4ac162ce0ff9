"""One rank of the learner group: the policy under a DeepSpeed engine (ZeRO 0-3, fp32/bf16).

The same class runs in-process (LocalLearnerGroup, world size 1) and as a Ray actor
(RayLearnerGroup, one per rank), so both groups execute identical maths. A rank is built
from its config nodes (`LearnerSpec`) and only sees its micro-batches plus the step's global
totals (class counts, token counts), computed by the group before splitting.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_save
from transformers import AutoModelForCausalLM

from streampro.config import (
    Config,
    GRPOConfig,
    LearnerConfig,
    SFTConfig,
    learner_precision,
    rank_cpus,
)
from streampro.errors import UserError
from streampro.hf_policy import load_model, load_processor, vision_tokens
from streampro.learners.api import Batch
from streampro.learners.attention import (
    install_selective_forward,
    register_attention,
)
from streampro.learners.grpo_loss import policy_loss
from streampro.learners.losses import decision_counts, sft_loss, shifted_logprobs, token_logprobs
from streampro.learners.packing import attention_bias, flat_layout
from streampro.learners.vlm_inputs import check_loss_mask, score_vlm_tokens
from streampro.learners.weight_sync import WIRE_DTYPES, GatheredWeights, SyncGroup, WeightSender
from streampro.lora import add_lora, merge_lora
from streampro.timeouts import free_port

OBJECTIVES = ("sft", "grpo")

_CKPT_TAG = "state"
# Files of an HF folder that are weights or config; everything else (tokenizer) is copied.
_WEIGHT_FILES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt")


@dataclass(frozen=True)
class LearnerSpec:
    """What a rank is built from: the config nodes of the learner and of its stage's objective.

    Every hyperparameter is read from these nodes where it is used (`spec.learner.zero_stage`,
    `spec.objective.lr`, ...): its default is the config dataclass's, written once."""

    learner: LearnerConfig
    objective: SFTConfig | GRPOConfig
    """The stage's node: its lr and loss (and, for SFT, the lr warm-up)."""
    seed: int
    """run.seed (a rank seeds itself with seed + rank)."""
    temperature: float
    """rollout.temperature: GRPO logprobs (and every `logprobs()`) are those of logits /
    temperature, the distribution vLLM sampled from."""
    precision: str
    """'fp32' or 'bf16': learner.precision, 'auto' resolved to the engines' policy.dtype
    (`streampro.config.learner_precision`)."""

    @classmethod
    def from_config(cls, cfg: Config, *, objective: str) -> LearnerSpec:
        """The spec of a config's learner for `objective` ('sft' or 'grpo'); the nodes are
        copied, so later edits of `cfg` do not reach a built group."""
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})")
        node = cfg.sft if objective == "sft" else cfg.grpo
        return cls(
            learner=replace(cfg.learner),
            objective=replace(node),
            seed=cfg.run.seed,
            temperature=cfg.rollout.temperature,
            precision=learner_precision(cfg.learner, cfg.policy),
        )

    @property
    def name(self) -> str:
        """'sft' or 'grpo': the only objective a group of this spec trains."""
        return "sft" if isinstance(self.objective, SFTConfig) else "grpo"

    @property
    def warmup_steps(self) -> int:
        """Linear lr warm-up steps: `sft.warmup_steps`; GRPO has none."""
        return self.objective.warmup_steps if isinstance(self.objective, SFTConfig) else 0

    @property
    def with_reference(self) -> bool:
        """A frozen reference model: only for GRPO with a KL term (`grpo.kl_coef != 0`)."""
        return isinstance(self.objective, GRPOConfig) and self.objective.kl_coef != 0.0

    @property
    def num_cpus(self) -> float:
        """CPUs of each Ray rank (`streampro.config.rank_cpus`)."""
        return rank_cpus(self.learner, self.objective)


def dense_logits(model, mb: Batch, dtype: torch.dtype) -> torch.Tensor:  # [B, T, V]
    """The reference path: every position's logits under a block-diagonal causal mask."""
    bias = attention_bias(mb["seq_ids"], dtype)  # [B, 1, T, T]
    out = model(
        input_ids=mb["input_ids"],
        position_ids=mb["position_ids"],
        attention_mask=bias,
        use_cache=False,
    )
    return out.logits


def score_tokens(
    model,
    mb: Batch,
    need: torch.Tensor,  # [B, T] bool
    *,
    attention: str,
    dtype: torch.dtype,
    temperature: float,
    with_entropy: bool,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Logprobs [B, T], entropy [B, T] (or None; differentiable with `entropy_grad`) and
    argmax [B, T] of the tokens in `need` ([B, T] bool); 0 (argmax -1) elsewhere. Only the
    scored tokens' hidden states meet the LM head: about 3% of GRPO positions."""
    if attention == "dense":
        return shifted_logprobs(
            dense_logits(model, mb, dtype),
            mb["input_ids"],
            position_ids=mb["position_ids"],
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
            temperature=temperature,
        )
    lay = flat_layout(mb, need)
    if attention == "padded" and int(mb["seq_ids"].max()) <= 0:
        # one sequence per row: SDPA's causal kernel over the rows as they are; the LM
        # head sees the union of the needed columns, then each row keeps its own
        cols, inv = torch.unique(lay.cols - 1, return_inverse=True)
        out = model(
            input_ids=mb["input_ids"],
            position_ids=mb["position_ids"],
            logits_to_keep=cols,
            use_cache=False,
        )
        logits = out.logits[lay.rows, inv]  # [N, V]
    else:  # varlen (packed rows always take it): no padding, causal SDPA per sequence
        selective = getattr(getattr(model, "module", model), "streampro_selective", False)
        keep = {"streampro_keep": lay.keep} if selective else {"logits_to_keep": lay.keep}
        out = model(
            input_ids=lay.input_ids,
            position_ids=lay.position_ids,
            streampro_segments=lay.segments,
            use_cache=False,
            **keep,
        )
        logits = out.logits[0]  # [N, V]
    lp_n, ent_n, pred_n = token_logprobs(
        logits,
        lay.targets,
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
        temperature=temperature,
    )
    shape, idx = mb["input_ids"].shape, (lay.rows, lay.cols)
    lp = lp_n.new_zeros(shape).index_put(idx, lp_n)  # [B, T], differentiable
    ent = ent_n.new_zeros(shape).index_put(idx, ent_n) if ent_n is not None else None
    pred = torch.full(shape, -1, dtype=torch.long, device=lp.device).index_put(idx, pred_n)
    return lp, ent, pred


def pick_accelerator(*, gpus: float, visible_gpus: int) -> tuple[str, str]:
    """(DeepSpeed accelerator, torch.distributed backend) of a rank: ('cuda', 'nccl') for a
    rank given GPUs (`learner.num_gpus` > 0), ('cpu', 'gloo') otherwise. A rank that asked
    for a GPU and sees none fails in one line rather than training on the CPU unnoticed."""
    if gpus <= 0:
        return "cpu", "gloo"
    if visible_gpus < 1:
        raise UserError(
            f"learner rank: learner.num_gpus={gpus:g} but this process sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); set "
            "learner.num_gpus=0 to train on CPUs"
        )
    return "cuda", "nccl"


def offload_zero_states(engine: Any, include: list[str], *, pin_memory: bool) -> list[str]:
    """DeepSpeed 0.19's `engine.offload_states` (ZeRO 1-3) of the named states to host
    memory, blocking: the engines wake into the freed memory right after. Returns the names."""
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

    states = [OffloadStateTypeEnum(name) for name in include]  # an unknown name raises here
    engine.offload_states(include=states, device=OffloadDeviceEnum.cpu, pin_memory=pin_memory)
    return [s.value for s in states]


class LearnerWorker:
    """A data-parallel rank. Verbs are keyword-only; the group calls them on every rank."""

    def __init__(self, *, model_path: str, rank: int, world_size: int, spec: LearnerSpec) -> None:
        self.model_path = model_path
        self.rank = rank
        self.world_size = world_size
        self.spec = spec
        self.engine: Any = None  # the DeepSpeed engine (setup)
        self.ref_model: torch.nn.Module | None = None
        self.vlm: tuple[Any, list[int]] | None = None  # a VLM's (processor, banned ids)
        self._kept: dict[int, dict[str, torch.Tensor]] = {}  # policy version -> weights
        self._sender: Any = None  # learners/weight_sync.py WeightSender (init_weight_sync)
        self._offloaded: list[str] = []  # ZeRO states in host memory (offload_states)
        self._pin = True  # how they were offloaded (pinned host buffers need an accelerator)

    def address(self) -> tuple[str, int]:
        """This rank's node IP and a free port (rank 0's become the rendezvous)."""
        ip = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return ip, free_port()

    def setup(self, *, master_addr: str, master_port: int) -> None:
        """Join torch.distributed via env:// and build the DeepSpeed engine."""
        accelerator, backend = pick_accelerator(
            gpus=self.spec.learner.num_gpus, visible_gpus=torch.cuda.device_count()
        )
        # DeepSpeed reads DS_ACCELERATOR once, when first imported: the rank's own choice wins
        # over what a CPU-only local cluster sets for every worker
        os.environ["DS_ACCELERATOR"] = accelerator
        import deepspeed  # here, not at the top: a driver that only builds actors never needs it

        # torch's c10d warns on every ZeRO collective that DeepSpeed still calls by its old name
        warnings.filterwarnings(
            "ignore", message=r".*is deprecated\. Please use.*", category=FutureWarning
        )
        on_gpu = accelerator == "cuda"
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
        )
        if on_gpu:
            torch.cuda.set_device(0)  # Ray gives each rank its own CUDA_VISIBLE_DEVICES
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        self._seed_all(self.spec.seed + self.rank)
        self.precision = self._pick_precision()
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = self._load_model(partitioned=self.spec.learner.zero_stage == 3)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=self.spec.objective.lr,
            weight_decay=self.spec.learner.weight_decay,
            betas=(0.9, 0.999),
            eps=1e-8,
            foreach=False,
        )
        warm = max(self.spec.warmup_steps, 0)
        # linear warm-up to the peak lr, then constant (sft.warmup_steps; GRPO: none)
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / (warm + 1))
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=sched, config=self._ds_config()
        )
        if self.spec.with_reference:
            ref = self._load_model().to(self.dtype)
            self.ref_model = ref.to(self.device).eval().requires_grad_(False)

    def _load_model(self, *, partitioned: bool = False) -> torch.nn.Module:
        """The policy in fp32: a causal LM with the fast attention paths, or a VLM (its own
        SDPA attention and mRoPE; frames through the processor, see `_score`). partitioned:
        under ZeRO-3, built inside `deepspeed.zero.Init`, so each rank only ever holds its
        shard of the weights (transformers does this while an HfDeepSpeedConfig is alive)."""
        # here, not at the top: it pulls in DeepSpeed, which must see this rank's accelerator
        from transformers.integrations import HfDeepSpeedConfig

        lc = self.spec.learner
        zero3 = HfDeepSpeedConfig(self._ds_config()) if partitioned else None
        try:
            model: Any = self._build_model()
        finally:
            del zero3  # a weak global in transformers: later loads (the reference) are whole
        if lc.lora_rank > 0:  # adapters made after zero.Init are partitioned by the engine
            add_lora(model, rank=lc.lora_rank, alpha=lc.lora_alpha)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return model

    def _build_model(self) -> torch.nn.Module:
        lc = self.spec.learner
        processor = load_processor(self.model_path)
        if processor is not None:
            self.vlm = (processor, sorted(vision_tokens(processor.tokenizer).values()))
            model = load_model(self.model_path, dtype="float32")
            if lc.freeze_vision:
                model.model.visual.requires_grad_(False)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch.float32, attn_implementation=register_attention()
            )
            install_selective_forward(model)  # last layer, norm and LM head at scored tokens
        return model

    def _score(
        self,
        model,
        mb: Batch,
        need: torch.Tensor,
        *,
        temperature: float,
        with_entropy: bool,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """score_tokens for this rank's model (the VLM path when the policy has a processor)."""
        if self.vlm is not None:
            processor, banned = self.vlm
            return score_vlm_tokens(
                model,
                mb,
                need,
                processor=processor,
                banned=banned,
                temperature=temperature,
                with_entropy=with_entropy,
                entropy_grad=entropy_grad,
            )
        return score_tokens(
            model,
            mb,
            need,
            attention=self.spec.learner.attention,
            dtype=self.dtype,
            temperature=temperature,
            with_entropy=with_entropy,
            entropy_grad=entropy_grad,
        )

    def _ds_config(self) -> dict:
        lc = self.spec.learner
        return {
            "train_micro_batch_size_per_gpu": lc.micro_batch,
            "gradient_accumulation_steps": 1,
            "train_batch_size": lc.micro_batch * self.world_size,
            # the caller owns the boundary: any number of backward() calls, then one step()
            "managed_gradient_accumulation": False,
            "gradient_clipping": lc.grad_clip,
            "zero_optimization": {"stage": lc.zero_stage, "overlap_comm": False},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.precision == "bf16"},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }

    def _pick_precision(self) -> str:
        """The dtype every rank uses: the spec's resolved precision (the engines' unless
        learner.precision sets another); the same on every rank, as the spec is."""
        on_gpu = self.device.type == "cuda"
        if self.spec.precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
            raise UserError("learner: this GPU has no bf16; set learner.precision=fp32")
        return self.spec.precision

    def info(self) -> dict:
        """What setup chose: the precision and the torch threads this rank computes with."""
        return {"precision": self.precision, "threads": torch.get_num_threads()}

    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)

    def train(self, *, micro_batches: list[Batch], totals: dict[str, float]) -> dict[str, float]:
        """Forward/backward every micro-batch on this rank's objective (`spec.objective`), then
        one optimiser step. Returns summed stats (the group reduces them over ranks)."""
        if self._offloaded:  # the step would read host tensors as if they were on the GPU
            raise RuntimeError(f"train with {self._offloaded} offloaded: reload_states first")
        obj = self.spec.objective
        self.engine.train()
        sums: dict[str, float] = defaultdict(float)
        # the entropy bonus differentiates the entropy; otherwise it is a statistic
        entropy_grad = isinstance(obj, GRPOConfig) and obj.entropy_coef != 0.0
        # SFT scores the data at T = 1; GRPO the distribution vLLM sampled (logits / T)
        temperature = self.spec.temperature if isinstance(obj, GRPOConfig) else 1.0
        for mb in micro_batches:
            mb = {k: v.to(self.device) for k, v in mb.items()}
            if self.vlm is not None:  # a vision token is never a target (a dialogue bug)
                check_loss_mask(mb["input_ids"], mb["loss_mask"], set(self.vlm[1]))
            lp, ent, pred = self._score(
                self.engine,
                mb,
                mb["loss_mask"] > 0,
                with_entropy=True,
                entropy_grad=entropy_grad,
                temperature=temperature,
            )
            assert ent is not None  # with_entropy=True
            if isinstance(obj, SFTConfig):
                loss, st = sft_loss(
                    lp,
                    mb["loss_mask"],
                    mb["decision_class"],
                    obj,
                    n_silence=int(totals["n_silence"]),
                    n_response=int(totals["n_response"]),
                    normalizer=totals["normalizer"],
                )
                for k, v in decision_counts(
                    pred, mb["input_ids"], mb["decision_class"], mb["loss_mask"]
                ).items():
                    sums[f"sum/{k}"] += v
                sums["sum/nll"] += st["nll_sum"]
            else:
                loss, st = policy_loss(
                    lp,
                    mb["old_logprobs"],
                    mb["advantages"],
                    mb["loss_mask"],
                    obj,
                    ref_logprobs=mb.get("ref_logprobs"),  # read only when kl_coef != 0
                    entropy=ent,  # read only when entropy_coef != 0
                    is_weights=mb.get("is_weights"),  # rollout correction, when on
                    normalizer=totals["normalizer"],
                )
                n = st["tokens"]
                for k, v in st.items():
                    if k == "ratio_max":
                        sums["max/ratio_max"] = max(sums.get("max/ratio_max", 0.0), v if n else 0.0)
                    elif k != "tokens":
                        sums[f"sum/{k}"] += v * n  # token-weighted, divided by the total later
            mask = mb["loss_mask"]
            sums["sum/tokens"] += float(mask.sum())
            sums["sum/entropy"] += float((ent.detach() * mask).sum())
            sums["sum/loss"] += float(loss.detach())
            # ZeRO averages gradients over ranks; the loss is already a share of the global
            # mean, so scale by world size to make the reduced gradient the global one.
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        # the lr this step uses (step() advances it)
        sums["last/lr"] = float(self.engine.get_lr()[0])
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        sums["last/grad_norm"] = float(norm) if norm is not None else 0.0
        return dict(sums)

    @torch.no_grad()
    def logprobs(
        self, *, micro_batches: list[Batch], reference: bool = False, version: int | None = None
    ) -> list[torch.Tensor]:
        """Per-token logprobs `[b, t]` of each micro-batch at the sampling temperature, on CPU
        in fp32, at the loss-masked tokens only (0 elsewhere: the ratio, the KL and the check
        read no other, and the last layer and LM head then skip ~97% of positions); under
        the kept weights of policy `version` when given (see `keep_weights`)."""
        if reference and self.ref_model is None:
            raise ValueError("reference logprobs need a GRPO group with grpo.kl_coef != 0")
        if version is not None:
            with self._weights_of(version):
                return self.logprobs(micro_batches=micro_batches)
        model = self.ref_model if reference else self.engine
        if not reference:
            self.engine.eval()
        out = []
        for mb in micro_batches:
            mb = {k: v.to(self.device) for k, v in mb.items()}
            lp, _, _ = self._score(
                model,
                mb,
                mb["loss_mask"] > 0,
                with_entropy=False,
                temperature=self.spec.temperature,
            )
            out.append(lp.float().cpu())
        return out

    def keep_weights(self, *, version: int) -> None:
        """Keep a CPU copy of the current weights as policy `version` (the two newest are kept):
        async GRPO scores a batch under the weights its rollout sampled from (the agreement
        check). ZeRO-3 partitions the parameters: nothing is kept there."""
        if self.spec.learner.zero_stage == 3:
            return
        params = self.engine.module.named_parameters()
        self._kept[version] = {n: p.detach().to("cpu", copy=True) for n, p in params}
        for old in sorted(self._kept)[:-2]:
            del self._kept[old]

    @contextlib.contextmanager
    def _weights_of(self, version: int) -> Iterator[None]:
        """Swap the kept weights of `version` in for the duration (then restore the current)."""
        if version not in self._kept:
            raise KeyError(f"policy version {version} is not kept (have {sorted(self._kept)})")
        params = dict(self.engine.module.named_parameters())
        current = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            try:
                for n, w in self._kept[version].items():
                    params[n].copy_(w)
                yield
            finally:
                for n, w in current.items():
                    params[n].copy_(w)

    def offload_states(self, *, include: list[str], pin_memory: bool = True) -> list[str]:
        """Move the named ZeRO states (`OffloadStateTypeEnum` values, e.g. 'optim_states',
        'hp_params') to host memory; returns those moved. Nothing moves on a CPU rank (they
        are in host memory already) nor under ZeRO 0 (a plain optimizer has no offload)."""
        if self.device.type != "cuda" or self.spec.learner.zero_stage == 0:
            return []
        self._offloaded = offload_zero_states(self.engine, include, pin_memory=pin_memory)
        self._pin = pin_memory
        return list(self._offloaded)

    def reload_states(self) -> list[str]:
        """Bring back what `offload_states` moved (before the next step); returns those states."""
        moved, self._offloaded = self._offloaded, []
        if moved:
            self.engine.reload_states()
        return moved

    def save(self, *, path: str, client_state: dict) -> None:
        """DeepSpeed checkpoint (weights, optimizer, scheduler) + this rank's RNG into path."""
        # a colocated step saves while its states are in host memory: write them from where
        # they live on the GPU, then put them back out as the engines expect
        out = self.reload_states()
        # under one key: DeepSpeed hands back everything it did not write itself
        self.engine.save_checkpoint(
            path, tag=_CKPT_TAG, client_state={"streampro": client_state}, save_latest=False
        )
        if out:
            self._offloaded = offload_zero_states(self.engine, out, pin_memory=self._pin)
        rng = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        torch.save(rng, Path(path) / f"rng_rank{self.rank}.pt")

    def load(self, *, path: str) -> dict:
        load_path, client_state = self.engine.load_checkpoint(path, tag=_CKPT_TAG)
        if load_path is None:
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint")
        rng_file = Path(path) / f"rng_rank{self.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=False)
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
        return dict((client_state or {}).get("streampro", {}))

    def export_hf(self, *, path: str) -> None:
        """Rank 0 writes safetensors + config + the source folder's tokenizer files into path."""
        lc = self.spec.learner
        if lc.zero_stage == 3:  # collective: every rank must call it
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict() if self.rank == 0 else None
        if self.rank != 0:
            return
        state = {k: v.detach().cpu() for k, v in state.items()}
        if lc.lora_rank > 0:  # engines load whole weights: W + (alpha / r) B @ A
            state = merge_lora(state, scale=lc.lora_scale)
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        module = self.engine.module
        module.config.dtype = "bfloat16" if self.dtype == torch.bfloat16 else "float32"
        module.save_pretrained(out, state_dict=state, safe_serialization=True)
        for f in Path(self.model_path).iterdir():
            if (
                f.is_file()
                and f.name != "config.json"
                and not f.name.endswith(_WEIGHT_FILES)
                and not (out / f.name).exists()
            ):
                shutil.copy2(f, out / f.name)

    def weights_blob(self, *, dtype: str) -> bytes | None:
        """Rank 0: the weights the engines load (learners/weight_sync.py GatheredWeights, the
        same tensors an NCCL sync sends) as a safetensors blob; other ranks join the gathers."""
        source = GatheredWeights(
            self.engine.module,
            dtype=WIRE_DTYPES[dtype],
            lora_scale=self.spec.learner.lora_scale,
            sender=self.rank == 0,
        )
        tensors = {}
        for name, t in source:  # every rank iterates: ZeRO-3's gathers are collectives
            if self.rank == 0:
                tensors[name] = t.cpu()
        return safetensors_save(tensors) if self.rank == 0 else None

    def init_weight_sync(
        self,
        *,
        master_address: str,
        master_port: int,
        world_size: int,
        client: Any,
        dtype: str,
        timeout_s: float,
    ) -> None:
        """Join the NCCL weight sync with the rollout engines behind `client` (GPU; rank 0
        sends, every rank takes part in the ZeRO-3 gathers): learners/weight_sync.py."""
        lc = self.spec.learner  # LoRA goes out merged into whole weights
        self._sender = WeightSender(
            rank=self.rank,
            module=self.engine.module,
            group=SyncGroup(master_address, master_port, world_size, timeout_s),
            client=client,
            dtype=dtype,
            lora_scale=lc.lora_scale,
        )

    def send_weights(self, *, version: int) -> float:
        """Broadcast the current weights to every engine (after `init_weight_sync`)."""
        if self._sender is None:
            raise RuntimeError("send_weights before init_weight_sync")
        return self._sender.send(version=version)

    def shutdown(self) -> None:
        """Free the engine and leave the process group (a later group can rejoin)."""
        if self._sender is not None:
            self._sender.shutdown()
            self._sender = None
        self.engine = None
        self.ref_model = None
        if dist.is_initialized():
            import deepspeed.comm as ds_comm  # lazy as in setup: a rank that ran setup has it

            # through DeepSpeed, so it also drops its cached groups (else a new engine breaks)
            ds_comm.destroy_process_group()
