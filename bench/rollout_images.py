"""`bench rollout` on image streams (a VLM policy with `data.codec: image`, e.g. tiny-vl).

Each chunk carries one seeded random frame at the image codec's size (as StreamPro-Synth's
128x128 frames come out of it, 16 image tokens for tiny-vl) and no frame codes, so every
decision's prompt holds one image per turn of the window, up to `data.window_turns`.
`silence_biased_vlm` is `bench.rollout.silence_biased_policy` for a VLM: the `</Silence>`
row is scaled along the mean decision state of image probe streams. The VLM's output head
stays tied to its embeddings (the layout vLLM and the learner load as shipped), so the row
also moves the token's input embedding and the silence rate lands near, not at, the target:
the bench reports the measured rate.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streampro import hf_policy as H
from streampro import tokens as T
from streampro.actors.episode import StreamEpisode, sample_chunks
from streampro.data.dialogue import decision_ids
from streampro.data.encode import EncodedSample
from streampro.data.schema import Answer, Sample
from streampro.data.window import Window

SYNTH_SIDE = 128  # StreamPro-Synth's frame side before the image codec resizes it


def image_streams(
    n: int, steps: int, *, seed: int = 0, height: int = 112, width: int = 112
) -> list[EncodedSample]:
    """n EncodedSamples of `steps` 1-s chunks, each with a seeded random [h, w, 3] frame."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed * 1_000_003 + i)
        times = [(float(t), float(t + 1)) for t in range(steps)]
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(steps)]
        out.append(EncodedSample(bench_sample(i, steps), times, [[] for _ in range(steps)], frames))
    return out


def _probe_states(model, processor, probes: list[EncodedSample], window: Window) -> torch.Tensor:
    """Final hidden state [P, D] at each probe stream's decision positions (its frames in)."""
    from PIL import Image

    from streampro.learners.vlm_inputs import vlm_batch

    tok = processor.tokenizer
    hs = []
    for enc in probes:
        ep = StreamEpisode.for_sample(tok, enc, window=window)
        for chunk in sample_chunks(enc, lambda h, w: H.image_token_count(processor, h, w)):
            ep.add_chunk(chunk)
            ep.add_decision(decision_ids(tok, "silence"), [0.0])
        (seg,) = ep.segments()  # the window holds the whole probe
        pil = [Image.fromarray(f) for f in enc.frames or []]
        batch = vlm_batch(processor, [seg.token_ids], [pil], pad_id=H.pad_token_id(tok))
        with torch.inference_mode():
            h = model.model(**batch).last_hidden_state[0]
        pos = [i - 1 for i, m in enumerate(seg.gen_mask) if m]  # predicts a decision
        hs.append(h[pos])
    return torch.cat(hs)


def silence_biased_vlm(
    src: str, dst: str | Path, *, p_silence: float, probe_steps: int, seed: int = 0
) -> str:
    """A copy of the VLM at `src` whose `</Silence>` logit at typical decision states makes
    P(`</Silence>`) ~ p_silence there (bisection on the row's scale)."""
    processor = H.load_processor(src)
    model = H.load_model(src).eval()
    sil = processor.tokenizer.convert_tokens_to_ids(T.SILENCE)
    ip = processor.image_processor
    side = int(ip.patch_size) * int(ip.merge_size) * 4  # 16 image tokens a frame
    probes = image_streams(4, probe_steps, seed=seed + 7919, height=side, width=side)
    h = _probe_states(model, processor, probes, Window(probe_steps, probe_steps))
    scale_silence_row(model.lm_head.weight.detach(), h, sil, p_silence)
    copy_side_files(src, dst)
    model.save_pretrained(dst, safe_serialization=True)
    return str(dst)


def scale_silence_row(weight: torch.Tensor, h: torch.Tensor, sil: int, p_silence: float) -> None:
    """Set output row `sil` of `weight` [V, D] in place to gamma x the mean of the states h
    [P, D] (normalized so its logit there is ~gamma), gamma bisected so that the mean
    P(`sil`) over h is p_silence."""
    u = h.mean(0)
    direction = u / u.dot(u)

    def p_sil(gamma: float) -> float:
        weight[sil] = gamma * direction
        return float(torch.softmax(h @ weight.T, dim=-1)[:, sil].mean())

    lo, hi = 0.0, 64.0
    for _ in range(40):  # bisection: p_sil grows with gamma
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_sil(mid) < p_silence else (lo, mid)
    p_sil(hi)


def copy_side_files(src: str | Path, dst: str | Path) -> None:
    """A policy folder's files but its weights (tokenizer, processor, templates) into dst."""
    weights = shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json", "*.bin")
    shutil.copytree(src, dst, ignore=weights, dirs_exist_ok=True)


def bench_sample(i: int, steps: int) -> Sample:
    """The i-th bench stream's sample: `steps` s long, one answer halfway through."""
    return Sample(
        id=f"bench-{i}",
        video="bench.mp4",
        task="AA",
        question="alert me if anything unusual happens",
        query_time=0.0,
        answers=[Answer(time=float(steps // 2), text="teleport")],
        duration=float(steps),
    )


def frame_size(processor, max_pixels: int) -> tuple[int, int]:
    """(height, width) the image codec gives a StreamPro-Synth frame for this processor."""
    from streampro.data.codec import ImageCodec

    return ImageCodec(max_pixels, H.image_factor(processor)).size_for(SYNTH_SIDE, SYNTH_SIDE)


def mm_rates(on: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The image counters of `bench rollout`'s vLLM passes by load (image streams only)."""
    if not any(
        "mm_queries_per_decision" in v and v["mm_queries_per_decision"] for v in on.values()
    ):
        return {}
    return {
        "mm_cache_hit_rate_by_streams": {
            str(s): round(v.get("mm_cache_hit_rate", 0.0), 4) for s, v in on.items()
        },
        "images_sent_per_decision_by_streams": {
            str(s): round(v.get("mm_queries_per_decision", 0.0), 3) for s, v in on.items()
        },
    }
