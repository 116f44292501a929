"""
One C{[listener:NAME]} at run time: accept, pre-read, route, hand off.

A L{ListenerFactory} is built from one configuration generation and never
changes: a reload builds new factories, and connections accepted by an old
one finish on the configuration they started with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTCP, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gateway.accesslog import AccessLog, ConnectionRecord
from gateway.clienthello import ClientHello
from gateway.config import ListenerConfig, RouteConfig
from gateway.passthrough import PassthroughSession
from gateway.preread import PrereadProtocol, Stage
from gateway.routing import Router
from gateway.upstream import IServerChooser


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


class ListenerFactory(ServerFactory):
    """
    @ivar active: connections accepted and not yet logged; the drain waits
        for this to empty, and cuts what is left at its deadline.
    @ivar _router: the compiled routes, or L{None} for a listener with a
        single C{upstream}.
    """

    noisy = False
    _log = Logger()

    def __init__(
        self,
        config: ListenerConfig,
        choosers: Mapping[str, IServerChooser],
        reactor: IReactorTCP,
        clock: IReactorTime,
        accessLog: AccessLog,
        tries: Mapping[str, int],
        idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.active: set[PrereadProtocol] = set()
        self._choosers = choosers
        self._tries = tries
        self._reactor = reactor
        self._clock = clock
        self._accessLog = accessLog
        self._idle = idle
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
        Route a connection whose ClientHello is complete.
        """
        upstreamName: str | None
        if self._router is None:
            upstreamName = self.config.upstream
        else:
            route = self._router.match(hello.serverName, hello.alpn)
            if route is None:
                protocol.refuse(
                    "no_route", f"no route for server name {hello.serverName!r}"
                )
                return None
            upstreamName = route.upstream
        assert upstreamName is not None
        assert protocol.transport is not None
        _, clientKey = formatAddress(protocol.transport.getPeer())
        session = PassthroughSession(
            self._reactor,
            self._clock,
            protocol.transport,  # type: ignore[arg-type]
            protocol.record,
            self._choosers[upstreamName],
            buffered,
            clientKey=clientKey,
            connectTimeout=self.config.connect_timeout,
            idleTimeout=self.config.idle_timeout,
            tries=self._tries[upstreamName],
            ended=lambda: self.ended(protocol),
        )
        session.start()
        return session

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
