"""A stream's decisions as one resumable vLLM request: each step sends only its new tokens.

Between window slides a stream's prompt only grows at its end (data/window.py), so the
whole segment can run as one vLLM *streaming-input session* (`AsyncLLM.generate` with an
async generator of `StreamingInput`s): the request keeps its KV cache between decisions and
each step appends just the tokens after what the engine already holds. Compared with one
request per decision carrying the whole prompt, the engine no longer re-receives, re-hashes
and re-matches thousands of ids every step, and no longer recomputes the partial last KV
block of the previous step (up to `block_size - 1` tokens of attention over the whole
context, per step).

vLLM keeps a session's computed tokens and drops the last sampled one (it has no KV yet), so
after a decision the session holds `prompt + generated[:-1]`; the next prompt must start with
that, which the dialogue layout guarantees between slides. When it does not (the window
slid), or the engine reloaded its weights since the session opened (its KV is stale), the
session ends and a new one starts from the whole prompt, which still hits the prefix cache.

Images (VLM policies) ride along: a `StreamingInput` is processed like a whole request, so
its `multi_modal_data` goes through the mm processor and vLLM's scheduler appends the new
items to the session, shifted to where the input lands (`_update_request_as_session`), and
recomputes the M-RoPE positions of the grown prompt. A step therefore sends only its new
chunk's frame; the frames already held keep their KV and are never re-sent, re-hashed or
re-encoded. The held frames must be the prompt's first ones (same objects or pixels), else
the session reopens.

Sampling: a session seeds its sampler from its FIRST request's seed and draws from that
generator for every later decision of the session (vLLM keeps a request's generator), so the
same episode and seed still give the same tokens, while a fresh request per step would
reseed every step.

KV budget: a session waiting for its next input keeps its KV blocks, and vLLM preempts only
running requests, so sessions holding the whole cache would stall every stream. The open
sessions of an engine therefore hold at most `SESSION_SHARE` of its KV cache (their tokens
plus each one's next decision); past that a stream closes its session and decides with one
request per step (its blocks then stay evictable), as before sessions.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from vllm import SamplingParams
from vllm.engine.protocol import StreamingInput
from vllm.sampling_params import RequestOutputKind

from streampro.actors.engine import Decision, DecisionEngine
from streampro.errors import UserError

_CLOSE = None  # sentinel: no more input, the session's request finishes
_IDS = itertools.count()
SESSION_SHARE = 0.75  # of an engine's KV cache that its open sessions may hold
# engine -> KV tokens its open sessions hold or have reserved for their running decision
_HELD: weakref.WeakKeyDictionary[DecisionEngine, int] = weakref.WeakKeyDictionary()


def kv_capacity(engine: DecisionEngine) -> int:
    """Tokens the engine's KV cache holds (0 = unknown)."""
    c = engine.llm.vllm_config.cache_config
    return int(c.num_gpu_blocks or 0) * int(c.block_size or 0)


