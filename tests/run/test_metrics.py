"""
The contract's metric names and values, from finished connection records.
"""

from prometheus_client import generate_latest

from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord
from gateway.run.metrics import Metrics


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def record(status: str | None, bytesIn: int, bytesOut: int) -> ConnectionRecord:
    r = ConnectionRecord(
        "web", "127.0.0.1:1", 0.0, 0.0, bytesIn=bytesIn, bytesOut=bytesOut
    )
    r.status = None if status is None else Status(status)
    return r


def test_connectionsBytesAndActive() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.accepted("web")
    metrics.ended(record(None, 100, 2000))
    metrics.ended(record("no_route", 50, 0))
    text = exposition(metrics)
    assert 'tlsgateway_connections_total{listener="web",status="ok"} 1.0' in text
    assert 'tlsgateway_connections_total{listener="web",status="no_route"} 1.0' in text
    assert 'tlsgateway_active_connections{listener="web"} 1.0' in text
    assert 'tlsgateway_bytes_total{direction="in",listener="web"} 150.0' in text
    assert 'tlsgateway_bytes_total{direction="out",listener="web"} 2000.0' in text


def test_handshakeHistogramAndServerUp() -> None:
    metrics = Metrics()
    metrics.handshake(0.003)
    metrics.serverUp("api", "127.0.0.1:8443", True)
    metrics.serverUp("api", "127.0.0.1:8444", False)
    text = exposition(metrics)
    assert "tlsgateway_handshake_seconds_count 1.0" in text
    assert 'tlsgateway_handshake_seconds_bucket{le="0.005"} 1.0' in text
    assert 'tlsgateway_handshake_seconds_bucket{le="0.0025"} 0.0' in text
    assert (
        'tlsgateway_upstream_server_up{server="127.0.0.1:8443",upstream="api"} 1.0'
        in text
    )
    assert (
        'tlsgateway_upstream_server_up{server="127.0.0.1:8444",upstream="api"} 0.0'
        in text
    )


def test_twoGatewaysInOneProcessDoNotCollide() -> None:
    first, second = Metrics(), Metrics()
    first.accepted("a")
    assert "tlsgateway_active_connections" in exposition(second)
    assert 'listener="a"' not in exposition(second)
