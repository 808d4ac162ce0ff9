"""The seven StreamPro-Synth task generators (docs/method.md).

Each `make_xx(rng, p, duration, query_time)` returns a Scene whose answers follow from its
timelines: an event's `time` (or `start`) is the first frame that shows it, always one frame
into a second (`onset`), so the chunk ending at the next whole second shows it. Proactive
answers (GP arrival, RF impact - 3 s) fall on whole seconds.

Consecutive events are spaced by `min_gap`: a perfect policy's answer to one event comes
after the previous answer's window end + late tau, where StreamPro-F1 would give it to the
previous answer (each response goes to the first answer it reaches).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from streampro.data.schema import Answer
from streampro.data.synth_scene import (
    BASE_SPEED,
    COLOUR_INDEX,
    HIDDEN,
    SHAPES,
    SIDES,
    Scene,
    SceneParams,
    Sprite,
    along,
    bounce,
    const,
    distractors,
    inward,
    onset,
    pick_colours,
    timeline,
    tri,
)
from streampro.tasks import ResolvedAnswer, resolve_answer

EPS = 1e-6  # float slack, as in data/dialogue.py


def oracle_time(r: ResolvedAnswer) -> float:
    """The whole second a perfect policy answers at with 1 s chunks (`plan_responses`): the
    first at or after the best time; it must lie inside the window."""
    t = float(math.ceil(r.best - EPS))
    if not r.lo - EPS <= t <= r.hi + EPS:
        raise ValueError(f"no whole second at/after {r.best:g} inside [{r.lo:g}, {r.hi:g}]")
    return t


def min_gap(task: str, answer_at: Callable[[int], dict]) -> int:
    """Fewest whole seconds g between consecutive events such that the oracle answer to the
    event at second g comes strictly after the reach (window end + late tau) of the event at
    second 0; answer_at(k) is the answer dict of an event at second k."""
    first = resolve_answer(answer_at(0), task)
    reach = first.hi + first.tau_late
    g = 1
    while oracle_time(resolve_answer(answer_at(g), task)) <= reach + EPS:
        g += 1
    return g


def _spread(rng: np.random.Generator, first: int, last: int, n: int, gap: int) -> list[int]:
    """Up to n whole seconds spread at random over [first, last], at least gap apart."""
    n = max(1, min(n, (last - first) // gap + 1))
    slack = max(last - first - (n - 1) * gap, 0)
    offsets = np.sort(rng.integers(0, slack + 1, size=n))
    return [first + int(o) + i * gap for i, o in enumerate(offsets)]


def _split(rng: np.random.Generator, total: int, parts: int) -> list[int]:
    """A random split of `total` whole seconds into `parts` non-negative parts."""
    return [int(x) for x in rng.multinomial(max(total, 0), [1.0 / parts] * parts)]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def make_eu(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """A target colour+shape enters from a side (several times); distractors enter too."""
    t, v, size, h = timeline(duration, p.video_fps), p.video_fps, p.object_size, p.object_size / 2
    colour, shape = pick_colours(rng, 1)[0], _pick(rng, SHAPES)
    others = pick_colours(rng, max(p.distractors, 1), exclude=(colour,))

    def episodes(c: str, seconds: list[int]) -> tuple[Sprite, list[tuple[float, str]]]:
        """Enter at each second's onset, wander inside 3-6 s, leave (all within 13 s)."""
        keys_t, keys_x, keys_y, shown = [0.0], [-1.0], [-1.0], np.zeros(len(t), bool)
        entries = []
        for k in seconds:
            o, dwell = onset(k, v), int(rng.integers(3, 7))
            t_out = o + 1 + dwell + 2
            side, lane = _pick(rng, SIDES), rng.uniform(h, 1 - h)
            exit_side, exit_lane = _pick(rng, SIDES), rng.uniform(h, 1 - h)
            pts = [
                inward(side, 0.0, lane),
                inward(side, h, lane),
                (rng.uniform(h + 0.05, 1 - h - 0.05), rng.uniform(h + 0.05, 1 - h - 0.05)),
                inward(exit_side, -h - 0.02, exit_lane),
            ]
            for tk, (x, y) in zip((o, o + 1, o + 1 + dwell, t_out), pts):
                keys_t.append(tk)
                keys_x.append(float(x))
                keys_y.append(float(y))
            shown |= (t >= o - 1e-9) & (t <= t_out + 1e-9)
            entries.append((o, side))
        x, y = np.interp(t, keys_t, keys_x), np.interp(t, keys_t, keys_y)
        col = np.where(shown, COLOUR_INDEX[c], HIDDEN)
        return Sprite(shape if c == colour else _pick(rng, SHAPES), size, x, y, col), entries

    n = int(rng.integers(1, min(p.max_events, 3) + 1))
    # 13 s: one episode's span; min_gap keeps apart the answers of consecutive entries.
    gap = max(13, min_gap("EU", lambda k: {"start": onset(k, v), "end": onset(k, v) + 1}))
    target, entries = episodes(colour, _spread(rng, q + 2, duration - 13, n, gap))
    sprites = [
        episodes(c, _spread(rng, q, duration - 13, 2, 13))[0] for c in others[: p.distractors]
    ]
    answers = [
        Answer(start=o, end=o + 1, text=f"{colour} {shape} from {side}") for o, side in entries
    ]
    return Scene(
        question=f"Tell me when a {colour} {shape} enters and from which side.",
        answers=answers,
        sprites=sprites + [target],
        meta={
            "target": {"colour": colour, "shape": shape},
            "entries": [{"onset": o, "side": s} for o, s in entries],
            "distractors": others[: p.distractors],
        },
        keywords=[s for _, s in entries],
        forbidden=others[: p.distractors],
    )


