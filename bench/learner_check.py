"""One SFT step and one GRPO learner step of a public VLM's exact shape with random weights:
peak memory against `streampro plan`'s terms, time, and MFU on a GPU.

It needs torch, transformers and peft (plus omegaconf, a pure-Python wheel), no vLLM, Ray or
DeepSpeed, so it runs on a bare GPU box:

    python -m streampro.bench.learner_check --arch qwen2_5_vl --frames 200 --out OUT.json

On a GPU it runs in bf16 at full depth (Qwen2.5-VL-3B: 36 layers) on a 200-frame row of
308x308 frames (121 image tokens each). On CPU the same code runs at reduced depth
(`--layers 2`) and fewer frames, fp32, which is how CI and `docs/results.md` check the plan.
The peak compared with the plan is the largest sum of live tensors, as the plan counts them:
`torch.cuda.max_memory_allocated` on a GPU, and on CPU the same quantity from the profiler's
memory timeline (weights, gradients, optimizer states, activations and autograd buffers; the
row's inputs, made before the steps, excluded). Not the process's resident set: the CPU
allocator's retained and fragmented pages (about 3x the tensors at tiny-vl's hidden size of
128) and the profiler's own records come on top of it, as a GPU's allocator cache does. The
learner here is one process with AdamW, which the plan describes as one rank at ZeRO stage 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoConfig, AutoModelForImageTextToText

from streampro.cluster.plan import GB, learner_terms
from streampro.config import Config, atomic_write_text, load_config
from streampro.learners.grpo_loss import policy_loss
from streampro.lora import add_lora
from streampro.model_size import model_size
from streampro.public_models import QWEN2_5_VL_3B, QWEN3_VL_4B, local_config, reduced_depth
from streampro.tiny_vl import ensure_tiny_vl, tiny_vl_spec

ARCHS = {"qwen2_5_vl": QWEN2_5_VL_3B, "qwen3_vl": QWEN3_VL_4B}
BF16_DENSE_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # vendor dense bf16 peaks
VISION_START, IMAGE_PAD, VISION_END = 151652, 151655, 151653  # the public token ids
TINY_CACHE = ".cache/streampro/models"
INPUT_COLUMN = 3  # memory timeline columns: unused, PARAMETER, OPTIMIZER_STATE, INPUT, ...


def arch_config(arch: str, layers: int) -> dict:
    """The config.json of the shape to check: a public one (at `layers`, 0 = all), or the
    built-in tiny-vl (built locally, seconds)."""
    if arch == "tiny_vl":
        found = local_config(ensure_tiny_vl(tiny_vl_spec(), TINY_CACHE))
        assert found is not None  # the builder writes config.json
        return found
    return ARCHS[arch] if layers == 0 else reduced_depth(ARCHS[arch], layers=layers)


def cpu_tensor_peak(run: Callable[[], None]) -> float:
    """GB: the largest sum of live CPU tensors while `run` runs, inputs made before it
    excluded (what `torch.cuda.max_memory_allocated` reports on a GPU), from the profiler's
    memory timeline (its rows hold bytes per category; the INPUT column is dropped)."""
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        run()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())  # [T], [T][1 + categories]
    return max(sum(row) - row[INPUT_COLUMN] for row in sizes) / GB


def check_config(args: argparse.Namespace, hf: dict, tokens: int, precision: str) -> Config:
    """The plan's view of this run: one rank, ZeRO-0, this row."""
    return load_config(
        None,
        [
            "learner.num_ranks=1",
            "learner.zero_stage=0",
            "learner.micro_batch=1",
            f"learner.precision={precision}",
            f"learner.lora_rank={args.lora_rank}",
            "learner.freeze_vision=true",
            f"learner.gradient_checkpointing={str(args.checkpointing).lower()}",
            "data.codec=image",
            f"data.window_turns={args.frames}",
            f"data.window_slide={args.frames}",
            f"data.image_max_pixels={_side(args, hf) ** 2}",
            f"sft.max_seq_len={tokens}",
            f"rollout.max_model_len={tokens}",
            f"rollout.max_answer_tokens={args.answer_tokens}",
            "grpo.kl_coef=0",
            "policy.name_or_path=tiny-vl",
        ],
    )


def _side(args: argparse.Namespace, hf: dict) -> int:
    """The frame side the row really uses: whole 2x2 groups of the arch's patches."""
    unit = hf["vision_config"]["patch_size"] * 2
    return args.frame_side // unit * unit


