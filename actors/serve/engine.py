"""The stateless decision engine of the Serve application: a prompt in, one decision out.

`PolicyEngine` replicas hold one vLLM engine (or transformers in the CPU-light 'hf' mode) and
no session state, so they autoscale freely. Requests carry the session id as Serve's
multiplexed model id, so a session's chunks go back to the replica that already holds its
prefix in the KV cache while that replica is up (Serve's multiplexed routing; any replica
gives the same answer, only slower).

A VLM policy (image codec) gets the frames of each decision's context with the request, as
the PNG bytes the ingress keeps; the replica decodes them (a small LRU of decoded frames: a
session sends the same context frames at every step) and passes them to
`DecisionEngine.decide` with the vision tokens banned from sampling, as rollout does
(actors/rollout.py `vlm_frame_rules`). The 'hf' engine serves text policies only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from ray import serve
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from streampro.actors.api import WorkerSpec
from streampro.actors.episode import stop_token_ids
from streampro.actors.hf_loop import sample_token
from streampro.config import RolloutConfig
from streampro.errors import UserError
from streampro.hf_policy import is_vlm

# Sessions a replica counts as "its own" for routing; older ones are forgotten (LRU) and
# their next chunk may land anywhere.
AFFINITY_SESSIONS = 4096
DECODED_BYTES = 256 << 20  # decoded context frames an engine replica keeps (LRU by PNG)


class FrameCache:
    """PNG bytes -> [h, w, 3] uint8; least recently used dropped beyond `max_bytes` decoded.
    Thread-safe (requests decode in worker threads at once)."""

    def __init__(self, max_bytes: int = DECODED_BYTES) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.frames: OrderedDict[bytes, Any] = OrderedDict()
        self.lock = threading.Lock()

    def decode(self, pngs: Sequence[bytes]) -> list:
        out = []
        for b in pngs:
            with self.lock:
                f = self.frames.get(b)
                if f is not None:
                    self.frames.move_to_end(b)
            if f is None:
                with Image.open(io.BytesIO(b)) as im:
                    f = np.asarray(im.convert("RGB"), dtype=np.uint8)
                with self.lock:
                    if b not in self.frames:
                        self.frames[b] = f
                        self.bytes += f.nbytes
                    while self.bytes > self.max_bytes and len(self.frames) > 1:
                        self.bytes -= self.frames.popitem(last=False)[1].nbytes
            out.append(f)
        return out


class _HFDecider:
    """transformers, one decision at a time (CPU-light mode; no vLLM needed).

    Keeps the KV cache of the last prompt it ran: a session's next prompt usually extends
    it, so only the new tokens are fed (a windowed context that slid starts afresh)."""

    def __init__(self, model_path: str, *, dtype: str) -> None:

        if is_vlm(AutoConfig.from_pretrained(model_path)):
            raise UserError(hf_refuses_vlm(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype)
        ).eval()
        self.stop_ids = set(stop_token_ids(AutoTokenizer.from_pretrained(model_path)))
        self.lock = threading.Lock()  # one forward at a time: the cores are shared anyway
        self._cache = None
        self._fed: list[int] = []

    def decide(
        self, prompt: list[int], *, max_tokens: int, temperature: float, seed: int
    ) -> tuple[list[int], list[float]]:

        gen = torch.Generator().manual_seed(seed)
        ids: list[int] = []
        lps: list[float] = []
        with self.lock, torch.inference_mode():
            self._resume(prompt)
            x = prompt[len(self._fed) :]
            while True:
                logits = self._forward(x)  # [V]
                tok = sample_token(logits, temperature=temperature, top_p=1.0, generator=gen)
                ids.append(tok)
                lps.append(float(torch.log_softmax(logits.float(), dim=-1)[tok]))
                if tok in self.stop_ids or len(ids) >= max_tokens:
                    return ids, lps
                x = [tok]

    def choice(self, prompt: list[int], choices: Sequence[int]) -> list[float]:
        """The logprob of each of `choices` after `prompt`, normalised over `choices` alone
        (as `DecisionEngine.choice_logprobs`); the prompt's KV stays cached for the answer."""
        with self.lock, torch.inference_mode():
            self._resume(prompt)
            logits = self._forward(prompt[len(self._fed) :])  # [V]
            return torch.log_softmax(logits.float()[list(choices)], dim=-1).tolist()

    def _resume(self, prompt: list[int]) -> None:
        """Keep the cached KV when `prompt` extends what was fed, else start over."""
        if self._cache is None or prompt[: len(self._fed)] != self._fed:
            self._cache, self._fed = DynamicCache(), []
        if len(self._fed) == len(prompt):  # nothing new to feed: start over
            self._cache, self._fed = DynamicCache(), []

    def _forward(self, x: list[int]):
        past = len(self._fed)
        inp = torch.tensor([x])  # [1, T]
        pos = torch.arange(past, past + len(x))[None]  # [1, T]
        out = self.model(
            input_ids=inp, position_ids=pos, past_key_values=self._cache, use_cache=True
        )
        self._cache = out.past_key_values
        self._fed = self._fed + list(x)
        return out.logits[0, -1]  # [V]


