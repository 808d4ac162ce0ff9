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

    The rollout passes `images(frame)` as vLLM multi_modal_data and the learner feeds them
    through the model's processor; the dialogue holds the model's image placeholder.
    """

    name = "image"

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        self.size = size
        """(width, height) to resize to before the processor (None = keep)."""

    def encode(self, frame: np.ndarray):
        """H x W x 3 uint8 -> a PIL image (the processor's input)."""
        from PIL import Image

        img = Image.fromarray(frame)
        return img.resize(self.size, Image.Resampling.BILINEAR) if self.size else img


def make_codec(
    name: str, *, grid: int = 4, codebook_size: int = 64
) -> PatchTokenCodec | ImageCodec:
    if name == "patch":
        return PatchTokenCodec(grid=grid, codebook_size=codebook_size)
    if name == "image":
        return ImageCodec()
    raise UserError(f"data.codec must be 'patch' or 'image', got {name!r}")