def build_row(hf: dict, frames: int, side: int, device: torch.device, dtype: torch.dtype):
    """input_ids with one image per turn (start, pads, end and 6 text tokens: the plan's 8
    per turn), random pixels, and the image-token mask (Qwen3-VL's mRoPE asks for it)."""
    start = hf.get("vision_start_token_id", VISION_START)
    pad, end = hf.get("image_token_id", IMAGE_PAD), hf.get("vision_end_token_id", VISION_END)
    vision = hf["vision_config"]
    patch, merge, tp = vision["patch_size"], vision["spatial_merge_size"], 2
    grid = side // (patch * merge) * merge  # patches per side, a multiple of the merge
    per_frame = grid * grid // (merge * merge)
    turn = [start] + [pad] * per_frame + [end] + list(range(100, 106))
    ids = torch.tensor([turn * frames], device=device)  # [1, T]
    pixels = torch.randn(frames * grid * grid, 3 * tp * patch * patch, device=device, dtype=dtype)
    thw = torch.tensor([[1, grid, grid]] * frames, device=device)
    return ids, pixels, thw, (ids == pad).int()


def build_model(hf: dict, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """The random-weight model on its device (frozen vision, LoRA, checkpointing) and AdamW."""
    body = {k: v for k, v in hf.items() if k != "model_type"}
    config = AutoConfig.for_model(hf["model_type"], **body)
    with device:  # initialised where it runs: a full-depth model never sits in host memory
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.model.visual.requires_grad_(False)
    if args.lora_rank:
        add_lora(model, rank=args.lora_rank, alpha=2.0 * args.lora_rank)
        for n, p in model.named_parameters():  # adapters and their Adam states in fp32
            if ".lora_" in n:
                p.data = p.data.float()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-5, foreach=False)


def main_check(args: argparse.Namespace) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = "bf16" if cuda else "fp32"
    dtype = torch.bfloat16 if cuda else torch.float32
    hf = arch_config(args.arch, args.layers)
    torch.manual_seed(0)
    ids, pixels, thw, mm = build_row(hf, args.frames, args.frame_side, device, dtype)
    tokens = ids.shape[1]
    scored = min(tokens, args.frames + 4 * args.answer_tokens)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, opt = build_model(hf, args, device, dtype)
    build_s = time.perf_counter() - t0
    cols = torch.linspace(1, tokens - 1, scored, device=device).long()  # [N] scored positions
    targets = ids[0, cols]  # [N]
    cfg = check_config(args, hf, tokens, precision)

    def step(kind: str) -> float:
        t = time.perf_counter()
        out = model(
            input_ids=ids,
            pixel_values=pixels,
            image_grid_thw=thw,
            mm_token_type_ids=mm,
            logits_to_keep=cols - 1,
            use_cache=False,
        )
        lp = torch.log_softmax(out.logits[0].float(), -1).gather(-1, targets[:, None])[:, 0]  # [N]
        if kind == "sft":
            loss = -lp.mean()
        else:
            adv = torch.linspace(-1, 1, scored, device=device)[None]  # [1, N]
            mask = torch.ones_like(adv)
            loss, _ = policy_loss(lp[None], lp.detach()[None], adv, mask, cfg.grpo)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    times: dict[str, float] = {}

    def both() -> None:
        times["sft"], times["grpo"] = step("sft"), step("grpo")

    if cuda:
        both()
        peak = torch.cuda.max_memory_allocated() / GB
    else:
        peak = cpu_tensor_peak(both)
    sft_s, grpo_s = times["sft"], times["grpo"]
    size = model_size(hf, lora_rank=args.lora_rank)
    terms = learner_terms(cfg, size, stage="sft")
    planned = sum(t.bytes for t in terms) / GB
    result = {
        "arch": args.arch,
        "layers": hf["text_config"]["num_hidden_layers"],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": precision,
        "frames": args.frames,
        "tokens": tokens,
        "scored_tokens": scored,
        "params": size.total,
        "lora_params": size.lora_params,
        "build_s": round(build_s, 2),
        "sft_step_s": round(sft_s, 2),
        "grpo_step_s": round(grpo_s, 2),
        "peak_gb": round(peak, 3),
        "plan_gb": round(planned, 3),
        "plan_terms_gb": {t.name: round(t.bytes / GB, 3) for t in terms},
        "peak_over_plan": round(peak / planned, 3),
    }
    if cuda:
        result["mfu"] = _mfu(size, tokens, sft_s, torch.cuda.get_device_name())
    return result


def _mfu(size, tokens: int, seconds: float, name: str) -> float | None:
    """Model FLOPs (6 x text parameters x tokens, the usual convention) over the GPU's dense
    bf16 peak; None for a GPU not in the table."""
    peak = next((v for k, v in BF16_DENSE_TFLOPS.items() if k in name), None)
    if peak is None:
        return None
    flops = 6 * (size.text_params - size.vocab * size.hidden) * tokens
    return round(flops / seconds / (peak * 1e12), 4)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="learner_check", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=[*sorted(ARCHS), "tiny_vl"], default="qwen2_5_vl")
    p.add_argument("--layers", type=int, default=0, help="text layers and vision blocks; 0 = all")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--frame-side", type=int, default=308, help="pixels per frame side")
    p.add_argument("--answer-tokens", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--out", default=None, help="JSON to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = main_check(args)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
