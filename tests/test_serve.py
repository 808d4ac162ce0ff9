"""The Serve application (actors/serve*.py) over loopback HTTP: a real deployment on a local
Ray with two ingress replicas, a vLLM engine and the tiny policy.

Known answers: a session's decisions equal the rollout actor's greedy episode on the same
video (both replicas serving its chunks), on the synth test split and on a stream of 3.75x
the window (where the served context length also equals the prompt vLLM got in rollout, and
drops exactly where the window slides), and `streampro eval --checkpoint` gives the rollout
group's greedy predictions. Every test here runs with an 8-turn window sliding by 4, so the
synth streams (20-30 s) all slide. The random tiny policy writes the same token at every
step, so its weights are scaled up first: its outputs then depend on the frames and context.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from streampro.data.window import Window

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-123"
MAX_ANSWER = 6
WINDOW, SLIDE = 8, 4  # data.window_turns / window_slide of the whole module
LONG_S = 30  # the long stream: 30 chunks at 1 fps, 3.75 windows
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def policy(tiny_path, tmp_path_factory) -> str:
    """The tiny policy with every matrix scaled x3: greedy outputs vary with the input."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("varied")
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    from streampro.config import load_config

    cache = tmp_path_factory.mktemp("cache")
    return load_config(
        None,
        [
            f"rollout.max_answer_tokens={MAX_ANSWER}",
            f"data.window_turns={WINDOW}",
            f"data.window_slide={SLIDE}",
            "rollout.kv_cache_gb=0.5",
            f"data.cache_dir={cache}",
            "serve.ingress_replicas=2",
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            "serve.max_sessions=8",
            "serve.max_inflight=4",  # 2 per ingress replica: test_over_the_inflight_limit_...
            "serve.max_session_inflight=2",
            "serve.session_ttl_s=6",
            "serve.expire_every_s=0.5",
            "serve.max_body_bytes=200000",
            "serve.max_chunks_per_request=8",
            f"serve.auth_token={TOKEN}",
            "serve.eval_concurrency=4",
            "serve.eval_speed=0",
        ],
    )


@pytest.fixture(scope="module")
def served(ray_local, policy, cfg):
    from streampro.actors.serve.deploy import local_deployment

    with local_deployment(cfg, policy) as url:
        yield url


@pytest.fixture(scope="module")
def rollout(ray_local, policy, cfg):
    from streampro.actors.rollout import make_rollout_group

    group = make_rollout_group(cfg, policy)
    yield group
    group.shutdown()


def _encode(cfg, manifest) -> list:
    from streampro.data.pipeline import encode_samples

    return encode_samples(cfg, manifest, progress=False)


@pytest.fixture(scope="module")
def test_split(synth_smoke, cfg):
    manifest = synth_smoke / "test" / "manifest.jsonl"
    return manifest, _encode(cfg, manifest)


@pytest.fixture(scope="module")
def long_stream(tmp_path_factory, cfg):
    """One 30-s StreamPro-Synth video (the project's generator, PyAV), encoded as training does."""
    from streampro.data.synth import synthesize
    from streampro.data.synth_scene import SceneParams

    out = tmp_path_factory.mktemp("long")
    synthesize(
        out,
        per_task=1,
        seed=5,
        params=SceneParams(width=64, height=64),
        min_duration=LONG_S,
        max_duration=LONG_S,
        tasks=("EU",),
        progress=False,
    )
    manifest = out / "manifest.jsonl"
    (encoded,) = _encode(cfg, manifest)
    return manifest, encoded


