"""Frame codecs: how one chunk's frame reaches the policy.

`PatchTokenCodec` (CPU default) turns a frame into grid*grid discrete tokens: the frame is
cut into a grid x grid array of patches (area-averaged, so any resolution works) and each
patch's mean colour is quantised to a uniform RGB codebook of L levels per channel
(codebook_size = L**3; 64 = 4 levels):

    level(c) = floor(mean_c * L / 256)           # 0 .. L-1 for each of R, G, B
    code     = level(R) * L*L + level(G) * L + level(B)
    centre   = (level + 0.5) * 256 / L           # what `decode` paints back

Codes are emitted row-major (top-left patch first) and become the tokens `<|v{code}|>`.
`ImageCodec` passes frames to a real VLM as images instead (vLLM multi_modal_data).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from streampro.errors import UserError


class FrameCodec(Protocol):
    """What the data layer needs of a codec: a name and frame -> model input."""

    name: str

    def encode(self, frame: np.ndarray) -> Any: ...


def _cube_root(n: int) -> int:
    r = round(n ** (1 / 3))
    if r < 2 or r**3 != n:
        raise UserError(f"codebook_size must be a cube >= 8 (8, 27, 64, 125, ...), got {n}")
    return r


class PatchTokenCodec:
    """Frame -> grid*grid codebook indices (deterministic, any resolution)."""

    name = "patch"

    def __init__(self, grid: int = 4, codebook_size: int = 64) -> None:
        if grid < 1:
            raise UserError(f"patch grid must be >= 1, got {grid}")
        self.grid = grid
        self.codebook_size = codebook_size
        self.levels = _cube_root(codebook_size)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def patch_means(self, frames: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] uint8 -> [N, grid, grid, 3] float mean colour of each patch."""
        _, h, w, _ = frames.shape
        if h < self.grid or w < self.grid:
            raise UserError(f"frame {w}x{h} is smaller than the {self.grid}x{self.grid} patch grid")
        rows = np.linspace(0, h, self.grid + 1).round().astype(int)  # patch edges
        cols = np.linspace(0, w, self.grid + 1).round().astype(int)
        x = frames.astype(np.float64)
        sums = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)
        area = np.outer(np.diff(rows), np.diff(cols))[None, :, :, None]
        return sums / area

    def encode_batch(self, frames: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] uint8 -> [N, grid*grid] int64 codes."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserError(f"frames must be [N, H, W, 3], got shape {frames.shape}")
        L = self.levels
        q = np.clip(np.floor(self.patch_means(frames) * L / 256.0), 0, L - 1).astype(np.int64)
        codes = q[..., 0] * L * L + q[..., 1] * L + q[..., 2]  # [N, grid, grid]
        return codes.reshape(len(frames), -1)

    def encode(self, frame: np.ndarray) -> list[int]:
        """H x W x 3 uint8 -> grid*grid codes, row-major."""
        return self.encode_batch(frame[None])[0].tolist()

    def decode(self, codes: list[int] | np.ndarray) -> np.ndarray:
        """Codes -> a grid x grid x 3 uint8 image of codebook centres (for inspection)."""
        c = np.asarray(codes, dtype=np.int64).reshape(self.grid, self.grid)
        L = self.levels
        q = np.stack([c // (L * L), (c // L) % L, c % L], axis=-1)
        return ((q + 0.5) * 256 / L).astype(np.uint8)


class ImageCodec:
    """Frames as images for real VLMs (Qwen2.5-VL / Qwen3-VL): no tokens of its own.

    Each frame is resized once, at encode time, to at most `max_pixels` pixels with its aspect
    ratio kept and both sides multiples of `factor` (the model's patch size x spatial merge,
    28 for Qwen2.5-VL, 32 for Qwen3-VL), so the processor uses it as it is and every frame of
    a video costs the same number of image tokens. The dialogue holds the model's image
    placeholder; the rollout sends the frame to vLLM as multi_modal_data and the learner
    feeds it through the processor.
    """

    name = "image"

    def __init__(self, max_pixels: int = 112 * 112, factor: int = 28) -> None:
        if factor < 1 or max_pixels < factor * factor:
            raise UserError(
                f"data.image_max_pixels={max_pixels} is below one {factor}x{factor} image patch"
            )
        self.max_pixels = max_pixels
        self.factor = factor

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) a height x width frame is resized to: the largest multiples of
        `factor` with the same aspect ratio (within rounding) and at most max_pixels pixels."""
        f = self.factor
        scale = min(1.0, (self.max_pixels / (height * width)) ** 0.5)
        h = max(f, int(height * scale / f) * f)
        w = max(f, int(width * scale / f) * f)
        while h * w > self.max_pixels:  # rounding up to one patch can overshoot: trim the long side
            h, w = (h - f, w) if h >= w and h > f else (h, w - f)
        return h, w

    def encode(self, frame: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> the resized frame (uint8, sides multiples of factor)."""

        h, w = self.size_for(frame.shape[0], frame.shape[1])
        if (h, w) == frame.shape[:2]:
            return np.ascontiguousarray(frame, dtype=np.uint8)
        img = Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def make_codec(
    name: str,
    *,
    grid: int = 4,
    codebook_size: int = 64,
    max_pixels: int = 112 * 112,
    factor: int = 28,
) -> PatchTokenCodec | ImageCodec:
    if name == "patch":
        return PatchTokenCodec(grid=grid, codebook_size=codebook_size)
    if name == "image":
        return ImageCodec(max_pixels=max_pixels, factor=factor)
    raise UserError(f"data.codec must be 'patch' or 'image', got {name!r}")
