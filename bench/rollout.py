"""`streampro bench rollout`: streaming-decision throughput and latency of the rollout engine.

Measures, on one config, vLLM with prefix caching (the rollout path) against three
baselines, a plain transformers KV-cache loop (streams one after another), the same loop
batched across streams (bench/hf_batched.py, at every stream count) and vLLM with prefix
caching off: decisions per second and per-step latency by stream position at each of
`bench.streams` concurrent streams of `bench.steps` seconds (each loop in its steady state:
`timed_pass`, `engine_warm_up`), the prefix-cache hit rate (KV
reused from the prefix cache or an open stream session, actors/engine_session.py), the
weight-sync time and the logprob agreement with transformers after a sync. `attention`: the
milliseconds of attention alone that one round of decisions needs at the step-5 and the last
step's context (torch SDPA on the policy's shapes), the part of a step that must grow with
the stream whatever the engine does. Every loop runs in `bench.dtype` (equal precision).

The workload is a stream policy that stays silent at ~90% of steps (the tiny policy with
its `</Silence>` logit raised, see `silence_biased_policy`): an untrained random policy
writes the maximum answer length every step, which no streaming policy does.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from pathlib import Path
from statistics import mean, median
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from streampro import tokens as T
from streampro.actors.api import Sampling, WorkerSpec
from streampro.actors.episode import StreamEpisode, sample_chunks
from streampro.actors.hf_loop import HFStreamPolicy, score_logprobs
from streampro.bench.hf_batched import BatchedHFStreamPolicy
from streampro.bench.rollout_images import (
    bench_sample,
    copy_side_files,
    frame_size,
    image_streams,
    mm_rates,
    scale_silence_row,
    silence_biased_vlm,
)
from streampro.config import Config
from streampro.data.dialogue import decision_ids
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import policy_folder
from streampro.data.window import Window
from streampro.errors import UserError
from streampro.hf_policy import load_model, load_processor
from streampro.types import Trajectory

if TYPE_CHECKING:
    from streampro.actors.rollout import LocalRolloutGroup

P_SILENCE = 0.9  # share of silent steps of the benchmark policy
POSITIONS = (1, 5, 10, 20, 30, 40, 50, 60, 100, 200, 300, 400, 500, 600)  # 1-based steps reported
HF_STREAMS = 2  # the transformers loop runs streams one after another: 2 give its rate
WARM_SEED = 10_007  # seed offset of the untimed pass's streams (other streams, same shapes)
PROBE_STEPS = 12  # chunks of each probe stream `silence_biased_policy` calibrates on
# (n, steps, *, seed) -> streams: frame codes (text policies) or frames (image codec)
Streams = Callable[..., list[EncodedSample]]


class StreamLoop(Protocol):
    """What the timed passes drive: a rollout group or a transformers loop."""

    def generate(
        self, *, samples: list[EncodedSample], n: int, sampling: Sampling
    ) -> list[Trajectory]: ...

    def take_latencies(self) -> list[tuple[int, float]]: ...


class Measure(TypedDict):
    """One timed pass of a loop over a load."""

    decisions_per_s: float
    latencies: list[tuple[int, float]]
    """(0-based step, seconds) of every decision."""
    silence_rate: float
    gen_tokens_per_step: float
    trajs: list[Trajectory]
    prefix_cache_hit_rate: NotRequired[float]
    """vLLM passes only."""
    mm_cache_hit_rate: NotRequired[float]
    """vLLM passes only: images found in the mm processor cache, of those sent."""
    mm_queries_per_decision: NotRequired[float]
    """vLLM passes only: images sent to the engine per decision."""


def synthetic_streams(
    n: int, steps: int, *, seed: int = 0, tokens_per_frame: int = 16, codebook_size: int = 64
) -> list[EncodedSample]:
    """n EncodedSamples of `steps` 1-s chunks with seeded random frame codes (same token
    counts as real patch-codec frames; content does not change the cost)."""
    out = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        times = [(float(t), float(t + 1)) for t in range(steps)]
        codes = [
            [rng.randrange(codebook_size) for _ in range(tokens_per_frame)] for _ in range(steps)
        ]
        out.append(EncodedSample(bench_sample(i, steps), times, codes))
    return out


def _decision_hidden(
    model: PreTrainedModel, tokenizer: Any, probes: list[EncodedSample], window: Window
) -> torch.Tensor:  # [P, D]
    """Final (post-norm) hidden state at each probe stream's decision positions."""
    hs = []
    for enc in probes:
        ep = StreamEpisode.for_sample(tokenizer, enc, window=window)
        for chunk in sample_chunks(enc):
            ep.add_chunk(chunk)
            ep.add_decision(decision_ids(tokenizer, "silence"), [0.0])
        for seg in ep.segments():
            with torch.inference_mode():
                h = model.model(input_ids=torch.tensor([seg.token_ids])).last_hidden_state[0]
            pos = [i - 1 for i, m in enumerate(seg.gen_mask) if m]  # predicts a decision
            hs.append(h[pos])
    return torch.cat(hs)


