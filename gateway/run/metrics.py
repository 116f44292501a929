"""
Prometheus metrics: the contract's names, fed from the access-log records.

Every connection already ends in one L{ConnectionRecord}; counting from it
(rather than from the hot relay path) costs a few increments per connection
and guarantees that the metrics and the access log agree.

With several workers, each worker writes its values to files in a shared
folder (prometheus-client's multiprocess mode, chosen by the
C{PROMETHEUS_MULTIPROC_DIR} environment variable, which the supervisor sets
before a worker imports anything), and the supervisor serves their sum.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord

#: Handshake durations worth telling apart: a resumed TLS 1.3 handshake on
#: loopback takes well under a millisecond, a full RSA one over a slow
#: link hundreds.
_HANDSHAKE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    """
    The gateway's metrics, registered in a registry of their own so that
    several gateways (tests, embedding) can live in one process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._connections = Counter(
            "tlsgateway_connections",
            "Connections ended, by listener and access-log status.",
            ["listener", "status"],
            registry=self.registry,
        )
        self._active = Gauge(
            "tlsgateway_active_connections",
            "Connections accepted and not yet ended.",
            ["listener"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._bytes = Counter(
            "tlsgateway_bytes",
            "Bytes on client sockets: in = from clients, out = to clients.",
            ["listener", "direction"],
            registry=self.registry,
        )
        self._serverUp = Gauge(
            "tlsgateway_upstream_server_up",
            "1 while an upstream server is usable, 0 while it is down.",
            ["upstream", "server"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self._handshake = Histogram(
            "tlsgateway_handshake_seconds",
            "Duration of TLS handshakes on terminated connections.",
            buckets=_HANDSHAKE_BUCKETS,
            registry=self.registry,
        )
        self._quicDropped = Counter(
            "tlsgateway_quic_dropped_datagrams",
            "Datagrams on UDP endpoints that started no flow and belonged to"
            " none, dropped without a reply, by reason.",
            ["listener", "reason"],
            registry=self.registry,
        )

        self._ech = Counter(
            "tlsgateway_ech",
            "ClientHellos with Encrypted Client Hello, by what the gateway did:"
            " offered (no keys), decrypted, rejected.",
            ["listener", "result"],
            registry=self.registry,
        )

    def accepted(self, listener: str) -> None:
        self._active.labels(listener).inc()

    def ended(self, record: ConnectionRecord) -> None:
        listener = record.listener
        self._active.labels(listener).dec()
        self._connections.labels(listener, record.status or Status.OK).inc()
        if record.ech is not None:
            self._ech.labels(listener, record.ech).inc()
        if record.bytesIn:
            self._bytes.labels(listener, "in").inc(record.bytesIn)
        if record.bytesOut:
            self._bytes.labels(listener, "out").inc(record.bytesOut)

    def handshake(self, seconds: float) -> None:
        self._handshake.observe(seconds)

    def quicDropped(self, listener: str, reason: str) -> None:
        self._quicDropped.labels(listener, reason).inc()

    def serverUp(self, upstream: str, server: str, up: bool) -> None:
        self._serverUp.labels(upstream, server).set(1 if up else 0)


def sharedMetrics(folder: str) -> Metrics:
    """
    Metrics a supervisor counts itself (its QUIC flows, L{gateway.run.split})
    into the folder its workers' metrics share, so that the page it serves
    adds them up with theirs.

    prometheus-client picks in-process or shared values when it is
    imported, from C{PROMETHEUS_MULTIPROC_DIR}, and creates a labelled
    child's value when the child is first used: a supervisor imported it
    without, so its choice is changed here, for the rest of the process.
    The supervisor has no other metric values (it serves the workers'
    files and collectors that compute theirs at each scrape).
    """
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    values.ValueClass = values.MultiProcessValue()
    return Metrics()


class _QuietSite(Site):
    """
    A site whose request log is the gateway's C{debug} level: Prometheus
    scrapes every few seconds, and an C{info} line each time would bury
    everything else.
    """

    noisy = False
    _log = Logger()

    def log(self, request: Request) -> None:
        self._log.debug(
            "{method} {uri} {code} from {client}",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace"),
            code=request.code,
            client=request.getClientAddress(),
        )


def metricsSite(registry: CollectorRegistry, status: Resource | None = None) -> Site:
    """
    A web site serving C{/metrics} from C{registry}, and, when given, the
    status page (C{/status}, C{/status.json}).
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    if status is not None:
        root.putChild(b"status", status)
        root.putChild(b"status.json", status)
    return _QuietSite(root)  # type: ignore[no-untyped-call]
