"""`streampro submit` against a real `ray start --head` on loopback.

The head gets its own temp dir and non-default ports, so it neither collides with other Ray
instances on the machine nor becomes the one a bare `ray.init()` attaches to. It is stopped by
killing its own process group (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from streampro.timeouts import free_port, free_ports

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _worker_range(taken: list[int]) -> int:
    """First port of a 100-port worker range below the kernel's usual ephemeral range (32768+,
    where free ports come from) that holds none of `taken`: Ray refuses any overlap."""
    start = os.getpid() % 120
    for k in range(120):
        lo = 20000 + ((start + k) % 120) * 100
        if not any(lo <= port < lo + 100 for port in taken):
            return lo
    raise RuntimeError(f"no 100-port worker range in 20000-32000 avoids {taken}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    # the head's python is the venv's, as after `source .venv/bin/activate; ray start --head`
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DS_ACCELERATOR="cpu", VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _kill_group(pgid: int, timeout: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with free ports; yields the jobs API URL."""
    temp_dir = tempfile.mkdtemp(prefix="spr-", dir="/tmp")  # short: unix socket paths
    ports = free_ports(9)
    gcs, dash, client, agent, agent_grpc, renv, metrics, nm, om = ports
    lo = _worker_range(ports)
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={renv}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={lo + 99}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    proc = subprocess.Popen(
        cmd,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0, out[-3000:]
        yield f"http://127.0.0.1:{dash}"
    finally:
        _kill_group(proc.pid)
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def _streampro(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streampro.cli", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_submit_wait_synth_succeeds(ray_head, tmp_path):
    out = tmp_path / "synth"
    r = _streampro(
        "submit",
        "--address",
        ray_head,
        "--wait",
        "--",
        "synth",
        "--config",
        "configs/smoke.yaml",
        "--out",
        str(out),
        "--per-task",
        "1",
        "--split",
        "val",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "SUCCEEDED" in r.stderr
    manifests = list(out.rglob("manifest.*"))
    assert manifests, f"the job wrote no manifest under {out}: {r.stdout[-2000:]}"
    status = _streampro("submit", "--address", ray_head, "--status", job_id, timeout=60)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout


def test_submit_failing_job_exits_nonzero_with_its_error(ray_head):
    r = _streampro("submit", "--address", ray_head, "--wait", "--", "synth", "no_such.key=1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "unknown config key" in r.stdout  # the job's own one-line error, from its logs
    assert "FAILED" in r.stderr and "exit code 1" in r.stderr


def test_submit_rejects_unknown_command_without_traceback(ray_head):
    r = _streampro("submit", "--address", ray_head, "--", "frobnicate", timeout=60)
    assert r.returncode == 1
    assert "'frobnicate' is not a streampro command" in r.stderr and "Traceback" not in r.stderr


def test_submit_status_of_unknown_job(ray_head):
    r = _streampro("submit", "--address", ray_head, "--status", "raysubmit_nope", timeout=60)
    assert r.returncode == 1 and "raysubmit_nope" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_address_is_one_line_error():
    port = free_port()
    r = _streampro("submit", "--address", f"http://127.0.0.1:{port}", "--", "synth", timeout=60)
    assert r.returncode == 1 and "cannot reach the Ray jobs API" in r.stderr
    assert "Traceback" not in r.stderr


def test_runtime_env_yaml(tmp_path):
    from streampro.cluster.submit import build_entrypoint, load_runtime_env
    from streampro.errors import UserError

    env = load_runtime_env(None)
    assert env["working_dir"] == str(REPO)
    assert ".venv/" in env["excludes"] and env["env_vars"]["DS_ACCELERATOR"] == "cpu"
    assert (
        build_entrypoint(["--", "synth", "--out", "a b"])
        == "python -m streampro.cli synth --out 'a b'"
    )
    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars: [1, 2]\n")
    with pytest.raises(UserError, match="env.yaml: env_vars: expected a mapping"):
        load_runtime_env(bad)
    json.dumps(env)  # the SDK sends it as JSON
