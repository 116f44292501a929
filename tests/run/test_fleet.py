"""
Tests for L{gateway.run.fleet} and L{gateway.run.clusterstatus}: the
stored keys merged into what a reload serves, and the status page's
cluster section.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.cluster.interface import ICluster
from gateway.config import ClusterSettings, GatewayConfig
from gateway.config.overlay import Refusal
from gateway.run.clusterstatus import clusterHTML
from gateway.run.fleet import Fleet, _withUpstreamTLS
from gateway.run.loading import Loaded, loadCheckedText

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


@implementer(ICluster)
class MemoryCluster:
    """
    An in-memory store for the fleet's own logic: what it follows, what
    it writes.  The etcd provider itself is tested against etcd
    (C{tests/cluster/test_etcd.py}).
    """

    def __init__(self) -> None:
        self.reachable = True
        self.puts: list[tuple[str, bytes, bool]] = []
        self.changed: Callable[[Mapping[str, bytes]], None] | None = None
        self.reachability: list[Callable[[bool, str], None]] = []
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def onReachability(self, callback: Callable[[bool, str], None]) -> None:
        self.reachability.append(callback)

    def follow(
        self, prefix: str, changed: Callable[[Mapping[str, bytes]], None]
    ) -> Any:
        self.changed = changed
        return self

    def range(self, prefix: str) -> Deferred[tuple[int, dict[str, bytes]]]:
        return succeed((1, {}))

    def put(self, key: str, value: bytes, leased: bool = False) -> Deferred[None]:
        self.puts.append((key, value, leased))
        return succeed(None)

    def delete(self, key: str) -> Deferred[None]:
        return succeed(None)

    def lock(self, key: str) -> Deferred[bool]:
        return succeed(True)

    def unlock(self, key: str) -> Deferred[None]:
        return succeed(None)


class FakeGateway:
    """
    What the fleet asks of a L{GatewayService}: its configuration, and a
    reload that passes the file through the fleet's merge.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.running = True
        self.merge: Callable[[Loaded], Loaded] | None = None
        self.clusterStatus: Callable[[], dict[str, Any]] | None = None
        self.acmeState: Any = None
        self.acme = None
        self.reloads = 0
        self.refuse = False

    def reload(self) -> bool:
        """
        Merge, then serve; or, with C{refuse} set, fail after the merge
        (as when the new configuration's files do not load).
        """
        self.reloads += 1
        assert self.merge is not None
        merged = self.merge(loadCheckedText(FILE, "/etc/gw/gw.ini")).config
        if self.refuse:
            return False
        self.config = merged
        return True


class FleetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.store = MemoryCluster()
        self.gateway = FakeGateway(loadCheckedText(FILE, "/etc/gw/gw.ini").config)
        self.fleet = Fleet(
            self.gateway,  # type: ignore[arg-type]
            ClusterSettings(etcd=("http://127.0.0.1:2379",), name="edge-1"),
            self.clock,
            self.store,
        )
        self.fleet.startService()

    def deliver(self, entries: Mapping[str, bytes]) -> None:
        assert self.store.changed is not None
        self.store.changed(entries)
        self.clock.advance(1)

    def test_startsTheStoreAndWritesItsMemberKey(self) -> None:
        self.assertTrue(self.store.started)
        key, value, leased = self.store.puts[0]
        self.assertEqual((key, leased), ("members/edge-1", True))
        record = json.loads(value)
        self.assertEqual(record["name"], "edge-1")
        self.assertEqual(record["listeners"], {"web": ["tcp:8443"]})
        self.assertIsNone(record["last_reload"])

    def test_changesAreGatheredIntoOneReload(self) -> None:
        assert self.store.changed is not None
        self.store.changed({"routes/web/a.example.com": b"app"})
        self.store.changed(
            {"routes/web/a.example.com": b"app", "routes/web/b.example.com": b"app"}
        )
        self.clock.advance(1)
        self.assertEqual(self.gateway.reloads, 1)
        self.assertEqual(
            self.fleet.applied, ("routes/web/a.example.com", "routes/web/b.example.com")
        )
        self.assertEqual(self.fleet.lastReload["result"], "applied")  # type: ignore[index]
        record = json.loads(self.store.puts[-1][1])
        self.assertEqual(record["last_reload"]["result"], "applied")

    def test_memberChangesAloneReloadNothing(self) -> None:
        self.deliver({"routes/web/a.example.com": b"app"})
        self.deliver(
            {
                "routes/web/a.example.com": b"app",
                "members/edge-2": b'{"name": "edge-2"}',
                "members/broken": b"{not json",
            }
        )
        self.assertEqual(self.gateway.reloads, 1)
        self.assertEqual(self.fleet.status()["members"], [{"name": "edge-2"}])

    def test_aValueThatIsNotTextIsRefusedAlone(self) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]  # typed for trial.TestCase, works with any
        self.deliver(
            {
                "routes/web/a.example.com": b"\xff\xfe",
                "routes/web/b.example.com": b"app",
            }
        )
        self.assertEqual(self.fleet.applied, ("routes/web/b.example.com",))
        self.assertEqual(
            self.fleet.status()["refused"],
            [{"key": "routes/web/a.example.com", "reason": "is not UTF-8 text"}],
        )
        refusals = [
            e for e in events if e.get("log_format", "").startswith("cluster key")
        ]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["key"], "/tlsgateway/routes/web/a.example.com")
        # Logged once, not at every reload.
        self.deliver(
            {
                "routes/web/a.example.com": b"\xff\xfe",
                "routes/web/b.example.com": b"app",
                "routes/web/c.example.com": b"app",
            }
        )
        refusals = [
            e for e in events if e.get("log_format", "").startswith("cluster key")
        ]
        self.assertEqual(len(refusals), 1)

    def test_unreachableIsShownUntilTheStoreAnswers(self) -> None:
        (callback,) = self.store.reachability
        callback(False, "Connection refused")
        status = self.fleet.status()
        self.assertFalse(status["reachable"])
        self.assertEqual(status["unreachable"]["reason"], "Connection refused")
        callback(True, "")
        self.assertTrue(self.fleet.status()["reachable"])

    def test_stoppedTheGatewayNoLongerMerges(self) -> None:
        self.fleet.stopService()
        self.assertIsNone(self.gateway.merge)

    def test_aRefusedReloadKeepsWhatIsServedOnTheStatus(self) -> None:
        self.deliver({"routes/web/a.example.com": b"app"})
        self.gateway.refuse = True
        self.deliver({"routes/web/b.example.com": b"app"})
        self.assertEqual(self.fleet.applied, ("routes/web/a.example.com",))
        self.assertEqual(self.fleet.lastReload["result"], "refused")  # type: ignore[index]
        record = json.loads(self.store.puts[-1][1])
        self.assertEqual(record["last_reload"]["result"], "refused")
