"""The transformers baseline as a careful user would batch it: every stream in one KV cache.

All streams advance in lockstep (step k of every stream, then k+1). Each step's new tokens
are left-padded to the longest in the batch and appended to one shared DynamicCache; a 2-D
attention mask hides the padding holes and explicit position_ids keep each stream's own
positions, so every stream sees exactly its own dialogue. Decoding runs the batch until
every stream has stopped (stopped streams feed masked padding). Same `StreamEpisode` and
per-request seeds as actors/hf_loop.py, so the token layout and the sampling match.
"""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from streampro.actors.api import Sampling
from streampro.actors.episode import (
    StreamEpisode,
    max_decision_tokens,
    request_seed,
    sample_chunks,
    stop_token_ids,
)
from streampro.actors.hf_loop import sample_token
from streampro.data.encode import EncodedSample
from streampro.data.window import Window
from streampro.types import Trajectory


class BatchedHFStreamPolicy:
    """One transformers causal LM running all streams of a call together (one KV cache)."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        window: Window,
        max_answer_tokens: int = 24,
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        dt = getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dt).eval()
        self.window = window
        self.max_answer_tokens = max_answer_tokens
        self.stop_ids = set(stop_token_ids(self.tokenizer))
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.latencies: list[tuple[int, float]] = []

    def take_latencies(self) -> list[tuple[int, float]]:
        out, self.latencies = self.latencies, []
        return out

    @torch.inference_mode()
    def generate(
        self, *, samples: list[EncodedSample], n: int, sampling: Sampling
    ) -> list[Trajectory]:
        """n episodes per sample, all in one batch; order as RolloutGroupAPI."""
        jobs = [(i, e, s) for i, s in enumerate(samples) for e in range(n)]
        eps = [
            StreamEpisode.for_sample(self.tokenizer, s, episode=e, window=self.window)
            for i, e, s in jobs
        ]
        chunks = [sample_chunks(s) for _, _, s in jobs]
        if len({len(c) for c in chunks}) != 1:
            raise ValueError("the batched loop needs streams of equal length (lockstep steps)")
        max_tokens = max_decision_tokens(min(sampling.max_answer_tokens, self.max_answer_tokens))
        b = len(jobs)
        cache, mask = DynamicCache(), torch.zeros(b, 0, dtype=torch.long)  # [B, cached]
        fed: list[list[int]] = [[] for _ in jobs]
        for step in range(len(chunks[0])):
            t0 = time.perf_counter()
            new = []
            for k, ep in enumerate(eps):
                prompt = ep.add_chunk(chunks[k][step])
                if prompt[: len(fed[k])] != fed[k]:
                    raise ValueError(
                        "the dialogue window slid: use streams of at most window.turns steps"
                    )
                new.append(prompt[len(fed[k]) :])
                fed[k] = list(prompt)
            logits, cache, mask = self._feed(new, fed, cache, mask)
            gens = [
                torch.Generator().manual_seed(request_seed(sampling.seed, i, e, step))
                for i, e, _ in jobs
            ]
            ids: list[list[int]] = [[] for _ in jobs]
            lps: list[list[float]] = [[] for _ in jobs]
            active = list(range(b))
            while active:
                logp = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
                feed: list[list[int]] = [[] for _ in jobs]
                for k in active:
                    tok = sample_token(
                        logits[k],
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        generator=gens[k],
                    )
                    ids[k].append(tok)
                    lps[k].append(float(logp[k, tok]))
                    if tok not in self.stop_ids and len(ids[k]) < max_tokens:
                        feed[k] = [tok]
                active = [k for k in active if feed[k]]
                if active:
                    for k in active:
                        fed[k].append(feed[k][0])
                    logits, cache, mask = self._feed(feed, fed, cache, mask)
            for k, ep in enumerate(eps):
                ep.add_decision(ids[k], lps[k])
            self.latencies.append((step, time.perf_counter() - t0))
        return [ep.trajectory() for ep in eps]

    def _feed(
        self, new: list[list[int]], fed: list[list[int]], cache: DynamicCache, mask: torch.Tensor
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Append each stream's new tokens (left-padded to the longest); next-token logits
        [B, V] at the last column, the cache and the grown attention mask [B, cached]."""
        m = max(len(x) for x in new)
        ids = torch.full((len(new), m), self.pad_id, dtype=torch.long)  # [B, m]
        step_mask = torch.zeros(len(new), m, dtype=torch.long)  # [B, m]
        pos = torch.zeros(len(new), m, dtype=torch.long)  # [B, m]
        for k, x in enumerate(new):
            if x:
                ids[k, m - len(x) :] = torch.tensor(x)
                step_mask[k, m - len(x) :] = 1
                start = len(fed[k]) - len(x)  # fed[k] already holds x
                pos[k, m - len(x) :] = torch.arange(start, start + len(x))
        mask = torch.cat([mask, step_mask], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1], out.past_key_values, mask
