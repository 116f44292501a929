"""
Choosing an upstream server and connecting to it.

L{IServerChooser} is the seam where load balancing, passive failure
tracking and health state live.  L{Pool} is the chooser of an
C{[upstream:NAME]}: it keeps one L{Member} per server address, asks the
balancer of its C{balance} (L{gateway.core.balancers}) to choose among the
usable ones, counts active connections and connect failures (NGINX's
C{max_fails}/C{fail_timeout}), falls back to C{backup} servers, and takes
the verdicts of active health checks (L{gateway.connection.health}).  L{FirstServer}
is the trivial chooser, for embedders and tests.

Host names in C{servers} are resolved once, when the service starts,
through the reactor's C{nameResolver} (L{IReactorPluggableNameResolver}):
it is C{getaddrinfo} in a thread, so it answers what the system would, IPv4
and IPv6, and every address becomes a server with the line's flags, which
the balancer then sees one by one (as NGINX does at start).  Endpoints such
as C{HostnameEndpoint} resolve again on every connect and race the
addresses, which would hide them from balancing and failure accounting.
IP literals and C{unix:} paths need no DNS.

L{connectServer} opens the connection with the listener's
C{connect_timeout}, directly through the reactor: no endpoint objects, no
DNS for addresses that are already literal.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol as TypingProtocol
from typing import cast

import attrs
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHostnameResolver,
    IHostResolution,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
    IResolutionReceiver,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from gateway.config import ServerConfig, UpstreamConfig
from gateway.core.balancers import BALANCERS, IBalancer


class IServerChooser(Interface):
    """
    Picks the server of one C{[upstream:NAME]} for the next connection.

    One provider per upstream per configuration generation, called only from
    the reactor thread, so it may keep state without locks.

    Every server that L{pick} returns is one attempt, counted as an active
    connection until it ends: with L{connectFailed} (the server could not
    take it), or with L{released} (the connection, made or abandoned, is
    over).  L{connectSucceeded} comes in between for an attempt that got
    through.
    """

    def pick(clientKey: str, exclude: frozenset[ServerConfig]) -> ServerConfig | None:
        """
        @param clientKey: the client address, for policies that keep one
            client on one server.
        @param exclude: servers that already failed for this connection.
        @return: the server to try, or L{None} when none is left.
        """

    def connectFailed(server: ServerConfig) -> None:
        """
        A connect to C{server} was refused or timed out (or its TLS failed):
        the attempt is over, and it counts against the server.
        """

    def connectSucceeded(server: ServerConfig) -> None:
        """
        A connect to C{server} succeeded; the connection is still active.
        """

    def released(server: ServerConfig) -> None:
        """
        A connection to C{server} (or an attempt given up because the
        client left) is over.
        """


@implementer(IServerChooser)
class FirstServer:
    """
    Always the first configured server not yet tried: no balancing and no
    accounting.  (L{gateway.protocols.postgres.OneServer} is this over one server.)
    """

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._servers: tuple[ServerConfig, ...] = upstream.servers

    def pick(
        self, clientKey: str, exclude: frozenset[ServerConfig]
    ) -> ServerConfig | None:
        for server in self._servers:
            if server not in exclude:
                return server
        return None

    def connectFailed(self, server: ServerConfig) -> None:
        pass

    def connectSucceeded(self, server: ServerConfig) -> None:
        pass

    def released(self, server: ServerConfig) -> None:
        pass


def isAddress(host: str) -> bool:
    """
    C{host} is an IP literal (so it needs no DNS and is never sent as SNI).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Member:
    """
    One server address of a pool: a configured line, or one address its
    host name resolved to.

    Passive failure accounting follows NGINX: C{max_fails} failed connects
    within C{fail_timeout} of the first make the server unavailable for
    C{fail_timeout}; a success forgets the failures.  A server that comes
    back after its C{fail_timeout} is on probation: until it succeeds once,
    a single failure takes it out again, so a dead server costs one
    connect attempt per C{fail_timeout}, not C{max_fails}.

    @ivar server: what connections go to (C{host} an address once resolved).
    @ivar configured: the C{servers} line it came from, whose host name
        TLS to the upstream sends and verifies.
    @ivar active: attempts and connections picked and not yet over.
    @ivar fails: failed connects since the last success (see above).
    @ivar firstFail: when the current run of failures began.
    @ivar failedUntil: the end of the current unavailability, if any.
    @ivar healthy: the verdict of the active health checks (always
        C{True} without them).
    @ivar checkError: why the last health check failed, or L{None} when
        it passed (or none ran): the status page's cause of a server down.
    @ivar downSince: the pool clock's time the health checks took the
        server down, or L{None} while they have not.
    """

    def __init__(self, server: ServerConfig, configured: ServerConfig) -> None:
        self.server = server
        self.configured = configured
        self.active = 0
        self.fails = 0
        self.firstFail = 0.0
        self.failedUntil: float | None = None
        self.healthy = True
        self.checkError: str | None = None
        self.downSince: float | None = None

    # the balancers' view (gateway.core.balancers.Candidate)

    @property
    def key(self) -> str:
        return self.server.address

    @property
    def weight(self) -> int:
        return self.server.weight

    def available(self, now: float) -> bool:
        """
        Not taken out by passive failure accounting at C{now}.
        """
        return self.failedUntil is None or now >= self.failedUntil

    def failed(self, now: float) -> bool:
        """
        Count a failed connect.

        @return: whether this failure made the server unavailable.
        """
        server = self.server
        if server.max_fails == 0:
            return False
        if self.fails < server.max_fails and now - self.firstFail > server.fail_timeout:
            self.fails = 0  # the earlier failures are out of the window
        if self.fails == 0:
            self.firstFail = now
        self.fails += 1
        if self.fails < server.max_fails:
            return False
        self.failedUntil = now + server.fail_timeout
        return True

    def succeeded(self) -> bool:
        """
        Forget the failures.

        @return: whether the server had been taken out by them.
        """
        wasOut = self.failedUntil is not None
        self.fails = 0
        self.failedUntil = None
        return wasOut

    def __repr__(self) -> str:
        return f"<Member {self.key} active={self.active} fails={self.fails}>"


