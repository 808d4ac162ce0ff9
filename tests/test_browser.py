"""The browser page of the Serve deployment (actors/serve/static/) in real headless Chromium.

Chromium comes from Debian's packages (`make browser`, part of `make test`'s setup) and is
driven by playwright. The page is loaded from a real deployment (transformers engine, the
tiny policy), plays a synth test video at 4x while it streams one frame per second of video
time to /v1, and shows every decision on its timeline and in its transcript.
"""

from __future__ import annotations

from pathlib import Path

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
TOKEN = "browser-token"


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
        ],
    )
    with local_deployment(cfg, tiny_path) as url:
        yield url


@pytest.mark.slow
def test_page_streams_a_video_and_shows_decisions(served, synth_smoke):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium missing: `make browser` installs it (apt-get)"

    from streampro.data.schema import load_manifest
    from streampro.data.video import probe

    manifest = synth_smoke / "test" / "manifest.jsonl"
    samples, _ = load_manifest(manifest)
    video = samples[0].video_path(manifest.parent)
    seconds = int(probe(video).duration)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{served}/ui/")
            page.fill("#token", TOKEN)
            page.select_option("#rate", "4")
            page.set_input_files("#file", str(video))
            page.click("#start")
            page.wait_for_function("window.streampro.done === true", timeout=120_000)
            state = page.evaluate("window.streampro")
            ticks = page.locator("#timeline .tick").count()
            lines = page.locator("#transcript li").all_inner_texts()
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert state["errors"] == 0, status
    # one decision per whole second the video played (its last partial second has no chunk)
    assert seconds - 1 <= state["decisions"] <= seconds + 1, (state, seconds)
    assert ticks == state["decisions"] == len(lines)
    assert lines[0].startswith("1.0 s:") and lines[-1].startswith(f"{state['decisions']}.0 s:")
