"""
The hooks a protocol strategy provides for what it serves beyond its
preamble and opening, and the L{ListenerContext} they are given.

A strategy (L{gateway.connection.strategy.IProtocolStrategy}) provides
these small interfaces only for what it serves: L{ITerminates} (what a
terminated connection reads first), L{IServesPlaintext} (a client its
preamble says starts without TLS), L{IServesAtAccept} (a connection that
reads no ClientHello).  The listener asks C{providedBy} once, when it is
built, and never calls a hook that cannot answer.

The hooks are given a L{ListenerContext}: exactly what a strategy may use
of the listener that serves the connection, so the listener and the
strategies do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from zope.interface import Interface

from gateway.connection.strategy import (
    IProtocolStrategy,
    ServerTLSPolicy,
    UpstreamOpener,
)

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IReactorTCP, IReactorTime

    from gateway.config import ListenerConfig
    from gateway.connection.preread import IStage, PrereadProtocol
    from gateway.connection.session import (
        FailureNotice,
        Session,
        Timeouts,
        UpstreamRuntime,
    )
    from gateway.connection.terminate import ITerminatedSession
    from gateway.core.transports import RelayTransport
    from gateway.rules.accesslog import AccessLog
    from gateway.rules.decision import Policy, Reject, Relay
    from gateway.tls.transport import TLSTransport
    from gateway.wire.clienthello import ClientHello


class ITerminates(Interface):
    """
    A protocol that reads something of its own inside a terminated
    connection before its session starts (PostgreSQL's startup message).
    Without it, a terminated connection is a plain session from its
    handshake on.
    """

    def terminated(
        listener: ListenerContext,
        protocol: PrereadProtocol,
        tls: TLSTransport,
        upstream: UpstreamRuntime,
        hello: ClientHello,
    ) -> ITerminatedSession:
        """
        What drives a terminated connection once its handshake is done:
        a reader of what the protocol sends first, which starts the
        session.
        """


class IServesPlaintext(Interface):
    """
    A protocol whose preamble can say a client starts without TLS
    (L{gateway.connection.strategy.IPreamble.feed} returned neither L{None}
    nor bytes).  On a listener whose strategy does not provide it, such a
    client is refused (C{plaintext_refused}).
    """

    def openPlaintext(
        listener: ListenerContext, protocol: PrereadProtocol, start: object
    ) -> IStage | Reject:
        """
        Serve a client that L{gateway.connection.strategy.IPreamble.feed}
        said starts without TLS (C{start}: what it returned): the stage it
        is handed to, or why it is refused.
        """


class IServesAtAccept(Interface):
    """
    A protocol that reads no ClientHello (C{readsHello} off): its
    connections are served as soon as their client is known.
    """

    def openAtAccept(
        listener: ListenerContext, protocol: PrereadProtocol, buffered: bytes
    ) -> IStage | Reject:
        """
        Serve a connection once its client is known (at accept, or once
        its PROXY header was read; C{buffered}: what followed it): the
        stage it is handed to, or why it is refused.
        """


class ListenerContext(TypingProtocol):
    """
    What a strategy's hooks may use of the listener that serves the
    connection (L{gateway.connection.listener.ListenerFactory} provides
    it): its settings and verdicts, its upstreams, and the sessions,
    relays and logging it makes.
    """

    @property
    def config(self) -> ListenerConfig: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def reactor(self) -> IReactorTCP: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def timeouts(self) -> Timeouts: ...

    @property
    def accessLog(self) -> AccessLog: ...

    @property
    def tls(self) -> ServerTLSPolicy | None:
        """
        The termination policy, or L{None} when nothing terminates.
        """

    @property
    def upstreams(self) -> Mapping[str, UpstreamRuntime]:
        """
        Every upstream by name, re-encrypting (C{tls = on}) where set.
        """

    @property
    def passthroughUpstreams(self) -> Mapping[str, UpstreamRuntime]:
        """
        Every upstream by name, for the client's own bytes: never
        re-encrypting.
        """

    @property
    def strategyState(self) -> object:
        """
        What L{IProtocolStrategy.listenerState} made for this listener's
        name (shared across reloads).
        """

    def upstreamFor(self, verdict: Relay) -> UpstreamRuntime:
        """
        The runtime of a verdict's upstream.
        """

    def clientKeyOf(self, protocol: PrereadProtocol) -> str:
        """
        The client key of a connection (its IP address).
        """

    def session(
        self,
        protocol: PrereadProtocol,
        client: RelayTransport | TLSTransport,
        upstream: UpstreamRuntime,
        serverName: str | None,
        connection: SSL.Connection | None = None,
        *,
        relay: str = "portable",
        opening: UpstreamOpener | None = None,
        onEnd: Callable[[], None] | None = None,
        failureAlert: FailureNotice | None = None,
    ) -> Session:
        """
        The session that takes a connection to C{upstream}.
        """

    def proxyHeaderFor(
        self,
        protocol: PrereadProtocol,
        serverName: str | None,
        connection: SSL.Connection | None,
    ) -> Callable[[], bytes] | None:
        """
        What builds the C{proxy_protocol} header of a connection's
        upstream connections, or L{None} without one.
        """

    def relayTCP(
        self,
        protocol: PrereadProtocol,
        upstream: UpstreamRuntime,
        pending: bytes,
        strategy: IProtocolStrategy,
    ) -> IStage:
        """
        Relay a connection whose client side is plain TCP to C{upstream},
        C{pending} first.
        """
