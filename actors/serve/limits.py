"""In-flight limits of an ingress replica: pure bookkeeping, no HTTP and no Ray.

A chunk request holds one slot from admission until its decisions are back (or it failed).
Two caps, checked at admission and never waited on: `total` requests on this replica
(serve.max_inflight split over serve.ingress_replicas) and `per_session` requests of one
session (serve.max_session_inflight; a session's requests run one at a time anyway, so more
only queue). A refused request is answered 429 with Retry-After by the ingress.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class LimitExceeded(Exception):
    """A request refused by a cap; `scope` is 'session' or 'server'."""

    def __init__(self, scope: str, message: str) -> None:
        super().__init__(message)
        self.scope, self.message = scope, message


def replica_share(total: int, replicas: int) -> int:
    """One ingress replica's part of a deployment-wide cap (at least 1). Serve spreads
    requests over the replicas, so the replicas together admit about `total`."""
    return max(1, math.ceil(total / max(1, replicas)))


class InflightLimiter:
    """Counts the requests in progress, in all and per session."""

    def __init__(self, *, total: int, per_session: int) -> None:
        if total < 1 or per_session < 1:
            raise ValueError(f"limits must be >= 1, got total={total}, per_session={per_session}")
        self.total, self.per_session = total, per_session
        self.inflight = 0
        self.sessions: Counter[str] = Counter()

    def acquire(self, sid: str) -> None:
        """Take a slot for a request of `sid`, or raise LimitExceeded (nothing taken)."""
        if self.sessions[sid] >= self.per_session:
            raise LimitExceeded(
                "session",
                f"session {sid}: {self.sessions[sid]} requests in progress, at most "
                f"{self.per_session} (send the next chunks after the decisions come back)",
            )
        if self.inflight >= self.total:
            raise LimitExceeded(
                "server",
                f"{self.inflight} requests in progress on this replica, at most {self.total}",
            )
        self.inflight += 1
        self.sessions[sid] += 1

    def release(self, sid: str) -> None:
        if self.sessions[sid] <= 0:
            raise ValueError(f"session {sid}: release without acquire")
        self.inflight -= 1
        self.sessions[sid] -= 1
        if not self.sessions[sid]:
            del self.sessions[sid]  # the counter holds only sessions in progress

    @contextmanager
    def slot(self, sid: str) -> Iterator[None]:
        """The request's slot for the block (released however the block ends)."""
        self.acquire(sid)
        try:
            yield
        finally:
            self.release(sid)
