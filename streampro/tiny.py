"""The `tiny` policy: a locally trained BPE tokenizer plus a small Qwen2 causal LM.

Built deterministically (same config, same bytes) into a folder named by a hash of its
config, in Hugging Face format, so that transformers, DeepSpeed and vLLM load the very same
files. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from streampro import tokens as T

BUILDER_VERSION = 1  # bump when the build changes, so old cache folders are not reused

# A deterministic corpus covering what streams say: the system prompt, chunk stamps,
# question/answer vocabulary of StreamPro-Synth, numbers. Byte-level BPE covers the rest.
_WORDS = (
    "red green blue yellow purple orange white cyan magenta pink grey black "
    "square circle triangle ball box star diamond cross object shape "
    "left right top bottom side enters entered from the a an to of at and then "
    "changes changed colour color new now is was it bounce bounces bounced wall count "
    "so far started stopped moving moves stop start step next plan done complete "
    "warning warn collision collide impact hazard approaching obstacle alert unusual "
    "anomaly teleport teleported flicker flickered impossible motion jump appears "
    "disappears seconds second s tell me when if anything happens each time after before "
    "which what where how many number announce report following goal "
)
# Words StreamPro-Synth's questions and answers use that the list above lacks (word_repeats only).
_MORE_WORDS = "go pad pads hits hit off stops plan alert warn each when tell "


def _corpus(word_repeats: int = 0) -> list[str]:
    """The tokenizer's training text. `word_repeats` > 0 adds the words as they appear
    mid-sentence (" cyan") that many times, plus _MORE_WORDS, so BPE spends merges on whole
    words before rare number pieces (with 0, " cyan" and " circle" are " c"+"yan" and
    " c"+"ircle")."""
    words = _WORDS + _MORE_WORDS if word_repeats else _WORDS  # 0: the original corpus bytes
    lines = [T.SYSTEM_PROMPT, words, words.upper(), words.title()]
    lines += [" " + words] * word_repeats
    lines += [T.chunk_stamp(t, t + 1) for t in range(600)]
    lines += [f"{a}-{b} {a}.5 {a} to {b} seconds" for a in range(0, 200, 3) for b in (a + 4, a + 9)]
    lines += [f"step {i}: {w}" for i, w in enumerate(words.split())]
    return lines


def tiny_spec(
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
    max_position_embeddings: int,
    init_seed: int,
    codebook_size: int = T.DEFAULT_CODEBOOK_SIZE,
    word_repeats: int = 0,
    frame_layout: str = "code",
    patch_cells: int = 16,
) -> dict:
    """Everything that determines the tiny policy's bytes (hashed into its folder name). The
    frame layout enters only when it is not 'code', so code-layout folders keep their names."""
    layout = {} if frame_layout == "code" else {"frame_layout": frame_layout, "cells": patch_cells}
    return {
        **layout,
        "version": BUILDER_VERSION,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "init_seed": init_seed,
        "codebook_size": codebook_size,
        "word_repeats": word_repeats,
    }


def build_tokenizer(
    bpe_vocab_size: int,
    codebook_size: int,
    word_repeats: int = 0,
    frame_layout: str = "code",
    cells: int = 16,
):
    """Train the byte-level BPE tokenizer and add decision, chat and frame tokens (of
    `frame_layout`, streampro/tokens.py; `cells` = patches per frame)."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(word_repeats), trainer=trainer)
    specials = T.SPECIAL_TOKENS + T.frame_tokens(codebook_size, frame_layout, cells)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=T.IM_END,
        pad_token=T.PAD,
        unk_token=None,
        model_max_length=1 << 20,
    )


def build_tiny(spec: dict, out_dir: str | os.PathLike) -> Path:
    """Write tokenizer + randomly initialised Qwen2 (seeded) to out_dir."""

    out = Path(out_dir)
    tokenizer = build_tokenizer(
        spec["vocab_size"],
        spec["codebook_size"],
        spec["word_repeats"],
        spec.get("frame_layout", "code"),
        spec.get("cells", 16),
    )
    n_vocab = (len(tokenizer) + 63) // 64 * 64  # pad the embedding to a multiple of 64
    config = Qwen2Config(
        vocab_size=n_vocab,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        rope_theta=10000.0,
        eos_token_id=tokenizer.convert_tokens_to_ids(T.IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(T.PAD),
        bos_token_id=None,
        torch_dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["init_seed"])
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "streampro_tiny.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return out


def build_once(
    spec: dict,
    cache_dir: str | os.PathLike,
    *,
    name: str,
    marker: str,
    build: Callable[[dict, Path], Path],
) -> Path:
    """`cache_dir/{name}-{hash of spec}`, built once by `build(spec, folder)` (content-addressed):
    into a temporary folder that is renamed into place, so no reader sees a half-built one.
    `marker` is the file whose presence says the folder is complete."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    final = Path(cache_dir) / f"{name}-{digest}"
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process built it first
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_tiny(spec: dict, cache_dir: str | os.PathLike) -> Path:
    """The tiny policy's folder, built once per spec."""
    return build_once(spec, cache_dir, name="tiny", marker="streampro_tiny.json", build=build_tiny)


def resolve_policy(
    name_or_path: str,
    *,
    cache_dir: str,
    codebook_size: int = T.DEFAULT_CODEBOOK_SIZE,
    **tiny_fields: int | str,
) -> str:
    """'tiny' -> the built folder; anything else is returned unchanged (HF folder or hub id)."""
    if name_or_path != "tiny":
        return name_or_path
    spec = tiny_spec(codebook_size=codebook_size, **tiny_fields)  # type: ignore[arg-type]
    return str(ensure_tiny(spec, cache_dir))


def policy_path(
    policy_cfg, *, seed: int, codebook_size: int = T.DEFAULT_CODEBOOK_SIZE, patch_grid: int = 4
) -> str:
    """Resolve a PolicyConfig (the one place that unpacks it into flat arguments). `seed` is
    run.seed: the built-in policy's initial weights depend on it, like the data order."""
    p = policy_cfg
    return resolve_policy(
        p.name_or_path,
        cache_dir=p.cache_dir,
        codebook_size=codebook_size,
        frame_layout=p.frame_tokens,
        patch_cells=patch_grid * patch_grid,
        hidden_size=p.hidden_size,
        num_layers=p.num_layers,
        num_heads=p.num_heads,
        num_kv_heads=p.num_kv_heads,
        intermediate_size=p.intermediate_size,
        vocab_size=p.vocab_size,
        max_position_embeddings=p.max_position_embeddings,
        init_seed=seed,
        word_repeats=p.word_repeats,
    )
