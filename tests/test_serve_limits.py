"""The pure parts of Serve's push-back: the in-flight limiter of an ingress replica
(actors/serve/limits.py), the client's backoff (streampro/client.py) and their config checks.
The same limits over real HTTP are in tests/test_serve.py."""

from __future__ import annotations

import random

import pytest

from streampro.actors.serve.limits import InflightLimiter, LimitExceeded, replica_share
from streampro.client import Backoff
from streampro.config import ConfigError, load_config


def test_limiter_refuses_over_either_cap_and_frees_slots_on_release():
    lim = InflightLimiter(total=3, per_session=2)
    lim.acquire("a")
    lim.acquire("a")
    with pytest.raises(LimitExceeded) as e:  # a third of session a
        lim.acquire("a")
    assert e.value.scope == "session" and "at most 2" in e.value.message
    lim.acquire("b")
    with pytest.raises(LimitExceeded) as e:  # the replica is full: 3 in progress
        lim.acquire("c")
    assert e.value.scope == "server" and "3 requests in progress" in e.value.message
    assert (lim.inflight, dict(lim.sessions)) == (3, {"a": 2, "b": 1})  # refusals took nothing
    lim.release("a")
    lim.acquire("c")
    lim.release("b")
    assert dict(lim.sessions) == {"a": 1, "c": 1} and lim.inflight == 2
    with pytest.raises(ValueError, match="release without acquire"):
        lim.release("b")


def test_limiter_slot_is_released_when_the_request_fails():
    lim = InflightLimiter(total=1, per_session=1)
    with pytest.raises(RuntimeError), lim.slot("a"):
        assert lim.inflight == 1
        raise RuntimeError("the engine failed")
    assert lim.inflight == 0 and not lim.sessions
    with lim.slot("b"), pytest.raises(LimitExceeded), lim.slot("c"):
        pass
    assert lim.inflight == 0


def test_a_deployment_wide_cap_is_split_over_the_ingress_replicas():
    assert [replica_share(64, n) for n in (1, 2, 3, 64, 100)] == [64, 32, 22, 1, 1]
    with pytest.raises(ValueError):
        InflightLimiter(total=0, per_session=1)


def test_backoff_doubles_from_the_base_honours_retry_after_and_stays_bounded():
    b = Backoff(tries=6, base_s=0.5, cap_s=4.0, jitter=0.0)
    rng = random.Random(0)
    assert [b.delay(a, 0.0, rng) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay(0, 3.0, rng) == 3.0  # Retry-After above the backoff wins
    assert b.delay(0, 60.0, rng) == 4.0  # ... up to the cap
    j = Backoff(tries=6, base_s=0.5, cap_s=4.0, jitter=0.5)
    waits = [j.delay(a, 1.0, rng) for a in range(6) for _ in range(50)]
    assert min(waits) >= 1.0 and max(waits) <= 6.0  # never below Retry-After, never unbounded
    assert len(set(waits)) > 100  # jittered: clients refused together do not return together
    with pytest.raises(ValueError):
        Backoff(tries=0)


@pytest.mark.parametrize(
    "override,msg",
    [
        ("serve.max_session_inflight=0", "serve.max_session_inflight must be >= 1, got 0"),
        ("serve.max_inflight=0", "serve.max_inflight must be >= 1, got 0"),
        ("serve.max_queued_requests=0", "serve.max_queued_requests must be >= 1, got 0"),
        ("serve.retry_after_s=0", "serve.retry_after_s must be >= 1, got 0"),
        ("serve.bench_runs=[levels,chaos]", "serve.bench_runs must be one of"),
    ],
)
def test_serve_limit_settings_are_checked_at_load(override, msg):
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[")):
        load_config(None, [override])
