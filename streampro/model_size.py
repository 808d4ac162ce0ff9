"""A model's parameter counts by part and the shapes its memory scales with, counted on the
meta device from its config.json (no weights, no memory): what `streampro plan` and the
learner check size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from streampro.lora import LORA_TARGETS


@dataclass(frozen=True)
class ModelSize:
    """What a model's memory scales with: parameter counts by part, and the text shapes."""

    text_params: int
    """Decoder layers, norms and the input embedding (tied: also the LM head)."""
    head_params: int
    """An untied LM head (0 when tied to the embedding)."""
    vision_params: int
    """Vision tower and merger (0 for a text model)."""
    lora_params: int
    """Adapters at learner.lora_rank (0 when LoRA is off)."""
    layers: int
    hidden: int
    intermediate: int
    q_dim: int
    """heads x head_dim."""
    kv_dim: int
    """KV heads x head_dim."""
    kv_heads: int
    vocab: int
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_depth: int = 0
    vision_patch: int = 14

    @property
    def total(self) -> int:
        return self.text_params + self.head_params + self.vision_params

    def layer_activations(self) -> int:
        """Elements one decoder layer saves per token for backward: the two norms' inputs
        and outputs, q/k/v and the attention output, and SwiGLU's gate, up, act and product."""
        return 4 * self.hidden + self.q_dim + 2 * self.kv_dim + self.q_dim + 4 * self.intermediate


def model_size(hf: dict[str, Any], *, lora_rank: int) -> ModelSize:
    """Parameter counts by part, from the model built on the meta device (no memory)."""
    body = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model(hf["model_type"], **body)
    vl = "vision_config" in hf
    with torch.device("meta"):
        auto = AutoModelForImageTextToText if vl else AutoModelForCausalLM
        model = auto.from_config(config)
    parts = {"vision": 0, "head": 0, "text": 0}
    for name, p in model.named_parameters():  # a tied head shares the embedding: counted once
        key = "vision" if ".visual." in f".{name}" else "head" if "lm_head" in name else "text"
        parts[key] += p.numel()
    lora = 0
    if lora_rank > 0:
        pattern = re.compile(LORA_TARGETS)
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and pattern.match(name):
                lora += lora_rank * (mod.in_features + mod.out_features)
    text = hf.get("text_config", hf)
    vision = hf.get("vision_config", {})
    heads, kv_heads = text["num_attention_heads"], text["num_key_value_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    return ModelSize(
        text_params=parts["text"],
        head_params=parts["head"],
        vision_params=parts["vision"],
        lora_params=lora,
        layers=text["num_hidden_layers"],
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        q_dim=heads * head_dim,
        kv_dim=kv_heads * head_dim,
        kv_heads=kv_heads,
        vocab=text["vocab_size"],
        vision_hidden=vision.get("hidden_size", 0),
        vision_intermediate=vision.get("intermediate_size", 0),
        vision_depth=vision.get("depth", 0),
        vision_patch=vision.get("patch_size", 14),
    )
