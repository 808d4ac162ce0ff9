"""Foundation: packaging, config, CLI and the tiny policy."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from streampro import tokens as T
from streampro.cli import COMMANDS
from streampro.config import Config, ConfigError, load_config
from streampro.tiny import build_tiny, tiny_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = tiny_spec(
    hidden_size=64,
    num_layers=1,
    num_heads=1,
    num_kv_heads=1,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=2048,
    init_seed=0,
)


def _run(args: list[str], cwd: Path | str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_namespaced_imports_from_another_folder(tmp_path):
    ok = _run(
        [
            sys.executable,
            "-c",
            (
                "import streampro.data, streampro.actors, streampro.learners, "
                "streampro.rewards, streampro.bench, streampro.cluster"
            ),
        ],
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    for generic in ("data", "actors", "learners", "rewards", "bench", "cluster"):
        bad = _run([sys.executable, "-c", f"import {generic}"], cwd=tmp_path)
        assert bad.returncode != 0, f"generic top-level module {generic!r} is importable"


def test_cli_lists_every_subcommand_and_each_has_help():
    out = _run([sys.executable, "-m", "streampro.cli", "--help"])
    assert out.returncode == 0
    for name in ("synth", "data", "sft", "grpo", "train", "eval", "serve", "submit", "bench"):
        assert name in out.stdout
        assert name in COMMANDS
    for name in COMMANDS:
        assert _run([sys.executable, "-m", "streampro.cli", name, "--help"]).returncode == 0


def test_unknown_config_key_is_a_one_line_error():
    out = _run([sys.executable, "-m", "streampro.cli", "report", "x", "grpo.no_such_key=1"])
    assert out.returncode == 1
    assert "grpo.no_such_key" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ConfigError, match="grpo.group_size"):
        load_config(None, ["grpo.group_size=many"])


def test_yaml_configs_load_and_dotlist_overrides():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        # GPU configs refuse at load what this machine lacks (tests/test_vlm_configs.py)
        gpu = ["data.codec=patch", "reward.llm_url=http://judge/v1"]
        cfg = load_config(path, ["grpo.group_size=4", "rollout.num_actors=2", *gpu])
        assert cfg.grpo.group_size == 4 and cfg.rollout.num_actors == 2
    # Defaults are the paper's values (the paper).
    d = Config()
    assert (
        d.grpo.group_size,
        d.grpo.lr,
        d.grpo.batch_samples,
        d.grpo.temperature if hasattr(d.grpo, "temperature") else 1.0,
    ) == (8, 1e-6, 16, 1.0)
    assert (d.reward.w_fmt, d.reward.w_turn, d.reward.w_traj, d.reward.tau) == (
        0.1,
        0.45,
        0.45,
        8.0,
    )
    assert (d.sft.beta, d.sft.lambda_text, d.data.window_turns, d.data.fps) == (
        0.9999,
        2.0,
        200,
        1.0,
    )


def test_every_config_field_has_a_docstring():
    tree = ast.parse((REPO / "streampro" / "config.py").read_text())
    missing = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        if cls.name == "Config":
            continue
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                    missing.append(f"{cls.name}.{node.target.id}")
    assert not missing, missing


def test_tiny_policy_builds_to_identical_files(tmp_path):
    a, b = build_tiny(SPEC, tmp_path / "a"), build_tiny(SPEC, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors


def test_word_repeats_makes_synth_words_single_tokens():
    """policy.word_repeats: with 0 the tokenizer keeps its original merges, where " cyan" and
    " circle" share the piece " c"; with 20 every colour, shape and side is one token."""
    from streampro.tiny import build_tokenizer

    def pieces(tok, text: str) -> list[str]:
        return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))

    plain, words = build_tokenizer(1024, 64, 0), build_tokenizer(1024, 64, 20)
    assert pieces(plain, " cyan circle") == ["Ġc", "yan", "Ġc", "ircle"]
    answer = " magenta diamond from left"
    assert pieces(words, answer) == ["Ġ" + w for w in answer.split()]
    for w in [
        "red",
        "green",
        "blue",
        "yellow",
        "orange",
        "cyan",
        "magenta",
        "circle",
        "square",
        "triangle",
        "top",
        "bottom",
    ]:
        assert len(pieces(words, " " + w)) == 1, w
    assert len(words) == len(plain)  # the same vocabulary size: only the merges differ


def test_decision_and_special_tokens_are_single_ids(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    for s in T.SPECIAL_TOKENS + T.frame_tokens():
        assert len(tok.encode(s, add_special_tokens=False)) == 1, s
    ids = tok.encode(T.RESPONSE + " red square from left" + T.IM_END, add_special_tokens=False)
    assert ids[0] == tok.convert_tokens_to_ids(T.RESPONSE) and ids[-1] == tok.convert_tokens_to_ids(
        T.IM_END
    )
    frame_ids = [tok.convert_tokens_to_ids(t) for t in T.frame_tokens()]
    assert frame_ids == list(range(frame_ids[0], frame_ids[0] + len(frame_ids)))  # contiguous


def test_vllm_and_transformers_agree_on_next_token_logprobs(tiny_path):
    """The same files load in both; next-token logprobs of a fixed prompt agree (fp32)."""
    code = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    tok = AutoTokenizer.from_pretrained({tiny_path!r})
    ids = tok.encode({T.SYSTEM_PROMPT!r} + "<0s-1s><|frame|><|v3|><|v9|><|/frame|>", add_special_tokens=False)
    llm = LLM(model={tiny_path!r}, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
    out = llm.generate([{{"prompt_token_ids": ids}}], SamplingParams(max_tokens=1, logprobs=20, temperature=0))
    top = out[0].outputs[0].logprobs[0]
    model = AutoModelForCausalLM.from_pretrained({tiny_path!r}, dtype=torch.float32)
    ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    print("LOGPROB_DIFF", json.dumps(max(abs(ref[k].item() - v.logprob) for k, v in top.items())))
"""
    out = _run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(
        next(ln for ln in out.stdout.splitlines() if ln.startswith("LOGPROB_DIFF")).split()[1]
    )
    assert diff < 1e-3
