"""
L{gateway.run.supervisor.Supervisor}'s reload, without processes: a reload
applies only once every new worker said it is ready, and is refused (the
old workers serving on) when one of them exits first or they are not all
ready in time.  The end-to-end side is
C{tests/integration/test_reliability.py}.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.run import supervisor as supervisorModule
from gateway.run.loading import Loaded, load_config_text
from gateway.run.supervisor import READY, Supervisor, _Worker
from gateway.tls.contexts import buildContexts

CONFIG = """\
[gateway]
workers = 2
[listener:web]
listen = tcp:8443:interface=127.0.0.1
upstream = up
[upstream:up]
servers = 127.0.0.1:9000
"""


class ProcessReactor(Clock):
    """A clock that records the workers it is asked to start."""

    def __init__(self) -> None:
        super().__init__()
        self.workers: list[_Worker] = []

    def spawnProcess(self, protocol: _Worker, *args: Any, **kw: Any) -> None:
        self.workers.append(protocol)


@pytest.fixture
def started(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Supervisor, ProcessReactor, list[tuple[_Worker, int]]]]:
    reactor = ProcessReactor()
    config = load_config_text(CONFIG, "/etc/tlsgateway/gateway.ini")
    service = Supervisor(config, reactor)
    signals: list[tuple[_Worker, int]] = []
    monkeypatch.setattr(_Worker, "signal", lambda w, n: signals.append((w, n)))
    monkeypatch.setattr(
        supervisorModule,
        "loadChecked",
        lambda path: Loaded(config, buildContexts(config)),
    )
    monkeypatch.setattr(service, "_openPorts", lambda config: None)
    service._startGeneration()
    for worker in reactor.workers:
        worker.childDataReceived(worker.readyFD, READY)
    yield service, reactor, signals
    shutil.rmtree(service._metricsDir, ignore_errors=True)


def crash(worker: _Worker) -> None:
    worker.processEnded(Failure(ProcessTerminated(exitCode=1)))


def test_oldWorkersRetireOnlyOnceEveryNewWorkerIsReady(
    started: tuple[Supervisor, ProcessReactor, list[tuple[_Worker, int]]],
) -> None:
    service, reactor, signals = started
    old = list(reactor.workers)
    service.reload()
    new = reactor.workers[2:]
    assert len(new) == 2
    assert signals == []
    new[0].childDataReceived(new[0].readyFD, READY)
    assert signals == []
    new[1].childDataReceived(new[1].readyFD, READY)
    assert set(signals) == {(w, signal.SIGQUIT) for w in old}
    assert service._generation == 2
    assert reactor.getDelayedCalls() == []


def test_aNewWorkerThatExitsBeforeItIsReadyRefusesTheReload(
    started: tuple[Supervisor, ProcessReactor, list[tuple[_Worker, int]]],
) -> None:
    """
    The other new worker drains and stops (it may have accepted a
    connection already), the old ones are not touched, and the next
    reload starts afresh.
    """
    service, reactor, signals = started
    service.reload()
    ready, failing = reactor.workers[2:]
    ready.childDataReceived(ready.readyFD, READY)
    crash(failing)
    assert signals == [(ready, signal.SIGTERM)]
    assert service._generation == 1
    assert reactor.getDelayedCalls() == []
    crash(ready)  # its drain ends: not a crash to restart
    assert len(reactor.workers) == 4
    service.reload()
    assert len(reactor.workers) == 6


def test_newWorkersNotReadyInTimeRefuseTheReload(
    started: tuple[Supervisor, ProcessReactor, list[tuple[_Worker, int]]],
) -> None:
    service, reactor, signals = started
    service.reload()
    new = reactor.workers[2:]
    reactor.advance(supervisorModule._READY_TIMEOUT)
    assert set(signals) == {(w, signal.SIGTERM) for w in new}
    assert service._generation == 1


def test_aSecondReloadWhileTheFirstStartsIsRefused(
    started: tuple[Supervisor, ProcessReactor, list[tuple[_Worker, int]]],
) -> None:
    service, reactor, _ = started
    service.reload()
    service.reload()
    assert len(reactor.workers) == 4
