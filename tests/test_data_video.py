"""read_chunks on real files of several containers, codecs and frame rates (made here with PyAV)."""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

import numpy as np
import pytest

from streampro.data.video import VideoError, probe, read_chunks, write_video


def _grey_frames(n: int, w: int = 48, h: int = 32):
    """Frame i is a flat grey of level 20 + 9 * (i % 24): the decoded level tells the index."""
    for i in range(n):
        yield np.full((h, w, 3), 20 + 9 * (i % 24), np.uint8)


def _index_of(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 20) / 9)


CASES = [  # (file name, codec, options, pix_fmt, fps, frames)
    ("h264_2997.mp4", "libx264", None, "yuv420p", Fraction(30000, 1001), 100),
    (
        "vp9_30.webm",
        "libvpx-vp9",
        {"deadline": "realtime", "cpu-used": "8", "lossless": "1"},
        "yuv420p",
        30,
        75,
    ),
    ("mjpeg_7.5.avi", "mjpeg", {"qscale": "2"}, "yuvj420p", 7.5, 29),
    ("mpeg4_25.mkv", "mpeg4", {"qscale": "1"}, "yuv420p", 25, 60),
    ("h264_1.mp4", "libx264", None, "yuv420p", 1, 5),
]


@pytest.mark.parametrize("name,codec,options,pix_fmt,fps,n", CASES, ids=[c[0] for c in CASES])
def test_chunk_count_times_and_frames(tmp_path, name, codec, options, pix_fmt, fps, n):
    path = write_video(
        tmp_path / name, _grey_frames(n), fps=fps, codec=codec, options=options, pix_fmt=pix_fmt
    )
    duration = n / float(fps)  # frames at i / fps, i < n
    chunks = list(read_chunks(path, fps=1.0))
    assert len(chunks) == math.ceil(duration - 1e-9)
    assert [(c.start, c.end) for c in chunks] == [(k, k + 1) for k in range(len(chunks))]
    for k, c in enumerate(chunks):
        assert c.frame.shape == (32, 48, 3) and c.frame.dtype == np.uint8
        # The chunk's frame is the last one shown before the chunk ends.
        last = min(math.ceil((k + 1) * float(fps)) - 1, n - 1)
        assert _index_of(c.frame) == last % 24, (k, _index_of(c.frame), last)
    info = probe(path)
    assert (info.width, info.height) == (48, 32) and abs(info.fps - float(fps)) < 0.01


def test_other_chunk_rates_and_resize(tmp_path):
    path = write_video(tmp_path / "v.mp4", _grey_frames(40), fps=4)  # 10 s
    half = list(read_chunks(path, fps=0.5))
    assert [(c.start, c.end) for c in half] == [(2.0 * k, 2.0 * k + 2) for k in range(5)]
    quick = list(read_chunks(path, fps=8.0))  # more chunks than frames: frames repeat
    assert len(quick) == 80 and _index_of(quick[0].frame) == 0 and _index_of(quick[2].frame) == 1
    small = next(read_chunks(path, size=(16, 8)))
    assert small.frame.shape == (8, 16, 3)


def test_decoding_is_lazy(tmp_path):
    path = write_video(tmp_path / "v.mp4", _grey_frames(8), fps=4)
    it = read_chunks(path)
    assert inspect.isgenerator(it)  # nothing is decoded until iterated; one frame is held
    assert next(it).end == 1.0


def test_bad_files_raise_a_named_error(tmp_path):
    with pytest.raises(VideoError, match="missing.mp4: video not found"):
        list(read_chunks(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoError, match="junk.mp4: cannot open video"):
        list(read_chunks(junk))
    good = write_video(tmp_path / "good.mp4", _grey_frames(80), fps=4)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # moov atom lost
    with pytest.raises(VideoError, match="cut.mp4"):
        list(read_chunks(cut))
    fast = tmp_path / "fast.mkv"  # index up front: truncation shows as missing seconds
    write_video(fast, _grey_frames(120), fps=4, codec="mpeg4", options={"qscale": "2"})
    data = fast.read_bytes()
    (tmp_path / "fast_cut.mkv").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match=r"fast_cut.mkv: (truncated|decoding failed)"):
        list(read_chunks(tmp_path / "fast_cut.mkv"))


def test_write_video_is_deterministic(tmp_path):
    a = write_video(tmp_path / "a.mp4", _grey_frames(20), fps=4).read_bytes()
    b = write_video(tmp_path / "b.mp4", _grey_frames(20), fps=4).read_bytes()
    assert a == b
