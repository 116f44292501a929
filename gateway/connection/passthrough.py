"""
The passthrough stage: the client's bytes, ClientHello first, go to the
upstream unchanged; the backend does the TLS handshake.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.preread import IStage
from gateway.connection.session import Session


@implementer(IStage)
class PassthroughStage:
    """
    Receives the client transport's events after the pre-read and passes
    them to its L{Session} as they are.  The exact ClientHello is replayed
    because it is part of the handshake transcript the backend verifies.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def start(self, buffered: bytes) -> None:
        self._session.connect(buffered)

    def dataReceived(self, data: bytes) -> None:
        self._session.clientData(data)

    def readConnectionLost(self) -> None:
        self._session.clientReadClosed()

    def connectionLost(self, reason: Failure) -> None:
        self._session.clientLost(reason)

    def shutdown(self) -> None:
        self._session.shutdown()
