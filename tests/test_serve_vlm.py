"""Ray Serve with a VLM policy (tiny-vl, data.codec=image) over loopback HTTP.

A real deployment on a local Ray (two ingress replicas, one vLLM CPU engine with images) and a
real rollout group on the same policy. Known answers: a session whose chunks are full-size PNG
frames of a synth video decides exactly as the rollout group's greedy episode on the same video
encoded by the data pipeline (`pipeline.encode_samples`, the image codec), through a window
that slides (6 turns, slide 3), with the session's chunks alternating between both ingress
replicas (so every replica replays the stored log, frames included); the store keeps at most
a window of frames per session; `streampro eval --endpoint` through it writes the rollout
group's greedy predictions on the synth test split; codes-only chunks get 422. The random
tiny-vl writes the same token at every step, so its weights are scaled first: its greedy
outputs then depend on the frames.
"""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest

MAX_ANSWER = 4
WINDOW, SLIDE = 6, 3
SCALE = 3.0  # every matrix of the random policy x SCALE: greedy outputs vary with the frames
MAX_PIXELS = 56 * 56  # the synth's 64x64 frames -> 56x56: 2x2 merged patches, 4 pads a frame


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from streampro.config import load_config

    tmp = tmp_path_factory.mktemp("vlserve")
    return load_config(
        None,
        [
            "policy.name_or_path=tiny-vl",
            f"policy.cache_dir={tmp / 'models'}",
            "data.codec=image",
            f"data.image_max_pixels={MAX_PIXELS}",
            f"data.window_turns={WINDOW}",
            f"data.window_slide={SLIDE}",
            f"data.cache_dir={tmp / 'cache'}",
            f"rollout.max_answer_tokens={MAX_ANSWER}",
            "rollout.kv_cache_gb=0.5",
            "rollout.max_num_seqs=16",
            "serve.ingress_replicas=2",
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            "serve.max_sessions=8",
            "serve.session_ttl_s=600",
            "serve.eval_concurrency=4",
            "serve.eval_speed=0",
        ],
    )


@pytest.fixture(scope="module")
def vl_policy(tmp_path_factory) -> str:
    """tiny-vl with every matrix scaled (safetensors rewritten under the same keys)."""
    import torch
    from safetensors.torch import load_file, save_file

    from streampro import tiny_vl

    src = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path_factory.mktemp("vl"))
    out = tmp_path_factory.mktemp("vl-varied") / "policy"
    shutil.copytree(src, out)
    weights = load_file(out / "model.safetensors")
    with torch.no_grad():
        weights = {k: v * SCALE if v.dim() == 2 else v for k, v in weights.items()}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


@pytest.fixture(scope="module")
def served(ray_local, vl_policy, cfg):
    from streampro.actors.serve.deploy import local_deployment

    with local_deployment(cfg, vl_policy) as url:
        yield url


@pytest.fixture(scope="module")
def rollout(ray_local, vl_policy, cfg):
    from streampro.actors.rollout import make_rollout_group

    group = make_rollout_group(cfg, vl_policy)
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def test_split(synth_smoke, cfg):
    from streampro.data.pipeline import encode_samples

    manifest = synth_smoke / "test" / "manifest.jsonl"
    return manifest, encode_samples(cfg, manifest, progress=False)


def _png(frame: np.ndarray) -> str:
    from streampro.client import encode_png

    return encode_png(frame)


def _full_frames(video, duration) -> list[tuple[float, float, np.ndarray]]:
    """Every chunk's frame at the video's own size, as the data pipeline decodes it."""
    from streampro.data.video import read_chunks

    return [
        (c.start, c.end, c.frame)
        for c in read_chunks(video, 1.0)
        if duration is None or c.start < duration - 1e-6
    ]


