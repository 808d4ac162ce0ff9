"""StreamPro-Synth: same seed -> same bytes; every task's ground truth checked against the
decoded pixels; rubric strings are templates a perfect trajectory satisfies; the Arrow cache."""

from __future__ import annotations

import hashlib
import itertools
import math
import re

import numpy as np
import pytest

from streampro.data.codec import PatchTokenCodec
from streampro.data.dialogue import plan_responses
from streampro.data.rubric import parse_checkpoint
from streampro.data.schema import load_manifest
from streampro.data.synth_scene import BACKGROUND, COLOUR_INDEX, RGB, shape_mask
from streampro.data.video import read_chunks

SPLITS = ("train", "val", "test")


def _all(root):
    """[(sample, folder)] over the three smoke splits."""
    return [
        (s, root / split)
        for split in SPLITS
        for s in load_manifest(root / split / "manifest.jsonl")[0]
    ]


def _frames(sample, folder) -> np.ndarray:
    """[F, H, W, 3]: every frame (chunks at the video's own rate are its frames)."""
    fps = sample.meta["synth"]["video_fps"]
    return np.stack([c.frame for c in read_chunks(sample.video_path(folder), fps=fps)])


def _mask(frame: np.ndarray, colour: str, erode: bool = True) -> np.ndarray:
    """Pixels of the colour; eroded: only those whose 4 neighbours are too (this drops the
    1-px seams that chroma subsampling blends between two other colours)."""
    rgb = RGB[COLOUR_INDEX[colour]].astype(int)
    m = np.all(np.abs(frame.astype(int) - rgb) <= 60, axis=-1)
    if not erode:
        return m
    m = np.pad(m, 1, mode="edge")
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def _centroid(frame, colour) -> np.ndarray:
    ys, xs = np.nonzero(_mask(frame, colour))
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([np.nan, np.nan])


def _touches(frame, colour, side: str, inset: int = 0, tol: int = 1) -> bool:
    ys, xs = np.nonzero(_mask(frame, colour, erode=False))  # keeps a triangle's thin apex
    if len(xs) == 0:
        return False
    h, w = frame.shape[:2]
    return {
        "left": xs.min() <= inset + tol,
        "right": xs.max() >= w - 1 - inset - tol,
        "top": ys.min() <= inset + tol,
        "bottom": ys.max() >= h - 1 - inset - tol,
    }[side]


def _idx(t: float, fps: int) -> int:
    return round(t * fps)


def check_eu(s, f, fps):
    colour = s.meta["target"]["colour"]
    for a, e in zip(s.answers, s.meta["entries"]):
        assert a.text == f"{colour} {s.meta['target']['shape']} from {e['side']}"
        i = _idx(a.start, fps)
        assert _mask(f[i - 1], colour).sum() < 10  # not there one frame before
        assert _mask(f[i], colour).sum() >= 15 and _touches(f[i], colour, e["side"])
        assert _mask(f[_idx(a.end, fps)], colour).sum() > _mask(f[i], colour).sum()


def check_ou(s, f, fps):
    h, w = f.shape[1:3]
    x, y = s.meta["target"]["position"]
    colours = s.meta["target"]["colours"]
    for k, a in enumerate(s.answers):
        i = _idx(a.time, fps)
        assert a.text == f"now {colours[k + 1]}"
        px = lambda j: f[j, int(y * h), int(x * w)].astype(int)
        assert np.abs(px(i - 1) - RGB[COLOUR_INDEX[colours[k]]]).max() <= 40
        assert np.abs(px(i) - RGB[COLOUR_INDEX[colours[k + 1]]]).max() <= 40


