"""LoRA on the language model of a policy (peft), and merging adapters back for export.

Light on purpose (torch and peft): `streampro plan` counts adapter parameters with the same
target pattern, and the GPU learner check runs where Ray and DeepSpeed are absent.
"""

from __future__ import annotations

from typing import cast

import torch
from peft import LoraConfig, inject_adapter_in_model

# LoRA targets: the language model's attention and MLP projections (never the vision tower,
# whose blocks reuse the MLP names in Qwen-VL); matched against full module names.
LORA_TARGETS = r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def add_lora(model: torch.nn.Module, *, rank: int, alpha: float) -> None:
    """Inject LoRA adapters (peft) in place; only they train. B starts at 0: same outputs."""
    # peft annotates lora_alpha as int but scales by lora_alpha / r: a float is taken as is
    cfg = LoraConfig(
        r=rank, lora_alpha=cast(int, alpha), lora_dropout=0.0, target_modules=LORA_TARGETS
    )
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


def merge_lora(state: dict[str, torch.Tensor], *, scale: float) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict with each adapter merged into its layer, under the base
    model's own key names (what vLLM and transformers load)."""
    out: dict[str, torch.Tensor] = {}
    for key, w in state.items():
        if ".lora_" in key:
            continue
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            a = state[f"{stem}.lora_A.default.weight"].float()  # [r, in]
            b = state[f"{stem}.lora_B.default.weight"].float()  # [out, r]
            out[f"{stem}.weight"] = (w.float() + scale * (b @ a)).to(w.dtype)
        else:
            out[key.replace(".base_layer.", ".")] = w
    return out
