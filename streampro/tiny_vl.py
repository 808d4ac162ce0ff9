"""The `tiny-vl` policy: a tiny random Qwen2.5-VL built locally and deterministically.

Like `tiny` (streampro/tiny.py) it is content-addressed by its spec in the policy cache
folder and seeded, so the same spec gives the same bytes; nothing is downloaded. The folder
is a complete Hugging Face checkpoint: config, safetensors weights, a tokenizer whose stream
and decision tokens are single ids, a Qwen2.5-VL chat template, the PIL image processor's
`preprocessor_config.json` and a `video_preprocessor_config.json` (real checkpoints ship one
and vLLM's Qwen-VL code reads it even with video input off).

Shape (docs/vlm.md): text hidden 128, 2 layers, head_dim 64 (2 heads, one
KV head), mrope_section [8, 12, 12] (sums to head_dim / 2); vision depth 2, hidden 64, patch
14, spatial merge 2. vLLM's CPU attention accepts head_dim 64.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
)

from streampro import tokens as T
from streampro.public_models import QWEN2_5_VL_3B, QWEN3_VL_4B, reduced_depth
from streampro.tiny import _corpus, build_once

BUILDER_VERSION = 1  # bump when the build changes, so old cache folders are not reused
NAME = "tiny-vl"

# Qwen2.5-VL's vision markers (the names real checkpoints use, so processors find them).
VISION_START, VISION_END, IMAGE_PAD = T.VISION_START, T.VISION_END, T.IMAGE_PAD
VIDEO_PAD = "<|video_pad|>"
VISION_TOKENS = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# Qwen2.5-VL's own chat template, trimmed to what a stream uses (text and image parts;
# video parts render their placeholder too, for completeness).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The image processor's knobs (Qwen2.5-VL defaults except the pixel budget: a tiny model
# needs few image tokens; a frame over max_pixels is shrunk by the processor).
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_vl_spec(
    *,
    max_pixels: int = 112 * 112,
    vocab_size: int = 1024,
    max_position_embeddings: int = 8192,
    init_seed: int = 0,
    stream_tokens: bool = True,
    arch: str = "qwen2_5_vl",
    real_width_layers: int = 0,
) -> dict:
    """Everything that determines the tiny-vl policy's bytes (hashed into its folder name).

    stream_tokens=False leaves `</Silence>`/`</Response>` out of the tokenizer, as in a real
    checkpoint (streampro.hf_policy adds them). arch="qwen3_vl" builds a tiny Qwen3-VL
    instead (patch 16, interleaved mRoPE, deepstack), to test that family's path.
    real_width_layers=N builds the public Qwen2.5-VL-3B / Qwen3-VL-4B shape instead (every
    width, head count, mRoPE section and the 151,936-row embedding; streampro.public_models)
    with N text layers and N vision blocks, for checks at real width on CPU.
    """
    if arch not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"tiny-vl arch must be qwen2_5_vl or qwen3_vl, got {arch!r}")
    spec = {
        "version": BUILDER_VERSION,
        "arch": arch,
        "stream_tokens": stream_tokens,
        "max_pixels": max_pixels,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "init_seed": init_seed,
    }
    if real_width_layers:  # absent otherwise, so the tiny folders keep their cache names
        spec["real_width_layers"] = real_width_layers
    return spec


def build_tokenizer(bpe_vocab_size: int, *, stream_tokens: bool = True):
    """Byte-level BPE on the tiny corpus plus chat, decision and vision tokens (one id each)."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    decisions = [T.SILENCE, T.RESPONSE] if stream_tokens else []
    specials = [T.ENDOFTEXT, T.PAD, T.IM_START, T.IM_END] + decisions + VISION_TOKENS
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=T.IM_END,
        pad_token=T.PAD,
        unk_token=None,
        model_max_length=1 << 20,
        chat_template=CHAT_TEMPLATE,
    )


