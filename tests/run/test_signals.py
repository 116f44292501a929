"""
The gateway's signal policy once it is stopping, and what a supervisor
passes on to its workers; the end-to-end side is
C{tests/integration/test_operations.py}.

The handlers are called directly, as the interpreter would call them, with
a reactor that only records what it was asked to do: no signal is sent and
no reactor runs.
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.run.loading import Loaded, load_config_text
from gateway.run.service import GatewayService
from gateway.run.signals import IReloadable, SignalHandling
from gateway.run.supervisor import Supervisor
from gateway.tls.contexts import buildContexts
from tests.helpers import appendingTo


class RecordingReactor:
    """Records C{callFromThread} and C{spawnProcess}, runs nothing."""

    def __init__(self) -> None:
        self.calls: list[Callable[..., object]] = []
        self.spawned: list[list[str]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.calls.append(f)

    def callWhenRunning(self, f: Callable[..., object], *args: object) -> None:
        """Never installs the handlers: the tests call them directly."""

    def stop(self) -> None:
        """The reactor's stop, as a bound method to be scheduled."""

    def callLater(self, delay: float, f: Callable[..., object], *args: object) -> Any:
        """A timer that never fires (a reload's readiness deadline)."""
        return Clock().callLater(delay, f, *args)

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], **kw: Any
    ) -> None:
        self.spawned.append(args)


@implementer(IReloadable)
class RecordingTarget:
    def __init__(self) -> None:
        self.reloads = 0
        self.reopens = 0

    def reload(self) -> None:
        self.reloads += 1

    def reopenLogs(self) -> None:
        self.reopens += 1

    def retire(self) -> None:
        """Not counted: the tests of SIGQUIT look at the schedule."""


@pytest.fixture
def handling() -> tuple[SignalHandling, RecordingReactor, RecordingTarget]:
    reactor, target = RecordingReactor(), RecordingTarget()
    return SignalHandling(reactor, target), reactor, target


def test_secondStopSignalDoesNotStopTheReactorAgain(
    handling: tuple[SignalHandling, RecordingReactor, RecordingTarget],
) -> None:
    """
    Ctrl-C twice, or SIGINT from the terminal plus SIGTERM from the
    supervisor: C{reactor.stop} is scheduled once (a second call raises
    C{ReactorNotRunning}, logged as critical).
    """
    service, reactor, _ = handling
    service._stop(signal.SIGTERM, None)
    service._stop(signal.SIGINT, None)
    service._stop(signal.SIGTERM, None)
    assert reactor.calls == [service._stopReactor]


def test_aStopSignalAsARetirementEndsIsNoError() -> None:
    """
    A retiring worker stops its reactor when its last connection ends; the
    supervisor's C{SIGTERM} arriving in that moment finds it stopping, and
    that is no error (it was a CRITICAL traceback in the log).
    """
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    reactor.run()
    handling = SignalHandling(reactor, RecordingTarget())
    reactor.stop()  # the retirement's own stop
    handling._stopReactor()  # raises nothing
    fresh = MemoryReactor()
    fresh.run()
    SignalHandling(fresh, RecordingTarget())._stopReactor()
    assert fresh.hasStopped


def test_sighupWhileStoppingDoesNotReload(
    handling: tuple[SignalHandling, RecordingReactor, RecordingTarget],
) -> None:
    service, reactor, target = handling
    service._reload(signal.SIGHUP, None)
    assert reactor.calls == [target.reload]
    service._stop(signal.SIGTERM, None)
    service._reload(signal.SIGHUP, None)
    assert reactor.calls == [target.reload, service._stopReactor]


def test_sigusr1WhileStoppingStillReopensTheLog(
    handling: tuple[SignalHandling, RecordingReactor, RecordingTarget],
) -> None:
    """logrotate during a long drain still gets its file back."""
    service, reactor, target = handling
    service._stop(signal.SIGTERM, None)
    service._reopen(signal.SIGUSR1, None)
    assert reactor.calls == [service._stopReactor, target.reopenLogs]


