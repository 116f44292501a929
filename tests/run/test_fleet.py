"""
Tests for L{gateway.run.fleet} and L{gateway.run.clusterstatus}: the
stored keys merged into what a reload serves, and the status page's
cluster section.
"""

from __future__ import annotations

from gateway.config.overlay import Refusal
from gateway.run.clusterstatus import clusterHTML
from gateway.run.fleet import _withUpstreamTLS
from gateway.run.loading import loadCheckedText

FILE = """\
[listener:web]
listen = tcp:8443
routes =
    www.example.com app

[upstream:app]
servers = 127.0.0.1:9000
"""


def test_aStoredTLSUpstreamGetsItsReencryptionPolicy() -> None:
    loaded = loadCheckedText(FILE, "/etc/gw/gw.ini")
    merged, applied, refused = _withUpstreamTLS(
        loaded.config,
        {
            "upstreams/secure": "servers = 127.0.0.1:9443\ntls = on",
            "routes/web/secure.example.com": "secure",
        },
        loaded,
    )
    assert refused == []
    assert applied == ("upstreams/secure", "routes/web/secure.example.com")
    assert set(merged.contexts.upstreams) == {"secure"}
    assert merged.contexts.servers == loaded.contexts.servers
    assert loaded.contexts.upstreams == {}


def test_nothingStoredServesTheFileAsLoaded() -> None:
    loaded = loadCheckedText(FILE, "/etc/gw/gw.ini")
    merged, applied, refused = _withUpstreamTLS(
        loaded.config, {"routes/web/x.example.com": "nowhere"}, loaded
    )
    assert merged is loaded
    assert applied == ()
    assert [r.key for r in refused] == ["routes/web/x.example.com"]


def test_storedTLSUpstreamWithAnUnreadableCAIsRefusedWithItsRoutes() -> None:
    loaded = loadCheckedText(FILE, "/etc/gw/gw.ini")
    _, applied, refused = _withUpstreamTLS(
        loaded.config,
        {
            "upstreams/secure": "servers = 127.0.0.1:9443\ntls = on\n"
            "tls_ca = /nonexistent/ca.pem",
            "routes/web/secure.example.com": "secure",
        },
        loaded,
    )
    assert applied == ()
    assert refused[0] == Refusal(
        "upstreams/secure", "tls_ca: cannot read /nonexistent/ca.pem"
    )
    assert refused[1].key == "routes/web/secure.example.com"


def test_theClusterSectionOfThePage() -> None:
    parts = "\n".join(
        clusterHTML(
            {
                "name": "edge-1",
                "etcd": ["http://127.0.0.1:2379"],
                "prefix": "/tlsgateway/",
                "unreachable": {
                    "since": "2026-12-07T20:00:00+00:00",
                    "reason": "refused",
                },
                "members": [
                    {
                        "name": "edge-1",
                        "host": "h",
                        "pid": 7,
                        "version": "0.1.0",
                        "started": "2026-12-07T19:00:00+00:00",
                        "listeners": {"web": ["tcp:8443"]},
                        "last_reload": {"result": "applied"},
                    }
                ],
                "applied": ["routes/web/a.example.com"],
                "refused": [{"key": "routes/web/<b>", "reason": "not a <pattern>"}],
            }
        )
    )
    assert "etcd unreachable since 2026-12-07T20:00:00+00:00 (refused)" in parts
    assert "<td>edge-1</td>" in parts
    assert "web=tcp:8443" in parts
    assert '<td class="up">applied</td>' in parts
    assert "/tlsgateway/routes/web/&lt;b&gt;" in parts
    assert "not a &lt;pattern&gt;" in parts
    assert "1 stored key(s) applied" in parts