def silence_biased_policy(
    src: str, dst: str | Path, *, p_silence: float = P_SILENCE, seed: int = 0
) -> str:
    """Copy the policy at `src` to `dst` with an untied `</Silence>` output row, scaled so
    that the mean P(`</Silence>`) at decision positions of random streams is `p_silence`."""
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    sil = tok.convert_tokens_to_ids(T.SILENCE)
    emb = model.get_input_embeddings().weight.detach()
    model.lm_head.weight = torch.nn.Parameter(emb.clone())  # untie: only the output row moves
    model.config.tie_word_embeddings = False
    probes = synthetic_streams(4, PROBE_STEPS, seed=seed + 7919)
    whole = Window(PROBE_STEPS, PROBE_STEPS)  # each probe stream in one segment
    h = _decision_hidden(model, tok, probes, whole)  # [P, D]
    scale_silence_row(model.lm_head.weight.detach(), h, sil, p_silence)
    model.save_pretrained(dst, safe_serialization=True)
    tok.save_pretrained(dst)
    return str(dst)


def perturbed_copy(src: str, dst: str | Path, *, scale: float = 0.05, seed: int = 0) -> str:
    """`src` with seeded Gaussian noise on every weight: what a learner step publishes."""
    model = load_model(src)  # a causal LM or a VLM, fp32
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))
    copy_side_files(src, dst)  # tokenizer (and a VLM's processor)
    model.save_pretrained(dst, safe_serialization=True)
    return str(dst)