def make_ou(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """A still object changes colour at event times; distractors keep theirs."""
    t, v, size = timeline(duration, p.video_fps), p.video_fps, p.object_size
    others = pick_colours(rng, p.distractors)
    palette = [c for c in COLOUR_INDEX if c not in others and c not in ("white", "grey")]
    shape = _pick(rng, SHAPES)
    cell = rng.integers(0, 4, size=2)  # a patch-aligned spot
    x, y = (cell[0] + 0.5) / 4, (cell[1] + 0.5) / 4
    gap = min_gap("OU", lambda k: {"time": onset(k, v)})
    seconds = _spread(rng, q + 2, duration - 4, int(rng.integers(1, p.max_events + 1)), gap)
    colours = [_pick(rng, palette)]
    for _ in seconds:
        colours.append(_pick(rng, [c for c in palette if c != colours[-1]]))
    col = np.full(len(t), COLOUR_INDEX[colours[0]])
    for k, c in zip(seconds, colours[1:]):
        col[t >= onset(k, v) - 1e-9] = COLOUR_INDEX[c]
    sprites = distractors(rng, p.distractors, others, t, size, p.speed)
    sprites.append(Sprite(shape, size, const(x, len(t)), const(y, len(t)), col))
    answers = [Answer(time=onset(k, v), text=f"now {c}") for k, c in zip(seconds, colours[1:])]
    return Scene(
        question=f"Tell me when the {shape} changes colour, and the new colour.",
        answers=answers,
        sprites=sprites,
        meta={
            "target": {"shape": shape, "position": [x, y], "colours": colours},
            "distractors": others,
        },
        keywords=colours[1:],
        forbidden=others,
    )


def make_aa(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """Objects bounce around; some teleport (jump far) or flicker (vanish for 1 s)."""
    t, v, size = timeline(duration, p.video_fps), p.video_fps, p.object_size
    colours = pick_colours(rng, 1 + max(p.distractors, 1))
    sprites = distractors(rng, len(colours), colours, t, size, p.speed)
    gap = min_gap("AA", lambda k: {"time": onset(k, v)})
    seconds = _spread(rng, q + 3, duration - 6, int(rng.integers(1, min(p.max_events, 3) + 1)), gap)
    events = []
    for k in seconds:
        o, i = onset(k, v), int(rng.integers(len(sprites)))
        sp, after = sprites[i], t >= onset(k, v) - 1e-9
        kind = _pick(rng, ("teleport", "flicker"))
        if kind == "teleport":
            h = size / 2
            j = int(np.argmax(after))
            while True:  # a far new start, then the same kind of bouncing motion from there
                nx, ny = rng.uniform(h, 1 - h, size=2)
                if math.hypot(nx - sp.x[j], ny - sp.y[j]) >= 0.5:
                    break
            vx, vy = (sp.x[j + 1] - sp.x[j]) * v, (sp.y[j + 1] - sp.y[j]) * v
            sp.x[after] = bounce(nx, vx, t[after] - o, h, 1 - h)
            sp.y[after] = bounce(ny, vy, t[after] - o, h, 1 - h)
        else:
            sp.colour[after & (t < o + 1 - 1e-9)] = HIDDEN
        events.append({"onset": o, "kind": kind, "colour": colours[i]})
    kinds = {e["kind"] for e in events}
    return Scene(
        question="Alert me if anything unusual happens.",
        answers=[Answer(time=e["onset"], text=e["kind"]) for e in events],
        sprites=sprites,
        meta={"anomalies": events, "objects": colours},
        keywords=[e["kind"] for e in events],
        forbidden=[k for k in ("teleport", "flicker") if k not in kinds],
    )


def make_tp(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """A ball travels wall to wall along one axis; each wall contact is a bounce to count."""
    t, v, size, h = timeline(duration, p.video_fps), p.video_fps, p.object_size, p.object_size / 2
    colour = pick_colours(rng, 1)[0]
    others = pick_colours(rng, p.distractors, exclude=(colour,))
    # Seconds wall to wall = between bounces: at least min_gap (so fast speeds hit the floor).
    gap = min_gap("TP", lambda k: {"start": onset(k, v), "end": onset(k, v)})
    leg = int(np.clip(round(int(rng.integers(6, 11)) / p.speed), gap, max(gap, 12)))
    n = int(rng.integers(1, p.max_events + 1))
    while n > 1 and q + 2 + (n - 1) * leg + 4 > duration - 1:
        n -= 1
    b1 = onset(int(rng.integers(q + 2, max(q + 2, duration - 5 - (n - 1) * leg) + 1)), v)
    bounces = [b1 + i * leg for i in range(n)]
    t_start = max(b1 - rng.uniform(0.3, 0.9) * leg, 0.0)
    t_stop = bounces[-1] + rng.uniform(0.3, 0.7) * leg
    first_high = bool(rng.integers(0, 2))
    u = (np.clip(t, t_start, t_stop) - b1) / leg
    pos = h + (1 - 2 * h) * tri(u + (1.0 if first_high else 0.0))  # 1 = the high wall
    axis, lane = _pick(rng, ("x", "y")), rng.uniform(h, 1 - h)
    x, y = (pos, const(lane, len(t))) if axis == "x" else (const(lane, len(t)), pos)
    walls = [
        ("right" if axis == "x" else "bottom")
        if (i % 2 == 0) == first_high
        else ("left" if axis == "x" else "top")
        for i in range(n)
    ]
    sprites = distractors(rng, p.distractors, others, t, size, p.speed)
    sprites.append(Sprite("circle", size, x, y, np.full(len(t), COLOUR_INDEX[colour])))
    return Scene(
        question=f"Each time the {colour} ball bounces off a wall, tell me the count so far.",
        answers=[Answer(start=b, end=b, text=f"bounce {i + 1}") for i, b in enumerate(bounces)],
        sprites=sprites,
        meta={
            "ball": colour,
            "axis": axis,
            "bounces": bounces,
            "walls": walls,
            "distractors": others,
        },
        keywords=[str(i + 1) for i in range(n)],
        forbidden=[str(n + 1)] + others[:1],
        increasing=True,
    )


def make_tg(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """An object rests, moves to a wall and stops there; answer its start-stop span."""
    t, size, h = timeline(duration, p.video_fps), p.object_size, p.object_size / 2
    colour, shape = pick_colours(rng, 1)[0], _pick(rng, SHAPES)
    others = pick_colours(rng, p.distractors, exclude=(colour,))
    move = int(np.clip(round(int(rng.integers(3, 9)) / p.speed), 2, duration - 6 - q))
    start = int(rng.integers(q + 2, duration - 4 - move + 1))
    stop = start + move
    dist = rng.uniform(0.35, 1 - size - 0.05)
    side, lane = _pick(rng, SIDES), rng.uniform(h, 1 - h)
    frac = np.clip((t - start) / move, 0.0, 1.0)
    x, y = along(side, (1 - h - dist) + dist * frac, lane)
    sprites = distractors(rng, p.distractors, others, t, size, p.speed)
    sprites.append(Sprite(shape, size, x, y, np.full(len(t), COLOUR_INDEX[colour])))
    text = f"{start}-{stop}"
    return Scene(
        question=f"When the {colour} {shape} stops, tell me when it started and stopped moving.",
        answers=[Answer(time=float(stop), text=text, span=(float(start), float(stop)))],
        sprites=sprites,
        meta={
            "target": {"colour": colour, "shape": shape},
            "side": side,
            "start": start,
            "stop": stop,
            "distractors": others,
        },
        keywords=[text],
        forbidden=others,
    )


def make_gp(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """A white agent visits coloured pads in the order of a plan given in the question."""
    t, size = timeline(duration, p.video_fps), p.object_size
    n_steps = int(rng.integers(2, min(4, p.max_events + 1) + 1))
    colours = pick_colours(rng, n_steps + min(max(p.distractors, 1), 7 - n_steps))
    plan, extra = colours[:n_steps], colours[n_steps:]
    cells = rng.permutation(16)[: len(colours) + 1]
    centre = [((c % 4 + 0.5) / 4, (c // 4 + 0.5) / 4) for c in cells]
    pads = [
        Sprite("square", size, const(x, len(t)), const(y, len(t)), np.full(len(t), COLOUR_INDEX[c]))
        for c, (x, y) in zip(colours, centre)
    ]
    travel, pos = [], centre[-1]  # whole seconds per leg at the agent's speed
    for xy in centre[:n_steps]:
        travel.append(min(10, max(2, math.ceil(math.dist(pos, xy) / (BASE_SPEED * 1.5 * p.speed)))))
        pos = xy
    dwell = [int(rng.integers(1, 3)) for _ in range(n_steps)]
    # Stay at a pad long enough that the next arrival is >= min_gap later (F1 matching).
    gap = min_gap("GP", lambda k: {"time": float(k)})
    hold = [max(d, gap - nxt) for d, nxt in zip(dwell, travel[1:])]

    def needed(k: int) -> int:  # seconds of k steps: travels, holds between, the last dwell
        return sum(travel[:k]) + sum(hold[: k - 1]) + dwell[k - 1]

    while n_steps > 1 and q + 2 + needed(n_steps) > duration - 2:
        n_steps -= 1
    waits = _split(rng, duration - 2 - (q + 2) - needed(n_steps), n_steps + 1)
    keys_t, keys_xy, arrivals = [0.0], [centre[-1]], []
    clock = float(q + 2)
    for i in range(n_steps):  # wait, travel to pad i, dwell there
        clock += waits[i]
        keys_t += [clock, clock + travel[i]]
        keys_xy += [keys_xy[-1], centre[i]]
        clock += travel[i]
        arrivals.append(clock)
        clock += hold[i] if i + 1 < n_steps else dwell[i]
    ax = np.interp(t, keys_t, [xy[0] for xy in keys_xy])
    ay = np.interp(t, keys_t, [xy[1] for xy in keys_xy])
    agent = Sprite("circle", size, ax, ay, np.full(len(t), COLOUR_INDEX["white"]))
    nexts = [plan[i + 1] if i + 1 < len(arrivals) else "done" for i in range(len(arrivals))]
    steps = ", then ".join(f"the {c} pad" for c in plan[: len(arrivals)])
    return Scene(
        question=f"Plan: go to {steps}. As each step completes, tell me the next step.",
        answers=[Answer(time=a, text=f"next: {c}") for a, c in zip(arrivals, nexts)],
        sprites=pads + [agent],
        meta={
            "plan": plan[: len(arrivals)],
            "extra_pads": extra,
            "arrivals": arrivals,
            "pads": {c: list(xy) for c, xy in zip(colours, centre)},
        },
        keywords=nexts,
        forbidden=extra[:2],
    )


def make_rf(rng, p: SceneParams, duration: int, q: int) -> Scene:
    """An object approaches a grey wall at constant speed (several runs); warn 3 s before impact."""
    t, size, h, bar = timeline(duration, p.video_fps), p.object_size, p.object_size / 2, 0.125
    colour, shape = pick_colours(rng, 1)[0], _pick(rng, SHAPES)
    others = pick_colours(rng, p.distractors, exclude=(colour,))
    side, lane = _pick(rng, SIDES), rng.uniform(h, 1 - h)
    p_hit = 1 - bar - h  # centre position when touching the wall
    n = int(rng.integers(1, min(p.max_events, 3) + 1))
    approach = [int(np.clip(round(int(rng.integers(4, 9)) / p.speed), 4, 20)) for _ in range(n)]
    back = [int(rng.integers(2, 4)) for _ in range(n)]  # retreat after each impact
    first = q + 1
    # The shortest rest before each run (>= 1 s) puts impacts >= min_gap apart (F1 matching).
    gap = min_gap("RF", lambda k: {"time": float(k - 3)})
    pause = [1] + [max(1, gap - back[i - 1] - approach[i]) for i in range(1, n)]

    def needed(k: int) -> int:  # seconds of k runs: rests + approaches, retreats between
        return sum(pause[:k]) + sum(approach[:k]) + sum(back[: k - 1])

    while n > 1 and first + needed(n) > duration - 2:
        n -= 1
    approach[0] = min(approach[0], duration - 3 - first)  # >= 4 s in 20 s videos
    rests = _split(rng, duration - 2 - first - needed(n), n)
    keys_t, keys_p, impacts = [0.0], [rng.uniform(h, 0.35)], []
    clock = float(first)
    for i in range(n):  # rest (>= pause), approach to impact, retreat
        clock += pause[i] + rests[i]
        keys_t += [clock, clock + approach[i]]
        keys_p += [keys_p[-1], p_hit]
        clock += approach[i]
        impacts.append(clock)
        clock += back[i]
        keys_t.append(clock)
        keys_p.append(rng.uniform(h, 0.35))
    x, y = along(side, np.interp(t, keys_t, keys_p), lane)
    rects = {
        "right": (1 - bar, 0, 1, 1),
        "left": (0, 0, bar, 1),
        "bottom": (0, 1 - bar, 1, 1),
        "top": (0, 0, 1, bar),
    }
    box = {
        "right": (0, 0, 1 - bar, 1),
        "left": (bar, 0, 1, 1),
        "bottom": (0, 0, 1, 1 - bar),
        "top": (0, bar, 1, 1),
    }[side]
    sprites = distractors(rng, p.distractors, others, t, size, p.speed, box=box)
    sprites.append(Sprite(shape, size, x, y, np.full(len(t), COLOUR_INDEX[colour])))
    return Scene(
        question=f"Warn me 3 seconds before the {colour} {shape} hits the grey wall.",
        answers=[Answer(time=float(i - 3), text="impact warning") for i in impacts],
        sprites=sprites,
        meta={
            "target": {"colour": colour, "shape": shape},
            "wall": side,
            "wall_width": bar,
            "impacts": impacts,
            "distractors": others,
        },
        keywords=["impact"] * len(impacts),
        forbidden=others,
        rects=[(*rects[side], "grey")],
    )


GENERATORS = {
    "EU": make_eu,
    "OU": make_ou,
    "AA": make_aa,
    "TP": make_tp,
    "TG": make_tg,
    "GP": make_gp,
    "RF": make_rf,
}
