"""An ordered process-pool map for per-video work (rendering, decoding and encoding).

Each item's result depends on that item alone (x264 runs one thread, seeds are per sample),
so the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

MIN_ITEMS = 16  # below this a pool's start-up (spawned interpreters import numpy and av) costs more


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ordered_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int = 0,
    desc: str = "",
    progress: bool = True,
) -> list[R]:
    """[fn(x) for x in items], spread over `workers` processes (0 = one per available CPU).

    fn must be a module-level function (or a functools.partial of one): workers are spawned,
    never forked, since the caller may hold Ray's or vLLM's threads.
    """

    n = min(available_cpus() if workers <= 0 else workers, len(items))
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    if main_file and not os.path.isfile(main_file):
        n = 1  # a script read from stdin: spawned workers could not re-import it
    serial = n <= 1 or len(items) < MIN_ITEMS
    with tqdm(total=len(items), desc=desc, disable=not progress) as bar, ExitStack() as stack:
        results: Iterator[R]
        if serial:
            results = map(fn, items)
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=n, mp_context=ctx))
            results = pool.map(fn, items, chunksize=max(1, min(8, len(items) // (4 * n))))
        out = []
        for r in results:
            out.append(r)
            bar.update(1)
        return out
