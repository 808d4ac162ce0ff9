"""Evaluation through the Serve API: every sample's video replayed as a live stream.

`streampro eval --endpoint URL --manifest M --out DIR` (or `--checkpoint DIR`, which starts a
temporary local deployment first) decodes each video at data.fps exactly as training does,
then streams its frames as PNG images through `AsyncStreamSession`, one chunk per request,
`serve.eval_concurrency` sessions at once, on a clock running `serve.eval_speed` times real
time (0: each chunk as soon as the previous decision is back). What is scored is what a
user of the API gets. Writes DIR/predictions.jsonl, scores.json, report.md, timelines.png.

The deployment's codec (GET /healthz) decides how frames are sent: patch codec, frames
downscaled as training decodes them; image codec (a VLM), each frame resized by the same
`ImageCodec` training uses (the server's resize leaves such a frame as it is), so bodies
stay small and the policy sees the pixels rollout would.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx

from streampro.client import AsyncStreamSession, encode_png
from streampro.config import Config, atomic_write_text
from streampro.data.codec import ImageCodec
from streampro.data.encode import _decode_size
from streampro.data.schema import load_manifest
from streampro.data.video import read_chunks
from streampro.errors import UserError
from streampro.report import plot_timelines
from streampro.rewards.f1 import score_predictions, write_scores
from streampro.rewards.judges import eval_acc_judge

EPS = 1e-6


def video_chunks(
    video: Path, *, fps: float, grid: int, duration: float | None, codec=None
) -> list[tuple]:
    """(start, end, base64 PNG) of every chunk, decoded as data.encode decodes for training
    (same frame choice and downscale), so the server computes the same frame codes; with
    `codec` (the server's ImageCodec) each frame at full size through `codec.encode`, as
    data.encode makes image-codec frames."""

    out = []
    size = None if codec is not None else _decode_size(video, grid)
    for c in read_chunks(video, fps, size=size):
        if duration is not None and c.start >= duration - EPS:
            break  # as training clips a sample to its declared duration
        frame = c.frame if codec is None else codec.encode(c.frame)
        out.append((c.start, c.end, encode_png(frame)))
    return out


def served_codec(url: str, *, timeout_s: float = 30.0):
    """The deployment's frame codec from GET /healthz: an ImageCodec, or None (patch)."""

    try:
        r = httpx.get(f"{url.rstrip('/')}/healthz", timeout=timeout_s)
        r.raise_for_status()
        info = r.json().get("codec") or {"name": "patch"}
    except (httpx.HTTPError, ValueError) as e:
        raise UserError(f"{url}/healthz: {type(e).__name__}: {e}") from None
    if info.get("name") != "image":
        return None
    return ImageCodec(max_pixels=int(info["max_pixels"]), factor=int(info["factor"]))


async def _replay_one(
    http, url: str, sample, chunks: list[tuple], *, speed: float, token
) -> tuple[list, dict]:
    s = await AsyncStreamSession.open(
        url, sample.question, http=http, query_time=float(sample.query_time), token=token
    )
    t0 = time.monotonic()
    try:
        for start, end, png in chunks:
            if speed > 0:  # the chunk exists only once the stream has reached its end
                await asyncio.sleep(max(0.0, t0 + end / speed - time.monotonic()))
            await s.push([{"start": start, "end": end, "image": png}])
    finally:
        await s.close()
    return s.responses(), s.decision_probs()


async def replay(
    url: str,
    items: list[tuple],
    *,
    concurrency: int,
    speed: float,
    token: str | None,
    timeout_s: float = 120.0,
) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """items: (sample, video path, fps, grid, codec or None). Returns ({sample id: responses},
    {sample id: {"decisions": [{"time", "p_response"}]}, or {} from a sample-mode server})."""

    sem = asyncio.Semaphore(max(1, concurrency))
    limits = httpx.Limits(max_connections=max(1, concurrency) * 2)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:

        async def one(sample, video, fps, grid, codec):
            async with sem:
                chunks = await asyncio.to_thread(
                    video_chunks, video, fps=fps, grid=grid, duration=sample.duration, codec=codec
                )
                try:
                    return sample.id, await _replay_one(
                        http, url, sample, chunks, speed=speed, token=token
                    )
                except Exception as e:  # noqa: BLE001 (re-raised with the sample named)
                    raise UserError(f"sample {sample.id!r}: {type(e).__name__}: {e}") from None

        results = await asyncio.gather(*(one(*it) for it in items))
    return {k: r for k, (r, _) in results}, {k: p for k, (_, p) in results}


def evaluate_endpoint(cfg: Config, url: str, manifest: str | os.PathLike, out_dir) -> dict:
    """StreamPro-F1 of the policy behind `url` on `manifest`; writes the run's files."""

    manifest = Path(manifest)
    samples, problems = load_manifest(manifest, skip_bad=cfg.data.skip_bad)
    if problems:
        print(f"{manifest}: skipped {len(problems)} bad row problem(s) (data.skip_bad=true)")
    if cfg.eval.max_samples:
        samples = samples[: cfg.eval.max_samples]
    codec = served_codec(url)
    grid = cfg.data.patch_grid
    items = [(s, s.video_path(manifest.parent), cfg.data.fps, grid, codec) for s in samples]
    token = cfg.serve.auth_token or os.environ.get(cfg.serve.auth_token_env, "") or None
    t0 = time.perf_counter()
    preds, probs = asyncio.run(
        replay(
            url,
            items,
            concurrency=cfg.serve.eval_concurrency,
            speed=cfg.serve.eval_speed,
            token=token,
        )
    )
    wall = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [  # a threshold-decoded server's p per chunk too, as the local threshold path
        json.dumps({"id": s.id, "responses": preds.get(s.id, [])} | probs.get(s.id, {}))
        for s in samples
    ]
    atomic_write_text(out / "predictions.jsonl", "\n".join(lines) + "\n")
    scores = score_predictions(
        [s.to_dict() for s in samples],
        preds,
        acc_judge=eval_acc_judge(cfg.eval, cfg.reward),
        fallback_score=cfg.reward.fallback_score,
        timeout_s=cfg.reward.timeout_s,
    )
    scores["replay"] = {"endpoint": url, "wall_s": round(wall, 3), "samples": len(samples)}
    write_scores(scores, out)
    plot = plot_timelines(manifest, {"served": preds}, out / "timelines.png")
    if plot is not None:
        md = (out / "report.md").read_text()
        md += f"\nReplayed through {url} in {wall:.1f} s.\n\n![timelines](timelines.png)\n"
        atomic_write_text(out / "report.md", md)
    return scores
