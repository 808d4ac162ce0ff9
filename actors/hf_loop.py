"""A plain transformers streaming loop with a KV cache: the baseline and a vLLM-free runner.

This is how VideoLLM-online-style demos run a stream: one stream at a time, the model's KV
cache kept across steps so each step feeds only its new tokens. It drives the same
`StreamEpisode` as the vLLM rollout, so it returns identical trajectories under greedy
decoding and can evaluate a policy where vLLM is not installed. Same `generate` signature
as `RolloutGroupAPI` (no weight sync: load a new folder instead).
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
from streampro.data.window import Window
from streampro.types import Trajectory


def sampling_logprobs(
    logits: torch.Tensor, *, temperature: float, top_p: float
) -> torch.Tensor:  # logits [V] -> [V]
    """Log-probabilities of the distribution a token is drawn from: logits / temperature, then
    the top-p nucleus renormalised (-inf outside); raw logits when greedy (temperature 0). This
    is what vLLM reports with logprobs_mode='processed_logprobs'."""
    if temperature == 0.0:
        return torch.log_softmax(logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [V]
    if top_p < 1.0:
        sorted_lp, order = torch.sort(logp, descending=True)
        sorted_p = sorted_lp.exp()
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # always keeps the top token
        kept = torch.full_like(logp, float("-inf")).scatter(0, order[keep], sorted_lp[keep])
        logp = kept - torch.logsumexp(kept, dim=-1)
    return logp


def sample_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:  # logits [V]
    """Greedy at temperature 0, else temperature + nucleus sampling."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = sampling_logprobs(logits, temperature=temperature, top_p=top_p).exp()  # [V]
    return int(torch.multinomial(probs, 1, generator=generator))


class HFStreamPolicy:
    """One transformers causal LM running streams sequentially with a persistent KV cache."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        window: Window,
        max_answer_tokens: int = 24,
        device: str = "cpu",
    ) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
            .to(device)
            .eval()
        )
        self.device = device
        self.window = window
        self.max_answer_tokens = max_answer_tokens
        self.stop_ids = set(stop_token_ids(self.tokenizer))
        self.latencies: list[tuple[int, float]] = []

    def generate(self, *, samples: list, n: int, sampling: Sampling) -> list[Trajectory]:
        """n episodes per sample, one after another; order as RolloutGroupAPI."""
        return [
            self.run_episode(s, sample_index=i, episode=e, sampling=sampling)
            for i, s in enumerate(samples)
            for e in range(n)
        ]

    def take_latencies(self) -> list[tuple[int, float]]:
        """(step index, seconds) of every decision since the last call."""
        out, self.latencies = self.latencies, []
        return out

    @torch.inference_mode()
    def run_episode(
        self, encoded, *, sample_index: int = 0, episode: int = 0, sampling: Sampling | None = None
    ) -> Trajectory:
        """One episode; greedy unless `sampling` says otherwise."""
        sampling = sampling or Sampling(0.0, 1.0, self.max_answer_tokens, 0)
        ep = StreamEpisode.for_sample(
            self.tokenizer,
            encoded,
            episode=episode,
            window=self.window,
        )
        max_tokens = max_decision_tokens(min(sampling.max_answer_tokens, self.max_answer_tokens))
        cache, fed = DynamicCache(), list[int]()  # fed: the token ids whose keys/values are cached
        for step, chunk in enumerate(sample_chunks(encoded)):
            t0 = time.perf_counter()
            prompt = ep.add_chunk(chunk)
            if prompt[: len(fed)] != fed:  # the window slid: the cache no longer is a prefix
                cache, fed = DynamicCache(), []
            gen = torch.Generator().manual_seed(
                request_seed(sampling.seed, sample_index, episode, step)
            )
            logits, cache = self._forward(prompt[len(fed) :], cache, len(fed))
            fed = list(prompt)
            ids, lps = [], []
            while True:
                tok = sample_token(
                    logits, temperature=sampling.temperature, top_p=sampling.top_p, generator=gen
                )
                logp = sampling_logprobs(  # [V] as vLLM reports it
                    logits, temperature=sampling.temperature, top_p=sampling.top_p
                )
                ids.append(tok)
                lps.append(float(logp[tok]))
                if tok in self.stop_ids or len(ids) >= max_tokens:
                    break
                logits, cache = self._forward([tok], cache, len(fed))
                fed.append(tok)
            ep.add_decision(ids, lps)
            self.latencies.append((step, time.perf_counter() - t0))
        return ep.trajectory()

    def _forward(self, new_ids: list[int], cache, past: int):
        """Feed new tokens after `past` cached ones; returns next-token logits [V] and the cache."""
        x = torch.tensor([new_ids], device=self.device)  # [1, T]
        pos = torch.arange(past, past + len(new_ids), device=self.device)[None]  # [1, T]
        out = self.model(input_ids=x, position_ids=pos, past_key_values=cache, use_cache=True)
        return out.logits[0, -1], out.past_key_values


@torch.inference_mode()
def score_logprobs(model, token_ids: list[int]) -> list[float]:
    """Teacher-forced logprob of every token given the ones before it (0.0 for the first)."""
    x = torch.tensor([token_ids], device=next(model.parameters()).device)  # [1, T]
    logits = model(input_ids=x).logits[0, :-1].float()  # [T-1, V]
    lp = torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])[:, 0]  # [T-1]
    return [0.0] + lp.tolist()


__all__ = ["HFStreamPolicy", "sample_token", "score_logprobs"]