class DecisionSession:
    """One stream's decisions on one engine; `decide` like `DecisionEngine.decide`. Every
    prompt of an engine without prefix caching (which then recomputes each whole context, the
    baseline of `bench rollout`) goes through `DecisionEngine.decide`, one request each.
    `sent_tokens`/`sent_images` count what this stream's requests carried."""

    def __init__(self, engine: DecisionEngine) -> None:
        self.engine = engine
        self.enabled = bool(engine.llm.vllm_config.cache_config.enable_prefix_caching)
        self.count = 0  # sessions opened (a new one per window segment)
        self._fed: list[int] = []  # token ids the open session holds
        self._fed_images: list[Any] = []  # the frames it holds, in placeholder order
        self.sent_tokens = 0
        self.sent_images = 0
        self._inputs: asyncio.Queue | None = None
        self._outputs: AsyncIterator | None = None
        self._reloads = -1
        self._held = 0  # this session's share of _HELD
        self.fallbacks = 0  # decisions made with one request, over the KV budget

    async def decide(
        self, prompt_ids: list[int], params: SamplingParams, images: Sequence[Any] = ()
    ) -> Decision:
        if not self.enabled or (images and self.engine.processor is None):
            return await self._whole(prompt_ids, params, images)
        need = len(prompt_ids) + int(params.max_tokens or 0)
        if need > self.engine.max_model_len:  # never truncate a stream's context silently
            raise UserError(
                f"a decision needs {need} tokens of context ({len(prompt_ids)} prompt + "
                f"{params.max_tokens} generated) but the model takes {self.engine.max_model_len}"
                ": lower data.window_turns, or raise rollout.max_model_len if the model allows"
            )
        reopen = self._inputs is None or not self._extends(prompt_ids, images)
        if reopen:
            await self.close()
        if not self._reserve(need):
            await self.close()  # over the sessions' KV budget: free ours, one request this step
            self.fallbacks += 1
            return await self._whole(prompt_ids, params, images)
        n, k = len(self._fed), len(self._fed_images)
        if reopen:
            self._open(params)
            n = k = 0
        else:  # the KV of the first n tokens is in the session: count them as reused
            self.engine.cache_counter.queries += len(prompt_ids)
            self.engine.cache_counter.hits += n
        params = params.clone()
        params.output_kind = RequestOutputKind.DELTA  # each output: the new tokens only
        assert self._inputs is not None and self._outputs is not None
        new = list(prompt_ids[n:])
        prompt = self.engine.prompt(new, images[k:])  # the new chunk's frame(s) only
        self.sent_tokens += len(new)
        self.sent_images += len(images) - k
        self._inputs.put_nowait(StreamingInput(prompt=prompt, sampling_params=params))
        d = await self._collect()
        self._fed = list(prompt_ids) + d.token_ids[:-1]  # what the session now holds
        self._fed_images = list(images)
        self._set_held(len(self._fed))
        return d

    def _extends(self, prompt_ids: list[int], images: Sequence[Any]) -> bool:
        """Whether the prompt continues the open session: its tokens and frames begin with
        what the session holds, and no weight reload came since the session opened."""
        n, k = len(self._fed), len(self._fed_images)
        if self._reloads != self.engine.reloads or len(prompt_ids) <= n or len(images) < k:
            return False
        if prompt_ids[:n] != self._fed:
            return False
        # frames are the episode's own arrays: identity is the usual, cheap match
        return all(a is b or np.array_equal(a, b) for a, b in zip(images, self._fed_images))

    async def _whole(
        self, prompt_ids: list[int], params: SamplingParams, images: Sequence[Any]
    ) -> Decision:
        """One request with the whole prompt (prefix caching still reuses its blocks)."""
        self.sent_tokens += len(prompt_ids)
        self.sent_images += len(images)
        return await self.engine.decide(prompt_ids, params, images)

    async def _collect(self) -> Decision:
        """The open session's outputs up to the end of this decision."""
        assert self._outputs is not None
        ids: list[int] = []
        lps: list[float] = []
        finish = None
        while finish is None:
            out = await anext(self._outputs)
            o = out.outputs[0]
            ids += o.token_ids
            lps += [float(step[tok].logprob) for tok, step in zip(o.token_ids, o.logprobs or [])]
            finish = o.finish_reason
        if len(lps) != len(ids) or not ids:
            raise RuntimeError(f"vLLM returned {len(lps)} logprobs for {len(ids)} tokens")
        return Decision(ids, lps, finish)

    def _reserve(self, tokens: int) -> bool:
        """Claim `tokens` of KV for this session if the engine's sessions stay in budget."""
        cap = kv_capacity(self.engine)
        others = _HELD.get(self.engine, 0) - self._held
        if cap and others + tokens > SESSION_SHARE * cap:
            return False
        self._set_held(tokens)
        return True

    def _set_held(self, tokens: int) -> None:
        _HELD[self.engine] = _HELD.get(self.engine, 0) - self._held + tokens
        self._held = tokens

    def _open(self, params: SamplingParams) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def inputs() -> AsyncIterator[StreamingInput]:
            while (item := await queue.get()) is not _CLOSE:
                yield item

        first = params.clone()
        first.output_kind = RequestOutputKind.DELTA
        self.count += 1
        rid = f"s{self.engine._tag}-{next(_IDS)}"
        gen = self.engine.llm.generate(inputs(), first, request_id=rid)
        self._inputs, self._outputs = queue, aiter(gen)
        self._fed, self._fed_images, self._reloads = [], [], self.engine.reloads

    async def close(self) -> None:
        """End the open session (its request finishes; its blocks stay in the prefix cache)."""
        if self._inputs is not None and self._outputs is not None:
            self._inputs.put_nowait(_CLOSE)
            outputs, self._inputs, self._outputs = self._outputs, None, None
            async for _ in outputs:  # drain to the end of the request
                pass
        self._fed, self._fed_images = [], []
        self._set_held(0)