def check_aa(s, f, fps):
    w = f.shape[2]
    for a, e in zip(s.answers, s.meta["anomalies"]):
        i, c = _idx(a.time, fps), e["colour"]
        assert a.text == e["kind"]
        if e["kind"] == "teleport":
            assert np.linalg.norm(_centroid(f[i], c) - _centroid(f[i - 1], c)) >= 0.4 * w
        else:  # flicker: gone for exactly one second
            assert _mask(f[i - 1], c).sum() >= 15 and _mask(f[i + fps], c).sum() >= 15
            assert all(_mask(f[j], c).sum() < 10 for j in range(i, i + fps))


def check_tp(s, f, fps):
    ball = s.meta["ball"]
    walls = ("left", "right") if s.meta["axis"] == "x" else ("top", "bottom")
    touching = [any(_touches(fr, ball, side, tol=2) for side in walls) for fr in f]
    groups = [j for j in range(len(f)) if touching[j] and (j == 0 or not touching[j - 1])]
    assert len(groups) == len(s.answers)  # every wall contact in the pixels is an answer
    for n, (a, side) in enumerate(zip(s.answers, s.meta["walls"]), start=1):
        assert a.text == f"bounce {n}" and a.start == a.end
        assert _touches(f[_idx(a.start, fps)], ball, side)


def check_tg(s, f, fps):
    c, (a,) = s.meta["target"]["colour"], s.answers
    start, stop = a.span
    assert a.text == f"{start:g}-{stop:g}" and a.time == stop
    pos = np.array([_centroid(fr, c) for fr in f])
    first, last = pos[0], pos[-1]
    assert np.abs(pos[: _idx(start, fps) + 1] - first).max() <= 1.0  # at rest until start
    assert np.abs(pos[_idx(stop, fps) :] - last).max() <= 1.0  # at rest from stop on
    assert np.linalg.norm(pos[_idx(start + 1, fps)] - first) > 1.5  # moving inside the span
    assert np.linalg.norm(pos[_idx(stop - 1, fps)] - last) > 1.5
    assert _touches(f[_idx(stop, fps)], c, s.meta["side"], tol=2)


def check_gp(s, f, fps):
    h, w = f.shape[1:3]
    plan, pads = s.meta["plan"], s.meta["pads"]
    assert s.question.startswith("Plan: go to " + ", then ".join(f"the {c} pad" for c in plan))
    for colour, (x, y) in pads.items():  # pads are where the manifest says (agent elsewhere)
        assert np.linalg.norm(_centroid(f[0], colour) - [x * w - 0.5, y * h - 0.5]) <= 1.5
    for k, a in enumerate(s.answers):
        i = _idx(a.time, fps)
        x, y = pads[plan[k]]
        target = np.array([x * w - 0.5, y * h - 0.5])
        assert np.linalg.norm(_centroid(f[i], "white") - target) <= 1.5  # arrived at step k
        assert np.linalg.norm(_centroid(f[i - fps], "white") - target) > 3  # not 1 s earlier
        assert a.text == f"next: {plan[k + 1] if k + 1 < len(plan) else 'done'}"


def check_rf(s, f, fps):
    c, side = s.meta["target"]["colour"], s.meta["wall"]
    h, w = f.shape[1:3]
    inset = round(s.meta["wall_width"] * (w if side in ("left", "right") else h))
    assert _mask(f[0], "grey").sum() >= s.meta["wall_width"] * w * h * 0.75  # the wall is drawn
    for a in s.answers:
        impact = a.time + 3
        assert a.text == "impact warning" and impact in s.meta["impacts"]
        assert _touches(f[_idx(impact, fps)], c, side, inset=inset, tol=2)
        assert not _touches(f[_idx(impact - 1, fps)], c, side, inset=inset, tol=2)
        pos = [_centroid(f[_idx(impact - d, fps)], c) for d in (3, 2, 1, 0)]
        gaps = [np.linalg.norm(p - pos[-1]) for p in pos]
        assert gaps[0] > gaps[1] > gaps[2] > gaps[3] == 0  # a steady approach


