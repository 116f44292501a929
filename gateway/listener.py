"""
One C{[listener:NAME]} at run time: accept, pre-read, route, hand off.

A L{ListenerFactory} is built from one configuration generation and never
changes: a reload builds new factories, and connections accepted by an old
one finish on the configuration they started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from typing import Protocol as TypingProtocol

import attrs
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gateway.accesslog import AccessLog, ConnectionRecord
from gateway.clienthello import ClientHello
from gateway.config import ListenerConfig, RouteConfig
from gateway.passthrough import PassthroughStage
from gateway.preread import PrereadProtocol, Stage
from gateway.routing import Router
from gateway.session import Session, Timeouts, UpstreamRuntime
from gateway.terminate import TerminationStage


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


class ServerTLSPolicy(TypingProtocol):
    """
    What termination needs from L{gateway.tlspolicy}: a context per server
    name, and the facts of a finished handshake for the access log.
    """

    def contextFor(self, serverName: str | None) -> SSL.Context: ...

    def describe(self, connection: SSL.Connection) -> dict[str, Any]: ...


class ListenerFactory(ServerFactory):
    """
    @ivar active: connections accepted and not yet logged; the drain waits
        for this to empty, and cuts what is left at its deadline.
    @ivar _router: the compiled routes, or L{None} for a listener with a
        single C{upstream}.
    @ivar _tls: the termination policy, or L{None} when nothing on this
        listener terminates.
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
        tls: ServerTLSPolicy | None = None,
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.active: set[PrereadProtocol] = set()
        self._upstreams = upstreams
        # Passthrough relays the client's own TLS: an upstream's `tls = on`
        # (re-encryption) applies to terminated connections only.
        self._passthroughUpstreams = {
            name: attrs.evolve(upstream, tls=None)
            for name, upstream in upstreams.items()
        }
        self._reactor = reactor
        self._clock = clock
        self._accessLog = accessLog
        self._tls = tls
        self._idle = idle
        self._timeouts = Timeouts(
            connect=config.connect_timeout, idle=config.idle_timeout
        )
        self._router: Router[RouteConfig] | None = (
            Router(config.routes) if config.routes else None
        )

    def buildProtocol(self, addr: IAddress) -> PrereadProtocol:
        now = self._clock.seconds()
        client, _ = formatAddress(addr)
        record = ConnectionRecord(
            listener=self.config.name, client=client, accepted=now, started=now
        )
        protocol = PrereadProtocol(
            self,
            record,
            self._clock,
            self.config.preread_timeout,
            self.config.preread_buffer_size,
        )
        self.active.add(protocol)
        return protocol

    def handoff(
        self, protocol: PrereadProtocol, hello: ClientHello, buffered: bytes
    ) -> Stage | None:
        """
        Route a connection whose ClientHello is complete, and start the
        stage its route's action calls for.
        """
        config = self.config
        if self._router is None:
            upstreamName, action = config.upstream, config.mode
        else:
            route = self._router.match(hello.serverName, hello.alpn)
            if route is None:
                protocol.refuse(
                    "no_route", f"no route for server name {hello.serverName!r}"
                )
                return None
            upstreamName, action = route.upstream, route.action or config.mode
        assert upstreamName is not None
        transport = protocol.transport
        assert transport is not None
        _, clientKey = formatAddress(transport.getPeer())
        record = protocol.record
        record.action = action
        upstream = (
            self._upstreams if action == "terminate" else self._passthroughUpstreams
        )[upstreamName]

        def ended() -> None:
            self.ended(protocol)

        stage: PassthroughStage | TerminationStage
        if action == "terminate":
            assert self._tls is not None
            stage = TerminationStage(
                self._clock,
                transport,  # type: ignore[arg-type]
                record,
                self._tls.contextFor(hello.serverName),
                lambda tls: Session(
                    self._reactor,
                    self._clock,
                    tls,  # type: ignore[arg-type]
                    record,
                    upstream,
                    clientKey,
                    self._timeouts,
                    ended,
                    countBytes=False,
                ),
                config.preread_timeout,
                self._tls.describe,
            )
        else:
            stage = PassthroughStage(
                Session(
                    self._reactor,
                    self._clock,
                    transport,  # type: ignore[arg-type]
                    record,
                    upstream,
                    clientKey,
                    self._timeouts,
                    ended,
                    countBytes=True,
                )
            )
        stage.start(buffered)
        return stage

    def ended(self, protocol: PrereadProtocol) -> None:
        """
        A connection is over on every side: log it.
        """
        if protocol not in self.active:
            return
        self.active.discard(protocol)
        try:
            self._accessLog.write(protocol.record)
        except OSError as e:
            self._log.error(
                "listener {listener}: cannot write the access log: {error}",
                listener=self.config.name,
                error=e,
            )
        if not self.active:
            self._idle()
