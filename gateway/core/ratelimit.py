"""
C{max_connection_rate}: a token bucket per client address.

Pure: no Twisted, no I/O; the clock is a callable the caller injects (the
listener gives its reactor's C{seconds}), so the tests drive time by hand.

Each client address has a bucket holding at most C{N} tokens, refilled at
C{N} per second (C{N/s}) or per minute (C{N/m}); a new connection takes
one token, and a client whose bucket has less than one is refused.  A
client that was quiet for a while may therefore open C{N} connections at
once (the burst), and then as many as the rate refills.

Memory stays bounded without a timer: a bucket that has had time to fill
up again is the same as no bucket at all, so buckets are kept in the order
they were last used and the ones older than one full refill are dropped
whenever a connection arrives.  At most C{maxClients} buckets are kept
even under a flood from ever-new addresses: past that the least recently
used is dropped first, which can only I{give} that client its burst back,
never refuse anyone wrongly.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

import attrs
from attrs import validators as v

__all__ = ["ConnectionRate", "RateLimiter", "parseRate"]

_RATE = re.compile(r"\s*([0-9]+)\s*/\s*([smSM])\s*")
_PERIODS = {"s": 1.0, "m": 60.0}


@attrs.frozen
class ConnectionRate:
    """
    C{N/s} or C{N/m}: C{connections} new connections per C{seconds}.
    """

    connections: int = attrs.field(validator=v.ge(1))
    seconds: float = attrs.field(validator=v.gt(0))

    def __str__(self) -> str:
        return f"{self.connections}/{'s' if self.seconds == 1 else 'm'}"


def parseRate(text: str) -> ConnectionRate:
    """
    Read C{N/s} or C{N/m}.

    @raise ValueError: with a message for the operator.
    """
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text.strip()!r} is not a connection rate (use N/s or N/m, like 10/s)"
        )
    count = int(match[1])
    if count < 1:
        raise ValueError(f"{text.strip()!r} allows no connection at all: use 1 or more")
    return ConnectionRate(count, _PERIODS[match[2].lower()])


@attrs.define
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """
    The buckets of one listener.

    @ivar _buckets: client key -> bucket, least recently used first: the
        ones at the front are the first to have refilled.
    @ivar _refill: seconds an empty bucket takes to fill up.
    """

    def __init__(
        self,
        rate: ConnectionRate,
        clock: Callable[[], float],
        maxClients: int = 100_000,
    ) -> None:
        if maxClients < 1:
            raise ValueError(f"maxClients must be positive, not {maxClients}")
        self.rate = rate
        self._clock = clock
        self._capacity = float(rate.connections)
        self._perSecond = rate.connections / rate.seconds
        self._refill = rate.seconds
        self._maxClients = maxClients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """
        How many clients have a bucket now (for tests and the curious).
        """
        return len(self._buckets)

    def take(self, client: str) -> bool:
        """
        A new connection from C{client}: take a token if there is one.

        @return: C{True} if the connection may go on, C{False} if it is
            over the rate.
        """
        now = self._clock()
        self._expire(now)
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
        else:
            # A clock that steps back refills nothing rather than draining.
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(
                self._capacity, bucket.tokens + elapsed * self._perSecond
            )
            bucket.stamp = max(now, bucket.stamp)
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        self._buckets[client] = bucket
        while len(self._buckets) > self._maxClients:
            self._buckets.popitem(last=False)
        return allowed

    def _expire(self, now: float) -> None:
        """
        Drop the buckets that have refilled: untouched for a whole refill
        period, they are full, which is what a missing bucket means.
        """
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest.stamp < self._refill:
                break
            buckets.popitem(last=False)
