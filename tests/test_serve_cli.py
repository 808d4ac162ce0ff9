"""`streampro serve --checkpoint DIR --port P` as a user runs it, driven by the README's curl
examples verbatim (only the URL's port changes): the documented API answers as documented.

The server runs in its own process with its own local Ray and the transformers engine
(`serve.engine=hf`: no vLLM start-up), so this test is independent of the other modules'.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_curl_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Serving: a live-stream API") :]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_curl_examples_work_against_streampro_serve(tiny_path, tmp_path):
    from streampro.timeouts import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "streampro.cli", "serve", "--checkpoint", tiny_path]
        + ["--port", str(port), "serve.engine=hf", "cluster.num_cpus=2"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "streampro serve did not come up in 240 s"
            time.sleep(2)
        script = _readme_curl_block().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        script = "\n".join(
            line for line in script.splitlines() if not line.startswith("streampro serve")
        )
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert len(out) == 3, r.stdout
        assert out[0].startswith('{"decisions":[{"time":1.0,"decision":')
        assert out[1].startswith('{"decisions":[{"time":2.0,"decision":')
        assert out[2] == "204"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: the app is deleted, Ray stops
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
