"""
L{GatewayService}: the gateway as a Twisted service.

It is what C{twistd tlsgateway}, C{tlsgateway run} and applications that
embed the gateway all start, so everything that has a lifetime (listening
ports, the access log, connections to drain) hangs off it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorPluggableNameResolver,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.accesslog import AccessLog
from gateway.config import GatewayConfig
from gateway.contexts import buildContexts
from gateway.health import HealthChecker
from gateway.listener import ListenerFactory
from gateway.session import UpstreamRuntime
from gateway.upstream import ConfiguredNames, Pool


class StartupError(Exception):
    """
    A listener could not be opened (address in use, permission denied).
    """


class GatewayService(Service):
    """
    Serves every listener of one configuration.

    @ivar factories: the listener factories of the running configuration,
        by listener name.
    @ivar pools: the upstream pools of the running configuration, by
        upstream name; C{pools[name].serverStates()} is what the
        C{tlsgateway_upstream_server_up} metric reads.
    @ivar _ports: the listening ports, closed first when stopping so that
        no connection is accepted during the drain.
    @ivar _reactor: the reactor to listen, connect and time with.  The
        contract's embedding API is C{GatewayService(config)}, so it
        defaults to the global reactor, imported only when the service
        starts.
    """

    _log = Logger()

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        self.config = config
        self.factories: dict[str, ListenerFactory] = {}
        self._reactor = reactor
        self._ports: list[IListeningPort] = []
        self._accessLog: AccessLog | None = None
        self._drained: Deferred[None] | None = None
        self.pools: dict[str, Pool] = {}
        self._checkers: list[HealthChecker] = []

    def _getReactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:
        """
        Open every listener, or raise L{StartupError} naming each that
        failed (after closing the ones that opened).
        """
        reactor = self._getReactor()
        settings = self.config.gateway
        self._accessLog = AccessLog(settings.access_log, settings.access_log_format)
        contexts = buildContexts(self.config)
        if contexts.problems:
            # The files changed since the configuration was checked.
            raise StartupError("\n".join(str(p) for p in contexts.problems))
        for warning in contexts.warnings:
            self._log.warn("{warning}", warning=warning)
        self.pools = {
            name: Pool(upstream, reactor)
            for name, upstream in self.config.upstreams.items()
        }
        upstreams = {}
        for name, pool in self.pools.items():
            tls = contexts.upstreams.get(name)
            upstreams[name] = UpstreamRuntime(
                name,
                pool,
                pool.config.next_upstream_tries,
                None if tls is None else ConfiguredNames(tls, pool),
            )
        errors: list[str] = []
        for listener in self.config.listeners:
            factory = ListenerFactory(
                listener,
                upstreams,
                reactor,
                reactor,
                self._accessLog,
                tls=contexts.servers.get(listener.name),
                idle=self._maybeDrained,
            )
            self.factories[listener.name] = factory
            for description in listener.listen:
                self._listen(reactor, listener.name, description, factory, errors)
        if errors:
            for port in self._ports:
                port.stopListening()
            self._ports = []
            self._accessLog.close()
            raise StartupError("\n".join(errors))
        self._startPools(reactor)
        super().startService()
        self._log.info(
            "tlsgateway ready: {count} listener(s) on {ports}",
            count=len(self.config.listeners),
            ports=", ".join(
                f"{listener.name}={'|'.join(listener.listen)}"
                for listener in self.config.listeners
            ),
        )

    def _listen(
        self,
        reactor: Any,
        name: str,
        description: str,
        factory: ListenerFactory,
        errors: list[str],
    ) -> None:
        # Stream server endpoints for tcp, tcp6 and unix listen synchronously,
        # so the result is known before startService returns and a port that
        # cannot be opened fails the start instead of being logged later.
        result: list[IListeningPort | Failure] = []
        serverFromString(reactor, description).listen(factory).addBoth(result.append)
        if not result:
            errors.append(f"listener {name}: {description}: did not listen at once")
        elif isinstance(result[0], Failure):
            errors.append(
                f"listener {name}: cannot listen on {description}: "
                f"{result[0].getErrorMessage()}"
            )
        else:
            self._ports.append(result[0])
            self._log.info(
                "listener {listener} listening on {description}",
                listener=name,
                description=description,
            )

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, let established connections finish for up to
        C{drain_timeout}, then cut the rest (logged C{shutdown}).
        """
        super().stopService()
        self._stopPools()
        for port in self._ports:
            port.stopListening()
        self._ports = []
        active = sum(len(f.active) for f in self.factories.values())
        if not active:
            self._closeLog()
            return succeed(None)
        timeout = self.config.gateway.drain_timeout
        self._log.info(
            "draining {active} connection(s) for up to {timeout}s",
            active=active,
            timeout=timeout,
        )
        self._drained = Deferred()
        deadline: IDelayedCall = self._getReactor().callLater(timeout, self._cut)
        self._drained.addBoth(
            lambda r: deadline.cancel() if deadline.active() else None
        )
        self._drained.addBoth(lambda _: self._closeLog())
        return self._drained

    def _startPools(self, reactor: Any) -> None:
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

    def _stopPools(self) -> None:
        """
        Stop every health check (and its timer) and ignore late DNS answers.
        Connections being drained keep their servers.
        """
        checkers, self._checkers = self._checkers, []
        for checker in checkers:
            checker.stop()
        for pool in self.pools.values():
            pool.stop()

    def _cut(self) -> None:
        remaining = [p for f in self.factories.values() for p in list(f.active)]
        self._log.info(
            "drain timeout: closing {count} connection(s)", count=len(remaining)
        )
        for protocol in remaining:
            protocol.shutdown()
        # Aborted transports report connectionLost on the next reactor
        # iterations; should one never do so, do not hang the shutdown.
        self._getReactor().callLater(2, self._forceDrained)

    def _forceDrained(self) -> None:
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def _maybeDrained(self) -> None:
        if self._drained is None or self._drained.called:
            return
        if not any(f.active for f in self.factories.values()):
            self._drained.callback(None)

    def _closeLog(self) -> None:
        if self._accessLog is not None:
            self._accessLog.close()
