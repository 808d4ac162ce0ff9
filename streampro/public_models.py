"""The shapes of the public checkpoints the shipped GPU configs name, from their config.json.

Nothing is downloaded here, so `streampro plan` can size `Qwen/Qwen2.5-VL-3B-Instruct` or
`Qwen/Qwen3-VL-4B-Instruct` before any weight exists locally, and `bench real-width` can
build random-weight models with exactly these dimensions (only the layer counts cut). The
values are the published `config.json` files of the two Hugging Face repositories.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

QWEN2_5_VL_3B: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "tie_word_embeddings": True,
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128000,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [16, 24, 24],
        },
        "tie_word_embeddings": True,
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
}

QWEN3_VL_4B: dict[str, Any] = {
    "model_type": "qwen3_vl",
    "tie_word_embeddings": True,
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": True,
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2560,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
        "hidden_act": "gelu_pytorch_tanh",
    },
}

PUBLIC: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN2_5_VL_3B,
    "Qwen/Qwen3-VL-4B-Instruct": QWEN3_VL_4B,
}


def public_config(name: str) -> dict[str, Any] | None:
    """A deep copy of a known hub id's config (None for any other name)."""
    found = PUBLIC.get(name)
    return copy.deepcopy(found) if found is not None else None


def reduced_depth(config: dict[str, Any], *, layers: int) -> dict[str, Any]:
    """The same widths with `layers` text layers and vision blocks. Window attention keeps a
    full-attention block (the last) and deepstack keeps one tap per kept block, so each
    mechanism of the full model still runs."""
    out = copy.deepcopy(config)
    out["text_config"]["num_hidden_layers"] = layers
    vision = out["vision_config"]
    vision["depth"] = layers
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [layers - 1]
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = list(range(min(layers, 3)))
    return out


def local_config(folder: str | Path) -> dict[str, Any] | None:
    """config.json of a local Hugging Face folder (None when there is none)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None
