"""
HAProxy's per-client counters (stick tables) into the gateway's limits.

Pure.  The usual HAProxy idiom for "so many connections per client" is a
stick table keyed by address, a C{track-sc0 src} rule, and a reject on the
tracked counter::

    stick-table type ip size 100k expire 30s store conn_cur,conn_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if { sc_conn_cur(0) gt 20 }
    tcp-request connection reject if { sc_conn_rate(0) gt 10 }

which is the gateway's C{max_connections_per_client = 20} and
C{max_connection_rate = 10/s}.  A rate counted over a period other than a
second or a minute has no exact equivalent (the gateway's bucket holds as
many tokens as its rate per unit), and is named instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from gateway.cli.convert.haproxybackends import haproxyTime
from gateway.cli.convert.haproxyrules import Criterion, Unconvertible

__all__ = ["Counters", "limitFor"]

_COUNTER = re.compile(
    r"sc_conn_(?P<a>cur|rate)\((?P<n>[0-2])\)|sc(?P<m>[0-2])_conn_(?P<b>cur|rate)"
    r"|src_conn_(?P<c>cur|rate)"
)
_RATE_PERIOD = re.compile(r"conn_rate\(([0-9]+[a-z]*)\)")


@attrs.define
class Counters:
    """
    What a frontend counts per client.

    @ivar byAddress: its stick table is keyed by client address (C{type ip}
        or C{ipv6}).
    @ivar ratePeriod: the period of the table's C{conn_rate}, in seconds.
    @ivar tracked: the sticky counters tracking C{src}.
    """

    byAddress: bool = False
    ratePeriod: float | None = None
    tracked: set[int] = attrs.Factory(set)

    def readTable(self, words: Sequence[str]) -> None:
        """A C{stick-table} line's key type and C{conn_rate} period."""
        if "type" in words[:-1]:
            self.byAddress = words[words.index("type") + 1] in ("ip", "ipv6")
        for word in words:
            for period in _RATE_PERIOD.findall(word):
                self.ratePeriod = haproxyTime(period)


def isCounter(criterion: Criterion) -> bool:
    return _COUNTER.fullmatch(criterion.fetch) is not None


def limitFor(criterion: Criterion, counters: Counters) -> tuple[str, str]:
    """
    The listener key and value for C{reject if { COUNTER gt N }}.

    @raise Unconvertible: a counter the gateway does not keep, one not
        keyed by the client address, another comparison, or a rate over a
        period other than a second or a minute.
    """
    match = _COUNTER.fullmatch(criterion.fetch)
    if match is None:
        raise Unconvertible(f"{criterion.fetch}: no equivalent counter")
    kind = match["a"] or match["b"] or match["c"]
    number = match["n"] or match["m"]
    if number is not None and int(number) not in counters.tracked:
        raise Unconvertible(f"sticky counter {number} does not track src here")
    if not counters.byAddress:
        raise Unconvertible("the frontend has no stick-table of type ip")
    if len(criterion.values) != 2 or criterion.values[0] not in ("gt", "ge"):
        raise Unconvertible("only 'gt N' and 'ge N' convert")
    if not criterion.values[1].isdigit():
        raise Unconvertible(f"{criterion.values[1]!r} is not a count")
    limit = int(criterion.values[1]) - (criterion.values[0] == "ge")
    if limit < 1:
        raise Unconvertible("a limit below 1 refuses everyone: use deny = all")
    if kind == "cur":
        return "max_connections_per_client", str(limit)
    unit = {1.0: "s", 60.0: "m"}.get(counters.ratePeriod or 0.0)
    if unit is None:
        raise Unconvertible(
            f"a rate per {counters.ratePeriod}s: the gateway counts new"
            " connections per second or per minute (max_connection_rate)"
        )
    return "max_connection_rate", f"{limit}/{unit}"