def _open(url: str, question: str = "q", **kw) -> str:
    r = httpx.post(f"{url}/v1/sessions", json={"question": question, **kw}, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def _png(frame: np.ndarray) -> str:
    from streampro.client import encode_png

    return encode_png(frame)


@pytest.mark.slow
def test_session_equals_rollout_greedy_episode_across_two_ingress_replicas(
    served, rollout, test_split
):
    from streampro.actors.api import Sampling
    from streampro.replay import video_chunks

    manifest, encoded = test_split
    e = encoded[0]
    chunks = video_chunks(
        e.sample.video_path(manifest.parent), fps=1.0, grid=4, duration=e.sample.duration
    )
    assert [(s, t) for s, t, _ in chunks] == [tuple(x) for x in e.times]
    sid = _open(served, e.sample.question, query_time=e.sample.query_time)
    got, replicas = [], set()
    with httpx.Client(timeout=60, headers=AUTH) as http:
        for k, (start, end, png) in enumerate(chunks):
            # images and codes both reach the policy the same way
            chunk = {"start": start, "end": end}
            chunk.update({"codes": list(e.codes[k])} if k % 4 == 3 else {"image": png})
            r = http.post(f"{served}/v1/sessions/{sid}/chunks", json={"chunks": [chunk]})
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-streampro-replica"])
            got += r.json()["decisions"]
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
    assert len(replicas) == 2  # the session's chunks went through both ingress replicas


def _prompts(traj) -> tuple[list[int], list[list[int]]]:
    """Per step, the length of the prompt vLLM received in rollout (in its segment's row, the
    position of the step's first generated token: types.Segment) and the generated ids."""
    starts, ids = [], []
    for seg in traj.segments:
        m = seg.gen_mask
        for i in range(len(m)):
            if m[i] and (i == 0 or not m[i - 1]):
                starts.append(i)
                ids.append([])
            if m[i]:
                ids[-1].append(seg.token_ids[i])
    return starts, ids


def _unwindowed_prompt_lengths(tokenizer, e, generated: list[list[int]]) -> list[int]:
    """The prompt lengths of the same decisions with a window as long as the stream."""
    from streampro.actors.episode import StreamEpisode, sample_chunks

    s = e.sample
    ep = StreamEpisode(
        tokenizer,
        sample_id=s.id,
        question=s.question,
        query_time=float(s.query_time),
        window=Window(len(e.times), 1),
    )
    out = []
    for chunk, ids in zip(sample_chunks(e), generated):
        out.append(len(ep.add_chunk(chunk)))
        ep.add_decision(ids, [0.0] * len(ids))
    return out


def _window_bound(tokenizer, e, window: int) -> int:
    """The longest prompt `window` turns allow on this stream: the system prompt, the question,
    and `window` turns, each as long as the stream's longest chunk turn plus the longest
    decision and its turn end."""
    from streampro.actors.episode import max_decision_tokens
    from streampro.data.dialogue import StreamDialogue, vocab

    def first_turn(query_time: float, start: float, end: float) -> tuple[int, int]:
        d = StreamDialogue(
            tokenizer, question=e.sample.question, query_time=query_time, window=Window(200, 50)
        )
        n = len(d.token_ids)
        d.add_chunk(start, end, e.codes[0])
        return n, len(d.token_ids) - n

    system, turn0 = first_turn(1e9, 0.0, 1.0)  # the question not asked yet
    question = first_turn(0.0, 0.0, 1.0)[1] - turn0
    turn = max(first_turn(1e9, s, t)[1] for s, t in e.times)
    close = len(vocab(tokenizer).turn_close)
    return system + question + window * (turn + max_decision_tokens(MAX_ANSWER) + close)


@pytest.mark.slow
def test_long_stream_session_is_windowed_exactly_like_rollout(served, rollout, long_stream, policy):
    """Serve on a stream of 3x the window decides as the rollout path does, under the
    same windowed contexts, and its context stays bounded."""
    from transformers import AutoTokenizer

    from streampro.actors.api import Sampling
    from streampro.data.window import Window
    from streampro.replay import video_chunks

    manifest, e = long_stream
    chunks = video_chunks(
        e.sample.video_path(manifest.parent), fps=1.0, grid=4, duration=e.sample.duration
    )
    assert len(chunks) == len(e.times) == LONG_S >= 3 * WINDOW
    sid = _open(served, e.sample.question, query_time=e.sample.query_time)
    got = []
    with httpx.Client(timeout=60, headers=AUTH) as http:
        for start, end, png in chunks:
            chunk = {"start": start, "end": end, "image": png}
            r = http.post(f"{served}/v1/sessions/{sid}/chunks", json={"chunks": [chunk]})
            assert r.status_code == 200, r.text
            got += r.json()["decisions"]
        assert http.delete(f"{served}/v1/sessions/{sid}").status_code == 204

    (ref,) = rollout.generate(
        samples=[e],
        n=1,
        sampling=Sampling(temperature=0.0, top_p=1.0, max_answer_tokens=MAX_ANSWER, seed=0),
    )
    # every chunk's decision equals the in-process greedy episode's (rollout path)
    assert [(d["time"], d["decision"], d["text"], d["raw"]) for d in got] == [
        (s.time, s.decision, s.text, s.raw) for s in ref.steps
    ]
    assert len({s.raw for s in ref.steps}) > 1  # the outputs do depend on the stream
    # ... sampled after prompts of the same lengths as the ones vLLM received in rollout
    ctx = [d["context_tokens"] for d in got]
    starts, generated = _prompts(ref)
    assert ctx == starts
    # the window slid where data/window.py says (turn 9, then every 4), in both paths
    first, slides = 0, []
    for i in range(LONG_S):
        moved = Window(WINDOW, SLIDE).first_kept(i + 1, first)
        slides += [i] if moved != first else []
        first = moved
    assert slides == [8, 12, 16, 20, 24, 28]
    assert [seg.first_step for seg in ref.segments] == [0, *slides]
    # append-only between slides, shorter at each slide, and bounded however long the stream
    assert [i for i in range(1, LONG_S) if ctx[i] < ctx[i - 1]] == slides
    assert all(ctx[i] > ctx[i - 1] for i in range(1, LONG_S) if i not in slides)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    bound = _window_bound(tokenizer, e, WINDOW)
    full = _unwindowed_prompt_lengths(tokenizer, e, generated)
    assert ctx[: slides[0]] == full[: slides[0]]  # identical until the window is full
    assert max(ctx) <= bound < full[-1]  # the bound binds: unwindowed, the prompt outgrows it


@pytest.mark.slow
def test_eval_checkpoint_equals_rollout_greedy_evaluation(
    served, rollout, test_split, cfg, policy, tmp_path
):
    from streampro.actors.policy_eval import PolicyEval
    from streampro.evaluate import main as eval_main

    manifest, encoded = test_split
    ref = PolicyEval.from_config(cfg).run(rollout, encoded, predictions_out=tmp_path / "ref.jsonl")
    args = argparse.Namespace(
        manifest=str(manifest),
        out=str(tmp_path / "served"),
        checkpoint=policy,
        endpoint=None,
        predictions=None,
    )
    slow_ok = copy.deepcopy(cfg)  # a loaded CI box must not expire a session mid-stream
    slow_ok.serve.session_ttl_s = 600.0
    assert eval_main(slow_ok, args) == 0
    out = tmp_path / "served"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        json.loads(x) for x in (tmp_path / "ref.jsonl").read_text().splitlines()
    ]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["w_avg"] == ref["w_avg"] and scores["n_samples"] == len(encoded)
    assert (out / "timelines.png").stat().st_size > 0
    assert "timelines.png" in (out / "report.md").read_text()


