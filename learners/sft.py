"""`streampro sft`: CB-Stream SFT warm-up of the policy on the DeepSpeed learner group.

Reads top to bottom in `run_sft`: encode the train split -> SFT dialogues (the data layer's
builder) -> packed batches in a seeded order -> `train_step(objective='sft')` -> metrics,
checkpoints, `resume=auto` (the stage skeleton, learners/stage.py) -> HF export -> greedy
streaming eval on val with StreamPro-F1, next to the always-silent baseline ->
RUN_DIR/sft_summary.json. The method is docs/method.md, stage 1.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import AutoTokenizer

from streampro.actors.api import RolloutGroupAPI
from streampro.actors.policy_eval import PolicyEval, always_silent
from streampro.cluster.local import init_cluster
from streampro.config import Config, atomic_write_text, make_run_dir, to_dict
from streampro.data.dialogue import SFTRow, build_sft_example
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import load_split, policy_folder
from streampro.data.window import Window
from streampro.errors import UserError
from streampro.hf_policy import frame_tokens_fn, pad_token_id
from streampro.learners.api import LearnerGroupAPI
from streampro.learners.group import make_learner_group
from streampro.learners.packing import PackItem, collate, plan_rows
from streampro.learners.stage import Stage
from streampro.learners.state import DataCursor
from streampro.rewards.f1 import write_scores
from streampro.tokens import CLASS_NONE, CLASS_RESPONSE


@dataclass
class SFTData:
    """The train split as token sequences, with what was cut so nothing is dropped silently."""

    items: list[PackItem]
    truncated: int
    """Rows (window segments) longer than sft.max_seq_len, cut to it (their tail is not trained)."""
    unplaced: int
    """Answers whose window held no chunk end (not supervised), summed over samples."""
    tokens: int
    supervised: int


def build_sft_data(
    encoded: list[EncodedSample],
    tokenizer,
    *,
    window: Window,
    max_seq_len: int,
    image_tokens: Callable[[int, int], int] | None = None,
    answer_window: int = 0,
) -> SFTData:
    """One PackItem per window segment of each EncodedSample, via the data layer's
    `build_sft_example`: each target is trained under the context inference will give it.
    With frames (image codec) each item carries its row's frames; such a row is never cut
    (a cut placeholder would stand for no image): one too long is an error.

    `answer_window` > 0 adds, per response, its text again under a window of that many turns
    sliding by 1 (`answer_rows`)."""
    items, truncated, unplaced = [], 0, 0
    for enc in encoded:
        ex = build_sft_example(enc, tokenizer, window=window, image_tokens=image_tokens)
        unplaced += ex.unplaced
        rows = ex.rows
        if answer_window > 0:
            short = build_sft_example(
                enc, tokenizer, window=Window(answer_window, 1), image_tokens=image_tokens
            )
            rows = rows + answer_rows(short.rows)
        for row in rows:
            n = len(row.input_ids)
            images = [enc.frames[j] for j in row.image_chunks] if enc.frames is not None else None
            if n > max_seq_len and images is not None:
                raise UserError(
                    f"sample {enc.sample.id!r}: a window segment of {n} tokens exceeds "
                    f"sft.max_seq_len={max_seq_len}; lower data.window_turns or "
                    "data.image_max_pixels, or raise sft.max_seq_len"
                )
            if n > max_seq_len:
                truncated += 1
                n = max_seq_len
            items.append(
                PackItem(
                    row.input_ids[:n], row.loss_mask[:n], row.decision_class[:n], images=images
                )
            )
    return SFTData(
        items,
        truncated,
        unplaced,
        tokens=sum(len(i.input_ids) for i in items),
        supervised=sum(sum(i.loss_mask) for i in items),
    )


def answer_rows(rows: list[SFTRow]) -> list[SFTRow]:
    """The rows that answer, with only their answer text supervised: the decision token is
    neither a target nor counted by CB-Stream, so the decision balance stays the dialogue's.
    Under a short window the question sits a few turns before the answer, meant to let the
    policy learn to copy from it (EU's colour and shape); at the demo's budget it did not
    (README, "Where the heads look")."""
    out = []
    for row in rows:
        if CLASS_RESPONSE not in row.decision_class:
            continue
        mask = [m if c == CLASS_NONE else 0 for m, c in zip(row.loss_mask, row.decision_class)]
        out.append(replace(row, loss_mask=mask, decision_class=[CLASS_NONE] * len(mask)))
    return out


def make_batch(data: SFTData, idx: list[int], *, max_seq_len: int, pack: bool, pad_id: int) -> dict:
    """Pack only into what would be padding: rows are at most as long as the longest dialogue.

    The block-diagonal mask is dense, so a row of width W costs ~W^2 attention whether it
    holds padding or other dialogues; wider rows would cost more than they save (measured:
    8 dialogues of ~1500 tokens, rows of 4096 are 1.7x slower than rows of 1930).
    """
    seqs = [data.items[i] for i in idx]
    lengths = [len(s.input_ids) for s in seqs]
    pack = pack and seqs[0].images is None  # VLM rows: one sequence each (mRoPE per row)
    rows = plan_rows(lengths, max_len=min(max_seq_len, max(lengths)), pack=pack)
    return collate(seqs, rows, pad_id=pad_id)


def total_steps(n_examples: int, *, epochs: int, global_batch: int, max_steps: int) -> int:
    """Optimiser steps of the run: whole epochs of global batches, capped by max_steps."""
    steps = math.ceil(epochs * n_examples / global_batch)
    return min(steps, max_steps) if max_steps > 0 else steps


def run_sft(
    cfg: Config, run_dir: str | Path, *, init_model: str | None = None, evaluate: bool = True
) -> dict:
    """The SFT stage. Returns the summary: {"hf", "steps", "val", "always_silent", "data", ...}."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_path = init_model or policy_folder(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = pad_token_id(tokenizer)
    s = cfg.sft
    train = load_split(cfg, "train")
    data = build_sft_data(
        train,
        tokenizer,
        window=Window.from_config(cfg.data),
        max_seq_len=s.max_seq_len,
        image_tokens=frame_tokens_fn(model_path),
        answer_window=s.answer_window,
    )
    if not data.items:
        raise UserError("the train split has no usable samples")
    if data.truncated:
        n, limit = data.truncated, s.max_seq_len
        print(f"sft: {n} dialogue(s) longer than sft.max_seq_len={limit} were truncated")

    group = make_learner_group(cfg, model_path, objective="sft")
    rollout = None
    try:
        step, last, rollout = _train(cfg, group, data, run_dir, pad_id=pad_id, evaluate=evaluate)
        hf = group.export_hf(path=str(run_dir / "hf"))
    finally:
        group.shutdown()
    summary = {
        "hf": hf,
        "steps": step,
        "model": model_path,
        "final": last,
        "data": {
            "examples": len(data.items),
            "truncated": data.truncated,
            "unplaced_answers": data.unplaced,
            "tokens": data.tokens,
            "supervised_tokens": data.supervised,
        },
    }
    if evaluate:
        summary.update(_final_eval(cfg, rollout, hf, run_dir))
    elif rollout is not None:
        rollout.shutdown()
    summary["time_s"] = time.perf_counter() - t_start
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    atomic_write_text(run_dir / "sft_summary.json", text)
    return summary


def _train(
    cfg: Config,
    group: LearnerGroupAPI,
    data: SFTData,
    run_dir: Path,
    *,
    pad_id: int,
    evaluate: bool,
) -> tuple[int, dict[str, float], RolloutGroupAPI | None]:
    """The step loop (resuming from the last checkpoint with run.resume=auto).

    Returns (steps done, last metrics, the mid-run rollout group or None).
    """
    s = cfg.sft
    steps = total_steps(
        len(data.items), epochs=s.epochs, global_batch=s.global_batch, max_steps=s.max_steps
    )
    cursor = DataCursor(len(data.items), cfg.run.seed)
    rollout: RolloutGroupAPI | None = None
    last: dict[str, float] = {}
    with Stage(
        "sft",
        run_dir,
        group,
        total=steps,
        save_every=s.save_every,
        keep=s.keep_checkpoints,
        log_every=cfg.run.log_every,
        run=cfg.run,
        config=to_dict(cfg),
    ) as stage:
        if cfg.run.resume == "auto" and (state := stage.resume()) is not None:
            cursor.restore(state["cursor"])
        for step in stage.steps():
            t0 = time.perf_counter()
            idx = cursor.take(s.global_batch)
            batch = make_batch(data, idx, max_seq_len=s.max_seq_len, pack=s.pack, pad_id=pad_id)
            stats = group.train_step(batch=batch, objective="sft")
            last = {f"train/{k}": v for k, v in stats.items()}
            last["train/rows"] = float(batch["input_ids"].shape[0])
            last["time/step"] = time.perf_counter() - t0
            if evaluate and s.eval_every and step % s.eval_every == 0 and step < steps:
                rollout, scores = _eval_now(cfg, group, rollout, run_dir, step)
                last["val/w_avg"], last["val/avg"] = scores["w_avg"], scores["avg"]
            stage.end_step(
                step,
                last,
                state={"cursor": cursor.state()},
                postfix={
                    "loss": f"{stats['loss']:.3f}",
                    "acc": f"{stats['decision_acc']:.2f}",
                    "resp": f"{stats['response_recall']:.2f}",
                },
            )
    return stage.step, last, rollout


def _rollout_group(cfg: Config, path: str) -> RolloutGroupAPI:
    """A rollout group on the policy at `path` (only SFT's evaluation needs one)."""
    from streampro.actors.rollout import make_rollout_group  # imports vLLM: only here

    return make_rollout_group(cfg, path)


def _eval_now(
    cfg: Config, group: LearnerGroupAPI, rollout: RolloutGroupAPI | None, run_dir: Path, step: int
) -> tuple[RolloutGroupAPI, dict]:
    """Mid-run val score: export, then (re)load the weights into one long-lived rollout group."""
    path = group.export_hf(path=str(run_dir / "weights" / "latest"))
    if rollout is None:
        rollout = _rollout_group(cfg, path)
    else:
        rollout.sync_weights(version=step, source=path)
    val = load_split(cfg, "val", limit=cfg.eval.max_samples)
    return rollout, PolicyEval.from_config(cfg).run(rollout, val)


def _final_eval(cfg: Config, rollout: RolloutGroupAPI | None, hf: str, run_dir: Path) -> dict:
    """Streaming decoding of the exported policy on val (eval.greedy), and the always-silent
    baseline."""
    val = load_split(cfg, "val", limit=cfg.eval.max_samples)
    if rollout is None:
        rollout = _rollout_group(cfg, hf)
    else:
        rollout.sync_weights(version=1 << 30, source=hf)
    try:
        scores = PolicyEval.from_config(cfg).run(
            rollout, val, predictions_out=run_dir / "val_predictions.jsonl"
        )
    finally:
        rollout.shutdown()
    write_scores(scores, run_dir / "eval")
    return {"val": scores, "always_silent": always_silent(val)}


def main(cfg: Config, args: argparse.Namespace) -> int:
    run_dir = make_run_dir(cfg, "sft")
    print(f"run folder: {run_dir}")
    init_cluster(cfg, "sft")  # the val evaluation runs vLLM in Ray actors
    summary = run_sft(cfg, run_dir)
    print(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "hf": summary["hf"],
                "steps": summary["steps"],
                "val_w_avg": summary["val"]["w_avg"],
                "always_silent_w_avg": summary["always_silent"]["w_avg"],
            }
        )
    )
    return 0
