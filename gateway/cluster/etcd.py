"""
L{EtcdCluster}: L{ICluster} on etcd's v3 API, through its JSON gateway.

etcd serves its gRPC API as JSON over HTTP/1.1 too (C{/v3/kv/range},
C{/v3/kv/put}, C{/v3/kv/txn}, C{/v3/lease/grant}, C{/v3/lease/keepalive},
C{/v3/watch}), keys and values in base64.  That lets the gateway talk to
etcd with Twisted's own HTTP client (through C{treq}) on the reactor: no
thread, no second event loop, no gRPC stack.  A watch is one long POST
whose response streams one JSON object per line.

What this module keeps:

  - one lease for the process, kept alive every third of its time to live;
    when the store was away long enough for it to lapse, a new one is
    taken and every leased key written again;
  - per followed prefix, the keys and the revision last seen; a watch that
    drops is opened again from the next revision (nothing missed), and a
    revision etcd compacted away meanwhile means a fresh read;
  - reachability: the first failure is reported once, retries back off
    (a quarter second doubling to five), the first success reports the
    return.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from gateway.cluster.interface import (
    ClusterError,
    ICluster,
    IFollowing,
    Unreachable,
)

__all__ = ["EtcdCluster", "TLSFiles", "prefixEnd"]

#: Bound on a unary call (range, put, keep-alive): etcd answers in
#: milliseconds; a stopped or partitioned one must not hold a retry.
CALL_TIMEOUT = 3.0

#: Retry delays: from a quarter second, doubling, to at most this.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0


def _b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def prefixEnd(prefix: bytes) -> bytes:
    """
    The C{range_end} that makes a range or watch cover every key starting
    with C{prefix}: the prefix with its last byte below C{0xff} plus one
    (etcd's C{clientv3.GetPrefixRangeEnd}).
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@attrs.frozen
class TLSFiles:
    """
    The files of C{https://} etcd endpoints: the CA that signed the
    servers (L{None}: the system store), and this client's certificate and
    key for etcd's client authentication.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class Backoff:
    """
    Delays between retries: doubling from L{BACKOFF_FIRST} to
    L{BACKOFF_MAX}, with a random part so that a fleet does not retry in
    step; L{reset} after a success.
    """

    def __init__(self) -> None:
        self._next = BACKOFF_FIRST

    def delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, BACKOFF_MAX)
        return delay * random.uniform(0.8, 1.0)  # noqa: S311 (not security)

    def reset(self) -> None:
        self._next = BACKOFF_FIRST


def _httpsPolicy(files: TLSFiles) -> Any:
    """
    An C{IPolicyForHTTPS} for the etcd endpoints: their CA (or the
    system's), and a client certificate when one is configured.
    """
    from twisted.internet import ssl
    from twisted.web.iweb import IPolicyForHTTPS

    trust: Any = None
    if files.ca is not None:
        with open(files.ca, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    client = None
    if files.cert is not None and files.key is not None:
        with open(files.cert, "rb") as f, open(files.key, "rb") as k:
            client = ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + k.read())

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return ssl.optionsForClientTLS(
                hostname.decode("ascii"), trustRoot=trust, clientCertificate=client
            )

    return Policy()


@implementer(ICluster)
class EtcdCluster:
    """
    The etcd provider of L{ICluster}.

    @ivar _prefix: added to every key (C{[cluster] prefix}).
    @ivar _leased: the leased keys and their values, written again under
        a new lease.
    @ivar _leaseID: the lease held, or L{None} while none is.
    @ivar _turn: which endpoint to ask next; moves on after a failure.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        prefix: str,
        leaseTTL: float,
        tls: TLSFiles | None = None,
    ) -> None:
        self._reactor = reactor
        self._endpoints = list(endpoints)
        self._prefix = prefix
        self._ttl = max(2, math.ceil(leaseTTL))
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.retryAutomatically = False
        agentArgs: dict[str, Any] = {"pool": self._pool}
        if any(e.startswith("https://") for e in endpoints):
            agentArgs["contextFactory"] = _httpsPolicy(tls or TLSFiles())
        self._http = HTTPClient(Agent(reactor, **agentArgs))
        self._turn = 0
        self.reachable = True
        self._watchers: list[Callable[[bool, str], None]] = []
        self._leased: dict[str, bytes] = {}
        self._leaseID: str | None = None
        self._leaseBackoff = Backoff()
        self._leaseCall: IDelayedCall | None = None
        self._followings: list[_Following] = []
        self._running = False
        self._unreachableAt = 0.0

    # calls

    def _url(self, path: str) -> str:
        return self._endpoints[self._turn % len(self._endpoints)] + path

    def _key(self, key: str) -> str:
        return _b64(self._prefix + key)

    def call(self, path: str, body: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        POST C{body} to the JSON gateway's C{path}; its JSON answer.

        @raise Unreachable: (in the L{Deferred}) no answer in
            L{CALL_TIMEOUT}, or the connection failed: the next call goes
            to the next endpoint.
        @raise ClusterError: etcd answered with an error.
        """
        d: Any = self._http.post(self._url(path), json=dict(body), unbuffered=True)

        def answered(response: Any) -> Deferred[Any]:
            content: Deferred[Any] = treq.content(response)
            return content.addCallback(lambda raw: (response.code, raw))

        def parsed(result: tuple[int, bytes]) -> dict[str, Any]:
            code, raw = result
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if code != 200 or not isinstance(answer, dict):
                message = answer.get("error") if isinstance(answer, dict) else None
                raise ClusterError(
                    f"etcd {path}: HTTP {code}: {message or raw[:200]!r}"
                )
            self._reachable(True, "")
            return answer

        def failed(failure: Failure) -> Failure:
            if not failure.check(ClusterError):
                self._turn += 1
                reason = failure.getErrorMessage() or repr(failure.value)
                self._reachable(False, reason)
                return Failure(Unreachable(reason))
            return failure

        d.addCallback(answered)
        d.addTimeout(CALL_TIMEOUT, self._reactor)
        d.addCallback(parsed)
        d.addErrback(failed)
        return d  # type: ignore[no-any-return]

    def onReachability(self, callback: Callable[[bool, str], None]) -> None:
        self._watchers.append(callback)

    def _reachable(self, reachable: bool, reason: str) -> None:
        if reachable == self.reachable:
            return
        self.reachable = reachable
        now = self._reactor.seconds()
        if not reachable:
            self._unreachableAt = now
        else:
            # A watch opened before the outage may be on a connection that
            # died silently (a partition sends no reset): open it again,
            # from the last revision seen.
            for following in list(self._followings):
                following.reopenIfOpenedBefore(self._unreachableAt)
        for callback in list(self._watchers):
            callback(reachable, reason)

    # the lease

    def start(self) -> None:
        self._running = True
        self._leaseTick()

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._leaseCall = self._reactor.callLater(delay, self._leaseTick)

    def _leaseTick(self) -> None:
        self._leaseCall = None
        if self._leaseID is None:
            d = self.call("/v3/lease/grant", {"TTL": self._ttl})
            d.addCallback(self._granted)
        else:
            d = self.call("/v3/lease/keepalive", {"ID": self._leaseID})
            d.addCallback(self._keptAlive)
        d.addCallbacks(self._leaseDone, self._leaseFailed)

    def _granted(self, answer: dict[str, Any]) -> Deferred[None]:
        self._leaseID = str(answer["ID"])
        self._log.debug("etcd lease {lease} granted", lease=self._leaseID)
        puts = [self._putNow(key, value, True) for key, value in self._leased.items()]

        def notWritten(failure: Failure) -> Failure:
            # Taken again at the next try, with the keys written again.
            self._leaseID = None
            return failure

        done: Any = gatherResults(puts, consumeErrors=True)
        done.addErrback(lambda f: f.value.subFailure)
        done.addErrback(notWritten)
        return done.addCallback(lambda _: None)  # type: ignore[no-any-return]

    def _keptAlive(self, answer: dict[str, Any]) -> Deferred[None] | None:
        result = answer.get("result", answer)
        if int(result.get("TTL", 0)) > 0:
            return None
        # The lease lapsed (etcd was away longer than its time to live):
        # take another and write the leased keys again.
        self._log.info(
            "etcd lease {lease} had expired: taking a new one", lease=self._leaseID
        )
        self._leaseID = None
        d: Any = self.call("/v3/lease/grant", {"TTL": self._ttl})
        return d.addCallback(self._granted)  # type: ignore[no-any-return]

    def _leaseDone(self, _: object) -> None:
        self._leaseBackoff.reset()
        self._schedule(self._ttl / 3)

    def _leaseFailed(self, failure: Failure) -> None:
        if not failure.check(ClusterError, KeyError, ValueError, TypeError):
            self._log.failure("etcd lease", failure)
        self._schedule(min(self._leaseBackoff.delay(), self._ttl / 3))

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._leaseCall is not None and self._leaseCall.active():
            self._leaseCall.cancel()
        self._leaseCall = None
        for following in list(self._followings):
            following.stop()
        lease, self._leaseID = self._leaseID, None
        d: Any
        if lease is not None and self.reachable:
            d = self.call("/v3/lease/revoke", {"ID": lease})
            d.addErrback(lambda _: None)
        else:
            d = succeed(None)
        d.addCallback(lambda _: self._pool.closeCachedConnections())
        d.addCallback(lambda _: None)
        return d  # type: ignore[no-any-return]

    # keys

    def put(self, key: str, value: bytes, leased: bool = False) -> Deferred[None]:
        if leased:
            self._leased[key] = value
        return self._putNow(key, value, leased)

    def _putNow(self, key: str, value: bytes, leased: bool) -> Deferred[None]:
        body: dict[str, Any] = {"key": self._key(key), "value": _b64(value)}
        if leased:
            if self._leaseID is None:
                # Written when the lease is granted (_granted).
                return succeed(None)
            body["lease"] = self._leaseID
        return self.call("/v3/kv/put", body).addCallback(lambda _: None)

    def delete(self, key: str) -> Deferred[None]:
        self._leased.pop(key, None)
        d = self.call("/v3/kv/deleterange", {"key": self._key(key)})
        return d.addCallback(lambda _: None)

    def range(self, prefix: str) -> Deferred[tuple[int, dict[str, bytes]]]:
        """
        Every key below C{prefix} (without it) and the revision read at.
        """
        full = (self._prefix + prefix).encode("utf-8")
        d = self.call(
            "/v3/kv/range", {"key": _b64(full), "range_end": _b64(prefixEnd(full))}
        )

        def read(answer: dict[str, Any]) -> tuple[int, dict[str, bytes]]:
            entries = {}
            for kv in answer.get("kvs", ()):
                key = base64.b64decode(kv["key"])[len(full) :]
                entries[key.decode("utf-8", "replace")] = base64.b64decode(
                    kv.get("value", "")
                )
            return int(answer["header"]["revision"]), entries

        return d.addCallback(read)

    # locks

    def lock(self, key: str) -> Deferred[bool]:
        lease = self._leaseID
        if lease is None:
            return succeed(False)
        target = self._key(key)
        d = self.call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": target, "target": "CREATE", "create_revision": "0"}
                ],
                "success": [
                    {
                        "request_put": {
                            "key": target,
                            "value": _b64(lease),
                            "lease": lease,
                        }
                    }
                ],
            },
        )

        return d.addCallback(lambda answer: bool(answer.get("succeeded")))

    def unlock(self, key: str) -> Deferred[None]:
        lease = self._leaseID
        if lease is None:
            return succeed(None)
        target = self._key(key)
        d = self.call(
            "/v3/kv/txn",
            {
                "compare": [{"key": target, "target": "LEASE", "lease": lease}],
                "success": [{"request_delete_range": {"key": target}}],
            },
        )
        return d.addCallback(lambda _: None)

    # watches

    def follow(
        self, prefix: str, changed: Callable[[Mapping[str, bytes]], None]
    ) -> IFollowing:
        following = _Following(self, prefix, changed)
        self._followings.append(following)
        following.resync()
        return following

    def _forget(self, following: _Following) -> None:
        if following in self._followings:
            self._followings.remove(following)


@implementer(IFollowing)
class _Following:
    """
    One followed prefix: its keys and revision, its watch stream, its
    retries.

    @ivar revision: the store's revision that C{entries} reflects.
    """

    _log = Logger()

    def __init__(
        self,
        cluster: EtcdCluster,
        prefix: str,
        changed: Callable[[Mapping[str, bytes]], None],
    ) -> None:
        self._cluster = cluster
        self._prefix = prefix
        self._full = (cluster._prefix + prefix).encode("utf-8")
        self._changed = changed
        self.entries: dict[str, bytes] = {}
        self.revision = 0
        self._backoff = Backoff()
        self._retry: IDelayedCall | None = None
        self._stream: _WatchStream | None = None
        self._openedAt = 0.0
        self._opening: Deferred[Any] | None = None
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._opening is not None:
            self._opening.cancel()
        if self._stream is not None:
            self._stream.abort()
        self._cluster._forget(self)

    def reopenIfOpenedBefore(self, moment: float) -> None:
        """
        Open the watch again if its stream is older than C{moment}.
        """
        if self._stream is not None and self._openedAt < moment:
            self._restart(self._watch)

    def _later(self, what: Callable[[], None]) -> None:
        if not self._stopped:
            self._retry = self._cluster._reactor.callLater(self._backoff.delay(), what)

    def resync(self) -> None:
        """
        Read the whole prefix, then watch from the revision after it.
        """
        d = self._cluster.range(self._prefix)

        def read(result: tuple[int, dict[str, bytes]]) -> None:
            if self._stopped:
                return
            self.revision, self.entries = result
            self._deliver()
            self._watch()

        def failed(failure: Failure) -> None:
            if not failure.check(ClusterError):
                self._log.failure("etcd range", failure)
            self._later(self.resync)

        d.addCallbacks(read, failed)

    def _deliver(self) -> None:
        try:
            self._changed(dict(self.entries))
        except Exception:  # noqa: BLE001 (a caller's bug must not end the watch)
            self._log.failure("applying the keys below {prefix}", prefix=self._prefix)

    def _watch(self) -> None:
        if self._stopped:
            return
        cluster = self._cluster
        body = {
            "create_request": {
                "key": _b64(self._full),
                "range_end": _b64(prefixEnd(self._full)),
                "start_revision": str(self.revision + 1),
            }
        }
        d = cluster._http.post(cluster._url("/v3/watch"), json=body, unbuffered=True)
        d.addTimeout(CALL_TIMEOUT, cluster._reactor)
        self._opening = d

        def opened(response: Any) -> None:
            self._opening = None
            if response.code != 200:
                raise ClusterError(f"etcd /v3/watch: HTTP {response.code}")
            stream = _WatchStream(self)
            response.deliverBody(stream)
            if self._stopped:
                stream.abort()
                return
            self._stream = stream
            self._openedAt = cluster._reactor.seconds()

        def failed(failure: Failure) -> None:
            self._opening = None
            if self._stopped:
                return
            cluster._turn += 1
            cluster._reachable(False, failure.getErrorMessage() or "watch failed")
            self._later(self._watch)

        d.addCallback(opened)
        d.addErrback(failed)

    def message(self, message: Mapping[str, Any]) -> None:
        """
        One object of the watch stream: events applied, then the whole
        state delivered; a compaction or cancellation reads afresh.
        """
        result = message.get("result")
        if not isinstance(result, dict):
            return
        self._cluster._reachable(True, "")
        self._backoff.reset()
        if int(result.get("compact_revision", 0)) or result.get("canceled"):
            self._log.info(
                "etcd watch of {prefix} restarts from a fresh read (compacted)",
                prefix=self._prefix,
            )
            self._restart(self.resync)
            return
        events = result.get("events")
        if not events:
            return
        for event in events:
            kv = event.get("kv", {})
            key = base64.b64decode(kv.get("key", ""))[len(self._full) :]
            name = key.decode("utf-8", "replace")
            if event.get("type") == "DELETE":
                self.entries.pop(name, None)
            else:
                self.entries[name] = base64.b64decode(kv.get("value", ""))
            self.revision = max(self.revision, int(kv.get("mod_revision", 0)))
        self._deliver()

    def _restart(self, then: Callable[[], None]) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort()
        if not self._stopped:
            then()

    def ended(self, stream: _WatchStream, reason: Failure) -> None:
        """
        The stream ended: unless it was stopped or replaced, open it again
        from the next revision.
        """
        if stream is not self._stream or self._stopped:
            return
        self._stream = None
        self._cluster._reachable(False, reason.getErrorMessage() or "watch closed")
        self._later(self._watch)


class _WatchStream(Protocol):
    """
    The body of a watch response: JSON objects, one per line.
    """

    def __init__(self, following: _Following) -> None:
        self._following = following
        self._buffer = b""
        self._aborted = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if self._aborted:
                return
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._following.message(message)

    def abort(self) -> None:
        self._aborted = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._aborted:
            self._following.ended(self, reason)