@pytest.mark.slow
def test_eval_of_a_policy_decodes_like_a_runs_own_evaluations(
    rollout, test_split, cfg, policy, tmp_path
):
    """`streampro eval` with neither predictions, endpoint nor checkpoint runs
    policy.name_or_path on a rollout group of its own, sampled as `streampro train` evaluates
    (eval.greedy=false: eval.samples_per_stream seeded samples per stream, scores averaged)."""
    from streampro.actors.policy_eval import PolicyEval
    from streampro.evaluate import main as eval_main

    sampled = copy.deepcopy(cfg)
    sampled.eval.greedy = False
    sampled.eval.samples_per_stream = 2
    sampled.policy.name_or_path = policy
    manifest, encoded = test_split
    out = tmp_path / "r.jsonl"
    ref = PolicyEval.from_config(sampled).run(rollout, encoded, predictions_out=out)
    args = argparse.Namespace(
        manifest=str(manifest),
        out=str(tmp_path / "policy"),
        checkpoint=None,
        endpoint=None,
        predictions=None,
    )
    assert eval_main(sampled, args) == 0
    out = tmp_path / "policy"
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "r.jsonl").read_text()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["samples_per_stream"] == 2 and scores["n_samples"] == len(encoded)
    assert scores["w_avg"] == ref["w_avg"] and scores["tasks"] == ref["tasks"]


