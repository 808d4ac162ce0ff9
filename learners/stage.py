"""The skeleton both training stages (SFT and GRPO) run their steps in.

What a stage does around its step is the same for both: resume from the run folder's last
checkpoint (`run.resume=auto`), one metrics row per logged step (`metrics.jsonl` and
TensorBoard, `streampro.metrics.MetricsLogger`), a checkpoint every `save_every` steps and at
the last one (the newest `keep` kept, `learners/state.py: Checkpoints`) and the progress bar.
A loop reads:

    with Stage("sft", run_dir, learner, total=steps, save_every=..., keep=..., log_every=...) as stage:
        if resume and (state := stage.resume()) is not None:
            cursor.restore(state["cursor"])       # what the loop saved with its checkpoints
        for step in stage.steps():                # 1-based: the step being run
            ...                                   # the stage's own work
            stage.end_step(step, metrics, state={"cursor": cursor.state()}, postfix={...})
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tqdm import tqdm

from streampro.config import RunConfig
from streampro.learners.api import LearnerGroupAPI
from streampro.learners.state import Checkpoints
from streampro.metrics import MetricsLogger


class Stage:
    """Resume, metrics, checkpoints and progress of one stage's `total` steps.

    `step` is the number of steps done (the resumed checkpoint's, then one more per
    `end_step`); a checkpoint's client state is `{"step": step, **state}`."""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        learner: LearnerGroupAPI,
        *,
        total: int,
        save_every: int,
        keep: int,
        log_every: int,
        run: RunConfig,
        config: dict[str, Any],
    ) -> None:
        self.name, self.learner, self.total = name, learner, total
        self.save_every, self.log_every = save_every, log_every
        self.ckpts = Checkpoints(run_dir, keep)
        self.logger = MetricsLogger(run_dir, run=run, config=config)
        self.step = 0
        self._bar: tqdm | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        self.logger.close()

    def resume(self) -> dict[str, Any] | None:
        """Load the last complete checkpoint into the learner (weights, optimizer, scheduler,
        RNG) and drop the metrics rows logged after it; its client state, or None (no
        checkpoint: a fresh start)."""
        found = self.ckpts.latest()
        if found is None:
            return None
        self.learner.load_checkpoint(path=str(found))
        state: dict[str, Any] = json.loads((found / "client_state.json").read_text())
        self.step = int(state["step"])
        self.logger.truncate_after(self.step)
        print(f"{self.name}: resumed from {found} at step {self.step}")
        return state

    def steps(self) -> Iterator[int]:
        """The steps still to run, 1-based (the progress bar starts here)."""
        self._bar = tqdm(total=self.total, initial=self.step, desc=self.name, dynamic_ncols=True)
        yield from range(self.step + 1, self.total + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """A metrics row outside the step cadence (GRPO's step-0 val score)."""
        self.logger.log(step, metrics)

    def end_step(
        self,
        step: int,
        metrics: dict[str, float],
        *,
        state: dict[str, Any],
        postfix: dict[str, str],
    ) -> None:
        """Step `step` is done: log its metrics (every `log_every` steps and the last), save a
        checkpoint with the loop's `state` (every `save_every` steps and the last), advance
        the bar with `postfix`."""
        self.step = step
        last = step == self.total
        if step % self.log_every == 0 or last:
            self.logger.log(step, metrics)
        if step % self.save_every == 0 or last:
            self.ckpts.save(self.learner, step, {"step": step, **state})
        if self._bar is not None:
            self._bar.set_postfix(postfix)
            self._bar.update(1)
