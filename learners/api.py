"""The learner group's interface: one Protocol, an in-process and a Ray implementation.

A batch is a dict of CPU tensors, all `[B, T]` unless noted:
  input_ids (long), position_ids (long, restart at 0 per packed sequence),
  seq_ids (long, which packed sequence a token belongs to, -1 = padding),
  loss_mask (float 0/1: supervised / policy-generated tokens, aligned with input_ids:
  loss_mask[b, t] = 1 means token t is predicted from tokens < t),
  SFT:  decision_class (long: -1 none, 0 silence, 1 response),
  GRPO: advantages (float, per token), old_logprobs, ref_logprobs (float, optional).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

Batch = dict[str, torch.Tensor]


class LearnerGroupAPI(Protocol):
    def train_step(self, *, batch: Batch, objective: str) -> dict[str, float]:
        """One optimiser step on the global batch; returns reduced metrics. `objective` ('sft'
        or 'grpo') names what the batch is for: a group trains the one it was built for
        (`make_learner_group(objective=...)`) and refuses the other."""
        ...

    def logprobs(
        self, *, batch: Batch, reference: bool = False, version: int | None = None
    ) -> torch.Tensor:
        """Per-token logprobs `[B, T]` under the policy (or the frozen reference, or the weights
        kept as policy `version`), at the sampling temperature, at the tokens a loss scores
        (`loss_mask`); 0 elsewhere, so the model never computes the rest."""
        ...

    def keep_weights(self, *, version: int) -> None:
        """Keep the current weights as policy `version` (the two newest are kept)."""
        ...

    def save_checkpoint(self, *, path: str, client_state: dict | None = None) -> None: ...

    def load_checkpoint(self, *, path: str) -> dict: ...

    def export_hf(self, *, path: str) -> str:
        """Write a Hugging Face folder (safetensors + tokenizer) that transformers and vLLM load."""
        ...

    def weights_blob(self, *, dtype: str) -> bytes:
        """The weights an HF export would hold (engine names, LoRA merged, in `dtype`) as one
        safetensors blob in memory: the colocated CPU handoff, with no file."""
        ...

    def init_weight_sync(self, *, client: Any, dtype: str, timeout_s: float) -> None:
        """GPU, once per run: open vLLM's NCCL weight transfer from learner rank 0 to the
        rollout engines behind `client` (actors/weight_transfer.py EngineSyncClient);
        `dtype` is the engines' (weights go out in it). Raises TimeoutError after timeout_s."""
        ...

    def send_weights(self, *, version: int) -> float:
        """GPU: broadcast every parameter, whole (ZeRO-3 gathered, LoRA merged), to the
        engines through vLLM's start/update/finish weight update; returns seconds. Every
        remote step is bounded by the init's timeout_s and raises TimeoutError past it."""
        ...

    def offload_states(self, *, include: list[str], pin_memory: bool = True) -> list[str]:
        """Colocated mode, while the engines generate: move the named ZeRO states (DeepSpeed's
        `OffloadStateTypeEnum` values: 'optim_states', 'hp_params', ...) to host memory on
        every rank; returns those moved (none on CPU ranks or under ZeRO 0). Training raises
        until `reload_states`."""
        ...

    def reload_states(self) -> list[str]:
        """Bring the offloaded states back to the GPU (before the next step); returns them."""
        ...

    def shutdown(self) -> None: ...