CHECKS = {
    "EU": check_eu,
    "OU": check_ou,
    "AA": check_aa,
    "TP": check_tp,
    "TG": check_tg,
    "GP": check_gp,
    "RF": check_rf,
}


@pytest.mark.parametrize("task", list(CHECKS))
def test_ground_truth_matches_the_pixels(synth_smoke, task):
    cases = [(s, d) for s, d in _all(synth_smoke) if s.task == task]
    assert len(cases) == 3 and all(s.answers for s, _ in cases)
    for s, folder in cases:
        fps = s.meta["synth"]["video_fps"]
        CHECKS[task](s, _frames(s, folder), fps)


def _word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def rule_check(item: str, responses: list[tuple[float, str]]) -> bool:
    """A reference rule judge for the contract's templates (the rewards area owns the real one)."""
    kind, args = parse_checkpoint(item)
    times = [t for t, _ in responses]
    inside = lambda a, b: [x for t, x in responses if a <= t <= b]
    if kind == "at_least":
        return len(responses) >= args[0]
    if kind == "at_most":
        return len(responses) <= args[0]
    if kind == "not_before":
        return all(t >= args[0] for t in times)
    if kind == "between":
        return bool(inside(*args))
    if kind == "not_between":
        return not inside(*args)
    if kind == "mention":
        return any(_word(x, args[0]) for _, x in responses)
    if kind == "not_mention":
        return not any(_word(x, args[0]) for _, x in responses)
    if kind == "mention_between":
        return any(_word(x, args[0]) for x in inside(args[1], args[2]))
    if kind == "min_gap":
        return all(b - a >= args[0] for a, b in itertools.pairwise(times))
    nums = [float(n) for _, x in responses for n in re.findall(r"\d+(?:\.\d+)?", x)]
    return all(a < b for a, b in itertools.pairwise(nums))  # increasing