@pytest.mark.slow
def test_every_error_has_its_status_and_the_next_request_succeeds(served):
    ok_png = _png(np.full((16, 16, 3), 200, np.uint8))
    sid = _open(served)
    url = f"{served}/v1/sessions/{sid}/chunks"
    t = [0]

    def valid() -> None:  # the server keeps serving: the next chunk of the stream is decided
        r = httpx.post(
            url, json={"chunks": [{"start": t[0], "end": t[0] + 1, "image": ok_png}]}, headers=AUTH
        )
        assert r.status_code == 200 and len(r.json()["decisions"]) == 1, r.text
        t[0] += 1

    def err(status: int, code: str, method="POST", path=url, **kw) -> httpx.Response:
        kw.setdefault("headers", AUTH)
        r = httpx.request(method, path, **kw)
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"]["code"] == code and body["error"]["message"], body
        valid()
        return r

    def chunk(**c) -> dict:
        return {"json": {"chunks": [{"start": t[0], "end": t[0] + 1, **c}]}}

    hdr = {**AUTH, "Content-Type": "application/json"}
    valid()
    err(400, "bad_json", content=b'{"chunks": [', headers=hdr)
    err(400, "bad_json", "POST", f"{served}/v1/sessions", content=b"not json", headers=hdr)
    err(400, "bad_image", **chunk(image="not base64!"))
    err(400, "bad_image", **chunk(image=base64.b64encode(b"GIF89a garbage").decode()))
    err(401, "unauthorized", headers={}, **chunk(image=ok_png))
    err(401, "unauthorized", headers={"Authorization": "Bearer wrong"}, **chunk(image=ok_png))
    err(404, "unknown_session", path=f"{served}/v1/sessions/nope/chunks", **chunk(image=ok_png))
    err(404, "unknown_session", "DELETE", f"{served}/v1/sessions/nope")
    err(409, "time_backwards", json={"chunks": [{"start": 0, "end": 0.5, "image": ok_png}]})
    err(
        409,
        "time_backwards",
        json={
            "chunks": [
                {"start": t[0], "end": t[0] + 2, "image": ok_png},
                {"start": t[0] + 1, "end": t[0] + 3, "image": ok_png},
            ]
        },
    )
    big = base64.b64encode(np.random.default_rng(0).bytes(300_000)).decode()
    err(413, "body_too_large", **chunk(image=big))
    err(422, "invalid_field", **chunk(codes=[0] * 3))
    err(422, "invalid_field", **chunk(codes=[64] * 16))
    err(422, "invalid_field", **chunk(codes=[0] * 16, image=ok_png))
    err(422, "invalid_field", json={"chunks": [{"start": 3, "end": 3, "image": ok_png}]})
    err(422, "invalid_field", json={"chunks": [{"start": -1, "end": 1, "image": ok_png}]})
    err(422, "invalid_field", json={"chunks": []})
    err(422, "invalid_field", "POST", f"{served}/v1/sessions", json={"question": ""})
    err(
        422,
        "invalid_field",
        "POST",
        f"{served}/v1/sessions",
        json={"question": "q", "query_time": -2},
    )
    # capacity (serve.max_sessions=8): the 9th open session is refused with Retry-After
    others = [_open(served) for _ in range(7)]
    r = err(503, "at_capacity", "POST", f"{served}/v1/sessions", json={"question": "q"})
    assert int(r.headers["retry-after"]) >= 1
    for o in others:
        assert httpx.delete(f"{served}/v1/sessions/{o}", headers=AUTH).status_code == 204
    assert httpx.delete(f"{served}/v1/sessions/{sid}", headers=AUTH).status_code == 204
    _open(served)  # room again


@pytest.mark.slow
def test_idle_sessions_expire_and_health_and_openapi(served):
    from streampro.client import ServeError, StreamSession

    s = StreamSession(served, "q", token=TOKEN)
    frame = np.zeros((32, 32, 3), np.uint8)
    assert s.push_frame(0, 1, frame)["time"] == 1.0
    assert s.push_frame(1, 2, codes=[5] * 16)["time"] == 2.0
    time.sleep(9)  # serve.session_ttl_s=6, checked every 0.5 s by the store's task
    with pytest.raises(ServeError) as e:
        s.push_frame(2, 3, frame)
    assert e.value.status == 404 and e.value.code == "unknown_session"
    health = httpx.get(f"{served}/healthz").json()
    assert health["ok"] and health["expired"] >= 1
    paths = httpx.get(f"{served}/openapi.json").json()["paths"]
    assert {"/v1/sessions", "/v1/sessions/{sid}/chunks", "/v1/sessions/{sid}"} <= set(paths)
    page = httpx.get(f"{served}/ui/")
    assert page.status_code == 200 and "app.js" in page.text


