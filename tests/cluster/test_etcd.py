"""
Tests for L{gateway.cluster.etcd}: the provider against a real etcd
(Debian's C{etcd-server}, one throwaway node on loopback), on the real
reactor (trial's C{TestCase} runs it for each test).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from gateway.cluster.etcd import (
    Backoff,
    EtcdCluster,
    TLSFiles,
    _Following,
    prefixEnd,
)
from gateway.cluster.interface import ICluster, Unreachable
from tests.integration.etcd import Etcd


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=8))
def test_prefixEndBoundsExactlyTheKeysWithThePrefix(prefix: bytes, rest: bytes) -> None:
    end = prefixEnd(prefix)
    assert prefix <= prefix + rest < end or end == b"\0"
    if not all(b == 0xFF for b in prefix):
        assert not (prefix < end <= prefix + rest)


def test_backoffDoublesToItsBoundAndResets() -> None:
    backoff = Backoff()
    delays = [backoff.delay() for _ in range(8)]
    assert 0.2 <= delays[0] <= 0.25
    assert all(b >= a * 1.6 for a, b in itertools.pairwise(delays[:5]))
    assert 4.0 <= delays[-1] <= 5.0
    backoff.reset()
    assert backoff.delay() <= 0.25


class EtcdClusterTests(TestCase):
    """
    The provider against a real etcd.
    """

    timeout = 60

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="etcd-test-"))
        self.etcd = Etcd(self.folder)
        self.etcd.start()
        self.addCleanup(self.etcd.stop)
        self.clusters: list[EtcdCluster] = []

    def cluster(
        self, ttl: float = 10, endpoints: list[str] | None = None
    ) -> EtcdCluster:
        cluster = EtcdCluster(_reactor(), endpoints or [self.etcd.url], "/test/", ttl)
        self.clusters.append(cluster)
        self.addCleanup(cluster.stop)
        return cluster

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(_reactor(), seconds, lambda: None)

    @inlineCallbacks
    def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, "condition never held")
            yield self.sleep(0.05)

    def test_providesICluster(self) -> None:
        self.assertTrue(verifyObject(ICluster, self.cluster()))

    @inlineCallbacks
    def test_putThenRangeBelowThePrefix(self) -> Any:
        cluster = self.cluster()
        yield cluster.put("routes/web/a.example.com", b"app")
        yield cluster.put("routes/web/b.example.com", b"api terminate")
        yield cluster.put("upstreams/x", b"servers = 127.0.0.1:1")
        revision, entries = yield cluster.range("routes/")
        self.assertEqual(
            entries,
            {"web/a.example.com": b"app", "web/b.example.com": b"api terminate"},
        )
        self.assertGreater(revision, 0)
        self.assertIn(
            "/test/routes/web/a.example.com", self.etcd.ctl("get", "--prefix", "/test/")
        )
        yield cluster.delete("routes/web/a.example.com")
        _, entries = yield cluster.range("routes/")
        self.assertEqual(list(entries), ["web/b.example.com"])

    @inlineCallbacks
    def test_followSeesTheStateThenEveryChange(self) -> Any:
        cluster = self.cluster()
        yield cluster.put("routes/web/a", b"1")
        seen: list[Mapping[str, bytes]] = []
        following = cluster.follow("routes/", seen.append)
        yield self.until(lambda: len(seen) == 1)
        self.assertEqual(seen[-1], {"web/a": b"1"})
        self.etcd.ctl("put", "/test/routes/web/b", "2")
        yield self.until(lambda: seen[-1] == {"web/a": b"1", "web/b": b"2"})
        self.etcd.ctl("del", "/test/routes/web/a")
        yield self.until(lambda: seen[-1] == {"web/b": b"2"})
        self.etcd.ctl("put", "/test/routesX", "not below the prefix")
        self.etcd.ctl("put", "/test/routes/web/b", "3")
        yield self.until(lambda: seen[-1] == {"web/b": b"3"})
        following.stop()
        count = len(seen)
        self.etcd.ctl("put", "/test/routes/web/c", "4")
        yield self.sleep(0.5)
        self.assertEqual(len(seen), count)

    @inlineCallbacks
    def test_watchResumesAfterEtcdRestartsWithoutLosingAChange(self) -> Any:
        cluster = self.cluster()
        seen: list[Mapping[str, bytes]] = []
        reach: list[bool] = []
        cluster.onReachability(lambda reachable, reason: reach.append(reachable))
        cluster.follow("routes/", seen.append)
        yield self.until(lambda: len(seen) == 1)
        self.etcd.stop()
        yield self.until(lambda: reach == [False])
        self.assertFalse(cluster.reachable)
        # Changed while this client could not watch: delivered on return.
        self.etcd.start()
        self.etcd.ctl("put", "/test/routes/web/while-away", "x")
        yield self.until(lambda: seen[-1] == {"web/while-away": b"x"}, 20)
        yield self.until(lambda: cluster.reachable)
        self.assertEqual(reach, [False, True])

    @inlineCallbacks
    def test_aFrozenEtcdIsUnreachableAndChangesFlowAgainAfter(self) -> Any:
        """
        etcd stopped with SIGSTOP: calls time out rather than fail, the
        watch stays silent; after SIGCONT, the watch (opened again, as one
        opened before an outage is) delivers what is written.
        """
        cluster = self.cluster(ttl=3)
        seen: list[Mapping[str, bytes]] = []
        cluster.start()
        cluster.follow("routes/", seen.append)
        yield self.until(lambda: len(seen) == 1 and cluster._leaseID is not None)
        assert self.etcd.process is not None
        os.kill(self.etcd.process.pid, signal.SIGSTOP)
        try:
            yield self.until(lambda: not cluster.reachable, 15)
        finally:
            os.kill(self.etcd.process.pid, signal.SIGCONT)
        yield self.until(lambda: cluster.reachable, 15)
        self.etcd.ctl("put", "/test/routes/web/after", "x")
        yield self.until(lambda: seen[-1] == {"web/after": b"x"})

    @inlineCallbacks
    def test_aWatchResumedFromACompactedRevisionReadsAfresh(self) -> Any:
        """
        etcd compacted the revision a watch would resume from (it was away
        too long): etcd cancels the watch, and the whole prefix is read
        again, so a key deleted meanwhile is gone here too.
        """
        cluster = self.cluster()
        yield cluster.put("routes/web/old", b"1")
        seen: list[Mapping[str, bytes]] = []
        following = cluster.follow("routes/", seen.append)
        yield self.until(lambda: seen == [{"web/old": b"1"}])
        # As if this client had been away while these happened:
        following.stop()
        self.etcd.ctl("del", "/test/routes/web/old")
        self.etcd.ctl("put", "/test/routes/web/new", "2")
        revision = json.loads(self.etcd.ctl("get", "/test/x", "-w", "json"))
        self.etcd.ctl("compact", str(revision["header"]["revision"]))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        resumed = _Following(cluster, "routes/", seen.append)
        assert isinstance(following, _Following)
        resumed.revision, resumed.entries = following.revision, following.entries
        self.addCleanup(resumed.stop)
        resumed._watch()
        yield self.until(lambda: seen[-1] == {"web/new": b"2"})
        self.assertGreater(resumed.revision, following.revision)
        self.assertTrue(
            any("compacted" in e.get("log_format", "") for e in events), list(events)
        )

    @inlineCallbacks
    def test_leasedKeysGoWithTheLease(self) -> Any:
        cluster = self.cluster(ttl=2)
        cluster.start()
        yield cluster.put("members/a", b"alive", leased=True)
        yield self.until(
            lambda: "members/a" in self.etcd.ctl("get", "--prefix", "/test/members/")
        )
        # Kept alive past its time to live.
        yield self.sleep(3)
        self.assertIn("alive", self.etcd.ctl("get", "/test/members/a"))
        # A process that stops keeping it alive loses the key after the TTL.
        cluster._running = False
        if cluster._leaseCall is not None:
            cluster._leaseCall.cancel()
        yield self.until(
            lambda: "alive" not in self.etcd.ctl("get", "/test/members/a"), 10
        )

    @inlineCallbacks
    def test_stopRevokesTheLeaseAtOnce(self) -> Any:
        cluster = self.cluster(ttl=30)
        cluster.start()
        yield self.until(lambda: cluster._leaseID is not None)
        yield cluster.put("members/a", b"alive", leased=True)
        yield cluster.stop()
        self.assertEqual(self.etcd.ctl("get", "/test/members/a"), "")

    @inlineCallbacks
    def test_leasedKeysAreWrittenAgainUnderANewLease(self) -> Any:
        cluster = self.cluster(ttl=2)
        cluster.start()
        yield self.until(lambda: cluster._leaseID is not None)
        yield cluster.put("members/a", b"alive", leased=True)
        first = cluster._leaseID
        self.etcd.ctl("lease", "revoke", format(int(first or "0"), "x"))
        yield self.until(lambda: cluster._leaseID not in (None, first), 10)
        yield self.until(lambda: "alive" in self.etcd.ctl("get", "/test/members/a"))

    @inlineCallbacks
    def test_oneHolderPerLockUntilItsLeaseEnds(self) -> Any:
        one, two = self.cluster(ttl=2), self.cluster(ttl=2)
        one.start()
        two.start()
        yield self.until(lambda: None not in (one._leaseID, two._leaseID))
        results = yield Deferred.fromCoroutine(self._both(one, two))
        self.assertEqual(sorted(results), [False, True])
        holder, other = (one, two) if results[0] else (two, one)
        # Not reentrant: held is held, even for its holder.
        self.assertFalse((yield holder.lock("locks/cert")))
        self.assertFalse((yield other.lock("locks/cert")))
        yield holder.unlock("locks/cert")
        self.assertTrue((yield other.lock("locks/cert")))
        # The holder dies (no keep-alive, no unlock): the lock lapses.
        other._running = False
        if other._leaseCall is not None:
            other._leaseCall.cancel()
        deadline = time.monotonic() + 10
        while not (yield holder.lock("locks/cert")):
            self.assertLess(time.monotonic(), deadline)
            yield self.sleep(0.2)

    async def _both(self, one: EtcdCluster, two: EtcdCluster) -> list[bool]:
        first, second = one.lock("locks/cert"), two.lock("locks/cert")
        return [await first, await second]

    @inlineCallbacks
    def test_anUnreachableStoreFailsFastAndTheNextEndpointIsTried(self) -> Any:
        from tests.integration.harness import freePort

        dead = f"http://127.0.0.1:{freePort()}"
        cluster = self.cluster(endpoints=[dead, self.etcd.url])
        try:
            yield cluster.put("a", b"1")
        except Unreachable:
            pass
        else:
            self.fail("the dead endpoint answered")
        self.assertFalse(cluster.reachable)
        yield cluster.put("a", b"1")
        self.assertTrue(cluster.reachable)


class EtcdOverTLSTests(TestCase):
    """
    C{https://} etcd endpoints with client certificate authentication:
    C{etcd_ca}, C{etcd_cert} and C{etcd_key}.
    """

    timeout = 60

    def setUp(self) -> None:
        import trustme

        self.etcd = Etcd(Path(tempfile.mkdtemp(prefix="etcd-tls-")), trustme.CA())
        self.etcd.start()
        self.addCleanup(self.etcd.stop)

    def cluster(self, files: TLSFiles) -> EtcdCluster:
        cluster = EtcdCluster(_reactor(), [self.etcd.url], "/test/", 10, files)
        self.addCleanup(cluster.stop)
        return cluster

    @inlineCallbacks
    def test_withTheClientCertificateKeysAreReadAndWritten(self) -> Any:
        cluster = self.cluster(
            TLSFiles(
                str(self.etcd.caPath),
                str(self.etcd.clientCert),
                str(self.etcd.clientKey),
            )
        )
        yield cluster.put("routes/web/a", b"app")
        _, entries = yield cluster.range("routes/")
        self.assertEqual(entries, {"web/a": b"app"})
        self.assertIn("app", self.etcd.ctl("get", "/test/routes/web/a"))

    @inlineCallbacks
    def test_withoutTheClientCertificateEtcdRefuses(self) -> Any:
        cluster = self.cluster(TLSFiles(str(self.etcd.caPath)))
        try:
            yield cluster.put("routes/web/a", b"app")
        except Unreachable:
            pass
        else:
            self.fail("etcd accepted a client without a certificate")
        self.assertFalse(cluster.reachable)
        self.assertEqual(self.etcd.ctl("get", "--prefix", "/test/"), "")