@pytest.mark.slow
def test_vlm_session_equals_rollout_greedy_episode_across_two_ingress_replicas(
    served, rollout, test_split
):
    from streampro.actors.api import Sampling

    manifest, encoded = test_split
    e = encoded[0]
    chunks = _full_frames(e.sample.video_path(manifest.parent), e.sample.duration)
    assert [(s, t) for s, t, _ in chunks] == [tuple(x) for x in e.times]
    assert chunks[0][2].shape[:2] != e.frames[0].shape[:2]  # the server resizes them
    assert len(chunks) > 2 * WINDOW  # the window slides
    r = httpx.post(
        f"{served}/v1/sessions",
        json={"question": e.sample.question, "query_time": e.sample.query_time},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    got, replicas, held = [], set(), []
    with httpx.Client(timeout=120) as http:
        for start, end, frame in chunks:
            body = {"chunks": [{"start": start, "end": end, "image": _png(frame)}]}
            r = http.post(f"{served}/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-streampro-replica"])
            got += r.json()["decisions"]
            held.append(http.get(f"{served}/healthz").json()["frames"])
        health = http.get(f"{served}/healthz").json()
        assert http.delete(f"{served}/v1/sessions/{sid}").status_code == 204

    (ref,) = rollout.generate(
        samples=[e],
        n=1,
        sampling=Sampling(temperature=0.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=0),
    )
    assert [(d["time"], d["decision"], d["text"], d["raw"]) for d in got] == [
        (s.time, s.decision, s.text, s.raw) for s in ref.steps
    ]
    assert len({s.raw for s in ref.steps}) > 1  # the outputs do depend on the stream
    assert len(replicas) == 2  # both ingress replicas replayed the session's stored frames
    # the store holds a window of frames at most (only this session is open)
    assert held == [min(k + 1, WINDOW) for k in range(len(chunks))]
    assert health["codec"] == {"name": "image", "max_pixels": MAX_PIXELS, "factor": 28}


@pytest.mark.slow
def test_codes_only_chunks_get_422_and_images_keep_working(served):
    from PIL import Image

    r = httpx.post(f"{served}/v1/sessions", json={"question": "q"})
    sid = r.json()["session_id"]
    url = f"{served}/v1/sessions/{sid}/chunks"
    r = httpx.post(url, json={"chunks": [{"start": 0, "end": 1, "codes": [0] * 16}]})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_field" and "data.codec=image" in err["message"], err
    # a JPEG of another size is resized by the same codec rule, and decided
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, format="JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(url, json={"chunks": [{"start": 0, "end": 1, "image": jpeg}]}, timeout=120)
    assert r.status_code == 200 and r.json()["decisions"][0]["time"] == 1.0, r.text
    assert httpx.delete(f"{served}/v1/sessions/{sid}").status_code == 204


@pytest.mark.slow
def test_eval_endpoint_equals_rollout_greedy_evaluation(served, rollout, test_split, cfg, tmp_path):
    """`streampro eval --endpoint` (its CLI entry; `--checkpoint` is the same replay against a
    `local_deployment`, as `served` is) writes the rollout group's greedy predictions."""
    import argparse
    from dataclasses import replace

    from streampro.actors.api import Sampling
    from streampro.actors.policy_eval import PolicyEval
    from streampro.evaluate import main as eval_main

    manifest, encoded = test_split
    greedy = replace(PolicyEval.from_config(cfg), sampling=Sampling.greedy(cfg.rollout), n=1)
    ref = greedy.run(rollout, encoded, predictions_out=tmp_path / "ref.jsonl")
    args = argparse.Namespace(
        manifest=str(manifest),
        out=str(tmp_path / "served"),
        checkpoint=None,
        endpoint=served,
        predictions=None,
    )
    assert eval_main(cfg, args) == 0
    out = tmp_path / "served"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        json.loads(x) for x in (tmp_path / "ref.jsonl").read_text().splitlines()
    ]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["w_avg"] == ref["w_avg"] and scores["n_samples"] == len(encoded)
    assert (out / "timelines.png").stat().st_size > 0


def test_decode_frame_is_the_pipeline_codec():
    """A PNG frame decodes to exactly `ImageCodec.encode` of it; a JPEG to the codec's size for
    its original dimensions; the codec's output is a fixed point (clients may pre-resize)."""
    from PIL import Image

    from streampro.actors.serve.sessions import decode_frame
    from streampro.data.codec import ImageCodec

    codec = ImageCodec(max_pixels=112 * 112, factor=28)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    got = decode_frame(_png(frame), max_pixels=10**7, codec=codec)
    want = codec.encode(frame)
    assert got.shape == want.shape == (84, 140, 3) and np.array_equal(got, want)
    assert np.array_equal(decode_frame(_png(want), max_pixels=10**7, codec=codec), want)
    buf = io.BytesIO()
    Image.new("RGB", (1600, 900), (250, 10, 10)).save(buf, format="JPEG")
    big = decode_frame(base64.b64encode(buf.getvalue()).decode(), max_pixels=10**7, codec=codec)
    assert big.shape[:2] == codec.size_for(900, 1600) and big.dtype == np.uint8


