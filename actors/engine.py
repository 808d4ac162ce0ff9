"""One async vLLM engine that makes streaming decisions: context in, one decision out.

`DecisionEngine` is the reusable per-step unit: the rollout worker runs many episodes
against one, and the Serve deployment can use it for live sessions. It owns the engine's
prefix-cache counters (a vLLM stat logger) and the in-place weight reload.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from PIL import Image
from transformers import AutoConfig
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from streampro.actors.api import IN_MEMORY, WEIGHT_TRANSFER
from streampro.actors.vlm_prompt import image_prompt, vlm_engine_kwargs
from streampro.actors.vlm_worker import WORKER_EXTENSION
from streampro.config import RolloutConfig
from streampro.errors import UserError
from streampro.hf_policy import load_processor


class PrefixCacheCounter(StatLoggerBase):
    """Sums vLLM's per-iteration prefix-cache stats (queried and hit prompt tokens), plus the
    prompts continued in an open `DecisionSession` (their held tokens count as hits), and the
    mm processor cache's (images queried and found already processed)."""

    def __init__(self, vllm_config=None, engine_index: int = 0) -> None:
        self.queries = 0
        self.hits = 0
        self.mm_queries = 0
        self.mm_hits = 0

    def record(
        self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is not None:
            self.queries += int(scheduler_stats.prefix_cache_stats.queries)
            self.hits += int(scheduler_stats.prefix_cache_stats.hits)
        if mm_cache_stats is not None:
            self.mm_queries += int(mm_cache_stats.queries)
            self.mm_hits += int(mm_cache_stats.hits)

    def log_engine_initialized(self) -> None:
        pass


@dataclass
class Decision:
    """What one request produced: generated ids and each one's sampling logprob."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str | None


class DecisionEngine:
    """An `AsyncLLM` with the settings a streaming decision needs: the engine fields of
    `rollout` (prefix caching, block size, KV size, context, batch, parallelism, eager,
    weight transfer), plus the policy's dtype, the run's seed and the frames a prompt holds."""

    def __init__(
        self,
        model_path: str,
        rollout: RolloutConfig,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_images: int = 200,
        sleep_mode: bool = False,
    ) -> None:
        from vllm.platforms import current_platform

        r = rollout
        # reload_vlm_weights: reload_weights + a repack of tied LM heads (any model)
        kw: dict = {"worker_extension_cls": WORKER_EXTENSION}
        # A VLM folder: frames go in as images (at most max_images per prompt, the window)
        self.processor = load_processor(model_path)
        if self.processor is not None:
            kw |= vlm_engine_kwargs(
                max_images=max_images, block_size=r.block_size, on_cpu=current_platform.is_cpu()
            )
        max_model_len = r.max_model_len
        self.max_model_len = max_model_len or _model_max_len(model_path)
        if current_platform.is_cpu():
            # The CPU worker reads the KV size from here (or VLLM_CPU_KVCACHE_SPACE).
            kw["kv_cache_memory_bytes"] = int(r.kv_cache_gb * (1 << 30))
            # vLLM 0.32 CPU fails on a seeded request whose prefill is split over steps
            # ("CPU Generator does not use offset"), e.g. 64 new streams at once: so prefill
            # whole prompts only, with a token budget of one full context.
            max_model_len = self.max_model_len  # read from the model once, above
            kw["enable_chunked_prefill"] = False
            kw["max_num_batched_tokens"] = max(max_model_len, 2048)
        else:
            kw["gpu_memory_utilization"] = r.gpu_memory_utilization
            # colocated: sleep() must free the weights and KV cache (CPU has no sleep mode)
            kw["enable_sleep_mode"] = sleep_mode
            if r.tensor_parallel_size > 1:
                # TP workers as Ray actors in this actor's placement group (one GPU per
                # bundle, actors/rollout.py _engine_placement). Ray hid every GPU from this
                # GPU-less actor; vLLM must see the node's to place its workers (as OpenRLHF)
                kw["distributed_executor_backend"] = "ray"
                if _in_placement_group():
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        if r.weight_transfer_backend:  # GPU path: NCCL broadcast from learner rank 0
            from vllm.config import WeightTransferConfig

            kw["weight_transfer_config"] = WeightTransferConfig(backend=r.weight_transfer_backend)
        args = AsyncEngineArgs(
            model=model_path,
            dtype=dtype,
            enforce_eager=r.enforce_eager,
            enable_prefix_caching=r.enable_prefix_caching,
            block_size=r.block_size or None,  # CPU default is 128: too coarse for ~25-token steps
            max_model_len=max_model_len or None,
            max_num_seqs=r.max_num_seqs,
            tensor_parallel_size=r.tensor_parallel_size,
            seed=seed,
            # logprobs of the distribution sampled from (logits / temperature, after top-p),
            # which is what the learner recomputes; vLLM's default reports raw-logit logprobs
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,  # only our counter, not the periodic log lines
            **kw,
        )
        self.cache_counter = PrefixCacheCounter()
        self.llm = AsyncLLM.from_engine_args(
            args, stat_loggers=[lambda cfg, idx: self.cache_counter]
        )
        self.model_path = model_path
        self.reloads = 0  # reload() calls: a DecisionSession opened before one holds stale KV
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}-{id(self):x}"

    @classmethod
    def attach(
        cls, llm: AsyncLLM, counter: PrefixCacheCounter, model_path: str, max_model_len: int
    ) -> DecisionEngine:
        """A DecisionEngine over an AsyncLLM started elsewhere with `counter` as its stat
        logger (tests share one engine: a start costs 20-60 s on CPU)."""
        self = cls.__new__(cls)
        self.llm, self.cache_counter, self.model_path = llm, counter, model_path
        self.processor = load_processor(model_path)
        self.max_model_len = max_model_len
        self.reloads = 0
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}-{id(self):x}"
        return self

    async def decide(
        self, prompt_ids: list[int], params: SamplingParams, images: Sequence[Any] = ()
    ) -> Decision:
        """One request: the decision after `prompt_ids` (ids/logprobs as sampled); `images` are
        the frames ([h, w, 3] uint8) of the prompt's image placeholders, in order (VLM)."""
        need = len(prompt_ids) + int(params.max_tokens or 0)
        if need > self.max_model_len:  # never truncate a stream's context silently
            raise UserError(
                f"a decision needs {need} tokens of context ({len(prompt_ids)} prompt + "
                f"{params.max_tokens} generated) but the model takes {self.max_model_len}: "
                "lower data.window_turns, or raise rollout.max_model_len if the model allows"
            )
        o = await self._output(prompt_ids, params, images)
        ids = list(o.token_ids)
        lps = [float(step[tok].logprob) for tok, step in zip(ids, o.logprobs or [])]
        if len(lps) != len(ids):
            raise RuntimeError(f"vLLM returned {len(lps)} logprobs for {len(ids)} tokens")
        return Decision(ids, lps, o.finish_reason)

    async def choice_logprobs(
        self, prompt_ids: list[int], choices: Sequence[int], images: Sequence[Any] = ()
    ) -> list[float]:
        """The logprob of each of `choices` as the token after `prompt_ids`, normalised over
        `choices` alone (so their differences are the raw logit differences)."""
        o = await self._output(prompt_ids, choice_params(choices), images)
        top = (o.logprobs or [{}])[0]
        missing = [c for c in choices if c not in top]
        if missing:
            raise RuntimeError(f"vLLM returned no logprob for token(s) {missing}")
        return [float(top[c].logprob) for c in choices]

    async def _output(
        self, prompt_ids: list[int], params: SamplingParams, images: Sequence[Any]
    ) -> CompletionOutput:
        """The finished output of one request."""
        final = None
        async for out in self.llm.generate(
            self.prompt(prompt_ids, images),
            params,
            request_id=f"d{self._tag}-{next(self._ids)}",
        ):
            final = out
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output for a decision request")
        return final.outputs[0]

    def prompt(self, prompt_ids: list[int], images: Sequence[Any]) -> TokensPrompt:
        """vLLM's prompt of expanded ids and their frames (each a whole request's or one
        session input's: `images` are exactly the frames of the pad runs in `prompt_ids`)."""
        if self.processor is None:
            if images:
                raise UserError("frames were given as images but the policy is a text model")
            return TokensPrompt(prompt_token_ids=prompt_ids)

        pil = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in images]
        return image_prompt(
            prompt_ids, pil, image_token_id=self.processor.image_token_id, processor=self.processor
        )

    async def reload(self, source: str, blob: bytes | None = None) -> None:
        """Load new weights in place, then drop every cached prefix (it holds old-weight KV)."""
        self.reloads += 1
        if source == IN_MEMORY:  # a safetensors blob through the RPC: bytes survive it
            if blob is None:
                raise ValueError("reload from memory without a weights blob")
            await self.llm.collective_rpc("load_vlm_weights_blob", args=(blob,))
        elif source != WEIGHT_TRANSFER:
            # An HF folder (safetensors) exported by the learner; works on CPU and GPU.
            # reload_weights, then the tied LM head repacked (actors/vlm_worker.py: without it
            # vLLM CPU kept sampling from the old head; measured up to 1.05 nats off)
            await self.llm.collective_rpc("reload_vlm_weights", kwargs={"weights_path": source})
        else:  # sent over NCCL and loaded by finish_weight_update: the same head refresh
            await self.llm.collective_rpc("refresh_vlm_heads")
        if self.processor is not None:  # image embeddings of the old weights (and a seen
            await self.llm.reset_encoder_cache()  # image would fail "Encoder cache miss")
        await self.llm.reset_prefix_cache(reset_running_requests=True)

    def cache_stats(self) -> dict[str, int]:
        c = self.cache_counter
        return {
            "queries": c.queries,
            "hits": c.hits,
            "mm_queries": c.mm_queries,
            "mm_hits": c.mm_hits,
        }

    def shutdown(self) -> None:
        self.llm.shutdown()


