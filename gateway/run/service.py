"""
L{GatewayService}: the gateway as a Twisted service.

It is what C{twistd tlsgateway}, C{tlsgateway run} and applications that
embed the gateway all start, so everything that has a lifetime (listening
ports, the access log, connections to drain) hangs off it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.acme.manager import AcmeManager
from gateway.acme.state import StateDirectory
from gateway.config import AcmeSettings, ConfigError, GatewayConfig
from gateway.connection.hubaccept import HubAcceptor, IAcceptor, chooseAcceptor
from gateway.connection.listener import ListenerFactory
from gateway.connection.strategy import ListenerStates
from gateway.connection.timers import cancel
from gateway.connection.upstream import Pool
from gateway.core import verbosity
from gateway.fast.acceptwatch import watch
from gateway.rules.accesslog import AccessLog
from gateway.run.generation import Generation, StartupError
from gateway.run.loading import (
    Loaded,
    listenProblem,
    listenReason,
    loadChecked,
    takeContexts,
)
from gateway.run.logs import standardOutput
from gateway.run.metrics import Metrics
from gateway.run.reloads import ReloadCollector, ReloadHistory
from gateway.run.signals import IReloadable
from gateway.run.status import RecentFailures, Snapshot, localSnapshot
from gateway.run.udpports import UDPPorts
from gateway.tls.contexts import Contexts, servedCertificates
from gateway.tls.served import ExpiryCollector, ServedCertificates


class _CannotListen(StartupError):
    """
    One endpoint did not listen; whoever opened it for a listener or for
    C{metrics} says which (L{gateway.run.loading.listenProblem}).
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"cannot listen on {description}: {reason}")
        self.reason = reason