def test_store_keeps_the_frames_a_window_can_hold():
    import asyncio

    from streampro.actors.serve.sessions import Entry, SessionStore

    store = SessionStore.func_or_class(max_sessions=2, ttl_s=60, expire_every_s=60, keep_frames=3)

    async def run() -> tuple[list, dict]:
        sid = (await store.create("q", 0.0))["session_id"]
        for k in range(7):
            e = Entry(k, k + 1, [], [1], [0.0], f"png{k}".encode(), 4)
            assert await store.append(sid, k, [e]) == "ok"
        return (await store.read(sid, 0))["entries"], await store.stats()

    entries, stats = asyncio.run(run())
    assert [e.png for e in entries] == [None] * 4 + [b"png4", b"png5", b"png6"]
    assert [e.image_tokens for e in entries] == [4] * 7  # the replay still sizes every turn
    assert stats["frames"] == 3 and stats["frame_bytes"] == 12


def test_vlm_checkpoint_against_codec_and_engine(tmp_path):
    from streampro import tiny_vl
    from streampro.actors.serve.deploy import check_checkpoint
    from streampro.config import ConfigError, load_config
    from streampro.errors import UserError

    vl = str(tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path))
    image = ["policy.name_or_path=tiny-vl", "data.codec=image"]
    check_checkpoint(load_config(None, image), vl)
    with pytest.raises(ConfigError, match=r"serve\.engine=hf serves text policies only"):
        load_config(None, [*image, "serve.engine=hf"])
    with pytest.raises(UserError, match=r"^serve\.engine=hf serves text policies only: .*"):
        check_checkpoint(load_config(None, ["serve.engine=hf"]), vl)


def test_ingress_reads_images_with_the_pipeline_codec(tmp_path):
    from streampro import tiny_vl
    from streampro.actors.serve.api import ChunkIn
    from streampro.actors.serve.ingress import ApiError, Ingress
    from streampro.config import DataConfig, ServeConfig
    from streampro.data.codec import ImageCodec

    vl = str(tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path))
    data = DataConfig(codec="image", image_max_pixels=MAX_PIXELS, window_turns=6, window_slide=3)
    core = Ingress(
        None,
        None,
        ServeConfig(),
        data,
        model_path=vl,
        max_answer_tokens=4,
        seed=0,
        pool=None,  # type: ignore[arg-type]  (no image decoded here)
    )
    assert isinstance(core.codec, ImageCodec)
    assert (core.codec.max_pixels, core.codec.factor) == (MAX_PIXELS, 28)
    chunk = core._encode(_png(np.zeros((64, 64, 3), np.uint8)))
    assert chunk.image_tokens == 4 and chunk.image[:4] == b"\x89PNG"
    with pytest.raises(ApiError) as e:
        core._check([ChunkIn(start=0, end=1, codes=[0] * 16)])
    assert e.value.status == 422 and "chunks[0].codes" in e.value.message


def test_rayservice_serves_its_vlm_checkpoint_with_the_image_codec():
    """The RayService's args load with the codec and frame budget the checkpoint was trained
    with (configs/qwen2_5_vl_3b.yaml); the served policy is serve.checkpoint."""
    from pathlib import Path

    import yaml

    from streampro.actors.serve.deploy import config_from_args

    repo = Path(__file__).resolve().parents[1]
    docs = yaml.safe_load_all((repo / "cluster/kuberay/rayservice.yaml").read_text())
    spec = next(d for d in docs if d and d.get("kind") == "RayService")
    (app,) = yaml.safe_load(spec["spec"]["serveConfigV2"])["applications"]
    cfg = config_from_args(app["args"])
    trained = yaml.safe_load((repo / "configs/qwen2_5_vl_3b.yaml").read_text())["data"]
    assert (cfg.data.codec, cfg.data.image_max_pixels) == ("image", trained["image_max_pixels"])
    assert cfg.policy.name_or_path == cfg.serve.checkpoint
