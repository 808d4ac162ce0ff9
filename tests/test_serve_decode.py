"""The served decoder: Serve decides each chunk as `decode.mode=threshold` scores a policy.

Fast: the ingress's threshold rule over a real SessionStore with scripted choice logprobs,
one chunk per request and alternating between two ingress replicas (integrate-and-fire and
refractory resume from the stored log); a checkpoint's streampro_decode.json wins over the
config; `streampro eval` runs the policy folder's tuned decoder. Slow: two real deployments
(vLLM CPU engine, tiny policy) over loopback HTTP: threshold 1 (shift 0) never responds and
every p_response equals `calibrated_p` of the served engine's own choice logprobs for the
same prompt; a checkpoint whose tuned file says threshold 0 speaks at every chunk, with the
tuned threshold and shift; `streampro eval --endpoint` records p per chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from streampro.actors.decode import TUNED_FILE, calibrated_p, fire_all, save_tuned
from streampro.config import DataConfig, DecodeConfig, ServeConfig, load_config

P = [0.25, 0.1, 0.75, 0.5, 0.1, 0.25]  # the hand-worked stream of tests/test_decode.py
TOKEN = "decode-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Remote:
    """A Serve handle's `.method.remote(...)` over a plain object (its async methods)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def options(self, **_: Any) -> _Remote:
        return self

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self.obj, name))


class _ScriptedEngine:
    """Choice logprobs giving P[k] at the k-th read (shift 0); answers 'hi' greedily."""

    def __init__(self, answer: list[int]) -> None:
        self.answer, self.reads, self.answers = answer, 0, []

    async def choice(self, prompt: list[int], choices: Any, images: Any = ()) -> list[float]:
        p = P[self.reads]
        self.reads += 1
        return [math.log(p), math.log(1 - p)]

    async def decide(self, prompt: list[int], **kw: Any) -> tuple[list[int], list[float]]:
        self.answers.append((prompt[-1], kw["temperature"], kw["max_tokens"]))
        return list(self.answer), [0.0] * len(self.answer)


def _ingress(model_path: str, engine: Any, store: Any, decode: DecodeConfig | None) -> Any:
    from streampro.actors.serve.ingress import Ingress

    data = DataConfig(patch_grid=2, codebook_size=8)
    return Ingress(
        _Remote(engine),
        _Remote(store),
        ServeConfig(),
        data,
        model_path=model_path,
        max_answer_tokens=4,
        seed=0,
        pool=None,  # type: ignore[arg-type]  (codes only: no image decoded)
        decode=decode,
    )


