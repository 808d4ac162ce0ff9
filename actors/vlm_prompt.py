"""vLLM prompts with images for a stream of chunks, and the VLM engine settings vLLM CPU needs.

The dialogue holds each frame's placeholder EXPANDED (`<|vision_start|>` + one
`<|image_pad|>` per merged patch + `<|vision_end|>`, sized from the processor's grid by
`streampro.hf_policy.image_token_count`): those are the ids the learner scores. vLLM wants
the same prompt with ONE pad per image and expands it itself from the image it receives
(a pre-expanded token prompt would be expanded again). `image_prompt` collapses the runs,
checks each run against the processor's count for its image, and attaches the images as
`multi_modal_data`. vLLM's expansion of that prompt equals the dialogue's ids, so its
logprobs line up with the learner's token for token, and a prompt that extends the
previous chunk's prompt reuses its cached blocks (images included).

After a weight reload (`reload_weights`, through actors/vlm_worker.py), `reset_caches`
drops the encoder cache (image embeddings of the old
weights; vLLM dies with "Encoder cache miss" on a seen image otherwise) and then the
prefix cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.inputs import TokensPrompt

from streampro import vl_compat
from streampro.actors.vlm_worker import WORKER_EXTENSION
from streampro.errors import UserError
from streampro.hf_policy import image_token_count

# vLLM CPU with images needs whole 32-token blocks (docs/vlm.md).
CPU_BLOCK_MULTIPLE = 32


def image_runs(ids: Sequence[int], image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of the image pad in ids."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == image_token_id:
            j = i
            while j < n and ids[j] == image_token_id:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def collapse_placeholders(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Each run of image pads -> one pad (the form vLLM expands from the image)."""
    out: list[int] = []
    for t in ids:
        if t == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(t)
    return out


def image_prompt(
    ids: Sequence[int], images: Sequence[Any], *, image_token_id: int, processor
) -> TokensPrompt:
    """The vLLM prompt of a stream's expanded ids and its frames (PIL images, in order).

    Raises UserError when the placeholders do not match the images (count or size): a
    mismatch would silently shift every later position.
    """
    runs = image_runs(ids, image_token_id)
    if len(runs) != len(images):
        raise UserError(
            f"image prompt: {len(runs)} image placeholder(s) for {len(images)} image(s)"
        )
    for k, ((_, length), img) in enumerate(zip(runs, images)):
        want = image_token_count(processor, img.height, img.width)
        if length != want:
            raise UserError(
                f"image prompt: image {k} ({img.width}x{img.height}) needs {want} placeholder "
                f"tokens, the dialogue holds {length}"
            )
    prompt = TokensPrompt(prompt_token_ids=collapse_placeholders(ids, image_token_id))
    if images:
        prompt["multi_modal_data"] = {"image": list(images)}
    return prompt


def vlm_engine_kwargs(*, max_images: int, block_size: int, on_cpu: bool) -> dict[str, Any]:
    """Engine arguments a VLM needs on top of a text model's (AsyncEngineArgs keywords).

    Images only (video input stays off: it needs torchvision); on CPU the block size must
    be a multiple of 32. Also checks that vLLM's spawned processes get streampro.vl_compat.
    """
    if max_images < 1:
        raise UserError(f"max images per prompt must be >= 1, got {max_images}")
    if on_cpu and block_size % CPU_BLOCK_MULTIPLE:
        raise UserError(
            f"rollout.block_size: vLLM CPU with images needs a multiple of "
            f"{CPU_BLOCK_MULTIPLE}, got {block_size}"
        )
    vl_compat.install()
    vl_compat.check_vllm_plugin()
    return {
        "limit_mm_per_prompt": {"image": max_images, "video": 0},
        "worker_extension_cls": WORKER_EXTENSION,  # reload_vlm_weights (actors/vlm_worker.py)
    }


async def reset_caches(llm) -> None:
    """After new weights: encoder cache first (old image embeddings), then prefix cache."""
    await llm.reset_encoder_cache()
    await llm.reset_prefix_cache(reset_running_requests=True)


async def reload_weights(llm, weights_path: str) -> None:
    """Load an HF folder's weights into a running AsyncLLM in place and drop both caches.

    Needs the engine started with `vlm_engine_kwargs` (its worker extension re-processes the
    tied output head, which vLLM's own `reload_weights` leaves on the old weights on CPU).
    """
    await llm.collective_rpc("reload_vlm_weights", kwargs={"weights_path": weights_path})
    await reset_caches(llm)
