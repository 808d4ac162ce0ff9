"""Colocated mode: the learner and the vLLM engines take turns on the same GPUs.

One GRPO step, colocated (`cluster.colocate: true`, driven by learners/grpo_loop.py):
  1. the engines generate (awake), then `sleep(level)` frees their GPU memory;
  2. the learner trains (its optimizer states back on the GPU);
  3. the learner publishes version v, then `wake(version=v)`:
       wake_up(tags=["weights"])  -> the weight buffers exist again,
       sync_weights(version=v)    -> v is written into them,
       wake_up(tags=["kv_cache"]) -> the KV cache comes back last, so the weight transfer
                                     has the memory the cache would otherwise hold.
A sync before the weights are awake writes into freed memory, so the order is fixed here
and nowhere else. A level-2 sleep discards the weights (level 1 keeps a CPU copy): every
level-2 wake syncs, even when the caller has nothing new (an engine woken on discarded
weights samples gibberish). Every verb is bounded by `timeout_s` and raises
`TimeoutError`; a failed or timed-out step leaves the engines marked broken, and the next
call raises at once instead of generating on half-woken engines.

Pure ordering over a typed Protocol: tests/test_colocate.py drives it with a fake engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from streampro.timeouts import run_with_timeout

WEIGHTS, KV_CACHE = "weights", "kv_cache"


class ColocatedEngines(Protocol):
    """The engine verbs colocated mode needs (actors/rollout.py's groups provide them)."""

    def sleep(self, *, level: int) -> None:
        """Free the engines' GPU memory (1: weights offloaded to CPU, 2: discarded)."""

    def wake_up(self, *, tags: list[str]) -> None:
        """Re-allocate the named memory ('weights', 'kv_cache')."""

    def sync_weights(self, *, version: int) -> None:
        """Load policy `version` into the (awake) weight buffers."""


class Colocation:
    """The sleep / wake / sync order of colocated engines, with a deadline on each verb."""

    def __init__(self, engines: ColocatedEngines, *, level: int, timeout_s: float) -> None:
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if timeout_s <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout_s}")
        self.engines, self.level, self.timeout_s = engines, level, timeout_s
        self.asleep = False
        self.broken: str | None = None  # the step that failed; nothing runs after it

    def _usable(self) -> None:
        if self.broken is not None:
            raise RuntimeError(f"colocated engines are unusable: {self.broken} failed earlier")

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        self._usable()
        try:
            run_with_timeout(fn, timeout_s=self.timeout_s, what=f"colocated engines: {what}")
        except BaseException:
            self.broken = what
            raise

    def sleep(self) -> None:
        """Before the learner trains: the engines give their GPU memory back."""
        self._usable()
        if self.asleep:
            raise RuntimeError("colocated engines are already asleep")
        self._call(f"sleep(level={self.level})", lambda: self.engines.sleep(level=self.level))
        self.asleep = True

    def wake(self, *, version: int, fresh: bool = True) -> bool:
        """After the learner published `version` (fresh) or kept it: weights, sync, KV cache.
        Returns whether the weights were synced (fresh, or a level-2 sleep lost them)."""
        self._usable()
        if not self.asleep:
            raise RuntimeError("wake on colocated engines that are not asleep")
        self._call("wake_up(weights)", lambda: self.engines.wake_up(tags=[WEIGHTS]))
        sync = fresh or self.level == 2
        if sync:
            self._call(
                f"sync_weights(v{version})", lambda: self.engines.sync_weights(version=version)
            )
        self._call("wake_up(kv_cache)", lambda: self.engines.wake_up(tags=[KV_CACHE]))
        self.asleep = False
        return sync
