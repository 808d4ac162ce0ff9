"""`streampro bench baselines --manifest M --out DIR`: what StreamPro-F1 gives policies that
are not the LLM, on one manifest.

- always silent: no response anywhere (F1 = 0 by definition);
- most frequent answer: at every chunk, the most frequent answer text of the sample's task;
- fixed period: that text every P seconds, P = the manifest's mean seconds per answer;
- oracle: responds exactly where the SFT targets respond, with the reference text (the
  construction of tests/test_data_oracle.py); it must score 1.0;
- PPO trigger: a small MLP trained with RLlib PPO on `StreamEnv` (actors/env.py) over
  simple frame features (frame codes, share of changed patches, stream time, seconds since
  the last response). It decides *when* to speak; what it says is StreamEnv's first
  candidate answer of the sample, so its content is the sample's own (an upper bound on
  content; timing is what it learns). Trained on the config's train split, a minute or two.
Scores come from rewards/f1.py. Writes baselines.json and baselines.md atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, SupportsFloat, TypedDict

import gymnasium as gym
import numpy as np
import ray
import torch
from gymnasium import spaces
from ray.rllib.algorithms.ppo import PPOConfig
from transformers import AutoTokenizer

from streampro.actors.env import StreamEnv
from streampro.actors.policy_eval import Predictions
from streampro.config import Config, atomic_write_text
from streampro.data.dialogue import build_sft_example
from streampro.data.encode import EncodedSample
from streampro.data.pipeline import encode_samples, load_split, policy_folder
from streampro.data.window import Window
from streampro.errors import UserError
from streampro.rewards.f1 import score_predictions


def encode(cfg: Config, manifest: str | Path) -> list[EncodedSample]:
    if not Path(manifest).is_file():
        raise UserError(f"{manifest}: manifest not found")
    return encode_samples(cfg, manifest, progress=False)


def stream_seconds(e: EncodedSample) -> float:
    """The stream's length: the manifest's duration, else where its last chunk ends."""
    if e.sample.duration is not None:
        return float(e.sample.duration)
    return float(e.times[-1][1]) if e.times else 0.0


def most_frequent_texts(encoded: list[EncodedSample]) -> dict[str, str]:
    """Task -> its most frequent answer text (ties: the first seen)."""
    counts: dict[str, Counter[str]] = {}
    for e in encoded:
        for a in e.sample.answers:
            counts.setdefault(e.sample.task, Counter())[a.text] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}


def every_chunk(encoded: list[EncodedSample], texts: dict[str, str]) -> Predictions:
    return {
        e.sample.id: [{"time": float(end), "text": texts[e.sample.task]} for _, end in e.times]
        for e in encoded
        if e.sample.task in texts
    }


def fixed_period(encoded: list[EncodedSample], texts: dict[str, str]) -> tuple[Predictions, float]:
    """Respond every P seconds (chunk ends), P = total stream seconds / total answers."""
    seconds = sum(stream_seconds(e) for e in encoded)
    answers = max(sum(len(e.sample.answers) for e in encoded), 1)
    period = max(1.0, round(seconds / answers))
    preds: Predictions = {}
    for e in encoded:
        if e.sample.task in texts:
            ends = [float(end) for _, end in e.times]
            preds[e.sample.id] = [
                {"time": t, "text": texts[e.sample.task]} for t in ends if t % period == 0.0
            ]
    return preds, period


def oracle(encoded: list[EncodedSample], tokenizer: Any, *, window: Window) -> Predictions:
    """The SFT targets' responses: where and what the data layer trains the policy to say."""
    preds: Predictions = {}
    for e in encoded:
        ex = build_sft_example(e, tokenizer, window=window)
        preds[e.sample.id] = [
            {"time": t, "text": x} for t, x in zip(ex.response_times, ex.response_texts)
        ]
    return preds


def run(
    cfg: Config, manifest: str, out_dir: str, *, ppo_seconds: float = 90.0, ppo: bool = True
) -> dict[str, Any]:
    """Every baseline on one manifest; writes DIR/baselines.json and baselines.md."""
    encoded = encode(cfg, manifest)
    if not encoded:
        raise UserError(f"{manifest}: no samples to score")
    rows = [e.sample.to_dict() for e in encoded]
    tok = AutoTokenizer.from_pretrained(policy_folder(cfg))
    texts = most_frequent_texts(encoded)
    period_preds, period = fixed_period(encoded, texts)
    preds: dict[str, Predictions] = {
        "always_silent": {},
        "most_frequent_every_chunk": every_chunk(encoded, texts),
        "fixed_period": period_preds,
        "oracle": oracle(encoded, tok, window=Window.from_config(cfg.data)),
    }
    result: dict[str, Any] = {"manifest": str(manifest), "samples": len(rows), "baselines": {}}
    info: dict[str, dict[str, Any]] = {"fixed_period": {"period_s": period}}
    if ppo:
        t0 = time.perf_counter()
        ppo_preds, ppo_info = ppo_trigger(cfg, encoded, tok, seconds=ppo_seconds)
        preds["ppo_trigger"] = ppo_preds
        info["ppo_trigger"] = {**ppo_info, "wall_s": round(time.perf_counter() - t0, 1)}
    else:
        result["skipped"] = {"ppo_trigger": "ppo=False"}
    for name, p in preds.items():
        s = score_predictions(rows, p)
        result["baselines"][name] = {
            "w_avg": s["w_avg"],
            "tasks": {t: v["f1"] for t, v in s["tasks"].items()},
            "responses": sum(len(v) for v in p.values()),
            **info.get(name, {}),
        }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "baselines.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "baselines.md", markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    tasks = sorted({t for b in result["baselines"].values() for t in b["tasks"]})
    lines = [
        f"# Baselines on {result['manifest']} ({result['samples']} samples), StreamPro-F1 x100",
        "",
        "| baseline | W-Avg | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 2) + "|",
    ]
    for name, b in result["baselines"].items():
        cells = " | ".join(f"{100 * b['tasks'].get(t, 0.0):.1f}" for t in tasks)
        lines.append(f"| {name} | {100 * b['w_avg']:.1f} | {cells} |")
    return "\n".join(lines) + "\n"


