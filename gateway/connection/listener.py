"""
One C{[listener:NAME]} at run time: accept, pre-read, route, hand off.

A L{ListenerFactory} is built from one configuration generation and never
changes: a reload builds new factories, and connections accepted by an old
one finish on the configuration they started with.

Who the client is: the peer of the accepted connection, or, on a listener
with C{accept_proxy_protocol}, the source address of its PROXY header (the
peer itself for a header without one: LOCAL health checks, UNKNOWN).  That
address is the one logged, filtered by C{allow}/C{deny}, counted by
C{max_connections_per_client} and given to the C{hash} balancer.  The
balancer's own address is never filtered, as NGINX filters the address
C{set_real_ip_from} produced: on such a listener C{allow}/C{deny} and the
per-client limit wait for the header, and keeping untrusted peers from
sending headers at all is C{proxy_protocol_from}'s job (NGINX's
C{set_real_ip_from}): with it set, a peer not listed is refused at accept
(C{denied}), before a byte of its header is read.
C{max_connections} counts connections, so it applies at accept everywhere.
C{max_connection_rate} is a token bucket per client address
(L{gateway.core.ratelimit}), taken when the client is known: at accept, or
once its PROXY header is read.

On a listener that speaks TLS, every refusal before an upstream is involved
gets a TLS alert (L{gateway.wire.alerts}, sent by L{PrereadProtocol.refuse}); a
passthrough connection whose servers all fail gets C{internal_error}.

What a protocol adds (a preamble before the ClientHello, what a terminated
connection reads first, how an upstream connection opens, a connection
served from accept) is its strategy's (L{gateway.connection.strategy}),
given by whoever builds the factory; what is refused or routed where is
L{gateway.rules.decision}'s.
"""

from __future__ import annotations

import errno
import functools
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final
from typing import Protocol as TypingProtocol

import attrs
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gateway.config import ListenerConfig
from gateway.connection.challenge import ChallengeStage
from gateway.connection.echsplit import ECHPassthroughStage
from gateway.connection.hooks import IServesAtAccept, IServesPlaintext, ITerminates
from gateway.connection.hubclient import HubClient
from gateway.connection.passthrough import PassthroughStage
from gateway.connection.preread import IStage, PrereadProtocol
from gateway.connection.session import (
    FailureNotice,
    Session,
    Timeouts,
    UpstreamRuntime,
)
from gateway.connection.strategy import (
    IProtocolStrategy,
    ServerTLSPolicy,
    UpstreamOpener,
)
from gateway.connection.terminate import ITerminatedSession, TerminationStage
from gateway.core.ratelimit import RateLimiter
from gateway.core.transports import RelayTransport
from gateway.core.vocabulary import Action, Status
from gateway.fast.internals import sessionReused
from gateway.rules.accesslog import AccessLog, ConnectionRecord, ExtraFields
from gateway.rules.decision import (
    ACCEPTED,
    PROXIED,
    Admit,
    Challenge,
    Policy,
    Reject,
    Relay,
    decide,
)
from gateway.rules.lifecycle import Event, State, apply
from gateway.tls.server import CertificatePending
from gateway.tls.transport import TLSTransport
from gateway.wire.alerts import AlertDescription, alertRecord, recordVersion
from gateway.wire.clienthello import ClientHello
from gateway.wire.echopen import ECHKeyring
from gateway.wire.proxyprotocol import (
    TLV,
    ProxyAddress,
    ProxyHeader,
    authorityTLV,
    connectionHeader,
    encode,
    sslTLV,
)


def formatAddress(address: IAddress) -> tuple[str, str]:
    """
    @return: the address as the access log shows it (C{ip:port},
        C{[v6]:port}) and the key that identifies the client (its IP).
    """
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}", address.host
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}", address.host
    if isinstance(address, UNIXAddress):
        name = (
            address.name.decode() if isinstance(address.name, bytes) else address.name
        )
        return f"unix:{name or '-'}", "unix"
    return str(address), str(address)


