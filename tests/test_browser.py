"""The browser page of the Serve deployment (actors/serve/static/) in real headless Chromium.

Chromium comes from Debian's packages (`make browser`, part of `make test`'s setup) and is
driven by playwright. The page is loaded from a real deployment (transformers engine, the
tiny policy), plays a synth test video at 4x while it streams one frame per second of video
time to /v1, and shows every decision on its timeline and in its transcript. It also streams
Chromium's fake camera (getUserMedia, one frame per wall-clock second) through the same
session API; a screenshot of that page is left at CAMERA_SHOT. The policy is served with the
threshold decoder, so the page also plots every decision's calibrated p against the served
threshold: one point per decision, the threshold line at THRESHOLD's height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
CAMERA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TOKEN = "browser-token"
CAMERA_SHOT = Path("/tmp/camera.png")  # outside the repository: a look at the page, not a test
CAMERA_DECISIONS = 4  # stop after this many decisions have come back
DECISION_KEYS = {"time", "decision", "text", "raw", "context_tokens", "p_response", "threshold"}
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def served(ray_local, tiny_path, tmp_path_factory):
    from streampro.actors.serve.deploy import local_deployment
    from streampro.config import load_config

    cfg = load_config(
        None,
        [
            "serve.engine=hf",
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            "rollout.max_answer_tokens=6",
            f"serve.auth_token={TOKEN}",
            "decode.mode=threshold",
            f"decode.threshold={THRESHOLD}",
        ],
    )
    with local_deployment(cfg, tiny_path) as url:
        yield url


@contextmanager
def _page(served: str, flags: list[str], **options: Any) -> Iterator[Any]:
    """The page in a fresh headless Chromium, its token filled in; closed after the block."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium missing: `make browser` installs it (apt-get)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(**options)
            page.goto(f"{served}/ui/")
            page.fill("#token", TOKEN)
            yield page
        finally:
            browser.close()


def _finish(page: Any, stop: Callable[[], None]) -> tuple[dict, list[str], int, str]:
    """Stop the stream, wait until the page closed its session: its state, transcript lines,
    timeline ticks and status line (the p plot checked on the way)."""
    stop()
    page.wait_for_function("window.streampro.done === true", timeout=120_000)
    state = page.evaluate("window.streampro")
    lines = page.locator("#transcript li").all_inner_texts()
    _check_plot(page, state)
    return state, lines, page.locator("#timeline .tick").count(), page.inner_text("#status")


def _check_plot(page: Any, state: dict) -> None:
    """One point per decision at its p (viewBox y = 110 - 100 p), in time order, and the
    threshold line drawn at the served threshold's height."""
    points = page.evaluate(
        "[...document.querySelectorAll('#pplot circle.p')].map(c => "
        "[Number(c.dataset.time), Number(c.dataset.p), Number(c.getAttribute('cy'))])"
    )
    assert len(points) == state["decisions"] == len(state["log"]) > 0
    assert [t for t, _, _ in points] == [d["time"] for d in state["log"]]
    assert [p for _, p, _ in points] == [d["p_response"] for d in state["log"]]
    assert all(abs(y - (110 - 100 * p)) < 0.01 for _, p, y in points), points
    line = page.locator("#pthreshold")
    assert line.get_attribute("visibility") == "visible"
    assert float(line.get_attribute("data-threshold")) == THRESHOLD == state["threshold"]
    assert (
        float(line.get_attribute("y1")) == float(line.get_attribute("y2")) == 110 - 100 * THRESHOLD
    )
    assert all(d["threshold"] == THRESHOLD for d in state["log"])
    assert all((d["decision"] != "silence") == (d["p_response"] >= THRESHOLD) for d in state["log"])


@pytest.mark.slow
def test_page_streams_a_video_and_shows_decisions(served, synth_smoke):
    from streampro.data.schema import load_manifest
    from streampro.data.video import probe

    manifest = synth_smoke / "test" / "manifest.jsonl"
    samples, _ = load_manifest(manifest)
    video = samples[0].video_path(manifest.parent)
    seconds = int(probe(video).duration)
    with _page(served, FLAGS) as page:
        page.select_option("#rate", "4")
        page.set_input_files("#file", str(video))
        state, lines, ticks, status = _finish(page, lambda: page.click("#start"))  # ends itself
    assert state["errors"] == 0, status
    # one decision per whole second the video played (its last partial second has no chunk)
    assert seconds - 1 <= state["decisions"] <= seconds + 1, (state, seconds)
    assert ticks == state["decisions"] == len(lines)
    assert lines[0].startswith("1.0 s:") and lines[-1].startswith(f"{state['decisions']}.0 s:")


@pytest.mark.slow
def test_page_streams_the_camera_through_the_same_session_api(served):
    """Chromium's fake camera (a moving test pattern): Camera, Start, and after a few seconds
    Stop. Every chunk the page sent got its decision back, in order, with the API's fields."""
    with _page(served, FLAGS + CAMERA_FLAGS, viewport={"width": 900, "height": 820}) as page:
        page.click("#camera")
        page.wait_for_function("!document.getElementById('start').disabled", timeout=30_000)
        page.click("#start")
        page.wait_for_function(f"window.streampro.decisions >= {CAMERA_DECISIONS}", timeout=120_000)
        page.screenshot(path=str(CAMERA_SHOT))
        state, lines, ticks, status = _finish(page, lambda: page.click("#stop"))
    assert state["errors"] == 0, status
    n = state["sent"]
    assert n >= CAMERA_DECISIONS and state["decisions"] == n == len(state["log"]), state
    assert [d["time"] for d in state["log"]] == [float(k + 1) for k in range(n)]
    assert all(set(d) == DECISION_KEYS for d in state["log"]), state["log"]
    assert all(d["decision"] in ("silence", "response", "invalid") for d in state["log"])
    assert ticks == len(lines) == n and lines[0].startswith("1.0 s:")
    assert len(state["session"]) == 32  # the store's session id (uuid4 hex)
