"""
C{protocol = mysql} as a strategy of the generic connection core: the
listener hands each connection to a L{MySQLConnection} at accept, wired
with the listener's verdicts (L{gateway.rules.decision.decide}, as for
every protocol), upstreams, certificates and access log.
"""

from __future__ import annotations

from collections.abc import Callable

from OpenSSL import SSL
from zope.interface import implementer

from gateway.connection.hooks import IServesAtAccept, ListenerContext
from gateway.connection.preread import PrereadProtocol
from gateway.connection.session import UpstreamRuntime
from gateway.connection.strategy import IProtocolStrategy, ReadsNothing
from gateway.core.transports import relayTransport
from gateway.core.vocabulary import Status
from gateway.protocols.mysql.connection import MySQLConnection
from gateway.protocols.mysql.wiring import Wiring
from gateway.rules.decision import Plaintext, Policy, Reject, Relay, decide
from gateway.wire.clienthello import ClientHello

__all__ = ["MYSQL", "MySQLStrategy", "verdictFor"]

PLAINTEXT_LOGIN = Plaintext(True, "plaintext login", sent="a login")
"""What a MySQL client that logs in without TLS is, to L{decide}."""


def verdictFor(
    policy: Policy, hello: ClientHello | None, fingerprint: str | None
) -> Relay | Reject:
    """
    The listener's verdict on a MySQL client: on its ClientHello (JA4
    deny, routing), or for L{None} on its plaintext login
    (C{allow_plaintext}, the default route).

    An ACME C{tls-alpn-01} validation never comes inside the MySQL
    protocol (a validator speaks TLS first; it would not read a greeting),
    so a hello that looks like one is refused, not answered.
    """
    if hello is None:
        verdict = decide(policy, PLAINTEXT_LOGIN, "")
    else:
        verdict = decide(policy, hello, "", fingerprint=fingerprint)
    if isinstance(verdict, Reject | Relay):
        return verdict
    return Reject(
        Status.DENIED,
        "an ACME tls-alpn-01 validation cannot come inside the MySQL protocol",
    )


@implementer(IProtocolStrategy, IServesAtAccept)
class MySQLStrategy(ReadsNothing):
    """
    C{protocol = mysql}: a MySQL client reads the server's greeting before
    it sends a byte, so nothing is pre-read: the connection is handed to
    its L{MySQLConnection} at accept (or once its PROXY header is read),
    which greets the client with the greeting upstream's server, then
    routes it by the ClientHello it sends inside the protocol.
    """

    name = "mysql"

    def openAtAccept(
        self, listener: ListenerContext, protocol: PrereadProtocol, buffered: bytes
    ) -> MySQLConnection:
        policy = listener.policy
        transport = protocol.transport
        assert transport is not None
        tls = listener.tls
        assert tls is not None

        def choose(hello: ClientHello | None) -> UpstreamRuntime | Reject:
            fingerprint = protocol.record.ja4 if policy.denyJA4 else None
            verdict = verdictFor(policy, hello, fingerprint)
            if isinstance(verdict, Reject):
                return verdict
            return listener.upstreams[verdict.upstream]

        def proxyHeader(
            serverName: str | None, connection: SSL.Connection | None
        ) -> Callable[[], bytes] | None:
            return listener.proxyHeaderFor(protocol, serverName, connection)

        config = listener.config
        stage = MySQLConnection(
            Wiring(
                reactor=listener.reactor,
                clock=listener.clock,
                timeouts=listener.timeouts,
                prereadTimeout=config.preread_timeout,
                maxHello=config.preread_buffer_size,
                clientKey=listener.clientKeyOf(protocol),
                greetings=tuple(
                    listener.upstreams[name] for name in policy.greetings()
                ),
                choose=choose,
                contextFor=tls.contextFor,
                describe=tls.describe,
                handshakeTimed=listener.accessLog.handshake,
                proxyHeader=proxyHeader,
            ),
            relayTransport(transport),
            protocol.record,
            protocol,
        )
        stage.start(buffered)
        return stage


MYSQL = MySQLStrategy()
