"""
The certificates the gateway serves, in one registry that the status page
and the C{tlsgateway_certificate_expiry_seconds} gauge both read.

Certificates come from more than one place: the files of C{[certificate:NAME]}
sections and listeners' C{certificate} keys (replaced at every start and
reload), and, later, certificates an ACME client issues and renews.  Each
source replaces its own entries (L{ServedCertificates.replace}) without
touching the others', so neither needs to know about the other, and an
operator sees every certificate in one list.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Iterator

import attrs
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


@attrs.frozen
class ServedCertificate:
    """
    One certificate clients may be served.

    @ivar name: what the operator calls it: the C{NAME} of
        C{[certificate:NAME]}, or C{listener:NAME} for a listener's own
        C{certificate} key; the gauge's C{certificate} label.
    @ivar names: the server names it is for (its SANs).
    @ivar notAfter: the end of its validity (UTC).
    @ivar source: who keeps it current: C{files}, or C{acme}.
    @ivar path: the file it was read from, when it was.
    """

    name: str
    names: tuple[str, ...]
    notAfter: datetime.datetime
    source: str = "files"
    path: str | None = None

    def secondsLeft(self, now: float | None = None) -> float:
        return self.notAfter.timestamp() - (time.time() if now is None else now)


class ServedCertificates:
    """
    Every served certificate, by source, then by name.
    """

    def __init__(self) -> None:
        self._sources: dict[str, dict[str, ServedCertificate]] = {}

    def replace(self, source: str, certificates: Iterable[ServedCertificate]) -> None:
        """
        C{certificates} are now all that C{source} serves.
        """
        self._sources[source] = {c.name: c for c in certificates}

    def __iter__(self) -> Iterator[ServedCertificate]:
        """
        Every certificate, soonest expiry first: the order an operator
        wants to read them in.
        """
        every = [c for entries in self._sources.values() for c in entries.values()]
        return iter(sorted(every, key=lambda c: (c.notAfter, c.name)))


class ExpiryCollector(Collector):
    """
    C{tlsgateway_certificate_expiry_seconds{certificate}}, computed at each
    scrape (so the value counts down between reloads).
    """

    def __init__(self, served: ServedCertificates) -> None:
        self._served = served

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tlsgateway_certificate_expiry_seconds",
            "Seconds until each served certificate's notAfter (negative once expired).",
            labels=["certificate"],
        )
        now = time.time()
        for certificate in self._served:
            family.add_metric([certificate.name], certificate.secondsLeft(now))
        yield family
