"""`streampro synth` and `streampro data check` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from streampro.cli import main

SMALL = ["synth.width=64", "synth.height=64", "synth.min_duration=20", "synth.max_duration=21"]


def test_synth_then_check_exits_0(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--per-task", "1", "--seed", "5", *SMALL]) == 0
    assert len(list((out / "videos").glob("*.mp4"))) == 7
    assert (out / "manifest.parquet").is_file()
    capsys.readouterr()
    assert main(["data", "check", str(out / "manifest.jsonl")]) == 0
    text = capsys.readouterr().out
    for task in ("EU", "OU", "AA", "TP", "TG", "GP", "RF"):
        assert f"  {task}: 1 samples" in text
    assert "chunks" in text and "checkable by the rule judge" in text and text.endswith("ok\n")


def test_broken_manifest_lists_every_problem(synth_smoke, tmp_path, capsys):
    src = synth_smoke / "test"
    shutil.copytree(src / "videos", tmp_path / "videos")
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()]
    rows[0]["answers"][0]["time" if "time" in rows[0]["answers"][0] else "start"] = -5.0
    rows[1]["task"] = "NOPE"
    rows[2]["video"] = "videos/missing.mp4"
    video = tmp_path / rows[3]["video"]
    video.write_bytes(video.read_bytes()[:3000])  # truncated
    rows.append(dict(rows[4]))  # duplicate id
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "m.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "m.jsonl:1: answers[0]" in err and "before query_time" in err
    assert "m.jsonl:2: task: unknown task 'NOPE'" in err
    assert f"sample {rows[2]['id']!r}: video:" in err and "missing.mp4: video not found" in err
    assert f"sample {rows[3]['id']!r}: video:" in err and rows[3]["video"].split("/")[-1] in err
    assert f"m.jsonl:8: id: duplicate id {rows[4]['id']!r} (first on line 5)" in err
    assert "5 bad sample(s), 5 problem(s)" in err and "Traceback" not in err
    # --skip-bad reports the same problems but lets the good samples through.
    assert main(["data", "check", str(tmp_path / "m.jsonl"), "--skip-bad"]) == 0
    assert "5 bad sample(s) skipped" in capsys.readouterr().err
    # --no-video validates the rows only.
    assert main(["data", "check", str(tmp_path / "m.jsonl"), "--no-video"]) == 1
    assert "missing.mp4" not in capsys.readouterr().err


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "streampro.cli",
            "synth",
            "--out",
            str(tmp_path),
            "synth.video_fps=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "synth.video_fps must be >= 2" in bad.stderr
    (tmp_path / "m.jsonl").write_text('{"id": 1}\n')
    missing = subprocess.run(
        [sys.executable, "-m", "streampro.cli", "data", "check", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1 and "nope.jsonl: manifest not found" in missing.stderr
    assert "Traceback" not in missing.stderr