def test_decode_image_downscales_to_the_codec_budget_and_names_bad_input():
    from PIL import Image

    from streampro.actors.serve.sessions import ImageError, decode_image

    buf = __import__("io").BytesIO()
    Image.new("RGB", (1000, 500), (250, 10, 10)).save(buf, format="JPEG")
    frame = decode_image(base64.b64encode(buf.getvalue()).decode(), max_pixels=10**7, budget=256)
    assert frame.shape == (128, 256, 3) and frame.dtype == np.uint8
    with pytest.raises(ImageError) as e:
        decode_image(base64.b64encode(buf.getvalue()).decode(), max_pixels=1000, budget=256)
    assert e.value.status == 413
    with pytest.raises(ImageError) as e:
        decode_image("%%%", max_pixels=10**7, budget=256)
    assert e.value.status == 400


def test_ingress_takes_the_serve_and_data_sections(tiny_path):
    """No second schema: the ingress reads ServeConfig and DataConfig themselves (the window
    and codec from data, caps from serve) plus the plain values of other sections."""
    from streampro.actors.serve.ingress import Ingress
    from streampro.config import DataConfig, ServeConfig
    from streampro.data.window import Window

    data = DataConfig(window_turns=8, window_slide=4, patch_grid=2, codebook_size=8)
    core = Ingress(
        None,
        None,
        ServeConfig(max_sessions=3),
        data,
        model_path=tiny_path,
        max_answer_tokens=5,
        seed=0,
        pool=None,  # type: ignore[arg-type]  (no image decoded here)
    )
    assert core.new_episode("s", "q", 0.0).dialogue.window == Window(8, 4)
    assert core.codec.tokens_per_frame == 4 and core.codec.codebook_size == 8
    assert core.max_tokens == 7 and core.s.max_sessions == 3


def test_app_args_are_config_sections():
    from streampro.actors.serve.deploy import config_from_args

    cfg = config_from_args(
        {"serve": {"checkpoint": "/m", "ingress_replicas": 3}, "data": {"window_turns": 120}}
    )
    assert (cfg.serve.checkpoint, cfg.serve.ingress_replicas) == ("/m", 3)
    assert (cfg.data.window_turns, cfg.data.window_slide) == (120, 50)  # the schema's slide