def logprob_max_abs_diff(model_path: str, trajs: list[Trajectory]) -> float:
    """Max |vLLM sampling logprob - transformers logprob| over the generated tokens, against
    the fp32 model (what the learner scores): ~1e-2 when the engine runs in bf16."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    worst = 0.0
    for seg in (g for t in trajs for g in t.segments):
        ref = score_logprobs(model, seg.token_ids)
        diffs = [abs(a - b) for a, b, m in zip(seg.logprobs, ref, seg.gen_mask) if m]
        worst = max([worst, *diffs])
    return worst


def prompt_lengths(trajs: list[Trajectory]) -> dict[int, float]:
    """Mean prompt length (tokens) of each step's decision, by 0-based step: where the step's
    generated run starts in its segment row (the row is exactly what vLLM was prompted with)."""
    per: dict[int, list[int]] = {}
    for t in trajs:
        for seg in t.segments:
            mask = seg.gen_mask
            starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
            for k, pos in enumerate(starts):
                per.setdefault(seg.first_step + k, []).append(pos)
    return {k: mean(v) for k, v in sorted(per.items())}


def attention_ms(model_path: str, streams: int, context: int, new_tokens: int) -> float:
    """Milliseconds of attention alone in one round of decisions at `context` tokens: each of
    `streams` streams appends `new_tokens` that attend to their whole context, in every layer
    (torch SDPA, the policy's head shapes, one thread as in vLLM's CPU worker; best of 3).
    What a round must compute before any engine overhead; it grows with the context."""
    c = AutoConfig.from_pretrained(model_path)
    c = getattr(c, "text_config", None) or c  # a VLM's language model
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    d = c.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(streams, heads, new_tokens, d, generator=g)  # [S, H, q, D]
    k = torch.randn(streams, kv, context, d, generator=g).repeat_interleave(heads // kv, 1)
    v = torch.randn_like(k)  # [S, H, L, D]
    mask = torch.arange(context)[None] <= torch.arange(context - new_tokens, context)[:, None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(c.num_hidden_layers):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 1000 * best


def _by_position(latencies: list[tuple[int, float]], steps: int) -> dict[str, float]:
    """Mean latency (ms) at each reported 1-based position."""
    per: dict[int, list[float]] = {}
    for step, sec in latencies:
        per.setdefault(step + 1, []).append(sec)
    wanted = sorted({p for p in POSITIONS if p <= steps} | {steps})
    return {str(p): round(1000 * mean(per[p]), 2) for p in wanted if p in per}


def timed_pass(
    group: StreamLoop, count: int, steps: int, *, seed: int, sampling: Sampling
) -> Measure:
    """`_measure` of a transformers loop on `count` seeded streams of `steps` chunks, after an
    untimed pass over other streams of the same shapes: its first pass over a load runs at
    ~55-60% of later ones (glibc hands its growing KV buffers back to the OS and page-faults
    them in again), and a long rollout runs at the later rate."""
    group.generate(
        samples=synthetic_streams(count, steps, seed=seed + WARM_SEED), n=1, sampling=sampling
    )
    return _measure(group, synthetic_streams(count, steps, seed=seed), sampling)


def engine_warm_up(
    group: StreamLoop, sampling: Sampling, streams: Streams = synthetic_streams
) -> None:
    """A vLLM engine's warm-up: one 3-step stream. Its KV cache is allocated up front, so a
    first pass over a load already runs at the rate of later ones (611 vs 596-657 decisions/s
    in four repeats of 64 streams x 20 steps)."""
    group.generate(samples=streams(1, 3, seed=99), n=1, sampling=sampling)


def _measure(group: StreamLoop, streams: list[EncodedSample], sampling: Sampling) -> Measure:
    group.take_latencies()  # drop those of earlier calls (warm-up)
    t0 = time.perf_counter()
    trajs = group.generate(samples=streams, n=1, sampling=sampling)
    wall = time.perf_counter() - t0
    n_dec = sum(len(t.steps) for t in trajs)
    return {
        "decisions_per_s": n_dec / wall,
        "latencies": group.take_latencies(),
        "silence_rate": sum(s.decision == "silence" for t in trajs for s in t.steps) / n_dec,
        "gen_tokens_per_step": sum(t.num_generated for t in trajs) / n_dec,
        "trajs": trajs,
    }


def _local_group(model: str, cfg: Config, counts: list[int], *, prefix: bool) -> LocalRolloutGroup:
    """An engine with the config's rollout settings, in `bench.dtype` like the bench's
    transformers loops (equal precision), sized for the largest load."""
    # lazy: actors.rollout imports vLLM, which only the benches that start engines need
    from streampro.actors.rollout import LocalRolloutGroup

    r = cfg.rollout
    settings = dataclasses.replace(
        r, enable_prefix_caching=prefix, max_num_seqs=max(r.max_num_seqs, max(counts))
    )
    spec = WorkerSpec.of(cfg, model)
    return LocalRolloutGroup(dataclasses.replace(spec, rollout=settings, dtype=cfg.bench.dtype))


def _vllm_runs(
    group: LocalRolloutGroup,
    cfg: Config,
    counts: list[int],
    steps: int,
    sampling: Sampling,
    *,
    prefix: bool,
    streams: Streams = synthetic_streams,
) -> dict[int, Measure]:
    res: dict[int, Measure] = {}
    engine_warm_up(group, sampling, streams)
    for s in tqdm(counts, desc=f"vllm prefix={'on' if prefix else 'off'}"):
        before = group.cache_stats()
        m = _measure(group, streams(s, steps, seed=cfg.run.seed), sampling)
        after = group.cache_stats()
        m["prefix_cache_hit_rate"] = _rate(after, before, "queries", "hits")
        if "mm_queries" in after:  # images found already processed (mm processor cache)
            m["mm_cache_hit_rate"] = _rate(after, before, "mm_queries", "mm_hits")
            m["mm_queries_per_decision"] = (after["mm_queries"] - before["mm_queries"]) / max(
                1, sum(len(t.steps) for t in m["trajs"])
            )
        res[s] = m
    return res


def run(cfg: Config, out_path: str) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-able result (the dispatcher writes it)."""
    steps, counts = int(cfg.bench.steps), sorted(int(s) for s in cfg.bench.streams)
    sampling = Sampling.from_config(cfg.rollout, seed=cfg.run.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-", dir=Path(out_path).parent))
    model, streams, vlm = _workload(cfg, work)

    hf_m: Measure | None = None
    hf_b: dict[str, Any] | None = None
    off: dict[int, Measure] | None = None
    try:
        if cfg.bench.baselines:
            hf_m = sequential_hf_run(model, cfg, steps, sampling)
            hf_b = _batched_hf_runs(model, cfg, counts, steps, sampling)
            group = _local_group(model, cfg, counts, prefix=False)
            try:
                off = _vllm_runs(group, cfg, counts, steps, sampling, prefix=False)
            finally:
                group.shutdown()
        group = _local_group(model, cfg, counts, prefix=True)
        try:
            on = _vllm_runs(group, cfg, counts, steps, sampling, prefix=True, streams=streams)
            floor = _attention_floor(model, on[counts[-1]]["trajs"], counts[-1], steps)
            new = perturbed_copy(model, work / "v1")
            sync_s = group.sync_weights(version=1, source=new)
            after = _measure(group, streams(4, min(steps, 20), seed=cfg.run.seed + 1), sampling)
            # image streams: the learner agreement is tests/test_vlm_engine.py's to check
            diff = None if vlm else logprob_max_abs_diff(new, after["trajs"])
        finally:
            group.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = _result(cfg, counts, steps, on, off, hf_m, sync_s, diff)
    if hf_b is not None:  # the batched transformers loop at the same loads
        result["baselines"]["transformers_batched_kv"] = hf_b
        b = hf_b["decisions_per_s"].get(str(counts[-1]))
        result["targets"]["speedup_vs_transformers_batched"] = _ratio(
            on[counts[-1]]["decisions_per_s"], b
        )
    return {**result, "attention": floor}


def _workload(cfg: Config, work: Path) -> tuple[str, Streams, bool]:
    """(silence-biased policy folder, stream maker, image streams?) of the config: frames as
    images with `data.codec: image` (a VLM policy), frame codes otherwise."""
    if cfg.data.codec == "image" and cfg.bench.baselines:  # those loops feed frame codes
        raise UserError("bench rollout on image streams: set bench.baselines=false")
    src = policy_folder(cfg)
    if cfg.data.codec != "image":
        return silence_biased_policy(src, work / "policy"), synthetic_streams, False
    h, w = frame_size(load_processor(src), cfg.data.image_max_pixels)
    model = silence_biased_vlm(src, work / "policy", p_silence=P_SILENCE, probe_steps=PROBE_STEPS)
    return model, partial(image_streams, height=h, width=w), True


def sequential_hf_run(model: str, cfg: Config, steps: int, sampling: Sampling) -> Measure:
    """The plain transformers KV-cache loop (actors/hf_loop.py): it runs streams one after
    another, so HF_STREAMS of them give its rate."""
    hf = HFStreamPolicy(
        model,
        dtype=cfg.bench.dtype,
        window=Window.from_config(cfg.data),
        max_answer_tokens=cfg.rollout.max_answer_tokens,
    )
    return timed_pass(hf, HF_STREAMS, steps, seed=cfg.run.seed, sampling=sampling)


def batched_hf_loop(model: str, cfg: Config) -> BatchedHFStreamPolicy:
    """bench/hf_batched.py's loop with the config's window, answer length and `bench.dtype`."""
    return BatchedHFStreamPolicy(
        model,
        dtype=cfg.bench.dtype,
        window=Window.from_config(cfg.data),
        max_answer_tokens=cfg.rollout.max_answer_tokens,
    )


def _batched_hf_runs(
    model: str, cfg: Config, counts: list[int], steps: int, sampling: Sampling
) -> dict[str, Any]:
    """bench/hf_batched.py at every stream count (it runs streams in lockstep, one KV cache);
    it cannot follow a window slide, so streams longer than the window are not run."""
    window = Window.from_config(cfg.data)
    if steps > window.turns:
        return {"skipped": f"{steps}-step streams outgrow the {window.turns}-turn window"}
    hf = batched_hf_loop(model, cfg)
    rates = {}
    for s in counts:
        m = timed_pass(hf, s, steps, seed=cfg.run.seed, sampling=sampling)
        rates[str(s)] = round(m["decisions_per_s"], 2)
    return {"decisions_per_s": rates}


def _attention_floor(
    model: str, trajs: list[Trajectory], streams: int, steps: int
) -> dict[str, Any]:
    """Attention alone per round of decisions at the step-5 and last-step contexts of the
    measured streams (`attention_ms`), with the turn's mean new tokens."""
    ctx = prompt_lengths(trajs)
    first, last = min(4, steps - 1), steps - 1
    lengths = list(ctx.values())
    # a silent step's growth (its decision, turn end and the next chunk); slides shrink it
    new = max(1, round(median(b - a for a, b in pairwise(lengths) if b > a)))
    at = sorted({first, last})
    return {
        "streams": streams,
        "new_tokens_per_step": new,
        "context_tokens": {str(k + 1): round(ctx[k]) for k in at},
        "ms": {str(k + 1): round(attention_ms(model, streams, round(ctx[k]), new), 2) for k in at},
    }


def _result(
    cfg: Config,
    counts: list[int],
    steps: int,
    on: dict[int, Measure],
    off: dict[int, Measure] | None,
    hf_m: Measure | None,
    sync_s: float,
    diff: float | None,
) -> dict[str, Any]:
    """The JSON of one run; baselines (and the ratios to them) only when they ran."""

    def rate(m: dict[int, Measure]) -> dict[str, float]:
        return {str(s): round(v["decisions_per_s"], 2) for s, v in m.items()}

    top = counts[-1]
    window = Window.from_config(cfg.data)
    result: dict[str, Any] = {
        "config": {
            "streams": counts,
            "steps": steps,
            "policy": f"{cfg.policy.name_or_path}, P(silence)~{P_SILENCE}",
            "codec": cfg.data.codec,
            "dtype": cfg.bench.dtype,
            "block_size": cfg.rollout.block_size,
            "max_answer_tokens": cfg.rollout.max_answer_tokens,
        },
        "decisions_per_s": rate(on),
        "latency_by_position": {str(s): _by_position(v["latencies"], steps) for s, v in on.items()},
        "prefix_cache_hit_rate": round(on[top]["prefix_cache_hit_rate"], 4),
        "prefix_cache_hit_rate_by_streams": {
            str(s): round(v["prefix_cache_hit_rate"], 4) for s, v in on.items()
        },
        **mm_rates(on),
        "silence_rate": round(on[top]["silence_rate"], 3),
        "gen_tokens_per_step": round(on[top]["gen_tokens_per_step"], 3),
        "sync_seconds": round(sync_s, 4),
        "logprob_max_abs_diff": diff,
        "window": dataclasses.asdict(window),
    }
    lat = result["latency_by_position"][str(top)]
    result["targets"] = {
        f"latency_step{steps}_over_step5": _ratio(lat.get(str(steps)), lat.get("5")),
    }
    if steps > window.turns and str(window.turns) in lat:  # vs the step the window fills at
        result["targets"][f"latency_step{steps}_over_step{window.turns}"] = _ratio(
            lat.get(str(steps)), lat[str(window.turns)]
        )
    if hf_m is not None and off is not None:
        result["baselines"] = {
            "transformers_kv_loop": {
                "decisions_per_s": round(hf_m["decisions_per_s"], 2),
                "streams_run_sequentially": HF_STREAMS,
                "latency_by_position": _by_position(hf_m["latencies"], steps),
            },
            "vllm_no_prefix_cache": {
                "decisions_per_s": rate(off),
                "latency_by_position": {
                    str(s): _by_position(v["latencies"], steps) for s, v in off.items()
                },
            },
        }
        result["targets"]["speedup_vs_transformers"] = _ratio(
            on[top]["decisions_per_s"], hf_m["decisions_per_s"]
        )
        result["targets"]["speedup_vs_no_prefix_cache"] = _ratio(
            on[top]["decisions_per_s"], off[top]["decisions_per_s"]
        )
    return result


def _rate(after: dict[str, int], before: dict[str, int], queries: str, hits: str) -> float:
    q = after[queries] - before[queries]
    return (after[hits] - before[hits]) / q if q else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b and not math.isnan(a / b) else None
