"""
L{gateway.acceptwatch}: a socket Twisted's port closes at EMFILE reaches
the listener the port was reading for.  End to end (a real process out of
descriptors): C{tests/integration/test_reliability.py}.
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway.acceptwatch import watch


class Listener:
    def __init__(self) -> None:
        self.closed: list[object] = []

    def closedAtAccept(self, address: object) -> None:
        self.closed.append(address)


class Port:
    """Logs what Twisted's tcp.Port logs when it closes a socket at EMFILE."""

    _log = Logger(namespace="twisted.internet.tcp.Port")

    def __init__(self) -> None:
        self.reads = 0

    def doRead(self) -> None:
        self.reads += 1
        self._log.info(
            "EMFILE recovery: Closed socket from {address}", address=("192.0.2.7", 4321)
        )


def test_aSocketClosedAtAcceptGoesToTheListenerOfThatPort() -> None:
    first, second = Listener(), Listener()
    one, other = Port(), Port()
    watch(one, lambda: first)
    watch(other, lambda: second)
    one.doRead()
    assert (first.closed, second.closed, one.reads) == ([("192.0.2.7", 4321)], [], 1)
    other.doRead()
    assert second.closed == [("192.0.2.7", 4321)]


def test_theSameEventOutsideAWatchedReadIsIgnored() -> None:
    listener = Listener()
    port = Port()
    watch(port, lambda: listener)
    Port._log.info(
        "EMFILE recovery: Closed socket from {address}", address=("192.0.2.7", 1)
    )
    assert listener.closed == []
