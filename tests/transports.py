"""
In-memory transports for protocol tests.
"""

from typing import Any, cast

from twisted.internet.interfaces import IConnector
from twisted.internet.testing import StringTransportWithDisconnection


class HalfCloseableTransport(StringTransportWithDisconnection):
    """
    A L{StringTransportWithDisconnection} that also records half-closes,
    resets and producer pauses, as a TCP transport would see them.
    """

    writeClosed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()


class PromptClientTransport(HalfCloseableTransport):
    """
    A L{HalfCloseableTransport} whose peer is a TLS client that closes its
    side as soon as the gateway closes its own (after a refusal's alert),
    as OpenSSL clients do.
    """

    def loseWriteConnection(self) -> None:
        super().loseWriteConnection()
        if self.connected and self.protocol is not None:
            self.protocol.readConnectionLost()  # type: ignore[attr-defined]


class TableOwner:
    """
    A connection's owner for a stage tested without its
    L{gateway.connection.preread.PrereadProtocol}: it applies the same table
    (L{gateway.rules.lifecycle.apply}) from C{decided} and keeps every event
    the table did not allow in C{refused}.

    @ivar ends: how many times the stage said it ended (once, or it is a
        bug: the real owner raises under tests, and so does this one).
    """

    def __init__(self, record: Any, state: Any = None) -> None:
        from gateway.rules.clientbytes import ClientBytes
        from gateway.rules.lifecycle import State

        self.record = record
        self.clientBytes = ClientBytes(record)
        self.state = State.DECIDED if state is None else state
        self.events: list[Any] = []
        self.refused: list[tuple[Any, Any]] = []
        self.ends = 0

    def report(self, event: Any, reason: Any = None, status: Any = None) -> bool:
        from gateway.rules.lifecycle import apply

        self.events.append(event)
        target = apply(self.state, event, self.record, reason, status)
        if target is None:
            self.refused.append((self.state, event))
            return False
        self.state = target
        return True

    def stageEnded(self) -> None:
        from gateway.core.strictness import ForbiddenEvent

        if self.ends:
            raise ForbiddenEvent("the stage ended twice")
        self.ends += 1


#: What the tests pass as the connector of a connect that failed: the
#: factories under test never look at it.
NO_CONNECTOR = cast(IConnector, None)
