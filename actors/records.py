"""Trajectories as Parquet: one row per episode, its window segments and steps as lists of
structs (each segment's token ids are exactly what the policy was prompted with).

For later analysis (pandas/polars/DuckDB read it directly) and for replay: `read_trajectories`
gives back the exact `Trajectory` objects that were written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from streampro.types import Segment, Step, Trajectory

STEP_TYPE = pa.struct(
    [
        ("time", pa.float64()),
        ("decision", pa.string()),
        ("text", pa.string()),
        ("raw", pa.string()),
        ("version", pa.int64()),
    ]
)
SEGMENT_TYPE = pa.struct(
    [
        ("token_ids", pa.list_(pa.int32())),
        ("gen_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float64())),
        ("first_step", pa.int64()),
        ("image_chunks", pa.list_(pa.int32())),
    ]
)
SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("episode", pa.int64()),
        ("version", pa.int64()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("steps", pa.list_(STEP_TYPE)),
    ]
)


def trajectories_table(trajs: list[Trajectory], extra: dict[str, list] | None = None) -> pa.Table:
    """Arrow table of trajectories; `extra` adds columns (e.g. rewards), one value per row."""
    cols = {
        "sample_id": [t.sample_id for t in trajs],
        "episode": [t.episode for t in trajs],
        "version": [t.version for t in trajs],
        "segments": [[vars(g) for g in t.segments] for t in trajs],
        "steps": [[vars(s) for s in t.steps] for t in trajs],
    }
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    for name, values in (extra or {}).items():
        if len(values) != len(trajs):
            raise ValueError(f"extra column {name!r}: {len(values)} values for {len(trajs)} rows")
        table = table.append_column(name, pa.array(values))
    return table


def write_trajectories(
    path: str | os.PathLike, trajs: list[Trajectory], extra: dict[str, list] | None = None
) -> Path:
    """Write via a temp file + rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(trajectories_table(trajs, extra), tmp)
    os.replace(tmp, path)
    return path


def read_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """The trajectories of a file written by `write_trajectories`."""
    rows = pq.read_table(path, columns=SCHEMA.names).to_pylist()
    return [trajectory_from_row(r) for r in rows]


def trajectory_from_row(r: dict) -> Trajectory:
    """The `Trajectory` of one row of such a file (as `to_pylist()` gives it; extra columns
    are ignored)."""
    return Trajectory(
        sample_id=r["sample_id"],
        episode=r["episode"],
        segments=[Segment(**g) for g in r["segments"]],
        version=r["version"],
        steps=[Step(**s) for s in r["steps"]],
    )
