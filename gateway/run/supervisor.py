"""
C{workers = N}: one supervisor process, N worker processes, shared sockets.

The supervisor opens every listening socket itself and hands the same
sockets to each worker (inherited file descriptors, adopted with
C{adoptStreamPort}); it never accepts a connection.  Shared sockets rather
than C{SO_REUSEPORT}, because with C{SO_REUSEPORT} each worker has its own
accept queue, and the connections queued on a worker that crashes are
reset; with one shared queue, a connection waits for whichever worker is
alive to accept it, so a crash and its restart lose nothing.  The kernel
wakes the workers in turn (C{EPOLLEXCLUSIVE} is not needed at this scale).

The supervisor restarts a worker that dies without being asked to, passes
C{SIGTERM}/C{SIGINT} on as a drain, and answers C{SIGHUP} the way NGINX
does: it checks the new configuration, opens the sockets of new listeners,
starts a new set of workers on it and drains the old set.  Established
connections finish in the old workers, on the configuration they started
with.

Each worker keeps its own passive health state (failed connects) and runs
its own active health checks; metrics from every worker are summed by the
supervisor (prometheus-client's multiprocess mode).

UDP endpoints (QUIC) are the exception: the supervisor serves them itself,
in a L{gateway.run.service.GatewayService} of their own that a reload reconfigures rather than
replaces, so that established flows survive it (L{gateway.run.split}
says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import ConfigError, GatewayConfig
from gateway.connection.timers import cancel
from gateway.run.loading import listenProblem, listenReason, loadChecked, takeContexts
from gateway.run.logs import Relay, standardOutput
from gateway.run.metrics import Metrics, sharedMetrics
from gateway.run.reloads import ReloadCollector, ReloadHistory
from gateway.run.signals import IReloadable
from gateway.run.split import quicPart
from gateway.tls.contexts import Contexts, buildContexts, servedCertificates
from gateway.tls.served import ServedCertificates

if TYPE_CHECKING:
    from gateway.tls.server import ServerTLS

#: The environment variable carrying a worker's number (L{_Worker.number});
#: C{gateway.cli.main} reads it.
WORKER_ENV = "TLSGATEWAY_WORKER"

#: Environment variable carrying the inherited listening sockets to a
#: worker: JSON C{{listen description: [fd, address family]}}.
FDS_ENV = "TLSGATEWAY_LISTEN_FDS"

#: Environment variable naming the descriptor on which a worker says it is
#: ready (serving its listeners), once, with L{READY}.
READY_ENV = "TLSGATEWAY_READY_FD"
READY = b"ready\n"

#: How long the new workers of a reload have to be ready before the reload
#: is refused.
_READY_TIMEOUT = 30.0

#: How long after a crash a worker is started again; doubled for each
#: crash in a row (up to C{_MAX_BACKOFF}) so a worker that cannot start does
#: not spin.
_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
#: Seconds between the supervisor's looks at the ACME certificates its
#: workers stored (for the status page and the expiry gauge).
_ACME_REFRESH = 60.0


class _NoAccept(Factory):
    """
    The supervisor's sockets never accept: workers do.
    """

    noisy = False


class _Worker(ProcessProtocol):
    """
    One worker process, as the supervisor sees it.

    @ivar generation: which configuration it runs; a reload starts a new
        generation and drains the old one.
    @ivar number: 1 to C{workers}, kept by the worker that replaces it
        after a crash: the id on every line it logs and on the status page.
    @ivar stopping: the supervisor asked it to stop, so its exit is not a
        crash.
    @ivar ready: it said it serves its listeners (L{READY} on
        C{readyFD}).
    """

    def __init__(
        self, supervisor: Supervisor, generation: int, number: int, readyFD: int
    ) -> None:
        self.supervisor = supervisor
        self.generation = generation
        self.number = number
        self.readyFD = readyFD
        self.stopping = False
        self.ready = False
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        # Kept: the transport forgets its pid once the process has ended,
        # and the supervisor still needs it to report the exit.
        self.pid = getattr(self.transport, "pid", None)

    def signal(self, number: int) -> None:
        if self.pid is not None and not self.ended.called:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in (1, 2) and self.supervisor.relay is not None:
            self.supervisor.relay.received(childFD, data)
            return
        if childFD == self.readyFD and not self.ready and READY.strip() in data:
            self.ready = True
            self.supervisor.workerReady(self)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.workerEnded(self, reason)
        self.ended.callback(None)


class _PendingReload:
    """
    A reload whose new workers are starting: it applies once every one of
    them is ready, and is refused if one of them exits first or they are
    not all ready in time.

    @ivar opened: C{listen} descriptions whose sockets were opened for it,
        closed again if it is refused.
    @ivar contexts: what the check of C{config} built, for the
        certificates the supervisor shows once the reload applies.
    """

    def __init__(
        self,
        generation: int,
        config: GatewayConfig,
        opened: set[str],
        timer: Any,
        contexts: Contexts,
    ) -> None:
        self.generation = generation
        self.config = config
        self.opened = opened
        self.timer = timer
        self.contexts = contexts


class QuicService(TypingProtocol):
    """
    What serves a supervisor's UDP endpoints: a
    L{gateway.run.service.GatewayService} over L{quicPart}, given by the
    caller (the service module imports this one).
    """

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None]: ...

    def serveConfig(self, config: GatewayConfig, contexts: Contexts | None) -> bool: ...

    def reopenLogs(self) -> None: ...


@implementer(IReloadable)
class Supervisor(Service):
    """
    @ivar reloads: the outcome of the last reload, and counts, for the
        status page and the metrics (the workers never reload: a reload
        replaces them).
    @ivar relay: what passes the workers' output on to this process's log,
        when this process is a daemon; else L{None} (they share its
        standard output and error).
    @ivar _ports: listening sockets by C{listen} description.
    @ivar _workers: every worker process alive, all generations.
    @ivar _crashes: crashes in a row, for the restart back-off.
    @ivar _logLevel: the C{--log-level} the supervisor was started with,
        passed on to every worker: they share its standard error, and an
        operator who asked for warnings only means all of the gateway.
    @ivar _servers: the termination policies the check of the running
        configuration built: what the status page's certificates come
        from, with the ACME ones looked up as the workers stored them.
    """

    _log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        logLevel: str = "info",
        quicService: Callable[[GatewayConfig, Metrics], QuicService] | None = None,
    ) -> None:
        """
        @param quicService: makes the service of the UDP endpoints.
        """
        self.config = config
        self._makeQuic = quicService
        self._reactor = reactor
        self._logLevel = logLevel
        self._ports: dict[str, IListeningPort] = {}
        self._workers: set[_Worker] = set()
        self._generation = 0
        self._crashes = 0
        self._stopping = False
        self._metricsDir = tempfile.mkdtemp(prefix="tlsgateway-metrics-")
        self._shareMetrics(config)
        self._metricsPort: IListeningPort | None = None
        self.served = ServedCertificates()
        self._acmeRefresh = LoopingCall(self._refreshAcme)
        self._pending: _PendingReload | None = None
        self._servers: list[ServerTLS] = []
        self.reloads = ReloadHistory(lambda: self._reactor.seconds())
        # A daemon's standard output and error are /dev/null: its workers'
        # (their access log, their log) come through pipes to its log.
        self.relay = None if standardOutput() is None else Relay()
        self._quic: QuicService | None = None

    def _shareMetrics(self, config: GatewayConfig) -> None:
        """
        Workers that drop their privileges (C{[gateway] user}) write their
        metrics and status files in the supervisor's folder as that user.
        """
        from gateway.run.privileges import AccountError, chownFolder, configuredAccount

        try:
            account = configuredAccount(config)
        except AccountError:
            return  # reported by the load; the workers will not start either
        if account is not None:
            chownFolder(self._metricsDir, account)

    # start

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._serve(self.config, takeContexts(self.config))
        self._acmeRefresh.clock = self._reactor
        self._acmeRefresh.start(_ACME_REFRESH, now=False)
        self._openPorts(self.config)
        self._serveQuic(self.config, None)
        self._startMetrics()
        self._startGeneration()
        self.reloads.started()
        self._log.info(
            "tlsgateway ready: supervisor {pid}, {workers} worker(s)",
            pid=os.getpid(),
            workers=self.config.gateway.workers,
        )

    def _serveQuic(self, config: GatewayConfig, contexts: Contexts | None) -> None:
        """
        Serve the UDP endpoints of C{config} here: start the QUIC service,
        reconfigure it (its established flows stay), or stop it.

        @raise StartupError: at start, an endpoint cannot be opened.
        """
        part = quicPart(config)
        if self._quic is not None:
            if part is not None:
                self._quic.serveConfig(part, contexts)
            else:
                self._quic.stopService()
                self._quic = None
        elif part is not None:
            if self._makeQuic is None:
                raise RuntimeError("this supervisor cannot serve UDP endpoints")
            self._quic = self._makeQuic(part, sharedMetrics(self._metricsDir))
            self._quic.startService()

    def _openPorts(self, config: GatewayConfig) -> None:
        """
        Open every endpoint of C{config} not open yet, for the workers.

        @raise RuntimeError: naming, at its listener's C{listen} key, each
            endpoint that did not open (those that did stay open).
        """
        errors: list[str] = []
        for listener in config.listeners:
            for description in listener.streamListen:
                if description in self._ports:
                    continue
                result: list[Any] = []
                endpoint = serverFromString(self._reactor, description)
                endpoint.listen(_NoAccept()).addBoth(result.append)
                if not result or isinstance(result[0], Failure):
                    reason = listenReason(result[0]) if result else "did not listen"
                    errors.append(str(listenProblem(listener, description, reason)))
                    continue
                port = result[0]
                port.stopReading()
                self._ports[description] = port
        if errors:
            raise RuntimeError("\n".join(errors))

    def _serve(self, config: GatewayConfig, contexts: Contexts | None) -> None:
        """
        Note the certificates C{config} serves, for the status page and the
        expiry gauge: the supervisor serves both, and its workers' metrics
        files carry no certificates.

        @param contexts: what the check of C{config} built, or L{None} (a
            configuration not loaded by L{gateway.run.loading}) to build them.
        """
        if contexts is None:
            contexts = buildContexts(config)
        self._servers = list(contexts.servers.values())
        self._noteCertificates(config)

    def _noteCertificates(self, config: GatewayConfig) -> None:
        """
        ACME certificates are the ones the workers stored; with any
        configured, this runs again every minute, so a renewal shows.  The
        certificate files are not read again: they were, once, by the
        check of C{config}.
        """
        from gateway.acme.manager import storedAcmeCertificates

        self.served.replace(
            "tls",
            servedCertificates(self._servers, config, storedAcmeCertificates(config)),
        )

    def _refreshAcme(self) -> None:
        if self.config.acme is not None:
            self._noteCertificates(self.config)

    def _closeUnused(self) -> None:
        wanted = {
            d for listener in self.config.listeners for d in listener.streamListen
        }
        for description in list(self._ports):
            if description not in wanted:
                self._ports.pop(description).stopListening()

    def _startMetrics(self) -> None:
        if self.config.gateway.metrics is None or self._metricsPort is not None:
            return
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from gateway.run.metrics import metricsSite
        from gateway.run.statuspage import StatusResource
        from gateway.tls.served import ExpiryCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._metricsDir)
        registry.register(ExpiryCollector(self.served))
        registry.register(ReloadCollector(self.reloads))
        result: list[Any] = []
        serverFromString(self._reactor, self.config.gateway.metrics).listen(
            metricsSite(registry, StatusResource(self.statusSnapshot))
        ).addBoth(result.append)
        if result and not isinstance(result[0], Failure):
            self._metricsPort = result[0]
        else:
            self._log.error(
                "[gateway] metrics: cannot listen on {description}",
                description=self.config.gateway.metrics,
            )

    def statusSnapshot(self) -> dict[str, Any]:
        """
        The status page: the running generation's workers' snapshots,
        added up, with the connections that workers a reload replaced are
        still finishing.  (A pending reload's new workers serve nothing
        yet: they are left out until it applies.)
        """
        from gateway.run.status import mergeSnapshots, readSnapshots

        workers = sorted(
            (w.number, w.pid) for w in self._workers if w.generation == self._generation
        )
        retiring = [
            (w.number, w.pid, readSnapshots(self._metricsDir, [(w.number, w.pid)]))
            for w in sorted(self._workers, key=lambda w: (w.generation, w.number))
            if w.generation < self._generation
        ]
        snapshot = mergeSnapshots(
            self.config,
            workers,
            readSnapshots(self._metricsDir, workers),
            self.served,
            [(number, pid, found.get(number)) for number, pid, found in retiring],
        )
        snapshot["reload"] = self.reloads.snapshot()
        return snapshot

    def _startGeneration(self) -> None:
        self._generation += 1
        for number in range(1, self.config.gateway.workers + 1):
            self._spawn(self._generation, number)

    def _spawn(self, generation: int, number: int) -> None:
        fds = {}
        childFDs: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        if self.relay is not None:
            childFDs.update({1: "r", 2: "r"})
        for description, port in self._ports.items():
            fd = port.fileno()  # type: ignore[attr-defined]
            family = port.socket.family  # type: ignore[attr-defined]
            fds[description] = [fd, int(family)]
            childFDs[fd] = fd
        # A pipe the worker writes READY to: the first number free in it.
        readyFD = max(childFDs) + 1
        childFDs[readyFD] = "r"
        env = dict(os.environ)
        env[FDS_ENV] = json.dumps(fds)
        env[READY_ENV] = str(readyFD)
        env["PROMETHEUS_MULTIPROC_DIR"] = self._metricsDir
        env[WORKER_ENV] = str(number)
        worker = _Worker(self, generation, number, readyFD)
        self._reactor.spawnProcess(
            worker,
            sys.executable,
            [
                sys.executable,
                "-m",
                "gateway",
                "worker",
                "--config",
                self.config.path,
                "--log-level",
                self._logLevel,
            ],
            env=env,
            childFDs=childFDs,
        )
        self._workers.add(worker)
        self._log.info(
            "worker {pid} started (generation {generation}): worker number {number}",
            number=number,
            pid=worker.pid,
            generation=generation,
        )

    # events

    def workerReady(self, worker: _Worker) -> None:
        """
        C{worker} serves its listeners.  The last of a reload's new workers
        to be ready applies the reload.
        """
        self._log.info("worker {pid} ready", pid=worker.pid)
        pending = self._pending
        if pending is None or worker.generation != pending.generation:
            return
        new = [w for w in self._workers if w.generation == pending.generation]
        if len(new) == self.config.gateway.workers and all(w.ready for w in new):
            self._apply(pending)

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        self._workers.discard(worker)
        if worker.pid is not None:
            from prometheus_client import multiprocess

            from gateway.run.status import snapshotPath

            multiprocess.mark_process_dead(worker.pid, self._metricsDir)
            with contextlib.suppress(OSError):
                os.remove(snapshotPath(self._metricsDir, worker.number, worker.pid))
        pending = self._pending
        if (
            pending is not None
            and worker.generation == pending.generation
            and not worker.stopping
        ):
            self._refuse(
                f"new worker {worker.pid} exited before the new configuration"
                f" was serving ({reason.getErrorMessage()}; its log says why)"
            )
            return
        if worker.stopping or self._stopping:
            self._log.info(
                "worker {number} stopped: pid {pid}",
                number=worker.number,
                pid=worker.pid,
            )
            return
        if worker.generation != self._generation:
            return
        self._crashes += 1
        delay = min(_BACKOFF * 2 ** (self._crashes - 1), _MAX_BACKOFF)
        self._log.error(
            "worker {pid} died ({reason}): starting another worker number {number}"
            " in {delay}s",
            number=worker.number,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._reactor.callLater(delay, self._respawn, worker.generation, worker.number)

    def _respawn(self, generation: int, number: int) -> None:
        if self._stopping or generation != self._generation:
            return
        self._spawn(generation, number)
        # A worker that stays up for a while resets the back-off.
        self._reactor.callLater(10, self._calm)

    def _calm(self) -> None:
        self._crashes = 0

    # signals

    def reload(self) -> None:
        """
        C{SIGHUP}: check the configuration file again; if it is valid,
        open the sockets of new listeners and start new workers on it, and
        once every new worker is ready, retire the old ones.

        All or nothing, as in one process: if the file has problems, a new
        socket cannot be opened, or a new worker exits before it is ready
        (or they are not all ready within L{_READY_TIMEOUT}), C{reload
        refused: REASON} is logged, what was started for the reload is
        stopped and closed again, and the old workers go on serving the
        running configuration.
        """
        if self._stopping:
            # The new workers would outlive the supervisor: stopService
            # waits only for the workers it signalled.
            self._log.warn("not reloading: stopping")
            return
        if self._pending is not None:
            self.reloads.refused(
                f"the previous reload (generation {self._pending.generation})"
                " is still starting its workers"
            )
            self._log.warn(
                "reload refused: the previous reload (generation {generation})"
                " is still starting its workers; send SIGHUP again once it is done",
                generation=self._pending.generation,
            )
            return
        path = self.config.path
        try:
            loaded = loadChecked(path)
        except ConfigError as e:
            self._refused(f"{path} has problems:\n{e}")
            return
        except OSError as e:
            self._refused(f"cannot read {path}: {e.strerror}")
            return
        config = loaded.config
        if config.gateway.workers != self.config.gateway.workers:
            self._log.warn(
                "[gateway] workers: changing the number of workers needs a restart;"
                " keeping {workers}",
                workers=self.config.gateway.workers,
            )
            config = _withWorkers(config, self.config.gateway.workers)
        before = set(self._ports)
        try:
            self._openPorts(config)
        except RuntimeError as e:
            self._closePorts(set(self._ports) - before)
            self._refused(str(e))
            return
        generation = self._generation + 1
        self._pending = _PendingReload(
            generation,
            config,
            set(self._ports) - before,
            self._reactor.callLater(_READY_TIMEOUT, self._notReady),
            loaded.contexts,
        )
        for number in range(1, config.gateway.workers + 1):
            self._spawn(generation, number)

    def _apply(self, pending: _PendingReload) -> None:
        """
        Every new worker of C{pending} is ready: they serve from now on,
        and the old ones retire.
        """
        self._pending = None
        cancel(pending.timer)
        old = [w for w in self._workers if w.generation == self._generation]
        self._generation = pending.generation
        self.config = pending.config
        self._serve(pending.config, pending.contexts)
        self._shareMetrics(pending.config)
        self._serveQuic(pending.config, None)
        for worker in old:
            worker.stopping = True
            # Retire, not drain: no deadline, so established connections
            # outlive the reload as they do in one process (a later
            # SIGTERM still drains with one).
            worker.signal(signal.SIGQUIT)
        # Removed listeners' sockets stop listening at once, although the
        # workers hold copies: Twisted shuts a socket it opened itself down
        # before closing it, and shutdown() acts on the socket every copy
        # shares, so the port refuses connections from now on.
        self._closeUnused()
        self.reloads.applied()
        self._log.info("reloaded: generation {generation}", generation=self._generation)

    def _notReady(self) -> None:
        self._refuse(f"the new workers were not all ready within {_READY_TIMEOUT:g}s")

    def _refuse(self, reason: str) -> None:
        """
        Give up the pending reload: its workers drain and stop (a ready one
        may have accepted connections), the sockets opened for it close.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        cancel(pending.timer)
        for worker in list(self._workers):
            if worker.generation == pending.generation:
                worker.stopping = True
                worker.signal(signal.SIGTERM)
        self._closePorts(pending.opened)
        self._refused(reason)

    def _refused(self, reason: str) -> None:
        self.reloads.refused(reason)
        self._log.error(
            "reload refused: {reason}\nthe running configuration stays",
            reason=reason,
        )

    def _closePorts(self, descriptions: set[str]) -> None:
        for description in sorted(descriptions):
            port = self._ports.pop(description, None)
            if port is not None:
                port.stopListening()

    def reopenLogs(self) -> None:
        for worker in list(self._workers):
            worker.signal(signal.SIGUSR1)
        if self._quic is not None:
            self._quic.reopenLogs()

    def retire(self) -> None:
        """
        C{SIGQUIT} is what a supervisor sends its old workers after a
        reload; sent to the supervisor itself it changes nothing (the
        workers keep serving): C{SIGTERM} drains and stops, C{SIGHUP}
        replaces the workers.
        """
        self._log.warn(
            "received SIGQUIT: a supervisor does not retire; send SIGTERM to"
            " drain and stop, or SIGHUP to replace the workers"
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        if self._acmeRefresh.running:
            self._acmeRefresh.stop()
        if self._pending is not None:
            if self._pending.timer.active():
                self._pending.timer.cancel()
            self._pending = None
        for port in self._ports.values():
            port.stopListening()
        self._ports = {}
        ended = []
        for worker in list(self._workers):
            worker.stopping = True
            worker.signal(signal.SIGTERM)
            ended.append(worker.ended)
        if self._quic is not None:
            ended.append(self._quic.stopService())
        from twisted.internet.defer import gatherResults

        done: Deferred[Any] = gatherResults(ended) if ended else succeed(None)

        def cleanUp(_: object) -> None:
            if self._metricsPort is not None:
                self._metricsPort.stopListening()
            shutil.rmtree(self._metricsDir, ignore_errors=True)

        done.addBoth(cleanUp)
        return done


def _withWorkers(config: GatewayConfig, workers: int) -> GatewayConfig:
    import attrs

    return attrs.evolve(config, gateway=attrs.evolve(config.gateway, workers=workers))


def inheritedSockets() -> dict[str, tuple[int, socket.AddressFamily]]:
    """
    In a worker: the listening sockets the supervisor handed down.
    """
    raw = os.environ.get(FDS_ENV)
    if not raw:
        return {}
    return {
        description: (fd, socket.AddressFamily(family))
        for description, (fd, family) in json.loads(raw).items()
    }
