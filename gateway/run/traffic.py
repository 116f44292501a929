"""
Connection totals and rates for the status page, per listener and per
upstream server, as HAProxy's stats page shows sessions and bytes.

Counted when a connection ends, from its access-log record, as
C{tlsgateway_connections_total} and C{tlsgateway_bytes_total} are: the
totals on the page and the metrics agree, and a connection still open is
in C{active} instead.  A rate is over the last L{RATE_WINDOW} seconds, in
one-second buckets, so it costs a few integers per listener and server
whatever the load, and reads the same whenever the page is fetched.

Pure: no Twisted, and the clock is passed in.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord

__all__ = ["RATE_WINDOW", "Tally", "Traffic"]

RATE_WINDOW = 10
"""Seconds a rate is measured over."""


class Tally:
    """
    The connections that ended through one listener or one server.

    @ivar _buckets: [second, connections] for the last L{RATE_WINDOW}
        seconds that had any, oldest first.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self._buckets: deque[list[int]] = deque(maxlen=RATE_WINDOW + 1)

    def add(self, record: ConnectionRecord, now: float) -> None:
        self.connections += 1
        self.bytesIn += record.bytesIn
        self.bytesOut += record.bytesOut
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])

    def rate(self, now: float) -> float:
        """
        Connections per second over the last L{RATE_WINDOW} whole seconds
        before C{now} (the current, partial second is left out, so a rate
        does not jump when a second begins).
        """
        second = int(now)
        ended = sum(
            count
            for start, count in self._buckets
            if second - RATE_WINDOW <= start < second
        )
        return round(ended / RATE_WINDOW, 1)

    def fields(self, now: float) -> dict[str, Any]:
        """What the status snapshot says of it (C{/status.json} keys)."""
        return {
            "connections_total": self.connections,
            "connections_per_s": self.rate(now),
            "bytes_in": self.bytesIn,
            "bytes_out": self.bytesOut,
        }


def _tally(tallies: dict[str, Tally], key: str) -> Tally:
    """
    The tally of C{key}, made on first use (not one per call, as
    C{setdefault} would: this runs for every connection).
    """
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = Tally()
    return tally


def emptyFields() -> dict[str, Any]:
    """L{Tally.fields} of a listener or server that had no connection yet."""
    return Tally().fields(0)


class Traffic:
    """
    Every listener's and every server's L{Tally}, fed each access-log
    record.

    Servers are keyed by address (C{host:port}, as the record's
    C{upstream} and the pools name them): a server listed in two upstreams
    shows their connections together.  Kept for the life of the process,
    across reloads, as the access log is.

    @ivar started: wall-clock time this process began counting.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = time.time()
        self._listeners: dict[str, Tally] = {}
        self._servers: dict[str, Tally] = {}

    def add(self, record: ConnectionRecord) -> None:
        now = self._clock()
        _tally(self._listeners, record.listener).add(record, now)
        if (
            record.upstream is not None
            and record.status is not Status.UPSTREAM_UNAVAILABLE
        ):
            # (A server that never took the connection carried none of it.)
            _tally(self._servers, record.upstream).add(record, now)

    def listener(self, name: str) -> dict[str, Any]:
        return self._fields(self._listeners.get(name))

    def server(self, address: str) -> dict[str, Any]:
        return self._fields(self._servers.get(address))

    def _fields(self, tally: Tally | None) -> dict[str, Any]:
        return emptyFields() if tally is None else tally.fields(self._clock())
