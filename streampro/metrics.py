"""Run metrics: one JSONL line per step plus TensorBoard scalars, in the run folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends `{"step": k, ...}` to RUN_DIR/metrics.jsonl and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: str | Path, *, prefix: str = "", tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step`: a resumed run rewrites them, so none appears twice."""
        rows = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {
            "step": step,
            "time": round(time.time(), 3),
            **{self.prefix + k: v for k, v in metrics.items()},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of RUN_DIR/metrics.jsonl (empty list when absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
