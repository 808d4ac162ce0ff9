"""A vLLM worker extension: reload weights in place, then refresh the tied output head.

vLLM CPU packs every linear weight at load (oneDNN / sgl kernels); the output head of a
model with tied embeddings (Qwen2.5-VL-3B, Qwen3-VL-4B, tiny-vl) keeps its packed copy of
the embedding. `reload_weights` reloads the embedding but never re-processes the head, which
has no weight of its own in the checkpoint: measured on tiny-vl, logits after a reload came
from the new body and the OLD head (0.4 nats off). `reload_vlm_weights` re-runs the head's
post-load processing after the reload. On GPU nothing is packed and the extra step is a no-op.
Every engine uses it (actors/engine.py): the text tiny policy ties its head too (measured:
learner vs vLLM logprobs up to 1.05 apart after one lr-1e-2 step, 1e-6 with the refresh).

Engines load it with `worker_extension_cls=WORKER_EXTENSION` (actors/vlm_prompt.py adds it
to a VLM's engine arguments) and call it with
`collective_rpc("reload_vlm_weights", kwargs={"weights_path": folder})`.
"""

from __future__ import annotations

from safetensors.torch import load as safetensors_load

WORKER_EXTENSION = "streampro.actors.vlm_worker.VLMWorkerExtension"


def refresh_output_heads(model) -> int:
    """Re-run post-load processing of every vocab-parallel output head; returns the count."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    n = 0
    for module in model.modules():
        if isinstance(module, ParallelLMHead):
            module.quant_method.process_weights_after_loading(module)
            n += 1
    return n


class VLMWorkerExtension:
    """Mixed into vLLM's worker class (`self` is the worker)."""

    def reload_vlm_weights(self, weights_path: str) -> int:
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        return refresh_output_heads(self.model_runner.get_model())  # type: ignore[attr-defined]

    def load_vlm_weights_blob(self, blob: bytes) -> int:
        """`reload_vlm_weights` from memory: a safetensors blob (tensors themselves do not
        survive vLLM's RPC encoding, bytes do), then the same head refresh."""
        weights = safetensors_load(blob)
        self.reload_weights(weights_iterator=iter(weights.items()))  # type: ignore[attr-defined]
        return refresh_output_heads(self.model_runner.get_model())  # type: ignore[attr-defined]

    def refresh_vlm_heads(self) -> int:
        """The head refresh alone, after weights arrived through vLLM's weight transfer."""
        return refresh_output_heads(self.model_runner.get_model())  # type: ignore[attr-defined]