def proxyAddress(address: IAddress) -> ProxyAddress | None:
    """
    @return: an IP address as a PROXY header carries it, or L{None} for
        anything else (a UNIX socket).
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return ProxyAddress(address.host.partition("%")[0], address.port)
    return None


def _sslTLV(connection: SSL.Connection, facts: ExtraFields) -> TLV:
    """
    C{PP2_TYPE_SSL} for a terminated connection.

    A client certificate the gateway has was verified: C{verify_client}
    makes OpenSSL fail the handshake otherwise.  On a resumed session the
    certificate comes from the session, not this handshake.
    """
    certificate = connection.get_peer_certificate(as_cryptography=True)
    commonName = None
    if certificate is not None:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names:
            value = names[0].value
            commonName = value if isinstance(value, str) else value.decode()
    resumed = sessionReused(connection)
    return sslTLV(
        facts.get("tls_version"),
        facts.get("cipher"),
        certificateOnConnection=certificate is not None and not resumed,
        certificateOnSession=certificate is not None,
        verified=certificate is not None,
        commonName=commonName,
    )


class AcmeChallenges(TypingProtocol):
    """
    What a listener needs to answer C{tls-alpn-01} validations: see
    L{gateway.acme.manager.ChallengeResponder}.
    """

    def manages(self, serverName: str | None) -> bool: ...

    def contextFor(self, serverName: str) -> SSL.Context | None: ...


_FRESH: Final = object()
"""No C{strategyState} given: the factory makes its own."""


@functools.cache
def _internalError(version: int) -> bytes:
    """
    The C{internal_error} alert a passthrough client waiting for its
    ServerHello is sent when no server takes it: one per record version,
    made once, not per connection.
    """
    return alertRecord(AlertDescription.INTERNAL_ERROR, version)


class ListenerFactory(ServerFactory):
    """
    @ivar active: connections accepted and not yet logged; the drain waits
        for this to empty, and cuts what is left at its deadline.
    @ivar _router: the compiled routes, or L{None} for a listener with a
        single C{upstream}.
    @ivar _tls: the termination policy, or L{None} when nothing on this
        listener terminates.
    @ivar _admitted: connections that count against C{max_connections}
        (accepted and not refused).
    @ivar _clients: the client key (IP address) of each connection whose
        client is known and admitted: it counts against
        C{max_connections_per_client} (in L{_perClient}) and is the
        C{hash} balancer's key.
    @ivar _denyJA4: C{deny_ja4}, lower-cased: compared case-insensitively.
    @ivar strategy: the listener's protocol (L{gateway.protocols.table}
        resolves it from the configuration).
    @ivar _terminates: the strategy, if it reads something of its own
        inside a terminated connection; else such a connection is a plain
        session.
    @ivar _servesPlaintext: the strategy, if its preamble can let a client
        start without TLS; else such a client is refused.
    @ivar _servesAtAccept: the strategy, if it reads no ClientHello.
    @ivar strategyState: what the listener's protocol strategy keeps for
        its name (L{IProtocolStrategy.listenerState}: PostgreSQL's cancel
        keys), opaque here.  Given by the caller to share one between the
        factories that serve a listener's name across reloads: a cancel
        arrives on whichever is current, for a session of any generation.
    """

    noisy = False
    _log = Logger()

    def __init__(
        self,
        config: ListenerConfig,
        upstreams: Mapping[str, UpstreamRuntime],
        reactor: IReactorTCP,
        clock: IReactorTime,
        accessLog: AccessLog,
        strategy: IProtocolStrategy,
        tls: ServerTLSPolicy | None = None,
        idle: Callable[[], None] = lambda: None,
        strategyState: object = _FRESH,
        acme: AcmeChallenges | None = None,
        ech: ECHKeyring | None = None,
    ) -> None:
        self.config = config
        self._ech = ech
        self._acme = acme
        self.active: set[PrereadProtocol] = set()
        self.upstreams = upstreams
        # Passthrough relays the client's own TLS: an upstream's `tls = on`
        # (re-encryption) applies to terminated connections only.
        self.passthroughUpstreams = {
            name: attrs.evolve(upstream, tls=None)
            for name, upstream in upstreams.items()
        }
        self.reactor = reactor
        self.clock = clock
        self.accessLog = accessLog
        self.tls = tls
        self._idle = idle
        self.timeouts = Timeouts(
            connect=config.connect_timeout, idle=config.idle_timeout
        )
        self.strategy = strategy
        self._terminates: ITerminates | None = (
            strategy if ITerminates.providedBy(strategy) else None
        )
        self._servesPlaintext: IServesPlaintext | None = (
            strategy if IServesPlaintext.providedBy(strategy) else None
        )
        self._servesAtAccept: IServesAtAccept | None = (
            strategy if IServesAtAccept.providedBy(strategy) else None
        )
        if not strategy.readsHello and self._servesAtAccept is None:
            raise TypeError(
                f"strategy {strategy.name!r} reads no ClientHello and does not"
                " provide IServesAtAccept: its connections could not be served"
            )
        self.strategyState = (
            self.strategy.listenerState() if strategyState is _FRESH else strategyState
        )
        self.policy = Policy.fromConfig(config, None if acme is None else acme.manages)
        # The hub may accept and pre-read (gateway.connection.hubaccept) a
        # listener whose connections start with their ClientHello and may
        # be spliced: the common passthrough case.
        self.prereadsInHub = (
            strategy.readsHello
            and strategy.speaksTLSFirst
            and strategy.preamble() is None
            and config.relay != "portable"
            and (
                config.mode == "passthrough"
                or any(route.action == "passthrough" for route in config.routes)
            )
        )
        self._admitted: set[PrereadProtocol] = set()
        self._clients: dict[PrereadProtocol, str] = {}
        self._perClient: Counter[str] = Counter()
        self._rate = (
            RateLimiter(config.max_connection_rate, clock.seconds)
            if config.max_connection_rate is not None
            else None
        )

    def buildProtocol(self, addr: IAddress | None) -> PrereadProtocol:
        assert addr is not None, "a listening port always gives the peer address"
        now = self.clock.seconds()
        client, _ = formatAddress(addr)
        record = ConnectionRecord(
            listener=self.config.name, client=client, accepted=now, started=now
        )
        protocol = PrereadProtocol(
            self,
            record,
            self.clock,
            self.config.preread_timeout,
            self.config.preread_buffer_size,
            acceptProxy=self.config.accept_proxy_protocol,
            ech=self._ech,
        )
        self.active.add(protocol)
        self.accessLog.accepted(self.config.name)
        return protocol

    def acceptedInHub(self, client: HubClient) -> None:
        """
        The hub accepted a connection (L{gateway.connection.hubaccept}):
        its owner is made as for one the port accepted, on the hub's
        transport.
        """
        client.connect(self.buildProtocol(client.getPeer()))

    def _leaveHub(
        self, protocol: PrereadProtocol, verdict: Admit | Relay | Challenge
    ) -> Reject | None:
        """
        Hand a connection pre-read in the hub to the reactor, unless the
        hub serves its verdict: a passthrough to an upstream whose servers
        are all TCP, without ECH (whose second hello the portable relay
        must see).  Everything else needs Twisted's transport.

        @return: a refusal if the reactor could not take the socket.
        """
        transport = protocol.transport
        if not isinstance(transport, HubClient):
            return None
        if (
            isinstance(verdict, Relay)
            and verdict.action is Action.PASSTHROUGH
            and protocol.echOpened is None
            and self.passthroughUpstreams[verdict.upstream].tcpOnly
        ):
            return None
        try:
            transport.toReactor(self.reactor)
        except OSError as e:
            # Worded as every local resource error is (EMFILE named first),
            # so one search of the log finds them all.
            code = errno.errorcode.get(e.errno or 0, "error")
            return Reject(
                Status.UPSTREAM_UNAVAILABLE,
                f"local resource error: {code} ({e.strerror}): cannot hand the"
                " connection to the reactor",
                action=(
                    verdict.action if isinstance(verdict, Relay) else Action.TERMINATE
                ),
            )
        return None

    def closedAtAccept(self, address: object) -> None:
        """
        Twisted accepted a connection for this listener and closed it at
        once, out of descriptors (see L{gateway.fast.acceptwatch}): log it.
        """
        now = self.clock.seconds()
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = address[0], address[1]
            client = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        else:
            client = f"unix:{address or '-'}"
        record = ConnectionRecord(
            listener=self.config.name, client=client, accepted=now, started=now
        )
        apply(
            State.ACCEPTED,
            Event.CLOSED_AT_ACCEPT,
            record,
            "local resource error: EMFILE (Too many open files): closed at accept",
        )
        record.ended = now
        self.accessLog.accepted(self.config.name)
        try:
            self.accessLog.write(record)
        except OSError as e:
            self._log.error(
                "listener {listener}: cannot write the access log: {error}",
                listener=self.config.name,
                error=e,
            )

    def accepted(self, protocol: PrereadProtocol) -> Reject | None:
        """
        Refuse a new connection the listener's filters or limits exclude,
        before anything is read from it (L{gateway.rules.decision}).
        """
        transport = protocol.transport
        assert transport is not None
        _, clientKey = formatAddress(transport.getPeer())
        proxied = self.config.accept_proxy_protocol
        verdict = decide(
            self.policy,
            ACCEPTED,
            clientKey,
            len(self._admitted),
            self._perClient.get(clientKey, 0),
            proxied or self._rate is None or self._rateAllows(clientKey),
        )
        if isinstance(verdict, Reject):
            return verdict
        self._admitted.add(protocol)
        if not proxied:  # else the client is not known until its header
            self._count(protocol, clientKey)
        return None

    def proxied(self, protocol: PrereadProtocol, header: ProxyHeader) -> Reject | None:
        """
        The connection's PROXY header is read: the client it names (or the
        balancer itself, for a header without an address) is the client
        from now on, and is filtered and counted as such.
        """
        if header.source is not None:
            protocol.record.client = str(header.source)
            clientKey = header.source.host
        else:
            transport = protocol.transport
            assert transport is not None
            _, clientKey = formatAddress(transport.getPeer())
        verdict = decide(
            self.policy,
            PROXIED,
            clientKey,
            fromClient=self._perClient.get(clientKey, 0),
            rateAllows=self._rate is None or self._rateAllows(clientKey),
        )
        if isinstance(verdict, Reject):
            return verdict
        self._count(protocol, clientKey)
        return None

    def _rateAllows(self, clientKey: str) -> bool:
        """
        The C{max_connection_rate} bucket's answer for a client, taken
        only for one that allow/deny lets in: a denied client takes no
        token.
        """
        rate = self._rate
        return (
            rate is None or not self.policy.permitted(clientKey) or rate.take(clientKey)
        )

    def _count(self, protocol: PrereadProtocol, clientKey: str) -> None:
        self._clients[protocol] = clientKey
        self._perClient[clientKey] += 1

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> IStage | Reject:
        """
        Route a connection whose ClientHello is complete, and start the
        stage its route's action calls for: L{_terminationStage} or
        L{_passthroughStage}.
        """
        # The fingerprint is computed only for a deny_ja4 to check.
        fingerprint = protocol.record.ja4 if self.policy.denyJA4 else None
        verdict = decide(self.policy, hello, "", fingerprint=fingerprint)
        if isinstance(verdict, Reject):
            if verdict.action is not None:
                protocol.record.action = verdict.action
            return verdict
        refusal = self._leaveHub(protocol, verdict)
        if refusal is not None:
            # Routed, then refused: the line shows what it was routed to,
            # as for a port-accepted connection whose upstream failed.
            protocol.record.action = refusal.action
            return refusal
        if isinstance(verdict, Challenge):
            assert self._acme is not None
            return self._answerChallenge(protocol, self._acme, hello, buffered)
        assert isinstance(verdict, Relay)
        action = verdict.action
        protocol.record.action = action
        upstream = (
            self.upstreams if action is Action.TERMINATE else self.passthroughUpstreams
        )[verdict.upstream]
        stage: PassthroughStage | TerminationStage | Reject
        if action is Action.TERMINATE:
            stage = self._terminationStage(protocol, hello, upstream)
            if isinstance(stage, Reject):
                return stage
        else:
            stage = self._passthroughStage(protocol, hello, upstream)
        stage.start(buffered)
        return stage

    def _terminationStage(
        self, protocol: PrereadProtocol, hello: ClientHello, upstream: UpstreamRuntime
    ) -> TerminationStage | Reject:
        """
        The stage that does the TLS handshake with the client, or a refusal
        while the certificate for its name is still being issued.
        """
        assert self.tls is not None
        transport = protocol.transport
        assert transport is not None
        try:
            context = self.tls.contextFor(hello.serverName)
        except CertificatePending as e:
            return Reject(
                Status.HANDSHAKE_FAILED,
                str(e),
                alert=AlertDescription.HANDSHAKE_FAILURE,
            )

        terminates = self._terminates

        def makeSession(tls: TLSTransport) -> ITerminatedSession:
            if terminates is not None:
                return terminates.terminated(self, protocol, tls, upstream, hello)
            return self.session(
                protocol, tls, upstream, hello.serverName, tls.connection
            )

        return TerminationStage(
            self.clock,
            transport,  # type: ignore[arg-type]
            protocol.record,
            protocol,
            context,
            makeSession,
            self.config.preread_timeout,
            self.tls.describe,
            self.accessLog.handshake,
        )

    def _passthroughStage(
        self, protocol: PrereadProtocol, hello: ClientHello, upstream: UpstreamRuntime
    ) -> PassthroughStage:
        """
        The stage that relays the client's bytes, hello first, unchanged.
        """
        transport = protocol.transport
        assert transport is not None
        # A decrypted ECH hello may be followed by a second one that
        # must be seen (echsplit): the portable relay shows it.
        opened = protocol.echOpened
        session = self.session(
            protocol,
            transport,  # type: ignore[arg-type]
            upstream,
            hello.serverName,
            relay=self.config.relay if opened is None else "portable",
            opening=self.strategy.opening(True),
            failureAlert=_internalError(recordVersion(hello)),
        )
        if opened is None:
            return PassthroughStage(session)
        return ECHPassthroughStage(
            session,
            opened,
            transport,  # type: ignore[arg-type]
            recordVersion(hello),
        )

    def _answerChallenge(
        self,
        protocol: PrereadProtocol,
        acme: AcmeChallenges,
        hello: ClientHello,
        buffered: bytes,
    ) -> IStage | Reject:
        """
        A C{tls-alpn-01} validation of a name the gateway orders a
        certificate for: answered here, on any route, never relayed.
        """
        assert hello.serverName is not None
        record = protocol.record
        record.action = Action.TERMINATE
        context = acme.contextFor(hello.serverName)
        if context is None:
            return Reject(
                Status.HANDSHAKE_FAILED,
                f"acme tls-alpn-01 for {hello.serverName!r}: no validation in progress",
                alert=AlertDescription.HANDSHAKE_FAILURE,
            )
        transport = protocol.transport
        assert transport is not None
        stage = ChallengeStage(
            self.clock,
            transport,  # type: ignore[arg-type]
            record,
            protocol,
            context,
            self.config.preread_timeout,
        )
        stage.start(buffered)
        return stage

    def handoffPlaintext(
        self, protocol: PrereadProtocol, start: object
    ) -> IStage | Reject:
        """
        A client whose preamble said it starts without TLS: the strategy
        serves it, if it serves such clients at all.
        """
        serves = self._servesPlaintext
        if serves is None:
            return Reject(
                Status.PLAINTEXT_REFUSED,
                f"protocol {self.strategy.name} serves no client without TLS",
            )
        return serves.openPlaintext(self, protocol, start)

    def handoffAtAccept(
        self, protocol: PrereadProtocol, buffered: bytes
    ) -> IStage | Reject:
        """
        A connection that reads no ClientHello, once its client is known
        (at accept, or once its PROXY header was read; C{buffered}: what
        followed it): the strategy serves it.
        """
        serves = self._servesAtAccept
        assert serves is not None, "checked when the factory was built"
        return serves.openAtAccept(self, protocol, buffered)

    def relayTCP(
        self,
        protocol: PrereadProtocol,
        upstream: UpstreamRuntime,
        pending: bytes,
        strategy: IProtocolStrategy,
    ) -> IStage:
        """
        Relay a connection whose client side is plain TCP to C{upstream}
        (the client stays paused while it is reached), C{pending} first;
        the access log says C{tcp}.
        """
        transport = protocol.transport
        assert transport is not None
        protocol.record.action = Action.TCP
        stage = PassthroughStage(
            self.session(
                protocol,
                transport,  # type: ignore[arg-type]
                upstream,
                None,
                relay=self.config.relay,
                opening=strategy.opening(upstream.tls is not None),
            )
        )
        stage.start(pending)
        return stage

    def upstreamFor(self, verdict: Relay) -> UpstreamRuntime:
        """
        The runtime of a verdict's upstream: re-encrypting (C{tls = on})
        for a terminated connection only.
        """
        return (
            self.upstreams
            if verdict.action is Action.TERMINATE
            else self.passthroughUpstreams
        )[verdict.upstream]

    def clientKeyOf(self, protocol: PrereadProtocol) -> str:
        """
        The client key of a connection: the one counted, or its peer's IP.
        """
        transport = protocol.transport
        assert transport is not None
        return self._clients.get(protocol) or formatAddress(transport.getPeer())[1]

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

        @param client: the client's plaintext side: its TCP transport, or
            the TLS layer of a terminated connection (C{connection} is its
            OpenSSL connection), which counts the bytes it writes itself.
        @param onEnd: called when the session ends, before the listener
            logs it.
        @param failureAlert: written to the client when no server can be
            reached (passthrough: the client waits for a ServerHello; a
            terminated PostgreSQL client for its server's first message).
        """
        clientKey = self.clientKeyOf(protocol)
        return Session(
            self.reactor,
            self.clock,
            client,
            protocol.record,
            protocol,
            upstream,
            clientKey,
            self.timeouts,
            clientBytes=protocol.clientBytes.forWritesTo(client),
            onEnd=onEnd,
            relay=relay,
            proxyHeader=self.proxyHeaderFor(protocol, serverName, connection),
            opening=opening,
            failureAlert=failureAlert,
        )

    def proxyHeaderFor(
        self,
        protocol: PrereadProtocol,
        serverName: str | None,
        connection: SSL.Connection | None,
    ) -> Callable[[], bytes] | None:
        """
        What builds the C{proxy_protocol} header of a connection's upstream
        connections, or L{None} without one.

        The addresses are the client's and the one it connected to: from
        the PROXY header it came with, if that had them (so the original
        client reaches the backend through any number of proxies), else
        from the socket.  Version 2 adds the server name
        (C{PP2_TYPE_AUTHORITY}) and, for a terminated connection
        (C{connection}), its TLS version, cipher and client certificate
        (C{PP2_TYPE_SSL}), read when the header is built: after the
        handshake.
        """
        version = {"v1": 1, "v2": 2}.get(self.config.proxy_protocol)
        if version is None:
            return None
        transport = protocol.transport
        assert transport is not None
        received = protocol.proxyHeader
        source: ProxyAddress | None
        destination: ProxyAddress | None
        if received is not None and received.source is not None:
            source, destination = received.source, received.destination
        else:
            source = proxyAddress(transport.getPeer())
            destination = proxyAddress(transport.getHost())
        tls = self.tls

        def build() -> bytes:
            tlvs = []
            if version == 2:
                if serverName is not None:
                    tlvs.append(authorityTLV(serverName))
                if connection is not None and tls is not None:
                    tlvs.append(_sslTLV(connection, tls.describe(connection)))
            return encode(connectionHeader(version, source, destination, tlvs))

        return build

    def ended(self, protocol: PrereadProtocol) -> None:
        """
        A connection is over on every side: log it.  Called by its owner
        only, once, after it stamped the end (L{PrereadProtocol._end}).
        """
        protocol.logged()
        if protocol not in self.active:
            return
        self.active.discard(protocol)
        self._admitted.discard(protocol)
        clientKey = self._clients.pop(protocol, None)
        if clientKey is not None:
            self._perClient[clientKey] -= 1
            if not self._perClient[clientKey]:
                del self._perClient[clientKey]
        try:
            self.accessLog.write(protocol.record)
        except OSError as e:
            self._log.error(
                "listener {listener}: cannot write the access log: {error}",
                listener=self.config.name,
                error=e,
            )
        if not self.active:
            self._idle()
