"""Ray Serve deployment of the policy (actors/serve.py) over loopback HTTP, tiny policy, vLLM.

Known answer: the decisions served over HTTP equal those of the plain transformers streaming
loop (`HFStreamPolicy`, greedy) on the same stream, token for token (`raw`). The random tiny
policy writes the same token at every step, so its weights are scaled up first: its outputs
then depend on the frames and the context, which makes the comparison meaningful.
"""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
QUESTION = "tell me when the red square changes colour"
MAX_ANSWER = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(n: int = 8, seed: int = 0) -> tuple[list[np.ndarray], list[list[int]]]:
    from streampro.data.codec import PatchTokenCodec

    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(n)]
    return frames, [PatchTokenCodec().encode(f) for f in frames]


def _png(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


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
def served(ray_local, policy):
    from ray import serve

    from streampro.actors.serve import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {
            "checkpoint": policy,
            "engine": "vllm",
            "max_answer_tokens": MAX_ANSWER,
            "kv_cache_gb": 0.5,
            "num_cpus": 1.0,
            "max_sessions": 2,
        }
    )
    serve.run(app, name="streampro-test", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_served_decisions_equal_the_transformers_loop(served, policy):
    import requests

    from streampro.actors.api import Sampling
    from streampro.actors.hf_loop import HFStreamPolicy

    frames, codes = _stream()
    sid = requests.post(f"{served}/sessions", json={"question": QUESTION, "query_time": 0}).json()[
        "id"
    ]
    got = []
    for i, (frame, c) in enumerate(zip(frames, codes)):
        body = {"start": i, "end": i + 1}
        body.update({"frame": _png(frame)} if i % 3 == 1 else {"codes": c})  # both input kinds
        r = requests.post(f"{served}/sessions/{sid}/chunk", json=body)
        assert r.status_code == 200, r.text
        got.append(r.json())
    closed = requests.delete(f"{served}/sessions/{sid}").json()
    assert closed["steps"] == len(frames)

    ref = HFStreamPolicy(policy, max_answer_tokens=MAX_ANSWER).run_episode(
        SimpleNamespace(
            sample=SimpleNamespace(id="ref", question=QUESTION, query_time=0.0),
            times=[(float(i), float(i + 1)) for i in range(len(codes))],
            codes=codes,
        ),
        sampling=Sampling(temperature=0.0, max_answer_tokens=MAX_ANSWER),
    )
    assert [(g["decision"], g["text"], g["raw"], g["time"]) for g in got] == [
        (s.decision, s.text, s.raw, s.time) for s in ref.steps
    ]
    assert closed["responses"] == ref.responses()
    assert len({g["raw"] for g in got}) > 1  # the outputs do depend on the stream


@pytest.mark.slow
def test_bad_requests_are_named_errors(served):
    import requests

    sid = requests.post(f"{served}/sessions", json={"question": "q"}).json()["id"]
    url = f"{served}/sessions/{sid}/chunk"
    ok = [0] * 16

    def detail(body: dict, status: int = 422) -> str:
        r = requests.post(url, json=body)
        assert r.status_code == status, r.text
        return r.json()["detail"]

    assert "expected 16 codes" in detail({"start": 0, "end": 1, "codes": [0] * 3})
    assert "outside the codebook" in detail({"start": 0, "end": 1, "codes": [64] * 16})
    assert "exactly one of" in detail(
        {"start": 0, "end": 1, "codes": ok, "frame": _png(np.zeros((8, 8, 3), np.uint8))}
    )
    assert "chunk.frame" in detail({"start": 0, "end": 1, "frame": "not base64!"})
    assert "chunk.end" in detail({"start": 2, "end": 2, "codes": ok})
    assert requests.post(url, json={"start": 0, "end": 1, "codes": ok}).status_code == 200
    assert "before the previous chunk" in detail({"start": 0.5, "end": 1.5, "codes": ok})
    assert requests.post(f"{served}/sessions", json={"question": ""}).status_code == 422
    # max_sessions=2: one more is fine, the third is refused until one closes
    other = requests.post(f"{served}/sessions", json={"question": "q2"}).json()["id"]
    assert requests.post(f"{served}/sessions", json={"question": "q3"}).status_code == 503
    assert requests.delete(f"{served}/sessions/{sid}").status_code == 200
    assert "unknown" in detail({"start": 1, "end": 2, "codes": ok}, status=404)
    assert requests.delete(f"{served}/sessions/{other}").status_code == 200


def test_build_app_rejects_unknown_arguments():
    from streampro.actors.serve import build_app

    with pytest.raises(ValueError, match=r"unknown app argument\(s\) \['chekpoint'\]"):
        build_app({"chekpoint": "/x"})
    with pytest.raises(ValueError, match="'checkpoint'"):
        build_app({})


def test_serve_cli_bad_checkpoint_is_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "serve", "--checkpoint", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1 and "not a Hugging Face model folder" in r.stderr
    assert "Traceback" not in r.stderr
