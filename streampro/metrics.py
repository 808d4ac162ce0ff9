"""Run metrics: one JSONL line per logged step, and the same scalars to the experiment trackers
`run.trackers` names (TensorBoard, wandb), each of which also gets the resolved config once."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from streampro.config import RunConfig
from streampro.errors import UserError


class MetricsLogger:
    """Appends `{"step": k, ...}` to RUN_DIR/metrics.jsonl and sends the row's finite numbers,
    unchanged, to each tracker of `run.trackers`.

    metrics.jsonl is always written (the reports and resume read it). TensorBoard writes
    RUN_DIR/tb; wandb writes under ROOT/wandb, ROOT being the folder of the run's config.yaml
    (RUN_DIR or its parent: `streampro train` keeps its stages in sft/ and grpo/), one wandb
    run per stage grouped by ROOT's name. Built from the run's `run` node, with the resolved
    config to log once (`to_dict(cfg)`; None logs none)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        prefix: str = "",
        run: RunConfig,
        config: dict[str, Any] | None = None,
    ) -> None:
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        root = config_root(run_dir)
        self._tb: Any = None
        self._wandb: Any = None
        if "tensorboard" in run.trackers:
            # torch's TensorBoard writer imports tensorboard, which many commands never need
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            if config is not None:
                self._tb.add_text("config", _markdown_yaml(config), 0)
        if "wandb" in run.trackers:
            name = root.name if root == run_dir else f"{root.name}/{run_dir.name}"
            self._wandb = start_wandb(run, root, name=name, job=run_dir.name, config=config)

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
        scalars = {
            k: v
            for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                # float64 summaries: TensorBoard keeps the value jsonl and wandb hold, not float32
                self._tb.add_scalar(k, v, step, new_style=True, double_precision=True)
            self._tb.flush()
        if self._wandb is not None and scalars:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            import wandb  # already loaded by start_wandb

            self._wandb.finish()
            # finish() can return before wandb's service has flushed the run's file; teardown
            # waits for it, so a stage's wandb folder is complete when the stage ends
            wandb.teardown()
            self._wandb = None


def config_root(run_dir: Path) -> Path:
    """The folder of the run's config.yaml: RUN_DIR, else its parent, else RUN_DIR itself."""
    for folder in (run_dir, run_dir.parent):
        if (folder / "config.yaml").is_file():
            return folder
    return run_dir


def start_wandb(
    run: RunConfig, root: Path, *, name: str, job: str, config: dict[str, Any] | None
) -> Any:
    """A wandb run writing under ROOT/wandb, in `run.wandb_mode`, else WANDB_MODE, else offline
    (no network, no account; `wandb sync ROOT/wandb/offline-run-*` uploads it later)."""
    mode = run.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    try:
        import wandb  # the optional 'tracking' extra, slow to import: only when it is selected
    except ImportError:
        raise UserError(
            "run.trackers: wandb needs the 'tracking' extra (pip install 'streampro[tracking]')"
        ) from None
    return wandb.init(
        project=run.wandb_project,
        dir=str(root),
        mode=mode,  # type: ignore[arg-type]
        name=name,
        group=root.name,
        job_type=job,
        config=config,
        # no console capture (it would swallow the progress bars), no system-metrics sampler
        settings=wandb.Settings(
            console="off", silent=True, x_disable_stats=True, disable_git=True, save_code=False
        ),
    )


def _markdown_yaml(config: dict[str, Any]) -> str:
    """The config as YAML in a Markdown code block (TensorBoard renders text as Markdown)."""
    text = OmegaConf.to_yaml(OmegaConf.create(config))
    return "\n".join("    " + line for line in text.splitlines())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of RUN_DIR/metrics.jsonl (empty list when absent)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