def _in_placement_group() -> bool:
    return ray.is_initialized() and ray.util.get_current_placement_group() is not None


def _model_max_len(model_path: str) -> int:
    """The model's own context limit (text config of a VLM)."""

    cfg = AutoConfig.from_pretrained(model_path)
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.max_position_embeddings)


def decision_params(
    *,
    stop_ids: list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    banned: Sequence[str] = (),
    response_bias: float = 0.0,
    response_id: int | None = None,
) -> SamplingParams:
    """Sampling of one decision: stop at `</Silence>`/`<|im_end|>`, sampled-token logprob.

    `banned` tokens are never sampled (a VLM's vision tokens: a generated image pad would stand
    for no image); their logits are -inf before temperature, which the learner repeats.
    `response_bias` (with `response_id`, the `</Response>` id) is added to that token's logit
    (vLLM logit_bias, before temperature) at every generated token of the decision, the
    answer text's too: a negative bias only keeps `</Response>` out of the text further (it
    is invalid there anyway), but a large positive one fills the text with it (an invalid
    decision). Evaluation only: the reported logprobs include the bias, the learner has none."""
    bias = None
    if response_bias != 0.0:  # bias 0 leaves the request exactly as it was
        if response_id is None:
            raise ValueError("a response bias needs the </Response> token id")
        bias = {int(response_id): float(response_bias)}
    return SamplingParams(
        logit_bias=bias,
        bad_words=list(banned) or None,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop_token_ids=stop_ids,
        logprobs=0,
        seed=None if temperature == 0.0 else seed,
        detokenize=False,
        skip_special_tokens=False,
    )


def choice_params(choices: Sequence[int]) -> SamplingParams:
    """One greedy token among `choices` only (the others' logits are -inf), with every
    choice's logprob: engines report processed logprobs, here log-softmax over `choices`."""
    return SamplingParams(
        temperature=0.0,
        max_tokens=1,
        allowed_token_ids=[int(c) for c in choices],
        logprobs=len(choices),
        detokenize=False,
        skip_special_tokens=False,
    )
