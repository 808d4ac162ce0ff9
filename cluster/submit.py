"""`streampro submit`: run a streampro command as a Ray job (Jobs SDK), like `ray job submit`.

    streampro submit [--address URL] [--wait] [--runtime-env FILE] -- train --config c.yaml
    streampro submit --status raysubmit_... | --stop raysubmit_...

The job's entrypoint is `python -m streampro.cli <command ...>` run by the head's python, in
the uploaded working_dir (the project checkout), so the cluster runs the code being edited.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from streampro.cli import COMMANDS
from streampro.cluster.local import enable_token_auth_if_available
from streampro.config import Config
from streampro.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_RUNTIME_ENV = PACKAGE_DIR / "runtime_env.yaml"
DEFAULT_EXCLUDES = [".venv/", ".git/", "runs/", ".cache/"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def project_root() -> Path | None:
    """The checkout this package runs from (the folder with pyproject.toml), if any."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def load_runtime_env(path: str | Path | None) -> dict[str, Any]:
    """The runtime env of the YAML (default cluster/runtime_env.yaml) plus the working_dir."""
    p = Path(path) if path else DEFAULT_RUNTIME_ENV
    if not p.is_file():
        raise UserError(f"{p}: runtime-env file not found")
    try:
        env = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(env, dict):
        raise UserError(f"{p}: expected a mapping of runtime-env fields, got {type(env).__name__}")
    for key in ("env_vars",):
        if key in env and not isinstance(env[key], dict):
            raise UserError(f"{p}: {key}: expected a mapping")
    env["env_vars"] = {k: str(v) for k, v in (env.get("env_vars") or {}).items()}
    if "working_dir" in env:  # relative to the YAML, as users write it next to their code
        env["working_dir"] = str((p.parent / env["working_dir"]).resolve())
    elif (root := project_root()) is not None:
        env["working_dir"] = str(root)
    env.setdefault("excludes", list(DEFAULT_EXCLUDES))
    return env


def build_entrypoint(argv: list[str]) -> str:
    """`python -m streampro.cli CMD ARGS` for `-- CMD ARGS`; CMD must be a streampro command."""
    args = argv[1:] if argv[:1] == ["--"] else list(argv)
    if not args:
        raise UserError("no command to submit: use `streampro submit [flags] -- <command> [args]`")
    if args[0] not in COMMANDS or args[0] == "submit":
        known = ", ".join(c for c in COMMANDS if c != "submit")
        raise UserError(f"{args[0]!r} is not a streampro command to submit (one of: {known})")
    return shlex.join(["python", "-m", "streampro.cli", *args])


def make_client(address: str | None) -> JobSubmissionClient:
    """A JobSubmissionClient; address None = RAY_API_SERVER_ADDRESS / RAY_ADDRESS / local."""
    try:
        try:
            return JobSubmissionClient(address)
        except AuthenticationError:
            # Ray 2.60 token auth: send the local token (see enable_token_auth_if_available)
            if not enable_token_auth_if_available():
                raise
            return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
        where = address or "the default Ray address"
        raise UserError(
            f"--address {where}: cannot reach the Ray jobs API: {str(e).strip().splitlines()[0]}"
        ) from None


def wait_job(
    client: JobSubmissionClient, job_id: str, *, out: TextIO = sys.stdout, poll_s: float = 0.5
) -> str:
    """Stream the job's logs to `out` until it ends; returns its final status name."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError) as e:
        # a dropped log stream must not lose the job's status
        print(
            f"streampro submit: log stream ended early ({type(e).__name__}: {e}); polling",
            file=sys.stderr,
        )
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        time.sleep(poll_s)
    return status


def _job_error(client: JobSubmissionClient, job_id: str) -> str:
    info = client.get_job_info(job_id)
    msg = (info.message or "").strip().splitlines()
    code = getattr(info, "driver_exit_code", None)
    first = msg[0] if msg else "no message"
    return f"{first}" + (f" (exit code {code})" if code not in (None, 0) else "")


def _status(client: JobSubmissionClient, job_id: str) -> int:
    info = client.get_job_info(job_id)
    print(f"{job_id}: {info.status.value}" + (f": {info.message}" if info.message else ""))
    return 0


def _stop(client: JobSubmissionClient, job_id: str) -> int:
    if client.stop_job(job_id):
        print(f"{job_id}: stop requested")
    else:
        print(f"{job_id}: already finished ({client.get_job_status(job_id).value})")
    return 0


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Handler of `streampro submit` (flags in streampro/cli.py)."""
    if args.status and args.stop:
        raise UserError("give one of --status and --stop")
    address = args.address or (
        cfg.cluster.address if cfg.cluster.address.startswith("http") else None
    )
    if args.status or args.stop:
        client = make_client(address)
        job_id = args.status or args.stop
        try:
            return _status(client, job_id) if args.status else _stop(client, job_id)
        except RuntimeError as e:  # the SDK's "job not found" and HTTP errors
            raise UserError(f"job {job_id}: {str(e).strip().splitlines()[0]}") from None
    entrypoint = build_entrypoint(list(args.entrypoint))
    runtime_env = load_runtime_env(args.runtime_env or cfg.cluster.runtime_env or None)
    client = make_client(address)
    command = list(args.entrypoint)[1:] if args.entrypoint[:1] == ["--"] else list(args.entrypoint)
    job_id = client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, metadata={"streampro_command": command[0]}
    )
    print(job_id, flush=True)
    if not args.wait:
        print(
            f"streampro submit: follow with `streampro submit --status {job_id}`", file=sys.stderr
        )
        return 0
    try:
        status = wait_job(client, job_id)
    except KeyboardInterrupt:
        print(
            f"streampro submit: stopped waiting; the job runs on "
            f"(`streampro submit --stop {job_id}`)",
            file=sys.stderr,
        )
        return 130
    if status == "SUCCEEDED":
        print(f"streampro submit: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    print(f"streampro submit: job {job_id} {status}: {_job_error(client, job_id)}", file=sys.stderr)
    return 1
