"""Run state shared by the SFT and GRPO loops: the seeded data cursor and checkpoint rotation
(driven by learners/stage.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streampro.config import atomic_write_text
from streampro.learners.api import LearnerGroupAPI


@dataclass
class DataCursor:
    """Seeded epoch permutations over the train split; (epoch, pos) is the whole state."""

    n: int
    seed: int
    epoch: int = 0
    pos: int = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            take = min(k - len(out), self.n - self.pos)
            out += perm[self.pos : self.pos + take].tolist()
            self.pos += take
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        """Continue from a `state()` saved with a checkpoint."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class Checkpoints:
    """RUN_DIR/checkpoints/step_XXXXXX folders (atomic via the learner), pruned to the last K."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.root = run_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step_*") if (p / "client_state.json").is_file())
        return done[-1] if done else None

    def save(self, learner: LearnerGroupAPI, step: int, state: dict) -> Path:
        path = self.root / f"step_{step:06d}"
        learner.save_checkpoint(path=str(path), client_state=state)
        # client_state.json is written last: its presence marks a complete checkpoint.
        atomic_write_text(path / "client_state.json", json.dumps(state, sort_keys=True))
        done = sorted(p for p in self.root.glob("step_*") if (p / "client_state.json").is_file())
        for old in done[: max(len(done) - self.keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)
        return path
