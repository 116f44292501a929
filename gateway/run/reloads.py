"""
The last reload, where an operator looks: C{/status}, C{/status.json} and
C{/metrics}.

A refused reload leaves the running configuration in place, which is the
point, but it also means nothing visible changes: a certbot deploy hook
that sends C{SIGHUP} reports success, and the renewed certificate never
goes live.  Only the log said so.  Keeping the outcome here makes it
something a dashboard shows and an alert can fire on
(C{tlsgateway_config_last_reload_success_timestamp_seconds} older than the
last renewal, or C{tlsgateway_reloads_total{result="refused"}} rising).

The process that reloads keeps it: the gateway's service in one process,
the supervisor with C{workers > 1} (its workers never reload; a reload
replaces them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: The C{result} label values of C{tlsgateway_reloads_total}.
APPLIED = "applied"
REFUSED = "refused"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@attrs.frozen
class ReloadOutcome:
    """
    One reload: when it ended, C{applied} or C{refused}, and why it was
    refused (the same text as the log's C{reload refused: ...}).
    """

    time: float
    result: str
    reason: str | None = None


class ReloadHistory:
    """
    Counts of reloads by result, and the last one.

    @ivar lastSuccess: when the running configuration was applied: the
        start (L{started}), until a reload applies one.  A refused reload
        leaves it.
    @ivar _clock: read only once the gateway starts: an embedding
        application builds its service before it chooses a reactor.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.lastSuccess = 0.0
        self.last: ReloadOutcome | None = None
        self.counts = {APPLIED: 0, REFUSED: 0}

    def started(self) -> None:
        """
        The first configuration is serving.
        """
        self.lastSuccess = self._clock()

    def applied(self) -> None:
        outcome = ReloadOutcome(self._clock(), APPLIED)
        self._record(outcome)
        self.lastSuccess = outcome.time

    def refused(self, reason: str) -> None:
        self._record(ReloadOutcome(self._clock(), REFUSED, reason))

    def _record(self, outcome: ReloadOutcome) -> None:
        self.last = outcome
        self.counts[outcome.result] += 1

    def snapshot(self) -> dict[str, Any]:
        """
        The C{reload} entry of the status snapshot: the last reload (all
        L{None} before the first), the counts, and when the running
        configuration was applied.
        """
        last = self.last
        return {
            "time": None if last is None else _iso(last.time),
            "result": None if last is None else last.result,
            "reason": None if last is None else last.reason,
            "last_success": _iso(self.lastSuccess),
            APPLIED: self.counts[APPLIED],
            REFUSED: self.counts[REFUSED],
        }


class ReloadCollector(Collector):
    """
    C{tlsgateway_reloads_total{result}} and
    C{tlsgateway_config_last_reload_success_timestamp_seconds}, read from a
    L{ReloadHistory} at each scrape.

    A collector rather than a counter and a gauge of
    L{gateway.run.metrics.Metrics}: with workers, those live in
    prometheus-client's multiprocess files, one set per worker, summed by
    the supervisor; the reloads are the supervisor's own, and must be
    served once.
    """

    def __init__(self, history: ReloadHistory) -> None:
        self._history = history

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = CounterMetricFamily(
            "tlsgateway_reloads",
            "Configuration reloads (SIGHUP), by result: applied or refused.",
            labels=["result"],
        )
        for result, count in self._history.counts.items():
            counts.add_metric([result], count)
        yield counts
        yield GaugeMetricFamily(
            "tlsgateway_config_last_reload_success_timestamp_seconds",
            "When the running configuration was applied (start or reload),"
            " in seconds since the epoch.",
            value=self._history.lastSuccess,
        )