def _processor_files(out: Path, max_pixels: int, arch: str) -> None:
    """preprocessor_config.json (PIL image processor) and video_preprocessor_config.json."""
    qwen3 = arch == "qwen3_vl"
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "merge_size": MERGE_SIZE,
        "patch_size": 16 if qwen3 else PATCH_SIZE,
        "processor_class": "Qwen3VLProcessor" if qwen3 else "Qwen2_5_VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    image = {
        **common,
        "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels},
    }
    video = {
        **common,
        "video_processor_type": "Qwen3VLVideoProcessor" if qwen3 else "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels},
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 768,
        "do_sample_frames": False,
    }
    for name, body in (
        ("preprocessor_config.json", image),
        ("video_preprocessor_config.json", video),
    ):
        (out / name).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def model_config(tokenizer, n_vocab: int, spec: dict):
    """The tiny Qwen2.5-VL config (token ids from the tokenizer)."""

    ids = tokenizer.convert_tokens_to_ids
    text = {
        "vocab_size": n_vocab,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": spec["max_position_embeddings"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [8, 12, 12],
        },
        "eos_token_id": ids(T.IM_END),
        "pad_token_id": ids(T.PAD),
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "window_size": 112,
        "out_hidden_size": 128,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }
    return _vl_config(Qwen2_5_VLConfig, tokenizer, text, vision)


def qwen3_config(tokenizer, n_vocab: int, spec: dict):
    """A tiny Qwen3-VL: same text shape, interleaved mRoPE, patch 16, one deepstack layer."""

    ids = tokenizer.convert_tokens_to_ids
    text = {
        "vocab_size": n_vocab,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "max_position_embeddings": spec["max_position_embeddings"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [12, 10, 10],
            "mrope_interleaved": True,
        },
        "eos_token_id": ids(T.IM_END),
        "pad_token_id": ids(T.PAD),
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": 128,
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": [0],
    }
    return _vl_config(Qwen3VLConfig, tokenizer, text, vision)


def real_width_config(tokenizer, spec: dict):
    """The public model's config at reduced depth, with this tokenizer's special ids."""
    public = QWEN3_VL_4B if spec["arch"] == "qwen3_vl" else QWEN2_5_VL_3B
    hf = reduced_depth(public, layers=spec["real_width_layers"])
    ids = tokenizer.convert_tokens_to_ids
    hf["text_config"].update(eos_token_id=ids(T.IM_END), pad_token_id=ids(T.PAD), bos_token_id=None)
    cls = Qwen3VLConfig if spec["arch"] == "qwen3_vl" else Qwen2_5_VLConfig
    return _vl_config(cls, tokenizer, hf["text_config"], hf["vision_config"])


def _vl_config(cls, tokenizer, text: dict, vision: dict):
    """A Qwen-VL config with the tokenizer's vision ids, tied head, saved in fp32."""
    ids = tokenizer.convert_tokens_to_ids
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids(IMAGE_PAD),
        video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        tie_word_embeddings=True,
        torch_dtype="float32",
    )


def build_tiny_vl(spec: dict, out_dir: str | os.PathLike) -> Path:
    """Write tokenizer, processor files and a seeded random Qwen2.5-VL to out_dir."""

    out = Path(out_dir)
    tokenizer = build_tokenizer(spec["vocab_size"], stream_tokens=spec["stream_tokens"])
    n_vocab = (len(tokenizer) + 63) // 64 * 64  # pad the embedding to a multiple of 64
    if spec["arch"] == "qwen3_vl":
        from transformers import Qwen3VLForConditionalGeneration as cls

        config = qwen3_config(tokenizer, n_vocab, spec)
    else:
        cls = Qwen2_5_VLForConditionalGeneration
        config = model_config(tokenizer, n_vocab, spec)
    if spec.get("real_width_layers"):
        config = real_width_config(tokenizer, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["init_seed"])
        model = cls(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _processor_files(out, spec["max_pixels"], spec["arch"])
    (out / "streampro_tiny_vl.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return out


def ensure_tiny_vl(spec: dict, cache_dir: str | os.PathLike) -> Path:
    """The tiny-vl folder, built once per spec."""

    return build_once(
        spec, cache_dir, name=NAME, marker="streampro_tiny_vl.json", build=build_tiny_vl
    )


def policy_path(policy_cfg, *, seed: int) -> str:
    """The tiny-vl folder for a PolicyConfig whose name_or_path is 'tiny-vl' (seed = run.seed)."""
    spec = tiny_vl_spec(
        vocab_size=policy_cfg.vocab_size,
        max_position_embeddings=policy_cfg.max_position_embeddings,
        init_seed=seed,
    )
    return str(ensure_tiny_vl(spec, policy_cfg.cache_dir))
