"""
C{max_connection_rate}'s token buckets, on their own: a clock moved by hand.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.ratelimit import ConnectionRate, RateLimiter, parseRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(text: str, maxClients: int = 100_000) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(parseRate(text), clock, maxClients), clock


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", ConnectionRate(10, 1.0)),
        ("600/m", ConnectionRate(600, 60.0)),
        (" 3 / S ", ConnectionRate(3, 1.0)),
        ("1/M", ConnectionRate(1, 60.0)),
    ],
)
def test_ratesAreRead(text: str, rate: ConnectionRate) -> None:
    assert parseRate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "is not a connection rate (use N/s or N/m"),
        ("10/h", "is not a connection rate"),
        ("-1/s", "is not a connection rate"),
        ("1.5/s", "is not a connection rate"),
        ("0/s", "allows no connection at all"),
    ],
)
def test_badRatesAreRefusedWithAReason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parseRate(text)


def test_theBurstIsNThenTheRateRefills() -> None:
    buckets, clock = limiter("3/s")
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.34  # one token (and a bit) refilled
    assert [buckets.take("a"), buckets.take("a")] == [True, False]
    clock.now += 1.0
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]


def test_clientsHaveBucketsOfTheirOwn() -> None:
    buckets, _ = limiter("1/m")
    assert buckets.take("a")
    assert not buckets.take("a")
    assert buckets.take("b")


def test_perMinuteRefillsOverAMinute() -> None:
    buckets, clock = limiter("2/m")
    assert [buckets.take("a") for _ in range(3)] == [True, True, False]
    clock.now += 29.0
    assert not buckets.take("a")
    clock.now += 1.5  # 30.5 s: one token
    assert buckets.take("a")


def test_idleBucketsAreDropped() -> None:
    """
    A bucket untouched for one refill period is full again, so it is
    dropped: a listener that saw a million clients does not keep a
    million buckets.
    """
    buckets, clock = limiter("5/s")
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 1000
    clock.now += 1.0
    buckets.take("192.0.2.1")
    assert len(buckets) == 1


def test_aClockThatStepsBackRefillsNothing() -> None:
    buckets, clock = limiter("1/s")
    assert buckets.take("a")
    clock.now -= 3600
    assert not buckets.take("a")


def test_theNumberOfBucketsIsBoundedUnderAFlood() -> None:
    buckets, _ = limiter("1/m", maxClients=10)
    for i in range(100):
        buckets.take(str(i))
        assert len(buckets) <= 10
    # The most recent clients keep their (empty) buckets.
    assert not buckets.take("99")


class Reference:
    """
    The token bucket as the definition says, with no expiry and no bound.
    """

    def __init__(self, rate: ConnectionRate) -> None:
        self.rate = rate
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float) -> bool:
        capacity = float(self.rate.connections)
        tokens, stamp = self.buckets.get(client, (capacity, now))
        tokens = min(capacity, tokens + (now - stamp) * (capacity / self.rate.seconds))
        allowed = tokens >= 1.0
        self.buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.floats(min_value=0, max_value=3, allow_nan=False),
    ),
    max_size=80,
)


@given(
    connections=st.integers(min_value=1, max_value=5),
    perMinute=st.booleans(),
    events=EVENTS,
)
def test_expiryNeverChangesAnAnswer(
    connections: int, perMinute: bool, events: list[tuple[str, float]]
) -> None:
    """
    Dropping refilled buckets is invisible: every answer is the one a
    bucket per client kept for ever would give.
    """
    rate = ConnectionRate(connections, 60.0 if perMinute else 1.0)
    clock = Clock()
    buckets = RateLimiter(rate, clock)
    reference = Reference(rate)
    scale = 60.0 if perMinute else 1.0
    for client, step in events:
        clock.now += step * scale
        assert buckets.take(client) == reference.take(client, clock.now)


@given(
    connections=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), max_size=80),
)
def test_noWindowLetsMoreThanTheBurstPlusTheRate(
    connections: int, steps: list[float]
) -> None:
    """
    Over any stretch of time T, one client gets at most N + N*T
    connections through (N/s): the promise an operator relies on.
    """
    clock = Clock()
    buckets = RateLimiter(ConnectionRate(connections, 1.0), clock)
    admitted: list[float] = []
    for step in steps:
        clock.now += step
        if buckets.take("a"):
            admitted.append(clock.now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            elapsed = admitted[j] - start
            assert j - i + 1 <= connections + connections * elapsed + 1e-9