# ---- the RLlib PPO trigger policy -----------------------------------------------------------


class TriggerConfig(TypedDict):
    """`TriggerEnv`'s env_config (RLlib builds the env from it)."""

    samples: list[EncodedSample]
    tokenizer: Any
    codebook_size: int
    window: Window


class TriggerEnv(gym.Env[np.ndarray, int]):
    """A gymnasium wrapper of StreamEnv: Box features in, {silence, respond} out."""

    def __init__(self, config: TriggerConfig) -> None:
        samples = config["samples"]
        self.env = StreamEnv(
            samples,
            config["tokenizer"],
            codebook_size=config["codebook_size"],
            window=config["window"],
        )
        self.k = len(samples[0].codes[0])  # tokens per frame (StreamEnv checks they agree)
        self.codebook = float(config["codebook_size"])
        self.durations = {e.sample.id: stream_seconds(e) for e in samples}
        self.observation_space = spaces.Box(-1.0, 2.0, shape=(self.k + 3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.prev: np.ndarray | None = None
        self.last = 0.0
        self.duration = 1.0

    def _features(self, obs: dict[str, np.ndarray]) -> np.ndarray:  # [k + 3]
        frame = obs["frame"].astype(np.float32)
        changed = float((frame != self.prev).mean()) if self.prev is not None else 0.0
        self.prev = frame
        t = float(obs["time"][1]) / max(self.duration, 1.0)
        since = min(float(obs["time"][1]) - self.last, 60.0) / 60.0
        return np.concatenate([frame / self.codebook, [changed, t, since]]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.prev, self.last = None, 0.0
        self.duration = self.durations[info["sample_id"]]
        return self._features(obs), info

    def step(self, action: int) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, done, trunc, info = self.env.step(int(action))
        if int(action) == 1:
            self.last = float(info["time"])
        return self._features(obs), reward, done, trunc, info


def ppo_trigger(
    cfg: Config, encoded: list[EncodedSample], tokenizer: Any, *, seconds: float
) -> tuple[Predictions, dict[str, Any]]:
    """Train PPO on the train split for about `seconds`, then run it greedily on `encoded`."""
    train = [e for e in load_split(cfg, "train") if e.codes]
    env_config: TriggerConfig = {
        "samples": train,
        "tokenizer": tokenizer,
        "codebook_size": cfg.data.codebook_size,
        "window": Window.from_config(cfg.data),
    }
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        algo = (
            PPOConfig()
            .environment(TriggerEnv, env_config=dict(env_config))
            .env_runners(num_env_runners=0)
            .training(
                lr=3e-4,
                gamma=0.99,
                train_batch_size_per_learner=1024,
                minibatch_size=256,
                num_epochs=4,
            )
            .rl_module(model_config={"fcnet_hiddens": [32, 32]})
            .debugging(seed=cfg.run.seed)
            .build_algo()
        )
        t0, iters, returns = time.perf_counter(), 0, []
        while time.perf_counter() - t0 < seconds:
            res = algo.train()
            iters += 1
            ret = res.get("env_runners", {}).get("episode_return_mean")
            if ret is not None:
                returns.append(round(float(ret), 4))
        module = algo.get_module()
        env = TriggerEnv({**env_config, "samples": encoded})
        preds: Predictions = {}
        for i, e in enumerate(encoded):
            obs, _ = env.reset(options={"index": i})
            done = False
            info: dict[str, Any] = {}
            while not done:
                with torch.no_grad():
                    out = module.forward_inference({"obs": torch.as_tensor(obs)[None]})
                action = int(out["action_dist_inputs"][0].argmax())
                obs, _, done, _, info = env.step(action)
            preds[e.sample.id] = info["trajectory"].responses()
        algo.stop()
    finally:
        if started:
            ray.shutdown()
    return preds, {"train_samples": len(train), "iterations": iters, "episode_return": returns}


def main(cfg: Config, args: argparse.Namespace) -> int:
    if not getattr(args, "manifest", None):
        raise UserError("bench baselines needs --manifest M (a JSONL or Parquet manifest)")
    out = args.out or "runs/bench-baselines"
    result = run(cfg, args.manifest, out)
    for name, b in result["baselines"].items():
        print(f"{name:28s} W-Avg {100 * b['w_avg']:.1f}")
    print(f"wrote {out}/baselines.json and baselines.md")
    return 0
