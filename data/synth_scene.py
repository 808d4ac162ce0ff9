"""StreamPro-Synth scenes: coloured shapes on a plain background, moved by numpy timelines.

Coordinates are fractions of the frame (x to the right, y down, centre of the object);
sizes are fractions of the frame's width (horizontally) and height (vertically), so the
geometry is the same at any resolution and aspect ratio. The default object size (0.25) equals one patch of
the 4x4 patch codec, and the palette's colours fall in distinct codebook cells, so every
event changes frame tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

BACKGROUND = (12, 12, 12)
# Strong colours, each in its own cell of the 4-level RGB codebook (and apart in YUV).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (30, 40, 235),
    "yellow": (235, 220, 25),
    "cyan": (25, 215, 225),
    "magenta": (225, 25, 225),
    "orange": (245, 135, 15),
}
WHITE, GREY = (240, 240, 240), (140, 140, 140)
RGB = np.array(list(COLOURS.values()) + [WHITE, GREY], dtype=np.uint8)
COLOUR_INDEX = {name: i for i, name in enumerate(list(COLOURS) + ["white", "grey"])}
SHAPES = ("square", "circle", "triangle", "diamond")
SIDES = ("left", "right", "top", "bottom")
BASE_SPEED = 0.12  # frame fractions per second at synth.speed = 1
HIDDEN = -1


@dataclass
class SceneParams:
    """Flat knobs of one rendering (from SynthConfig)."""

    width: int = 128
    height: int = 128
    video_fps: int = 4
    speed: float = 1.0
    distractors: int = 1
    max_events: int = 4
    object_size: float = 0.25


@dataclass
class Sprite:
    shape: str
    size: float
    x: np.ndarray  # [F] centre, fraction of width
    y: np.ndarray  # [F] centre, fraction of height
    colour: np.ndarray  # [F] index into RGB, HIDDEN = not drawn


@dataclass
class Scene:
    """What a task generator returns: the drawing plus the ground truth it implies."""

    question: str
    answers: list  # list[Answer]
    sprites: list[Sprite]
    meta: dict
    keywords: list[str]
    """One word of each answer's text (rubric: must mention)."""
    forbidden: list[str]
    """Words no correct answer contains (rubric: shall not mention)."""
    increasing: bool = False
    rects: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    """Static rectangles (x0, y0, x1, y1, colour name) drawn under the sprites."""


def timeline(duration: int, fps: int) -> np.ndarray:
    """[F] frame times in seconds."""
    return np.arange(duration * fps) / fps


def onset(second: int, fps: int) -> float:
    """An event's first frame: one frame into a second, so the chunk that ends next shows it."""
    return second + 1.0 / fps


def tri(u: np.ndarray) -> np.ndarray:
    """Triangle wave: 0 at even u, 1 at odd u, linear between (reflecting motion)."""
    return 1.0 - np.abs(np.mod(u, 2.0) - 1.0)


def bounce(p0: float, vel: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at `vel` between walls lo and hi, reflecting, from p0 at t=0."""
    return lo + (hi - lo) * tri((p0 - lo + vel * t) / (hi - lo))


def along(side: str, p: np.ndarray | float, lane: np.ndarray | float):
    """(x, y) for distance p from the side opposite `side` toward `side` (p=1: at `side`)."""
    p, lane = np.broadcast_arrays(np.asarray(p, float), np.asarray(lane, float))
    return {"right": (p, lane), "left": (1 - p, lane), "bottom": (lane, p), "top": (lane, 1 - p)}[
        side
    ]


def inward(side: str, p: np.ndarray | float, lane: np.ndarray | float):
    """(x, y) for depth p measured from `side` into the frame (p=0: centre on that edge)."""
    return along(side, 1 - np.asarray(p, float), lane)


def const(value: float, n: int) -> np.ndarray:
    return np.full(n, float(value))


def wander(
    rng: np.random.Generator,
    t: np.ndarray,
    size: float,
    speed: float,
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Bouncing 2-D motion inside box (x0, y0, x1, y1), random start and direction."""
    h = size / 2
    x0, y0, x1, y1 = box[0] + h, box[1] + h, box[2] - h, box[3] - h
    ang = rng.uniform(0.2, 1.37) + rng.integers(0, 4) * np.pi / 2  # never axis-aligned
    v = BASE_SPEED * speed * rng.uniform(0.7, 1.3)
    return (
        bounce(rng.uniform(x0, x1), v * np.cos(ang), t, x0, x1),
        bounce(rng.uniform(y0, y1), v * np.sin(ang), t, y0, y1),
    )


def distractors(
    rng: np.random.Generator,
    n: int,
    colours: list[str],
    t: np.ndarray,
    size: float,
    speed: float,
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> list[Sprite]:
    """n wandering objects, one colour each from `colours` (never the target's)."""
    out = []
    for c in colours[:n]:
        x, y = wander(rng, t, size, speed, box)
        shape = SHAPES[rng.integers(len(SHAPES))]
        out.append(Sprite(shape, size, x, y, np.full(len(t), COLOUR_INDEX[c])))
    return out


def pick_colours(rng: np.random.Generator, n: int, exclude: tuple[str, ...] = ()) -> list[str]:
    names = [c for c in COLOURS if c not in exclude]
    return [names[i] for i in rng.permutation(len(names))[:n]]


@lru_cache(maxsize=64)
def shape_mask(shape: str, sx: int, sy: int) -> np.ndarray:
    """[sy, sx] bool mask of a filled shape (stretched with the frame's aspect ratio)."""
    yy, xx = np.mgrid[0:sy, 0:sx]
    u, v = (xx + 0.5) / sx, (yy + 0.5) / sy  # pixel centres in [0, 1]
    if shape == "square":
        return np.ones((sy, sx), bool)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex up
        return np.abs(u - 0.5) <= v / 2
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    raise ValueError(f"unknown shape {shape!r}")


def _draw(frame: np.ndarray, mask: np.ndarray, rgb: np.ndarray, cx: float, cy: float) -> None:
    H, W, _ = frame.shape
    sy, sx = mask.shape
    top, left = round(cy * H - sy / 2), round(cx * W - sx / 2)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + sy, H), min(left + sx, W)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    frame[y0:y1, x0:x1][m] = rgb


def render(scene: Scene, n_frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Yield the scene's frames (H x W x 3 uint8); sprites later in the list draw on top."""
    base = np.empty((height, width, 3), np.uint8)
    base[:] = BACKGROUND
    for x0, y0, x1, y1, name in scene.rects:
        base[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = RGB[
            COLOUR_INDEX[name]
        ]
    masks = [
        shape_mask(s.shape, max(2, round(s.size * width)), max(2, round(s.size * height)))
        for s in scene.sprites
    ]
    for i in range(n_frames):
        frame = base.copy()
        for sp, mask in zip(scene.sprites, masks):
            if sp.colour[i] != HIDDEN:
                _draw(frame, mask, RGB[sp.colour[i]], float(sp.x[i]), float(sp.y[i]))
        yield frame