def hf_refuses_vlm(model_path: str) -> str:
    return (
        f"serve.engine=hf serves text policies only: {model_path} is a vision-language model "
        "(use serve.engine=vllm)"
    )


def served_engine_settings(rollout: RolloutConfig) -> RolloutConfig:
    """The rollout engine's settings for a Serve replica: on the replica's own devices
    (serve.num_gpus), so no tensor-parallel placement group, and no NCCL weight pushes."""
    return dataclasses.replace(rollout, tensor_parallel_size=1, weight_transfer_backend="")


@serve.deployment(name="PolicyEngine")
class PolicyEngine:
    """Stateless: a prompt in, one decision (generated ids + logprobs) out."""

    def __init__(self, spec: WorkerSpec, *, engine: str = "vllm") -> None:
        self.engine = engine
        self._frames = FrameCache()
        if engine == "vllm":
            from transformers import AutoTokenizer

            # vLLM only for this engine: an 'hf' replica runs without it
            from streampro.actors.engine import DecisionEngine
            from streampro.actors.rollout import vlm_frame_rules

            self._vllm = DecisionEngine(
                spec.model_path,
                served_engine_settings(spec.rollout),
                dtype=spec.dtype,
                seed=spec.seed,
                max_images=spec.window.turns,  # a context holds at most one frame per turn
            )
            tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
            self._stop = stop_token_ids(tokenizer)
            self._banned, _ = vlm_frame_rules(self._vllm.processor, tokenizer)
        else:
            self._hf = _HFDecider(spec.model_path, dtype=spec.dtype)

    @serve.multiplexed(max_num_models_per_replica=AFFINITY_SESSIONS)
    async def _session(self, session_id: str) -> str:
        # Nothing to load: the "model" is the session's affinity to this replica.
        return session_id

    async def decide(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        images: Sequence[bytes] = (),
    ) -> tuple[list[int], list[float]]:
        """The decision after `prompt`; `images` are the PNG frames of its image placeholders,
        in order (image codec; empty for patch-codec prompts)."""
        frames = await self._prepare(images)
        if self.engine == "vllm":
            from streampro.actors.engine import decision_params  # vLLM: as in __init__

            params = decision_params(
                stop_ids=self._stop,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=1.0,
                seed=seed,
                banned=self._banned,
            )
            d = await self._vllm.decide(prompt, params, frames)
            return d.token_ids, d.logprobs
        return await asyncio.to_thread(
            self._hf.decide, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed
        )

    async def choice(
        self, prompt: list[int], choices: Sequence[int], images: Sequence[bytes] = ()
    ) -> list[float]:
        """The threshold decoder's read: each of `choices`' logprob as the token after
        `prompt`, normalised over `choices` (the same call as rollout's threshold episode)."""
        frames = await self._prepare(images)
        if self.engine == "vllm":
            return await self._vllm.choice_logprobs(prompt, list(choices), frames)
        return await asyncio.to_thread(self._hf.choice, prompt, list(choices))

    async def _prepare(self, images: Sequence[bytes]) -> list:
        """Before any engine call: the request's session (multiplexed id) and its frames,
        decoded off the event loop (hf engines take text policies only)."""
        sid = serve.get_multiplexed_model_id()
        if sid:
            await self._session(sid)
        if images and self.engine != "vllm":
            raise UserError("serve.engine=hf serves text policies only: got frames as images")
        return await asyncio.to_thread(self._frames.decode, images) if images else []
