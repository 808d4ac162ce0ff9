"""A call that raises after a deadline instead of hanging (judges, NCCL weight sync).

The call runs on a daemon thread; if it overruns, the caller gets the error and the thread is
abandoned (a daemon does not keep the process alive). What a blocked call leaves behind (a
dead endpoint's socket, an NCCL group) is the caller's to give up.
"""

from __future__ import annotations

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