@implementer(IReloadable)
class GatewayService(Service):
    """
    Serves every listener of one configuration, and of the next one after
    a L{reload}.

    @ivar config: the running configuration.
    @ivar factories: the listener factories of the running configuration,
        by listener name.
    @ivar pools: the upstream pools of the running configuration, by
        upstream name; C{pools[name].serverStates()} is what the
        C{tlsgateway_upstream_server_up} metric reads.
    @ivar reloads: the outcome of the last reload, and counts, for the
        status page and the metrics.
    @ivar _ports: the listening ports by C{listen} description, closed
        first when stopping so that no connection is accepted during the
        drain.
    @ivar _acceptors: who accepts on each port (L{gateway.connection.hubaccept}).
    @ivar _retired: older generations still serving connections.
    @ivar _inherited: listening sockets handed down by a supervisor
        (C{workers > 1}), by C{listen} description: adopted, not opened.
    @ivar _reactor: the reactor to listen, connect and time with.  The
        contract's embedding API is C{GatewayService(config)}, so it
        defaults to the global reactor, imported only when the service
        starts.
    """

    _log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any = None,
        *,
        inherited: Mapping[str, tuple[int, socket.AddressFamily]] | None = None,
        view: Callable[[GatewayConfig], GatewayConfig] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """
        @param view: what of each configuration this service serves (a
            worker: its stream endpoints; L{gateway.run.split}).
        @param metrics: where to count, instead of metrics of its own.
        """
        self._view = view or (lambda config: config)
        self.config = self._view(config)
        self._givenMetrics = metrics
        self._reactor = reactor
        self._inherited = dict(inherited or {})
        self._ports: dict[str, IListeningPort] = {}
        self._acceptors: dict[str, IAcceptor] = {}
        # UDP endpoints (QUIC) by listen description: their flows outlive
        # reloads, and their sockets stay open through a drain.
        self._udp = UDPPorts()
        self._accessLog: AccessLog | None = None
        self._metrics: Metrics | None = None
        self._metricsPort: IListeningPort | None = None
        self._serverStates: LoopingCall | None = None
        self._current: Generation | None = None
        self._retired: list[Generation] = []
        self._drained: Deferred[None] | None = None
        self._delayed: list[IDelayedCall] = []
        self._retiring = False
        # The protocols' state by listener name (PostgreSQL cancel keys),
        # kept across reloads: a client cancels a query of a session that a
        # previous configuration accepted.
        self._states = ListenerStates()
        self._acme: AcmeManager | None = None
        self.served = ServedCertificates()
        self.recent = RecentFailures()
        self.reloads = ReloadHistory(lambda: self._getReactor().seconds())
        #: Set by a fleet (L{gateway.run.fleet}): what a reload serves is
        #: the file as read, passed through this (the stored routes and
        #: upstreams merged in); and the C{cluster} part of the status.
        self.merge: Callable[[Loaded], Loaded] | None = None
        self.clusterStatus: Callable[[], dict[str, Any]] | None = None
        #: Set by a fleet: the ACME state its replicas share.
        self.acmeState: Callable[[AcmeSettings], StateDirectory] | None = None

    @property
    def factories(self) -> dict[str, ListenerFactory]:
        return {} if self._current is None else self._current.factories

    @property
    def acme(self) -> AcmeManager | None:
        """
        The running configuration's ACME manager, if it has ACME
        certificates.
        """
        return self._acme

    @property
    def pools(self) -> dict[str, Pool]:
        return {} if self._current is None else self._current.pools

    def _getReactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # start

    def startService(self) -> None:
        """
        Open every listener, or raise L{StartupError} naming each that
        failed (after closing the ones that opened).
        """
        reactor = self._getReactor()
        settings = self.config.gateway
        if self._givenMetrics is not None:
            self._metrics = self._givenMetrics
        elif settings.metrics is not None or self._inherited:
            self._metrics = Metrics()
        extra = {"worker_pid": os.getpid()} if self._inherited else None
        try:
            self._accessLog = AccessLog(
                settings.access_log,
                settings.access_log_format,
                metrics=self._metrics,
                extra=extra,
                recent=self.recent,
                standardOutput=standardOutput(),
            )
        except OSError as e:
            raise StartupError(_cannotOpenLog(settings.access_log, e)) from None
        try:
            self._acme = self._acmeFor(self.config, reactor)
            generation = Generation(
                self.config,
                reactor,
                self._accessLog,
                self._maybeDrained,
                self._states,
                self._acme,
                takeContexts(self.config),
                dropped=self._dropped,
            )
            errors = self._bind(reactor, generation)
            if errors:
                raise StartupError("\n".join(errors))
            self._startMetrics(reactor)
        except StartupError:
            self._closePorts(list(self._ports))
            self._udp.close()
            self._accessLog.close()
            raise
        for warning in generation.warnings:
            self._log.warn("{warning}", warning=warning)
        self._current = generation
        self._sampleCertificates()
        self.reloads.started()
        generation.startPools(reactor)
        if self._acme is not None:
            self._acme.start()
        super().startService()  # type: ignore[no-untyped-call]
        self._log.info(
            "tlsgateway ready: {count} listener(s) on {ports}",
            count=len(self.config.listeners),
            ports=", ".join(
                f"{listener.name}={'|'.join(listener.listen)}"
                for listener in self.config.listeners
            ),
        )

    def _acmeFor(self, config: GatewayConfig, reactor: Any) -> AcmeManager | None:
        """
        The ACME manager of a configuration with ACME certificates, its
        state directory ready and the certificates it holds loaded.

        @raise StartupError: the state directory cannot be used.
        """
        if config.acme is None:
            return None
        manager = AcmeManager(
            config.acme,
            config.certificates.values(),
            reactor,
            self._certificateIssued,
            None if self.acmeState is None else self.acmeState(config.acme),
        )
        if not manager:
            return None
        try:
            manager.load()
        except OSError as e:
            raise StartupError(
                f"[acme] state_dir: cannot use {config.acme.state_dir}:"
                f" {e.strerror or e}"
            ) from None
        return manager

    def _certificateIssued(self, name: str, certificate: Any) -> None:
        if self._current is not None:
            try:
                self._current.certificateIssued(name, certificate)
                self._sampleCertificates()
            except Exception:  # noqa: BLE001 - logged; the old certificate stays
                self._log.failure(
                    "acme: cannot serve the new certificate {name}", name=name
                )

    def _bind(self, reactor: Any, generation: Generation) -> list[str]:
        """
        Point every C{listen} of C{generation} at its factory: ports that
        are already open change factory (so a reload loses no queued
        connection), the others are opened.

        @return: a message for each port that could not be opened.
        """
        errors: list[str] = []
        for listener in generation.config.listeners:
            factory = generation.factories[listener.name]
            quic = generation.quic.get(listener.name)
            for description in listener.udpListen:
                assert quic is not None
                error = self._udp.bind(reactor, description, quic)
                if error is not None:
                    errors.append(f"listener {listener.name}: {error}")
            for description in listener.streamListen:
                port = self._ports.get(description)
                if port is not None:
                    port.factory = factory  # type: ignore[attr-defined]
                    self._accept(reactor, description, port, factory)
                    continue
                try:
                    port = self._ports[description] = self._open(
                        reactor, description, factory
                    )
                except _CannotListen as e:
                    errors.append(str(listenProblem(listener, description, e.reason)))
                    continue
                watch(
                    port,
                    partial(getattr, port, "factory", None),
                    shared=description in self._inherited,
                )
                self._accept(reactor, description, port, factory)
                self._log.info(
                    "listener {listener} listening on {description}",
                    listener=listener.name,
                    description=description,
                )
        return errors

    def _accept(
        self,
        reactor: Any,
        description: str,
        port: IListeningPort,
        factory: ListenerFactory,
    ) -> None:
        """
        Choose who accepts on C{port} for C{factory}: again when a reload
        changed whether the hub may pre-read its listener.
        """
        current = self._acceptors.get(description)
        if current is not None:
            if isinstance(current, HubAcceptor) == factory.prereadsInHub:
                return
            current.stop()
        acceptor = self._acceptors[description] = chooseAcceptor(
            reactor,
            port,
            partial(getattr, port, "factory", None),
            preread=factory.prereadsInHub,
            shared=description in self._inherited,
        )
        if verbosity.DEBUG:
            self._log.debug(
                "listener {listener} on {description}: accepted by {acceptor}",
                listener=factory.config.name,
                description=description,
                acceptor="the hub" if isinstance(acceptor, HubAcceptor) else "its port",
            )

    def _dropped(self, listener: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.quicDropped(listener, reason)

    def _open(
        self, reactor: Any, description: str, factory: ListenerFactory
    ) -> IListeningPort:
        inherited = self._inherited.get(description)
        if inherited is not None:
            fd, family = inherited
            # Shared with the other workers: one of them woken per
            # connection (chooseAcceptor, either way).
            port: IListeningPort = reactor.adoptStreamPort(fd, family, factory)
            return port
        # Stream server endpoints for tcp, tcp6 and unix listen synchronously,
        # so the result is known before startService returns and a port that
        # cannot be opened fails the start instead of being logged later.
        result: list[IListeningPort | Failure] = []
        serverFromString(reactor, description).listen(factory).addBoth(result.append)
        if not result:
            raise _CannotListen(description, "did not listen at once")
        if isinstance(result[0], Failure):
            raise _CannotListen(description, listenReason(result[0]))
        return result[0]

    def _closePorts(self, descriptions: list[str]) -> None:
        for description in descriptions:
            port = self._ports.pop(description, None)
            acceptor = self._acceptors.pop(description, None)
            if acceptor is not None:
                acceptor.stop()
            if port is not None:
                port.stopListening()

    def _startMetrics(self, reactor: Any) -> None:
        """
        Serve C{/metrics} (one process; with workers the supervisor does)
        and keep C{tlsgateway_upstream_server_up} current.

        The server states are sampled every second rather than pushed on
        change: a server that C{max_fails} took out comes back when its
        C{fail_timeout} runs out, with no event to push.
        """
        if self._metrics is None:
            return
        if self.config.gateway.metrics is not None and not self._inherited:
            from gateway.run.metrics import metricsSite
            from gateway.run.statuspage import StatusResource

            self._metrics.registry.register(ExpiryCollector(self.served))
            self._metrics.registry.register(ReloadCollector(self.reloads))
            try:
                self._metricsPort = self._open(
                    reactor,
                    self.config.gateway.metrics,
                    metricsSite(  # type: ignore[arg-type]
                        self._metrics.registry, StatusResource(self.statusSnapshot)
                    ),
                )
            except StartupError as e:
                raise StartupError(f"[gateway] metrics: {e}") from None
        self._serverStates = LoopingCall(self._sampleServers)
        self._serverStates.clock = reactor
        self._serverStates.start(1.0, now=False)

    def _sampleServers(self) -> None:
        if self._metrics is None or self._current is None:
            return
        for upstream, states in self._current.serverStates().items():
            for server, up in states.items():
                self._metrics.serverUp(upstream, server, up)
        self._sampleCertificates()
        self._publishStatus()

    def _sampleCertificates(self) -> None:
        """
        Note what the running policies serve in the served-certificates
        registry (the status page and C{tlsgateway_certificate_expiry_seconds}
        read it): at start and reload, every second with the server states,
        and at once when an ACME certificate is issued or renewed.
        """
        if self._current is not None:
            self.served.replace(
                "tls", servedCertificates(self._current.servers.values(), self.config)
            )

    def _publishStatus(self) -> None:
        """
        In a worker: hand the supervisor this worker's status snapshot
        (through the folder the metrics share), as often as the server
        states are sampled.
        """
        from gateway.run.supervisor import WORKER_ENV

        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        number = os.environ.get(WORKER_ENV, "")
        if not self._inherited or not folder or not number.isdigit():
            return
        from gateway.run.status import writeSnapshot

        try:
            writeSnapshot(folder, int(number), self.statusSnapshot())
        except OSError as e:
            self._log.debug("status snapshot not written: {error}", error=e)

    def statusSnapshot(self) -> Snapshot:
        """
        What C{/status} shows for this process.
        """
        active: dict[str, int] = {}
        for generation in self._generations():
            for name, factory in generation.factories.items():
                active[name] = active.get(name, 0) + len(factory.active)
            for name, quic in generation.quic.items():
                active[name] = active.get(name, 0) + len(quic.active)
        snapshot = localSnapshot(
            self.config,
            active,
            self.pools,
            self.recent,
            self.served,
            self._getReactor().seconds,
        )
        snapshot["reload"] = self.reloads.snapshot()
        if self.clusterStatus is not None:
            snapshot["cluster"] = self.clusterStatus()
        return snapshot

    # reload

    def reload(self) -> bool:
        """
        Read the configuration file again and serve it: new connections
        get the new routes, upstreams, certificates and policies at once;
        established ones finish on the configuration they started with.

        All or nothing: the new configuration is checked, its certificates
        loaded, its access log opened and its new ports opened before
        anything changes.  If any of it fails, C{reload refused: REASON}
        is logged, whatever was opened for it is closed again, and the
        running configuration stays, every listener and log included.

        @return: whether the new configuration is now serving.
        """
        if self._current is None:
            return False
        path = self.config.path
        try:
            loaded = loadChecked(path)
        except ConfigError as e:
            self._refused(f"{path} has problems:\n{e}")
            return False
        except OSError as e:
            self._refused(f"cannot read {path}: {e.strerror}")
            return False
        if self.merge is not None:
            loaded = self.merge(loaded)
        return self.serveConfig(loaded.config, loaded.contexts)

    def serveConfig(self, config: GatewayConfig, contexts: Contexts | None) -> bool:
        """
        Serve a configuration that was checked (L{reload}, or a supervisor
        that read it for its own QUIC part), as L{reload} says.
        """
        if self._current is None:
            return False
        reactor = self._getReactor()
        assert self._accessLog is not None
        viewed = self._view(config)
        if viewed is not config:
            contexts = None  # built for the whole configuration
        config = viewed
        try:
            log = self._accessLog.prepare(config.gateway.access_log)
        except OSError as e:
            self._refused(_cannotOpenLog(config.gateway.access_log, e))
            return False
        try:
            acme = self._acmeFor(config, reactor)
            generation = Generation(
                config,
                reactor,
                self._accessLog,
                self._maybeDrained,
                self._states,
                acme,
                contexts,
                dropped=self._dropped,
            )
        except StartupError as e:
            if log is not None:
                log.close()
            self._refused(str(e))
            return False
        before = set(self._ports)
        beforeUDP = set(self._udp)
        errors = self._bind(reactor, generation)
        if errors:
            # Put the old factories back and close what was opened.
            self._closePorts(sorted(set(self._ports) - before))
            self._udp.close(sorted(set(self._udp) - beforeUDP))
            self._bind(reactor, self._current)
            if log is not None:
                log.close()
            self._refused("\n".join(errors))
            return False
        wanted = {d for listener in config.listeners for d in listener.listen}
        self._closePorts(sorted(set(self._ports) - wanted))
        self._udp.close(sorted(set(self._udp) - wanted))
        for warning in generation.warnings:
            self._log.warn("{warning}", warning=warning)
        old, self._current, self.config = self._current, generation, config
        self._sampleCertificates()
        if self._acme is not None:
            self._acme.stop()
        self._acme = acme
        if acme is not None:
            acme.start()
        old.stopPools()
        if old.active:
            self._retired.append(old)
        generation.startPools(reactor)
        self._accessLog.use(log, config.gateway.access_log_format)
        self.reloads.applied()
        self._log.info(
            "reloaded {path}: {count} listener(s)",
            path=config.path,
            count=len(config.listeners),
        )
        return True

    def _refused(self, reason: str) -> None:
        self.reloads.refused(reason)
        self._log.error(
            "reload refused: {reason}\nthe running configuration stays",
            reason=reason,
        )

    def retire(self) -> None:
        """
        Stop accepting and stop the reactor once the last established
        connection has ended, however long that takes: how a worker that a
        reload replaced bows out (C{SIGQUIT} from the supervisor).  No
        deadline: a reload does not drop established connections.  A stop
        (C{SIGTERM}) during the retirement takes over with its own,
        C{drain_timeout}.
        """
        if not self.running:
            return
        self._closePorts(list(self._ports))
        self._udp.close()
        if self._acme is not None:
            self._acme.stop()
        for generation in self._generations():
            generation.stopPools()
        self._retiring = True
        self._maybeRetired()

    def _maybeRetired(self) -> None:
        # Not once stopping: the drain ends the process, and stopping the
        # reactor a second time raises ReactorNotRunning (a CRITICAL
        # traceback in the log).
        if (
            self._retiring
            and self.running
            and not any(g.active for g in self._generations())
        ):
            self._retiring = False
            reactor = self._getReactor()
            if getattr(reactor, "running", False):
                reactor.stop()

    def reopenLogs(self) -> None:
        """
        C{SIGUSR1}: reopen the access log, after logrotate moved it.
        """
        if self._accessLog is not None:
            try:
                self._accessLog.reopen()
            except OSError as e:
                self._log.error(
                    "{problem}: no access-log lines until it can be opened"
                    " (fix it, then send SIGUSR1 again)",
                    problem=_cannotOpenLog(self._accessLog.destination, e),
                )

    # stop

    def _generations(self) -> list[Generation]:
        current = [] if self._current is None else [self._current]
        return current + self._retired

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, let established connections finish for up to
        C{drain_timeout}, then cut the rest (logged C{shutdown}).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._acme is not None:
            self._acme.stop()
        self._retiring = False
        for generation in self._generations():
            generation.stopPools()
        if self._serverStates is not None and self._serverStates.running:
            self._serverStates.stop()
        self._closePorts(list(self._ports))
        self._udp.stopAccepting()
        if self._metricsPort is not None:
            self._metricsPort.stopListening()
            self._metricsPort = None
        active = sum(g.active for g in self._generations())
        if not active:
            self._udp.close()
            self._closeLog()
            return succeed(None)
        timeout = self.config.gateway.drain_timeout
        self._log.info(
            "draining {active} connection(s) for up to {timeout}s",
            active=active,
            timeout=timeout,
        )
        self._drained = Deferred()
        self._delayed.append(self._getReactor().callLater(timeout, self._cut))
        self._drained.addBoth(self._drainEnded)
        return self._drained

    def _drainEnded(self, result: object) -> None:
        for call in self._delayed:
            cancel(call)
        self._delayed = []
        self._udp.close()
        self._closeLog()

    def _cut(self) -> None:
        remaining = [
            p
            for g in self._generations()
            for f in g.factories.values()
            for p in list(f.active)
        ]
        self._log.info(
            "drain timeout: closing {count} connection(s)", count=len(remaining)
        )
        # Aborted transports report connectionLost on the next reactor
        # iterations; should one never do so, do not hang the shutdown.
        self._delayed.append(self._getReactor().callLater(2, self._forceDrained))
        for protocol in remaining:
            protocol.shutdown()
        self._udp.shutdown()

    def _forceDrained(self) -> None:
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def _maybeDrained(self) -> None:
        # Called at the end of every connection: only the cheap checks
        # when there is nothing retired, retiring or draining.
        if self._retired:
            self._retired = [g for g in self._retired if g.active]
        if self._retiring:
            self._maybeRetired()
        if self._drained is None or self._drained.called:
            return
        if not any(g.active for g in self._generations()):
            self._drained.callback(None)

    def _closeLog(self) -> None:
        if self._accessLog is not None:
            self._accessLog.close()


def _cannotOpenLog(destination: str, error: OSError) -> str:
    return f"[gateway] access_log: cannot open {destination}: {error.strerror}"
