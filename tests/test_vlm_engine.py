"""tiny-vl in a real vLLM CPU engine with images, checked against transformers: logprobs on a
multi-chunk image stream, prefix-cache hits, many concurrent streams with the same text and
different frames (no reuse across images), and a seen image after a weight reload.

One AsyncLLM for the module (starting one costs ~60 s on 2 cores), driven from one event
loop. transformers scores the same expanded ids with learners/vlm_inputs.py.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import torch

from streampro import hf_policy as H
from streampro import tiny_vl
from streampro import tokens as T

pytestmark = pytest.mark.slow

BLOCK = 32
TOL = 1e-3  # vLLM vs transformers logprob (fp32; measured ~1e-6)
GEN = 4  # tokens generated per request (sampled; stop tokens ignored)


def frame(seed: int, w: int = 84, h: int = 56):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("vlm-engine-models")
    return {
        "v0": str(tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(init_seed=0), cache)),
        "v1": str(tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(init_seed=1), cache)),
    }


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def engine(paths, loop):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from streampro.actors.engine import PrefixCacheCounter
    from streampro.actors.vlm_prompt import vlm_engine_kwargs

    counter = PrefixCacheCounter()
    args = AsyncEngineArgs(
        model=paths["v0"],
        dtype="float32",
        enforce_eager=True,
        enable_prefix_caching=True,
        block_size=BLOCK,
        max_model_len=4096,
        max_num_seqs=32,
        seed=0,
        disable_log_stats=True,
        kv_cache_memory_bytes=1 << 29,
        enable_chunked_prefill=False,
        max_num_batched_tokens=4096,
        **vlm_engine_kwargs(max_images=8, block_size=BLOCK, on_cpu=True),
    )

    async def start():
        return AsyncLLM.from_engine_args(args, stat_loggers=[lambda cfg, idx: counter])

    llm = loop.run_until_complete(start())
    yield llm, counter
    _shutdown(llm, loop)


class Ref:
    """transformers side of one policy folder: markers, processor, model."""

    def __init__(self, path: str) -> None:
        self.proc = H.load_processor(path)
        self.tok = self.proc.tokenizer
        self.m = H.markers_for(path)
        self.model = H.load_model(path).eval()

    def enc(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False)

    def head(self, question: str) -> list[int]:
        m = self.m
        return (
            list(m.system_open)
            + self.enc(T.SYSTEM_PROMPT)
            + list(m.turn_close)
            + list(m.user_open)
            + self.enc(question)
            + list(m.turn_close)
        )

    def chunk(self, k: int, img) -> list[int]:
        m = self.m
        n = H.image_token_count(self.proc, img.height, img.width)
        return (
            list(m.user_open)
            + self.enc(T.chunk_stamp(k, k + 1))
            + H.image_placeholder(m, n)
            + list(m.turn_close)
            + list(m.assistant_open)
        )

    def logprobs(self, ids: list[int], images: list, n_last: int) -> list[float]:
        """transformers' logprobs of the last n_last tokens of ids."""
        from streampro.learners.vlm_inputs import token_logprobs, vlm_batch

        batch = vlm_batch(self.proc, [ids], [images], pad_id=self.tok.pad_token_id)
        with torch.no_grad():
            lp = token_logprobs(self.model, batch)[0]  # [T-1]
        return lp[-n_last:].tolist()


@pytest.fixture(scope="module")
def ref(paths) -> Ref:
    return Ref(paths["v0"])


_ids = itertools.count()


async def _generate(llm, ref: Ref, ids: list[int], images: list, seed: int):
    from vllm import SamplingParams

    from streampro.actors.vlm_prompt import image_prompt

    prompt = image_prompt(ids, images, image_token_id=ref.m.image_token_id, processor=ref.proc)
    # A policy must never emit vision tokens (a random tiny model would): allow the rest.
    # vLLM's logprobs stay those of the raw distribution, as transformers computes them.
    banned = {ref.m.image_token_id, *ref.m.image}
    params = SamplingParams(
        temperature=1.0,
        max_tokens=GEN,
        ignore_eos=True,
        logprobs=0,
        seed=seed,
        detokenize=False,
        allowed_token_ids=[i for i in range(len(ref.tok)) if i not in banned],
    )
    final = None
    async for out in llm.generate(prompt, params, request_id=f"vlm-{next(_ids)}"):
        final = out
    assert final is not None
    # vLLM's own expansion of the one-pad prompt equals the dialogue's expanded ids.
    assert list(final.prompt_token_ids) == ids
    o = final.outputs[0]
    return list(o.token_ids), [float(s[t].logprob) for t, s in zip(o.token_ids, o.logprobs)]