CONFIG = """\
[gateway]
workers = 2
[listener:web]
listen = tcp:8443:interface=127.0.0.1
upstream = up
[upstream:up]
servers = 127.0.0.1:9000
"""


@pytest.fixture
def supervisor() -> Iterator[tuple[Supervisor, RecordingReactor]]:
    reactor = RecordingReactor()
    supervisor = Supervisor(
        load_config_text(CONFIG, "/etc/tlsgateway/gateway.ini"), reactor, "warn"
    )
    yield supervisor, reactor
    shutil.rmtree(supervisor._metricsDir, ignore_errors=True)


def test_workersGetTheSupervisorsLogLevel(
    supervisor: tuple[Supervisor, RecordingReactor],
) -> None:
    service, reactor = supervisor
    service._startGeneration()
    assert (
        reactor.spawned
        == [
            [
                sys.executable,
                "-m",
                "gateway",
                "worker",
                "--config",
                "/etc/tlsgateway/gateway.ini",
                "--log-level",
                "warn",
            ]
        ]
        * 2
    )


def test_supervisorDoesNotReloadWhileStopping(
    supervisor: tuple[Supervisor, RecordingReactor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Workers started during the drain would outlive the supervisor (it
    waits only for those it signalled).
    """
    service, reactor = supervisor
    monkeypatch.setattr(
        "gateway.run.supervisor.loadChecked",
        lambda path: Loaded(service.config, buildContexts(service.config)),
    )
    monkeypatch.setattr(service, "_openPorts", lambda config: None)
    service.reload()
    assert len(reactor.spawned) == 2  # what a reload does, while running
    service.stopService()
    service.reload()
    assert len(reactor.spawned) == 2


def test_theServiceAndTheSupervisorProvideWhatTheSignalsActOn(
    supervisor: tuple[Supervisor, RecordingReactor],
) -> None:
    """
    The two providers of L{IReloadable}: the signal handling works the
    same in one process and in a supervisor of workers.
    """
    service, _ = supervisor
    assert verifyObject(IReloadable, service)
    config = load_config_text(CONFIG, "/etc/tlsgateway/gateway.ini")
    assert verifyObject(IReloadable, GatewayService(config, Clock()))
    assert verifyObject(IReloadable, RecordingTarget())


def test_sigquitToTheSupervisorLeavesTheWorkersServing(
    supervisor: tuple[Supervisor, RecordingReactor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    C{SIGQUIT} is what a supervisor sends its old workers; sent to the
    supervisor, it is logged and changes nothing (it once raised
    C{AttributeError} inside the signal handler).
    """
    service, reactor = supervisor
    service._startGeneration()
    signalled: list[int] = []
    monkeypatch.setattr(
        "gateway.run.supervisor._Worker.signal", lambda w, n: signalled.append(n)
    )
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(appendingTo(events))
    try:
        handling = SignalHandling(reactor, service)
        handling._retire(signal.SIGQUIT, None)
        for call in reactor.calls:
            call()
    finally:
        globalLogPublisher.removeObserver(appendingTo(events))
    assert signalled == []
    assert any("a supervisor does not retire" in e["log_format"] for e in events)


@pytest.fixture
def sighupRestored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_installedSIGHUPReloadsARunningEmbeddedService(sighupRestored: None) -> None:
    """
    C{gateway.installReloadOnSIGHUP}: the handler schedules the reload on
    the reactor (nothing runs inside the handler), and a service that is
    not running is not reloaded.
    """
    import gateway

    reactor, target = RecordingReactor(), RecordingTarget()
    target.running = True  # type: ignore[attr-defined]
    gateway.installReloadOnSIGHUP(target, reactor)
    handler = signal.getsignal(signal.SIGHUP)
    assert callable(handler)
    handler(signal.SIGHUP, None)
    assert target.reloads == 0
    [scheduled] = reactor.calls
    scheduled()
    assert target.reloads == 1
    target.running = False  # type: ignore[attr-defined]
    handler(signal.SIGHUP, None)
    reactor.calls[-1]()
    assert target.reloads == 1
