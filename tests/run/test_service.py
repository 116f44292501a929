"""
L{gateway.run.service} and L{gateway.run.supervisor} opening listeners: an
endpoint that will not listen is named with its listener, at its
C{listen} line, with or without workers, and every one that fails is
named, not only the first.
"""

from __future__ import annotations

import errno
import shutil
from typing import Any

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gateway.run.generation import StartupError
from gateway.run.loading import listenProblem, listenReason, load_config_text
from gateway.run.service import GatewayService
from gateway.run.supervisor import Supervisor

INI = "/etc/tlsgateway/gw.ini"
CONFIG = """\
[listener:web]
listen = tcp:8443:interface=127.0.0.1
upstream = app

[listener:api]
listen = tcp:9443:interface=127.0.0.1, tcp:9444:interface=127.0.0.1
upstream = app

[upstream:app]
servers = 127.0.0.1:9000
"""

IN_USE = OSError(errno.EADDRINUSE, "Address already in use")


class TakenPorts(MemoryReactorClock):
    """
    A reactor on which some ports are already taken, as by another
    program: listening there fails as the real one does.
    """

    def __init__(self, *taken: int) -> None:
        super().__init__()
        self.taken = set(taken)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        if port in self.taken:
            raise CannotListenError(interface, port, IN_USE)
        listening = super().listenTCP(port, factory, backlog, interface)
        # The supervisor pauses accepting on the sockets it holds for its
        # workers; the memory port has nothing to pause.
        listening.stopReading = lambda: None
        return listening


EXPECTED = [
    f"{INI}:2: [listener:web] listen: cannot listen on"
    " tcp:8443:interface=127.0.0.1: Address already in use",
    f"{INI}:6: [listener:api] listen: cannot listen on"
    " tcp:9444:interface=127.0.0.1: Address already in use",
]


def test_withoutWorkersEachTakenEndpointIsNamedWithItsListener() -> None:
    config = load_config_text(CONFIG, INI, checkFiles=False)
    service = GatewayService(config, TakenPorts(8443, 9444))
    with pytest.raises(StartupError) as caught:
        service.startService()
    assert str(caught.value).splitlines() == EXPECTED


def test_withWorkersEachTakenEndpointIsNamedWithItsListener() -> None:
    """
    With workers the supervisor opens the sockets for them, and says the
    same as one process does.
    """
    config = load_config_text(
        "[gateway]\nworkers = 2\n" + CONFIG, INI, checkFiles=False
    )
    reactor = TakenPorts(8443, 9444)
    supervisor = Supervisor(config, reactor)
    try:
        with pytest.raises(RuntimeError) as caught:
            supervisor._openPorts(config)
    finally:
        shutil.rmtree(supervisor._metricsDir, ignore_errors=True)
    assert str(caught.value).splitlines() == [
        line.replace(":2:", ":4:").replace(":6:", ":8:") for line in EXPECTED
    ]
    # What did open stays open, for a reload to close (or a start to end).
    assert sorted(supervisor._ports) == ["tcp:9443:interface=127.0.0.1"]


def test_theReasonIsTheSystemsWords() -> None:
    failure = Failure(CannotListenError("127.0.0.1", 443, IN_USE))
    assert listenReason(failure) == "Address already in use"
    assert listenReason(Failure(ValueError("odd"))) == "odd"
    denied = OSError(errno.EACCES, "Permission denied")
    assert listenReason(Failure(CannotListenError("", 80, denied))) == (
        "Permission denied"
    )


def test_aListenProblemPointsAtTheListenKey() -> None:
    config = load_config_text(CONFIG, INI, checkFiles=False)
    api = config.listeners[1]
    assert str(listenProblem(api, "tcp:9443", "Permission denied")) == (
        f"{INI}:6: [listener:api] listen: cannot listen on tcp:9443: Permission denied"
    )
