"""run.trackers: TensorBoard, wandb (offline) and metrics.jsonl get the same scalars, and each
tracker the resolved config once; an unknown tracker stops the config at load."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from streampro.config import ConfigError, RunConfig, load_config, make_run_dir, to_dict
from streampro.metrics import MetricsLogger, read_metrics

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2

# loss, a bool, an int, a string (jsonl only) and a NaN (jsonl only): finite numbers go everywhere
ROWS = [
    (0, {"val/w_avg": 0.125}),
    (1, {"loss": 2.5, "lr": 1e-6, "ok": True, "note": "warmup"}),
    (2, {"loss": 0.1 + 0.2, "tokens": 4096, "bad": float("nan")}),
]
SCALARS = {
    0: {"val/w_avg": 0.125},
    1: {"loss": 2.5, "lr": 1e-6, "ok": 1.0},
    2: {"loss": 0.30000000000000004, "tokens": 4096.0},
}


def wandb_records(run_file: Path) -> list:
    """Every record of a .wandb file: a 7-byte header (':W&B', magic, version), then LevelDB
    log records (crc32, length, type) in 32 KiB blocks; FIRST/MIDDLE/LAST parts concatenate."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    out, part, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(part)
            out.append(rec)
            part = b""
    return out


def wandb_history(records: list) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {
            i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
        }
        step = int(items.pop("_step"))
        rows[step] = {k: float(v) for k, v in items.items() if not k.startswith("_")}
    return rows


def tb_scalars(tb_dir: Path) -> tuple[dict[int, dict[str, float]], list[str]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    acc.Reload()
    rows: dict[int, dict[str, float]] = {}
    texts: list[str] = []
    for tag in acc.Tags()["tensors"]:
        for ev in acc.Tensors(tag):
            proto = ev.tensor_proto
            if tag == "config/text_summary":
                texts += [s.decode() for s in proto.string_val]
            else:
                rows.setdefault(ev.step, {})[tag] = float(proto.double_val[0])
    return rows, texts


def test_three_trackers_get_the_same_scalars_and_the_config_once(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline
    cfg = load_config(None, [f"run.dir={tmp_path / 'run'}", "run.trackers=[tensorboard,wandb]"])
    root = make_run_dir(cfg, "test")  # its config.yaml marks the run's root folder
    logger = MetricsLogger(root / "sft", run=cfg.run, config=to_dict(cfg))
    for step, metrics in ROWS:
        logger.log(step, metrics)
    logger.close()

    jsonl = {
        r["step"]: {k: float(v) for k, v in r.items() if k not in ("step", "time", "note")}
        for r in read_metrics(root / "sft")
    }
    assert jsonl[2].pop("bad") != jsonl[2].get("bad")  # NaN: in jsonl only
    assert jsonl == SCALARS
    assert [r.get("note") for r in read_metrics(root / "sft")] == [None, "warmup", None]

    tb, texts = tb_scalars(root / "sft" / "tb")
    assert tb == SCALARS
    assert len(texts) == 1 and "trackers:" in texts[0] and "group_size: 8" in texts[0]

    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    assert wandb_history(records) == SCALARS
    kinds = [r.WhichOneof("record_type") for r in records]
    run_rec = records[kinds.index("run")].run
    assert (run_rec.display_name, run_rec.run_group, run_rec.job_type) == ("run/sft", "run", "sft")
    assert "config" not in kinds  # logged once, with the run record
    logged = {u.key: json.loads(u.value_json) for u in run_rec.config.update}
    assert {k: v for k, v in logged.items() if k != "_wandb"} == to_dict(cfg)


def test_jsonl_alone_writes_no_tracker_files(tmp_path):
    logger = MetricsLogger(tmp_path, run=RunConfig(trackers=["jsonl"]))
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_an_unknown_tracker_fails_at_load_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run.trackers must be one of .* got 'mlflow'"):
        load_config(None, ["run.trackers=[wandb,mlflow]"])
    with pytest.raises(ConfigError, match="run.wandb_mode"):
        load_config(None, ["run.wandb_mode=cloud"])
    proc = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "train", "run.trackers=[tb]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    line = "run.trackers must be one of tensorboard, wandb, jsonl, got 'tb'"
    assert proc.stderr.strip().splitlines() == [f"streampro train: error: overrides: {line}"]
