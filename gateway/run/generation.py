"""
A generation: everything the gateway builds from one configuration (TLS
contexts, pools and their health checks, listener factories), so that a
reload can build the next one beside it while it drains.
L{gateway.run.service} opens the ports and moves them between generations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorPluggableNameResolver

from gateway.acme.manager import AcmeManager
from gateway.config import GatewayConfig
from gateway.connection.datagram import QuicListener
from gateway.connection.health import HealthChecker
from gateway.connection.listener import ListenerFactory
from gateway.connection.session import UpstreamRuntime
from gateway.connection.strategy import ListenerStates
from gateway.connection.upstream import ConfiguredNames, Pool
from gateway.protocols.table import strategyFor
from gateway.rules.accesslog import AccessLog
from gateway.tls.contexts import Contexts, buildContexts, withAcme

__all__ = ["Generation", "StartupError"]


class StartupError(Exception):
    """
    The gateway cannot start or serve a configuration: a listener could
    not be opened (address in use, permission denied), or a file it names
    changed since the configuration was checked.
    """


class Generation:
    """
    Everything built from one configuration: TLS contexts, pools and their
    health checks, listener factories.

    A reload builds a new generation beside the running one and moves the
    listening ports over to its factories; the old generation keeps serving
    the connections it accepted, on the configuration they started with,
    until the last one ends.

    @ivar factories: by listener name.
    @ivar pools: by upstream name.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        accessLog: AccessLog,
        idle: Callable[[], None],
        states: ListenerStates | None = None,
        acme: AcmeManager | None = None,
        contexts: Contexts | None = None,
        dropped: Callable[[str, str], None] = lambda listener, reason: None,
    ) -> None:
        """
        @param dropped: counts a datagram a UDP endpoint dropped.
        @param contexts: the TLS contexts the check of C{config} built
            (L{gateway.run.loading}), served as they are so that no file is
            read twice; L{None} (a configuration built in code, a second
            start) builds them now.
        """
        if contexts is None:
            contexts = buildContexts(config, None if acme is None else acme.current)
        elif acme is not None:
            contexts = withAcme(contexts, acme.current)
        if contexts.problems:
            # The files changed since the configuration was checked.
            raise StartupError("\n".join(str(p) for p in contexts.problems))
        self.config = config
        self.warnings = contexts.warnings
        self.servers = contexts.servers
        self.pools = {
            name: Pool(upstream, reactor) for name, upstream in config.upstreams.items()
        }
        self._checkers: list[HealthChecker] = []
        upstreams = {}
        for name, pool in self.pools.items():
            tls = contexts.upstreams.get(name)
            upstreams[name] = UpstreamRuntime(
                name,
                pool,
                pool.config.next_upstream_tries,
                None if tls is None else ConfiguredNames(tls, pool),
                tcpOnly=all(server.host is not None for server in pool.config.servers),
            )
        if states is None:
            states = ListenerStates()
        self.factories = {
            listener.name: ListenerFactory(
                listener,
                upstreams,
                reactor,
                reactor,
                accessLog,
                strategyFor(listener),
                tls=contexts.servers.get(listener.name),
                idle=idle,
                strategyState=states.stateFor(listener.name, strategyFor(listener)),
                acme=None if not acme else acme.challenges,
                ech=contexts.ech.get(listener.name),
            )
            for listener in config.listeners
        }
        passthrough = {
            name: factory.passthroughUpstreams
            for name, factory in self.factories.items()
        }
        self.quic = {
            listener.name: QuicListener(
                listener,
                passthrough[listener.name],
                reactor,
                reactor,
                accessLog,
                idle=idle,
                dropped=dropped,
            )
            for listener in config.listeners
            if listener.udpListen
        }

    def certificateIssued(self, name: str, certificate: Any) -> None:
        """
        Serve a new ACME certificate for C{[certificate:NAME]} on every
        listener that uses it, from the next handshake on.
        """
        section = f"certificate:{name}"
        for server in self.servers.values():
            if server.uses(section):
                server.update(section, certificate)

    @property
    def active(self) -> int:
        return sum(len(f.active) for f in self.factories.values()) + sum(
            len(q.active) for q in self.quic.values()
        )

    def startPools(self, reactor: Any) -> None:
        """
        Resolve the host names of C{servers} (through the reactor's
        resolver, when it has one) and start the active health checks.
        """
        resolver = (
            reactor.nameResolver
            if IReactorPluggableNameResolver.providedBy(reactor)
            else None
        )
        for pool in self.pools.values():
            if resolver is not None:
                pool.resolve(resolver)
            if pool.config.health_check != "off":
                checker = HealthChecker(pool, reactor)
                self._checkers.append(checker)
                checker.start()

    def stopPools(self) -> None:
        """
        Stop every health check (and its timer) and ignore late DNS answers.
        Connections being drained keep their servers.
        """
        checkers, self._checkers = self._checkers, []
        for checker in checkers:
            checker.stop()
        for pool in self.pools.values():
            pool.stop()

    def serverStates(self) -> dict[str, dict[str, bool]]:
        return {name: pool.serverStates() for name, pool in self.pools.items()}
