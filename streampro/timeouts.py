"""Remote steps that raise after a deadline instead of hanging, and free ports.

One helper for every deadline (judges, NCCL weight sync, Ray calls) and one for ports.

The call runs on a daemon thread; if it overruns, the caller gets the error and the thread is
abandoned (a daemon does not keep the process alive). What a blocked call leaves behind (a
dead endpoint's socket, an NCCL group) is the caller's to give up.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_with_timeout(
    fn: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    error: type[Exception] = TimeoutError,
) -> T:
    """fn()'s result, its exception re-raised here, or `error` once timeout_s has passed."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name=f"timeout:{what}", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout_s))
    if worker.is_alive():
        raise error(f"{what} did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (bound, then released)."""
    return free_ports(1, host=host)[0]


def free_ports(n: int, *, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports free on `host` (bound together, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