class UpstreamTLSPolicy(TypingProtocol):
    """
    What re-encrypts to an upstream's servers, as sessions use it:
    L{gateway.tls.upstream.UpstreamTLS}, and L{ConfiguredNames}, which wraps
    it.
    """

    def connectionFor(self, server: ServerConfig) -> SSL.Connection: ...

    def verify(
        self, connection: SSL.Connection, server: ServerConfig
    ) -> str | None: ...


@implementer(IServerChooser)
class Pool:
    """
    The servers of one C{[upstream:NAME]}, with balancing, failover
    accounting, backups and health.

    Candidates for a connection are the usable primaries not yet tried
    for it; only when there is none do the usable backups become the
    candidates.  A server is usable when its health checks (if any) say
    up and passive accounting has not taken it out.  As in NGINX, a pool
    of one server (no backup) ignores passive accounting: there is nothing
    to fail over to, so taking it out would only turn a blip into an
    outage.

    @ivar name: the upstream's name, for logs.
    @ivar config: its section, for the health checks' settings.
    @ivar _members: the servers, in configuration order (a name's
        addresses in the resolver's order, at the name's place); a
        server listed twice (or a name resolving to a listed address) is
        one member.
    @ivar _byServer: every member the pool ever had, by the server a
        session holds, so reports for a name that a resolution replaced
        still find their member.
    """

    _log = Logger()

    def __init__(
        self,
        upstream: UpstreamConfig,
        clock: IReactorTime,
        balancer: IBalancer | None = None,
    ) -> None:
        self.name = upstream.name
        self.config = upstream
        self._clock = clock
        self._balancer = (
            balancer if balancer is not None else BALANCERS[upstream.balance]()
        )
        self._members: list[Member] = []
        self._byServer: dict[ServerConfig, Member] = {}
        self._stopped = False
        self._setMembers([Member(server, server) for server in upstream.servers])

    def _setMembers(self, members: Sequence[Member]) -> None:
        unique: list[Member] = []
        for member in members:
            if member.server not in {m.server for m in unique}:
                unique.append(member)
                self._byServer.setdefault(member.server, member)
        self._members = unique

    def _single(self) -> bool:
        return len(self._members) == 1

    def members(self) -> tuple[Member, ...]:
        """
        The current members, in order (what health checks check).
        """
        return tuple(self._members)

    def usable(self, member: Member, now: float | None = None) -> bool:
        """
        Whether C{member} may take a connection (at C{now}, or now).
        """
        if not member.healthy:
            return False
        if self._single():
            return True
        return member.available(self._clock.seconds() if now is None else now)

    def serverStates(self) -> dict[str, bool]:
        """
        C{{address: usable}} for every server now: what the metric
        C{tlsgateway_upstream_server_up} exports.
        """
        now = self._clock.seconds()
        return {m.key: self.usable(m, now) for m in self._members}

    def configured(self, server: ServerConfig) -> ServerConfig:
        """
        The C{servers} line that C{server} comes from (itself, unless it
        is an address a host name resolved to).
        """
        member = self._byServer.get(server)
        return server if member is None else member.configured

    # IServerChooser

    def pick(
        self, clientKey: str, exclude: frozenset[ServerConfig]
    ) -> ServerConfig | None:
        members = self._members
        if len(members) == 1:
            # One server (the common pool): usable when healthy and not
            # tried yet, whatever its backup flag or the balancer, which
            # has a single candidate to return.
            only = members[0]
            if not only.healthy or only.server in exclude:
                return None
            only.active += 1
            return only.server
        now = self._clock.seconds()
        candidates: list[Member] = []
        for backup in (False, True):
            candidates = [
                m
                for m in self._members
                if m.server.backup is backup
                and m.server not in exclude
                and self.usable(m, now)
            ]
            if candidates:
                break
        chosen = cast(Member | None, self._balancer.pick(candidates, clientKey))
        if chosen is None:
            return None
        chosen.active += 1
        return chosen.server

    def connectFailed(self, server: ServerConfig) -> None:
        member = self._byServer.get(server)
        if member is None:
            return
        member.active = max(0, member.active - 1)
        if self._single():
            return
        if member.failed(self._clock.seconds()):
            self._log.warn(
                "upstream {upstream}: server {server} failed {fails} time(s):"
                " unavailable for {fail_timeout}s",
                upstream=self.name,
                server=member.key,
                fails=member.fails,
                fail_timeout=server.fail_timeout,
            )

    def connectSucceeded(self, server: ServerConfig) -> None:
        member = self._byServer.get(server)
        if member is not None and member.succeeded():
            self._log.info(
                "upstream {upstream}: server {server} is available again",
                upstream=self.name,
                server=member.key,
            )

    def released(self, server: ServerConfig) -> None:
        member = self._byServer.get(server)
        if member is not None:
            member.active = max(0, member.active - 1)

    # active health checks

    def setHealthy(self, member: Member, healthy: bool) -> None:
        """
        The health checks' verdict on C{member} changed.
        """
        member.healthy = healthy

    # name resolution

    def resolve(self, resolver: IHostnameResolver) -> Deferred[None]:
        """
        Resolve every host name in C{servers}; each address found replaces
        the name with a server of the same flags.  Until then (and if a
        name does not resolve) the name itself is the server, and each
        connect resolves it again.

        @return: fires when every name has an answer.
        """
        waiting = []
        for member in self._members:
            host = member.server.host
            if host is None or isAddress(host):
                continue
            receiver = _Addresses()
            resolver.resolveHostName(
                receiver, host, member.server.port or 0, [IPv4Address, IPv6Address]
            )
            waiting.append(receiver.done.addCallback(self._resolved, member))
        done: Deferred[None] = DeferredList(waiting).addCallback(lambda _: None)
        return done

    def _resolved(self, found: list[IAddress], member: Member) -> None:
        configured = member.configured
        hosts = list(
            dict.fromkeys(
                a.host for a in found if isinstance(a, IPv4Address | IPv6Address)
            )
        )
        if self._stopped or member not in self._members:
            return
        if not hosts:
            self._log.error(
                "upstream {upstream}: cannot resolve {host}: it is resolved"
                " again at each connect",
                upstream=self.name,
                host=configured.host,
            )
            return
        resolved = [Member(attrs.evolve(configured, host=h), configured) for h in hosts]
        self._log.info(
            "upstream {upstream}: {host} is {addresses}",
            upstream=self.name,
            host=configured.host,
            addresses=", ".join(m.key for m in resolved),
        )
        index = self._members.index(member)
        self._setMembers(
            [*self._members[:index], *resolved, *self._members[index + 1 :]]
        )

    def stop(self) -> None:
        """
        This configuration generation is over: late DNS answers are
        ignored.
        """
        self._stopped = True


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the answers of one C{resolveHostName} into a L{Deferred}.
    """

    def __init__(self) -> None:
        self.found: list[IAddress] = []
        self.done: Deferred[list[IAddress]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.found.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


class ConfiguredNames:
    """
    Re-encryption to a pool's servers under their configured names.

    Connections go to resolved addresses, but SNI and certificate
    verification must use the host name the operator wrote (or
    C{tls_server_name}), never the address it resolved to.
    """

    def __init__(self, tls: UpstreamTLSPolicy, pool: Pool) -> None:
        self.policy = tls
        self._pool = pool

    def connectionFor(self, server: ServerConfig) -> SSL.Connection:
        return self.policy.connectionFor(self._pool.configured(server))

    def verify(self, connection: SSL.Connection, server: ServerConfig) -> str | None:
        return self.policy.verify(connection, self._pool.configured(server))


class _OneShotFactory(ClientFactory):
    """
    Builds exactly one protocol and reports a failed connect.

    The upstream protocol object is created by the caller, so it can be
    bound to its client connection before any event arrives.
    """

    noisy = False

    def __init__(self, protocol: Protocol, failed: Callable[[Failure], None]) -> None:
        self._protocol = protocol
        self._failed = failed

    def buildProtocol(self, addr: object) -> Protocol:
        return self._protocol

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._failed(reason)


#: The errors of a connect that are the gateway's own doing, not the
#: server's: out of descriptors (the process's or the system's) or of
#: buffer memory.  They never count against a server (passive failures,
#: health checks); the connection is refused as C{upstream_unavailable}
#: and no other server is tried, since it would fail the same way.
LOCAL_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def localError(reason: Failure) -> str | None:
    """
    Why a connect failed, if it is a local resource error (L{LOCAL_ERRORS}),
    or L{None} when the server may be to blame.

    Twisted reports a socket it could not create as L{ConnectBindError}
    and a failed C{connect()} as another L{ConnectError}, both with the
    C{errno} in C{osError}; an C{OSError} carries its own.
    """
    value = reason.value
    number = (
        value.osError
        if isinstance(value, ConnectError)
        else getattr(value, "errno", None)
    )
    if number not in LOCAL_ERRORS:
        return None
    return f"local resource error: {errno.errorcode[number]} ({os.strerror(number)})"


def connectServer(
    reactor: IReactorTCP,
    server: ServerConfig,
    protocol: Protocol,
    timeout: float,
    failed: Callable[[Failure], None],
) -> IConnector:
    """
    Start connecting C{protocol} to C{server}.

    @param failed: called with the reason if the connect is refused or
        times out; on success, C{protocol.connectionMade} runs instead.
    @return: the connector, so that a client that leaves while we connect
        can cancel the attempt with C{stopConnecting}.
    """
    factory = _OneShotFactory(protocol, failed)
    if server.path is not None:
        unixReactor: IReactorUNIX = reactor  # type: ignore[assignment]
        return unixReactor.connectUNIX(server.path, factory, timeout=timeout)
    assert server.host is not None
    assert server.port is not None
    return reactor.connectTCP(server.host, server.port, factory, timeout=timeout)


class _AdoptedFactory(ServerFactory):
    """
    Gives the reactor the one protocol an adopted socket is for.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


def adoptConnected(
    reactor: IReactorSocket, sock: socket.socket, protocol: Protocol
) -> None:
    """
    Make C{sock}, connected by L{gateway.connection.directconnect}, the transport of
    C{protocol}: Twisted's public C{adoptStreamConnection}, which builds a
    TCP transport on a copy of the descriptor and calls
    C{protocol.makeConnection} before it returns.  C{sock} itself is
    closed either way; an C{OSError} (no descriptor for the copy) is the
    caller's to report as a failed connect.
    """
    try:
        reactor.adoptStreamConnection(
            sock.fileno(), sock.family, _AdoptedFactory(protocol)
        )
    finally:
        sock.close()