def test_rubrics_are_templates_that_the_ideal_trajectory_passes(synth_smoke):
    for s, _ in _all(synth_smoke):
        assert 6 <= len(s.rubric) <= 10, (s.id, s.rubric)
        assert all(parse_checkpoint(r) is not None for r in s.rubric), s.rubric
        ends = [float(k + 1) for k in range(math.ceil(s.duration))]
        plan, unplaced = plan_responses(s.task, [a.to_dict() for a in s.answers], ends)
        assert unplaced == 0
        ideal = [(ends[j], text) for j, text in sorted(plan.items())]
        failed = [r for r in s.rubric if not rule_check(r, ideal)]
        assert not failed, (s.id, failed, ideal)
        assert not all(rule_check(r, []) for r in s.rubric)  # silence does not pass


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_arguments_same_bytes_and_disjoint_splits(synth_smoke, synth_smoke_settings, tmp_path):
    from streampro.config import SynthConfig
    from streampro.data.synth import synth_split

    again = synth_split(
        SynthConfig(out=str(tmp_path), **synth_smoke_settings), split="val", progress=False
    )
    assert _digest(again.parent) == _digest(synth_smoke / "val")
    ids = [{s.id for s, d in _all(synth_smoke) if d.name == split} for split in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    videos = {split: set(_digest(synth_smoke / split / "videos").values()) for split in SPLITS}
    assert not (videos["train"] & videos["val"] or videos["val"] & videos["test"])
    jsonl = load_manifest(synth_smoke / "train" / "manifest.jsonl")[0]
    assert load_manifest(synth_smoke / "train" / "manifest.parquet")[0] == jsonl
    assert all(20 <= s.duration <= 24 for s in jsonl)


def test_encode_manifest_caches_and_matches_direct_decoding(synth_smoke, tmp_path, monkeypatch):
    import streampro.data.encode as enc

    manifest = synth_smoke / "train" / "manifest.parquet"
    kw = {
        "fps": 1.0,
        "codec": PatchTokenCodec(4, 64),
        "cache_dir": tmp_path / "cache",
        "progress": False,
    }
    first = enc.encode_manifest(manifest, **kw)
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 7

    def no_decoding(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(enc, "encode_video", no_decoding)
    second = enc.encode_manifest(manifest, **kw)
    assert [(e.sample, e.times, e.codes) for e in first] == [
        (e.sample, e.times, e.codes) for e in second
    ]
    codec = PatchTokenCodec(4, 64)
    for e in first:
        chunks = list(read_chunks(e.sample.video_path(manifest.parent)))
        assert len(e.times) == len(chunks) == e.sample.duration
        assert e.codes == [codec.encode(c.frame) for c in chunks]
    ou = next(e for e in first if e.sample.task == "OU")  # the event changes the frame tokens
    x, y = ou.sample.meta["target"]["position"]
    cell, colours = int(y * 4) * 4 + int(x * 4), ou.sample.meta["target"]["colours"]
    # The target fills its patch by the shape's area: mean = frac * colour + (1 - frac) * bg.
    frac = shape_mask(ou.sample.meta["target"]["shape"], 16, 16).mean()
    mean = lambda c: frac * RGB[COLOUR_INDEX[c]] + (1 - frac) * np.array(BACKGROUND)
    flat = lambda c: codec.encode(np.broadcast_to(mean(c), (4, 4, 3)).astype(np.uint8))[0]
    for k, a in enumerate(ou.sample.answers):
        chunk = int(a.time)  # the chunk [k, k+1) holding the onset ends after it: it shows it
        assert ou.codes[chunk - 1][cell] == flat(colours[k])
        assert ou.codes[chunk][cell] == flat(colours[k + 1]) != flat(colours[k])


def test_encode_manifest_skips_bad_videos_only_when_asked(synth_smoke, tmp_path):
    from streampro.data.encode import encode_manifest
    from streampro.data.schema import write_manifest
    from streampro.errors import UserError

    samples = load_manifest(synth_smoke / "test" / "manifest.jsonl")[0]
    for s in samples:
        s.video = str(s.video_path(synth_smoke / "test"))
    samples[0].video = str(tmp_path / "gone.mp4")
    samples[1].duration = 5.0  # a shorter stream than its video: chunks are clipped
    write_manifest(samples, tmp_path / "m.jsonl")
    kw = {
        "fps": 1.0,
        "codec": PatchTokenCodec(4, 64),
        "cache_dir": tmp_path / "c",
        "progress": False,
    }
    with pytest.raises(UserError, match=rf"sample '{samples[0].id}'.*gone.mp4: video not found"):
        encode_manifest(tmp_path / "m.jsonl", **kw)
    got = encode_manifest(tmp_path / "m.jsonl", skip_bad=True, **kw)
    assert [e.sample.id for e in got] == [s.id for s in samples[1:]]
    assert len(got[0].times) == 5


def test_two_workers_render_and_encode_the_same_bytes_as_one(synth_smoke_settings, tmp_path):
    """21 videos (above the pool threshold): rendering and encoding spread over 2 spawned
    processes give byte-identical videos, manifests and cache entries."""
    from streampro.config import SynthConfig
    from streampro.data.encode import encode_manifest
    from streampro.data.synth import synth_split

    s = SynthConfig(**{**synth_smoke_settings, "per_task": 3})
    manifests, entries = [], []
    for workers in (1, 2):
        m = synth_split(s, out=tmp_path / f"w{workers}", workers=workers, progress=False)
        cache = tmp_path / f"cache{workers}"
        kw = {"fps": 1.0, "codec": PatchTokenCodec(4, 64), "cache_dir": cache, "progress": False}
        entries.append(
            [(e.sample, e.times, e.codes) for e in encode_manifest(m, workers=workers, **kw)]
        )
        manifests.append((_digest(m.parent), _digest(cache)))
    assert len(entries[0]) == 21 and entries[0] == entries[1]
    assert manifests[0] == manifests[1]