@pytest.mark.parametrize(
    "decode,want",
    [  # each differs from a decoder that forgot its state between requests
        (DecodeConfig("threshold", 0.55, integrate=True), [0, 0, 1, 0, 1, 0]),  # sum carried
        (DecodeConfig("threshold", 0.2, refractory_chunks=2), [1, 0, 0, 1, 0, 0]),  # quiet
    ],
)
def test_ingress_fires_across_requests_and_replicas_from_the_log(tiny_path, decode, want):
    from transformers import AutoTokenizer

    from streampro.actors.serve.api import ChunkIn
    from streampro.actors.serve.sessions import SessionStore

    tok = AutoTokenizer.from_pretrained(tiny_path)
    answer = [*tok.encode("hi", add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]
    engine = _ScriptedEngine(answer)
    store = SessionStore.func_or_class(max_sessions=4, ttl_s=60, expire_every_s=60)
    replicas = [_ingress(tiny_path, engine, store, decode) for _ in range(2)]

    async def run() -> list[dict]:
        sid = (await replicas[0].create("q", 0.0))["session_id"]
        out = []
        for k in range(len(P)):  # one chunk a request, the replicas taking turns
            chunk = ChunkIn(start=k, end=k + 1, codes=[k % 8] * 4)
            out += await replicas[k % 2].chunks(sid, [chunk])
        return out

    out = asyncio.run(run())
    rule = fire_all(
        P,
        threshold=decode.threshold,
        integrate=decode.integrate,
        refractory=decode.refractory_chunks,
    )
    assert [d["decision"] == "response" for d in out] == rule == want
    assert [d["p_response"] for d in out] == pytest.approx(P, abs=1e-12)
    assert {d["threshold"] for d in out} == {decode.threshold}
    k = want.index(1)
    assert out[k]["text"] == "hi" and out[k]["raw"].startswith("</Response>")
    r_id = tok.convert_tokens_to_ids("</Response>")
    # each answer after `</Response>`, greedy, at most 1 + 4 + 1 - 1 tokens
    assert engine.answers == [(r_id, 0.0, 5)] * sum(want)
    assert replicas[0].decode_info()["threshold"] == decode.threshold


def test_sample_mode_decisions_carry_null_p(tiny_path):
    from streampro.actors.serve.api import ChunkIn
    from streampro.actors.serve.sessions import SessionStore

    class Sampled(_ScriptedEngine):
        async def choice(self, *a: Any, **kw: Any) -> list[float]:
            raise AssertionError("sample mode reads no choice logprobs")

    store = SessionStore.func_or_class(max_sessions=4, ttl_s=60, expire_every_s=60)
    core = _ingress(tiny_path, Sampled([1]), store, None)

    async def run() -> list[dict]:
        sid = (await core.create("q", 0.0))["session_id"]
        return await core.chunks(sid, [ChunkIn(start=0, end=1, codes=[0] * 4)])

    (d,) = asyncio.run(run())
    assert d["p_response"] is None and d["threshold"] is None
    assert core.decode_info() == {"mode": "sample", "threshold": None}


def _tuned_copy(src: str, dst: Path, decode: DecodeConfig) -> str:
    shutil.copytree(src, dst)
    save_tuned(dst, decode, stats={"split": "dev"})
    return str(dst)


def test_the_checkpoints_tuned_decoder_wins(tiny_path, tmp_path):
    tuned = DecodeConfig(mode="threshold", threshold=0.25, shift=1.5)
    folder = _tuned_copy(tiny_path, tmp_path / "ckpt", tuned)
    core = _ingress(folder, None, None, DecodeConfig(mode="threshold", threshold=0.9))
    assert core.decode == tuned and core.threshold
    assert _ingress(tiny_path, None, None, None).decode == DecodeConfig()
    (Path(folder) / TUNED_FILE).write_text('{"decode": {"threshold": "x"}}')
    with pytest.raises(Exception, match=TUNED_FILE):
        _ingress(folder, None, None, None)


def test_eval_runs_the_policy_folders_tuned_decoder(tiny_path, tmp_path, monkeypatch):
    """`evaluate_policy` (streampro eval without --predictions) builds its PolicyEval from a
    config whose decode section is the folder's tuned file."""
    import streampro.evaluate as ev

    tuned = DecodeConfig(mode="threshold", threshold=0.3, shift=2.0)
    folder = _tuned_copy(tiny_path, tmp_path / "ckpt", tuned)
    seen: dict[str, Any] = {}

    class FakeEval:
        @classmethod
        def from_config(cls, cfg: Any) -> FakeEval:
            seen["decode"] = cfg.decode
            return cls()

        def run(self, rollout: Any, encoded: Any, predictions_out: Any) -> dict:
            return {}

    monkeypatch.setattr(ev, "encode_samples", lambda cfg, m: [])
    monkeypatch.setattr(ev, "make_rollout_group", lambda cfg, path: SimpleNamespace(shutdown=int))
    monkeypatch.setattr(ev, "PolicyEval", FakeEval)
    monkeypatch.setattr(ev, "write_scores", lambda scores, out: None)
    ev.evaluate_policy(load_config(None, []), tmp_path / "m.jsonl", tmp_path, model_path=folder)
    assert seen["decode"] == tuned


# ---- real deployments -----------------------------------------------------------------------

CHUNKS = 5


def _cfg(tmp: Path, *overrides: str):
    return load_config(
        None,
        [
            "rollout.max_answer_tokens=4",
            "rollout.kv_cache_gb=0.25",
            f"data.cache_dir={tmp / 'cache'}",
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            f"serve.auth_token={TOKEN}",
            "serve.eval_speed=0",
            "eval.max_samples=1",
            *overrides,
        ],
    )


def _stream(url: str, codes: list[list[int]]) -> list[dict]:
    """One session, one chunk a request: its decisions."""
    with httpx.Client(timeout=120, headers=AUTH) as http:
        r = http.post(f"{url}/v1/sessions", json={"question": "what happens?"})
        sid = r.json()["session_id"]
        out = []
        for k, c in enumerate(codes):
            body = {"chunks": [{"start": k, "end": k + 1, "codes": c}]}
            r = http.post(f"{url}/v1/sessions/{sid}/chunks", json=body)
            assert r.status_code == 200, r.text
            out += r.json()["decisions"]
        http.delete(f"{url}/v1/sessions/{sid}")
    return out


def _engine_p(url: str, cfg: Any, model: str, codes: list[list[int]], shift: float) -> list:
    """calibrated_p of the served engine's own choice logprobs for each prompt of a stream
    that stayed silent (the prompts rebuilt with the rollout's dialogue code)."""
    from ray import serve
    from transformers import AutoTokenizer

    from streampro.actors.episode import Chunk, StreamEpisode
    from streampro.data.window import Window

    tok = AutoTokenizer.from_pretrained(model)
    r_id, s_id = (tok.convert_tokens_to_ids(t) for t in ("</Response>", "</Silence>"))
    engine = serve.get_deployment_handle("PolicyEngine", app_name=url.rsplit("/", 1)[1])
    ep = StreamEpisode(
        tok,
        sample_id="x",
        question="what happens?",
        query_time=0.0,
        window=Window.from_config(cfg.data),
    )
    out = []
    for k, c in enumerate(codes):
        prompt = ep.add_chunk(Chunk(k, k + 1, c))
        l_r, l_s = engine.choice.remote(prompt, (r_id, s_id)).result(timeout_s=120)
        out.append(calibrated_p(l_r, l_s, shift))
        ep.add_decision([s_id], [l_s])
    return out


@pytest.mark.slow
def test_served_threshold_decoder_on_vllm(ray_local, tiny_path, tmp_path, synth_smoke):
    from streampro.actors.serve.deploy import local_deployment
    from streampro.replay import evaluate_endpoint

    cfg = _cfg(tmp_path, "decode.mode=threshold", "decode.threshold=1.0", "decode.shift=0")
    n = cfg.data.patch_grid**2
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, cfg.data.codebook_size, n).tolist() for _ in range(CHUNKS)]
    with local_deployment(cfg, tiny_path) as url:
        health = httpx.get(f"{url}/healthz").json()
        assert health["decode"]["mode"] == "threshold" and health["decode"]["threshold"] == 1.0
        silent = _stream(url, codes)
        want = _engine_p(url, cfg, tiny_path, codes, 0.0)
        # `streampro eval --endpoint` keeps p of every chunk, as the local threshold path
        manifest = synth_smoke / "test" / "manifest.jsonl"
        evaluate_endpoint(cfg, url, manifest, tmp_path / "eval")
    assert [d["decision"] for d in silent] == ["silence"] * CHUNKS
    assert {d["threshold"] for d in silent} == {1.0}
    assert [d["p_response"] for d in silent] == pytest.approx(want, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in want)
    (row,) = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").open()]
    assert row["responses"] == [] and len(row["decisions"]) >= 10
    assert [d["time"] for d in row["decisions"]] == [
        float(k + 1) for k in range(len(row["decisions"]))
    ]
    assert all(0.0 < d["p_response"] < 1.0 for d in row["decisions"])

    # the checkpoint's tuned file (threshold 0, shift 0.7) wins over threshold 1 of cfg
    tuned = DecodeConfig(mode="threshold", threshold=0.0, shift=0.7)
    folder = _tuned_copy(tiny_path, tmp_path / "tuned", tuned)
    with local_deployment(cfg, folder) as url:
        spoken = _stream(url, codes)
    # every chunk speaks (the random tiny policy may run out of tokens before `<|im_end|>`:
    # an invalid response, as in rollout's threshold episode)
    assert all(d["decision"] != "silence" and d["raw"].startswith("</Response>") for d in spoken)
    assert {d["threshold"] for d in spoken} == {0.0}
    # the first chunk's prompt is the same in both streams: the same logprobs, shifted by 0.7
    l_diff = math.log(want[0] / (1 - want[0]))
    assert spoken[0]["p_response"] == pytest.approx(calibrated_p(l_diff, 0.0, 0.7), abs=1e-5)


def test_serve_refuses_the_logit_bias_baseline(tiny_path):
    """decode.response_bias scores a baseline; a served policy never decodes with it."""
    from streampro.actors.serve.deploy import serve_app
    from streampro.config import ConfigError

    cfg = load_config(None, ["decode.response_bias=-1.0"])
    with pytest.raises(ConfigError, match="decode.response_bias"):
        serve_app(cfg, tiny_path)