def _max_diff(ref: Ref, ids: list[int], images: list, gen: list[int], lps: list[float]) -> float:
    want = ref.logprobs(ids + gen, images, len(gen))
    return max(abs(a - b) for a, b in zip(lps, want))


def test_image_stream_logprobs_and_prefix_cache(engine, ref, loop):
    llm, counter = engine
    frames = [frame(10 + k) for k in range(4)]
    ids, diffs, hits = ref.head("tell me when the square turns red"), [], []
    prev_len_before = 0
    for k, img in enumerate(frames):
        ids = ids + ref.chunk(k, img)
        before = counter.hits
        gen, lps = loop.run_until_complete(_generate(llm, ref, ids, frames[: k + 1], seed=k))
        hits.append(counter.hits - before)
        diffs.append(_max_diff(ref, ids, frames[: k + 1], gen, lps))
        # Every full block of the previous prompt is reused, images included.
        assert hits[-1] >= (prev_len_before // BLOCK) * BLOCK, (hits, prev_len_before)
        prev_len_before = len(ids)
        ids = ids + [ref.tok.convert_tokens_to_ids(T.SILENCE)] + list(ref.m.turn_close)
    assert max(diffs) < TOL, diffs
    print(f"image stream: max |vLLM - transformers| logprob {max(diffs):.2e}, cache hits {hits}")
    # A changed first frame: nothing from that image on is reused (no cross-image reuse).
    other = [frame(99)] + frames[1:]
    first_img = ids.index(ref.m.image_token_id)
    before = counter.hits
    gen, lps = loop.run_until_complete(_generate(llm, ref, ids[:prev_len_before], other, seed=7))
    assert counter.hits - before <= (first_img // BLOCK) * BLOCK
    assert _max_diff(ref, ids[:prev_len_before], other, gen, lps) < TOL


def test_concurrent_streams_same_text_different_frames(engine, ref, loop):
    llm, _ = engine
    n, chunks = 8, 2
    head = ref.head("count the bounces")
    streams = [[frame(1000 + 10 * s + k) for k in range(chunks)] for s in range(n)]
    ids = head + ref.chunk(0, streams[0][0]) + [ref.tok.convert_tokens_to_ids(T.SILENCE)]
    ids += list(ref.m.turn_close) + ref.chunk(1, streams[0][1])  # same ids for every stream

    async def all_streams():
        return await asyncio.gather(
            *(_generate(llm, ref, ids, imgs, seed=s) for s, imgs in enumerate(streams))
        )

    results = loop.run_until_complete(all_streams())
    diffs = [_max_diff(ref, ids, imgs, g, lp) for imgs, (g, lp) in zip(streams, results)]
    assert max(diffs) < TOL, diffs
    print(f"{n} concurrent streams, different frames: max logprob diff {max(diffs):.2e}")
    # Different frames give different distributions: the guard has teeth.
    firsts = {round(lp[0], 4) for _, lp in results}
    assert len(firsts) > 1


def test_seen_image_after_weight_reload(engine, ref, paths, loop):
    from streampro.actors.vlm_prompt import reload_weights

    llm, _ = engine
    img = frame(10)  # the first frame of the stream test: already in the encoder cache
    ids = ref.head("tell me when the square turns red") + ref.chunk(0, img)
    loop.run_until_complete(_generate(llm, ref, ids, [img], seed=1))
    new = Ref(paths["v1"])
    try:
        loop.run_until_complete(reload_weights(llm, paths["v1"]))
        gen, lps = loop.run_until_complete(_generate(llm, new, ids, [img], seed=2))
        assert _max_diff(new, ids, [img], gen, lps) < TOL  # the new weights, image re-encoded
    finally:
        loop.run_until_complete(reload_weights(llm, paths["v0"]))
    gen, lps = loop.run_until_complete(_generate(llm, ref, ids, [img], seed=3))
    assert _max_diff(ref, ids, [img], gen, lps) < TOL


def test_image_stream_session_sends_only_new_frames(engine, paths, loop):
    """A 12-chunk image stream (window 6, sliding by 3) decided through a DecisionSession
    gives the tokens and logprobs of one whole-prompt request per step (greedy, same engine),
    and between slides each step sends only its new chunk's frame."""
    from functools import partial

    from transformers import AutoTokenizer

    from streampro.actors.engine import DecisionEngine, decision_params
    from streampro.actors.engine_session import DecisionSession
    from streampro.actors.episode import StreamEpisode, sample_chunks
    from streampro.bench.rollout_images import image_streams
    from streampro.data.window import Window

    llm, counter = engine
    de = DecisionEngine.attach(llm, counter, paths["v0"], max_model_len=4096)
    tok = AutoTokenizer.from_pretrained(paths["v0"])
    (enc,) = image_streams(1, 12, seed=5, height=56, width=56)
    ep = StreamEpisode.for_sample(tok, enc, window=Window(6, 3))
    session = DecisionSession(de)
    params = decision_params(
        stop_ids=[tok.convert_tokens_to_ids(T.SILENCE)],
        max_tokens=GEN,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        banned=[tiny_vl.IMAGE_PAD, tiny_vl.VISION_START, tiny_vl.VISION_END],
    )
    sent: list[int] = []  # frames in each prompt built (session step, then whole request)
    build = de.prompt

    def counted(ids, images):
        sent.append(len(images))
        return build(ids, images)

    de.prompt = counted  # type: ignore[method-assign]
    expected, worst = [], 0.0
    for chunk in sample_chunks(enc, partial(H.image_token_count, de.processor)):
        prompt = ep.add_chunk(chunk)
        images = ep.context_images()
        opened = session.count
        s = loop.run_until_complete(session.decide(prompt, params, images))
        first = session.count > opened  # a new session: the whole prompt, every frame
        w = loop.run_until_complete(de.decide(prompt, params, images))
        assert s.token_ids == w.token_ids
        worst = max([worst, *(abs(a - b) for a, b in zip(s.logprobs, w.logprobs))])
        expected += [len(images) if first else 1, len(images)]
        ep.add_decision(s.token_ids, s.logprobs)
    loop.run_until_complete(session.close())
    assert worst < 1e-5  # same engine, same context: fp32 noise at most
    assert len(ep.segments()) >= 3 and session.count == len(ep.segments())  # two slides
    assert sent == expected  # a session step sent its new chunk's frame, nothing more
    assert session.sent_images == sum(expected[::2]) < sum(expected[1::2])


def test_extended_qwen3_vl_folder_in_vllm(tmp_path_factory, loop):
    """A Qwen3-VL checkpoint that lacked the decision tokens, extended by hf_policy: vLLM
    loads the extended folder (same vocabulary as transformers) and their logprobs agree."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from streampro.actors.vlm_prompt import vlm_engine_kwargs

    cache = tmp_path_factory.mktemp("qwen3-vl")
    src = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(arch="qwen3_vl", stream_tokens=False), cache)
    path = str(H.extend_policy(src, cache / "ext"))
    args = AsyncEngineArgs(
        model=path,
        dtype="float32",
        enforce_eager=True,
        block_size=BLOCK,
        max_model_len=2048,
        seed=0,
        disable_log_stats=True,
        kv_cache_memory_bytes=1 << 28,
        enable_chunked_prefill=False,
        max_num_batched_tokens=2048,
        **vlm_engine_kwargs(max_images=2, block_size=BLOCK, on_cpu=True),
    )
    llm = loop.run_until_complete(_start(args, AsyncLLM))
    try:
        q3 = Ref(path)
        frames = [frame(20, 96, 64), frame(21, 96, 64)]
        ids = q3.head("what happens") + q3.chunk(0, frames[0])
        ids += [q3.tok.convert_tokens_to_ids(T.SILENCE)] + list(q3.m.turn_close)
        ids += q3.chunk(1, frames[1])
        gen, lps = loop.run_until_complete(_generate(llm, q3, ids, frames, seed=4))
        diff = _max_diff(q3, ids, frames, gen, lps)
        print(f"extended tiny Qwen3-VL: max logprob diff {diff:.2e}")
        assert diff < TOL
    finally:
        _shutdown(llm, loop)


async def _start(args, cls):
    return cls.from_engine_args(args)


def _shutdown(llm, loop) -> None:
    """Shut down on the engine's own loop and let its cancelled output task finish there: its
    zmq sockets close with it instead of waiting for the garbage collector."""

    async def stop() -> None:
        llm.shutdown()
        await asyncio.sleep(0.1)

    loop.run_until_complete(stop())
