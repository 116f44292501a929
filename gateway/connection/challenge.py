"""
Answering a C{tls-alpn-01} validation connection (RFC 8737).

The ACME server connects to port 443 of the name being validated and
sends a ClientHello with that name as SNI and only C{acme-tls/1} as ALPN.
Whatever the listener's routes say (passthrough included), the gateway
completes that handshake itself, with the challenge certificate, and
closes: nothing is relayed, no upstream is involved.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.preread import IStage
from gateway.connection.terminate import HandshakeStage
from gateway.rules.decision import offersOnlyAcmeTLS
from gateway.rules.lifecycle import Event
from gateway.tls.transport import ITLSEvents

__all__ = ["ChallengeStage", "offersOnlyAcmeTLS"]


@implementer(IStage, ITLSEvents)
class ChallengeStage(HandshakeStage):
    """
    The handshake with the challenge certificate, then a clean close.
    The access log records it as C{action} C{terminate}, no upstream,
    status C{ok} with the reason saying which challenge was answered.
    """

    # client transport events

    def readConnectionLost(self) -> None:
        self._tls.ciphertextEnded()
        self._transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._stopTimer()
        self._owner.stageEnded()

    def shutdown(self) -> None:
        self._stopTimer()
        self._owner.report(Event.SHUT_DOWN, "gateway stopped")
        self._transport.abortConnection()

    # TLS events

    def tlsHandshakeDone(self) -> None:
        self._stopTimer()
        self._record.reason = (
            f"acme tls-alpn-01 challenge for {self._record.sni!r} answered"
        )
        self._owner.report(Event.HANDSHAKE_DONE)
        self._tls.loseConnection()

    def tlsHandshakeFailed(self, reason: str) -> None:
        self._stopTimer()
        self._owner.report(
            Event.HANDSHAKE_FAILED, f"acme tls-alpn-01 challenge: {reason}"
        )
        self._transport.loseConnection()

    def tlsData(self, data: bytes) -> None:
        """
        The validator sends nothing after the handshake; ignore it.
        """

    def tlsReadClosed(self) -> None:
        self._transport.loseConnection()

    def tlsError(self, reason: str) -> None:
        # The alert went out and the TLS layer closes the socket.
        self._owner.report(Event.TLS_ERROR, f"acme tls-alpn-01 challenge: {reason}")

    def _timeoutReason(self) -> str:
        return (
            f"acme tls-alpn-01 challenge: handshake not done after {self._timeout:g}s"
        )