def test_build_app_rejects_bad_arguments_in_one_line():
    from streampro.actors.serve.deploy import build_app
    from streampro.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"^serve app args: unknown config key 'serve.chekpoint'$"
    ):
        build_app({"serve": {"chekpoint": "/x"}})
    with pytest.raises(ConfigError, match="unknown config key 'checkpoint'"):
        build_app({"checkpoint": "/x"})  # the old flat form names the key it does not know
    with pytest.raises(ConfigError, match=r"serve\.checkpoint .* is required"):
        build_app({})
    with pytest.raises(
        ConfigError, match=r"^serve app args: serve\.engine must be one of vllm, hf, got 'tgi'$"
    ):
        build_app({"serve": {"checkpoint": "/x", "engine": "tgi"}})
    with pytest.raises(
        ConfigError, match=r"^serve app args: serve\.ingress_replicas must be >= 1, got 0$"
    ):
        build_app({"serve": {"checkpoint": "/x", "ingress_replicas": 0}})


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["serve", "--checkpoint", "{tmp}"], "not a Hugging Face model folder"),
        (
            ["eval", "--checkpoint", "{tmp}", "--manifest", "{tmp}/m.jsonl", "--out", "{tmp}/o"],
            "file not found",
        ),
        (
            [
                "eval",
                "--endpoint",
                "http://x",
                "--predictions",
                "p",
                "--manifest",
                "m",
                "--out",
                "o",
            ],
            "at most one of",
        ),
    ],
)
def test_serve_and_eval_cli_errors_are_one_line(tmp_path, argv, msg):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = subprocess.run(
        [sys.executable, "-m", "streampro.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_racing_requests_of_one_session_one_wins_the_other_gets_409(served):
    from concurrent.futures import ThreadPoolExecutor

    sid = _open(served)
    url = f"{served}/v1/sessions/{sid}/chunks"
    body = {"chunks": [{"start": 0, "end": 1, "codes": [7] * 16}]}
    for _ in range(3):  # the same chunk twice at once, maybe on both ingress replicas
        with ThreadPoolExecutor(2) as pool:
            rs = list(
                pool.map(lambda b: httpx.post(url, json=b, headers=AUTH, timeout=60), [body, body])
            )
        assert sorted(r.status_code for r in rs) == [200, 409], [r.text for r in rs]
        assert {r.json()["error"]["code"] for r in rs if r.status_code == 409} <= {
            "conflict",
            "time_backwards",
        }
        s, e = body["chunks"][0]["start"] + 1, body["chunks"][0]["end"] + 1
        body = {"chunks": [{"start": s, "end": e, "codes": [7] * 16}]}
    r = httpx.post(url, json=body, headers=AUTH)  # the log has exactly 3 steps: step 4 fits
    assert r.status_code == 200 and r.json()["decisions"][0]["time"] == 4.0, r.text
    assert httpx.delete(f"{served}/v1/sessions/{sid}", headers=AUTH).status_code == 204


def test_a_served_engine_takes_the_rollout_settings_on_its_own_devices():
    """Serve builds its engine from the rollout's settings, but a replica holds its own
    devices (serve.num_gpus) and never takes NCCL weight pushes."""
    from streampro.actors.serve.engine import served_engine_settings
    from streampro.config import RolloutConfig

    r = RolloutConfig(
        tensor_parallel_size=2, weight_transfer_backend="nccl", max_model_len=4096, block_size=64
    )
    s = served_engine_settings(r)
    assert (s.tensor_parallel_size, s.weight_transfer_backend) == (1, "")
    assert (s.max_model_len, s.block_size) == (4096, 64)
    assert r.tensor_parallel_size == 2  # the rollout's own config is left as it was


@pytest.mark.slow
def test_over_the_inflight_limit_429_with_retry_after_then_the_client_backs_off(served, cfg):
    """serve.max_inflight=4 (2 per ingress replica): 6 sessions send 8 chunks each at once.
    Those over the limit get 429 + Retry-After and a one-line error at once (nothing queued);
    a client that gives up after 1 try says so; with its backoff every session succeeds."""
    from streampro.client import AsyncStreamSession, Backoff, ServeError

    n, k = cfg.serve.max_inflight + 2, 8
    png = _png(np.full((16, 16, 3), 90, np.uint8))
    body = {"chunks": [{"start": t, "end": t + 1, "image": png} for t in range(k)]}

    async def raw() -> list[httpx.Response]:
        sids = [_open(served) for _ in range(n)]
        async with httpx.AsyncClient(timeout=120, headers=AUTH) as http:
            rs = await asyncio.gather(
                *(http.post(f"{served}/v1/sessions/{sid}/chunks", json=body) for sid in sids)
            )
            for sid in sids:
                assert (await http.delete(f"{served}/v1/sessions/{sid}")).status_code == 204
        return list(rs)

    rs = asyncio.run(raw())
    refused = [r for r in rs if r.status_code == 429]
    assert {r.status_code for r in rs} == {200, 429} and len(refused) >= n - 4, [r.text for r in rs]
    for r in refused:
        err = r.json()["error"]
        assert r.headers["retry-after"] == "1" and err["code"] == "too_many_requests"
        assert "\n" not in err["message"] and "at most 2" in err["message"]
    for r in rs:
        if r.status_code == 200:
            assert [d["time"] for d in r.json()["decisions"]] == [float(t + 1) for t in range(k)]

    async def clients(backoff: Backoff) -> tuple[list, list[int]]:
        seen: list[int] = []
        async with httpx.AsyncClient(timeout=120) as http:
            ss = [
                await AsyncStreamSession.open(
                    served,
                    "q",
                    http=http,
                    token=TOKEN,
                    backoff=backoff,
                    observe=lambda path, status, _s: seen.append(status),
                )
                for _ in range(n)
            ]
            out = await asyncio.gather(
                *(s.push(body["chunks"]) for s in ss), return_exceptions=True
            )
            for s in ss:
                await s.close()
        return list(out), seen

    out, _ = asyncio.run(clients(Backoff(tries=1)))
    gave_up = [e for e in out if isinstance(e, ServeError)]
    assert gave_up and all(e.status == 429 and "gave up after 1 tries" in str(e) for e in gave_up)
    out, seen = asyncio.run(clients(Backoff(tries=20, base_s=0.2, cap_s=2.0)))
    assert seen.count(429) >= 1  # refused at first, then admitted after backing off
    for decisions in out:  # every session's 8 decisions, in order
        assert [d["time"] for d in decisions] == [float(t + 1) for t in range(k)], decisions
