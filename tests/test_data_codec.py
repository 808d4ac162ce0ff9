"""PatchTokenCodec: hand-derived codes, any resolution, loop reference == vectorised."""

from __future__ import annotations

import numpy as np
import pytest

from streampro.data.codec import ImageCodec, PatchTokenCodec, make_codec
from streampro.errors import UserError


def test_known_codes_of_a_hand_made_frame():
    codec = PatchTokenCodec(grid=2, codebook_size=64)
    f = np.zeros((8, 8, 3), np.uint8)
    f[:4, :4] = (255, 0, 0)  # top-left red: levels (3, 0, 0) -> 3*16 = 48
    f[:4, 4:] = (0, 255, 0)  # top-right green: (0, 3, 0) -> 12
    f[4:, :4] = (0, 0, 255)  # bottom-left blue: (0, 0, 3) -> 3
    f[4:, 4:, :] = 255
    f[4:6, 4:, :] = 0  # bottom-right half white: mean 127.5 -> level 1 each -> 16 + 4 + 1
    assert codec.encode(f) == [48, 12, 3, 21]
    assert codec.tokens_per_frame == 4
    centres = codec.decode([48, 12, 3, 21])
    assert centres[0, 0].tolist() == [224, 32, 32] and centres[1, 1].tolist() == [96, 96, 96]


def _reference(frame: np.ndarray, grid: int, levels: int) -> list[int]:
    """Loop-by-loop definition from the codec's docstring."""
    h, w, _ = frame.shape
    rows = [round(h * i / grid) for i in range(grid + 1)]
    cols = [round(w * j / grid) for j in range(grid + 1)]
    out = []
    for i in range(grid):
        for j in range(grid):
            mean = frame[rows[i] : rows[i + 1], cols[j] : cols[j + 1]].reshape(-1, 3).mean(0)
            q = [min(int(m * levels // 256), levels - 1) for m in mean]
            out.append(q[0] * levels * levels + q[1] * levels + q[2])
    return out


@pytest.mark.parametrize(
    "shape,grid,codebook",
    [((64, 64), 4, 64), ((37, 53), 4, 64), ((480, 640), 3, 27), ((7, 9), 2, 8)],
)
def test_vectorised_matches_reference_at_any_resolution(shape, grid, codebook):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, *shape, 3), dtype=np.uint8)
    codec = PatchTokenCodec(grid=grid, codebook_size=codebook)
    got = codec.encode_batch(frames)
    assert got.shape == (3, grid * grid)
    for f, codes in zip(frames, got):
        assert codes.tolist() == _reference(f, grid, round(codebook ** (1 / 3)))
        assert codec.encode(f) == codes.tolist()  # deterministic, single == batch


def test_bad_codec_arguments_are_user_errors():
    with pytest.raises(UserError, match="cube"):
        PatchTokenCodec(codebook_size=50)
    with pytest.raises(UserError, match="smaller than"):
        PatchTokenCodec(grid=4).encode(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UserError, match="data.codec"):
        make_codec("jpeg")
    assert isinstance(make_codec("image"), ImageCodec)


def test_image_codec_resizes_to_the_pixel_budget_in_whole_patches():
    codec = ImageCodec(max_pixels=112 * 112, factor=28)
    # 16:9 at 640x360 -> scale sqrt(12544 / 230400) = 0.2333: 84 x 149 -> multiples of 28
    assert codec.size_for(360, 640) == (84, 140)
    assert codec.size_for(112, 112) == (112, 112)  # already in budget: kept
    assert codec.size_for(20, 20) == (28, 28)  # at least one patch a side
    img = codec.encode(np.zeros((360, 640, 3), np.uint8))
    assert img.shape == (84, 140, 3) and img.dtype == np.uint8
    for h, w in [(1080, 1920), (480, 640), (1000, 10), (64, 64)]:
        sh, sw = codec.size_for(h, w)
        assert sh % 28 == 0 and sw % 28 == 0 and sh * sw <= 112 * 112
    with pytest.raises(UserError, match="image_max_pixels"):
        ImageCodec(max_pixels=100, factor=28)
