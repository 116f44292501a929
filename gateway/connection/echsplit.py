"""
Encrypted Client Hello, split mode (RFC 9849 section 3.1): the gateway is
the client-facing server, the upstream the backend server.

At the pre-read, L{gateway.wire.echopen.openHello} decrypts the outer ClientHello's ECH with the
listener's keys and gives the connection the inner hello to route on and
to send upstream in place of the outer one.  After that the passthrough
relay carries the bytes as usual, with one exception that
L{ECHPassthroughStage} handles: if the backend answers with a
HelloRetryRequest, the client's second ClientHello is an outer hello too,
sealed with the same HPKE context, and must be opened and replaced the
same way.  So the stage keeps reading the client-to-upstream direction
until the backend's first ServerHello shows it is not an HRR, or until the
second hello is replaced.  Those connections use the portable relay: the
splice relay shows no byte to Python.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger
from zope.interface import implementer

from gateway.connection.passthrough import PassthroughStage
from gateway.connection.preread import IStage
from gateway.connection.session import Session
from gateway.core.transports import RelayTransport
from gateway.rules.lifecycle import Event
from gateway.wire.alerts import alertRecord
from gateway.wire.ech import (
    ECHError,
    helloMessage,
    helloRecords,
)
from gateway.wire.echopen import Opened

__all__ = ["ECHPassthroughStage"]

_log = Logger()

#: RFC 8446 4.1.3: the random of a ServerHello that is a HelloRetryRequest.
_HRR_RANDOM: Final = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
_HANDSHAKE: Final = 22
_SERVER_HELLO: Final = 2
#: Record header, handshake header, legacy_version, random.
_SERVER_HELLO_HEAD: Final = 5 + 4 + 2 + 32
#: Bound on the client bytes held while the stage watches: a second
#: ClientHello is the size of the first, far below this; a client that
#: sends more without the backend answering only pins this much.
MAX_HELD: Final = 2**17


@implementer(IStage)
class ECHPassthroughStage(PassthroughStage):
    """
    Passthrough of a decrypted ECH connection: as L{PassthroughStage},
    except that the client's handshake records are held until the
    backend's first ServerHello says whether a second ClientHello comes
    (a HelloRetryRequest), and that one is decrypted and replaced.

    @ivar _watching: client handshake records are still read here.
    @ivar _retry: the backend sent a HelloRetryRequest.
    @ivar _upstreamHead: the first bytes from the backend, until they
        hold its ServerHello's random.
    @ivar _client: client bytes not yet passed on (a handshake record
        being assembled).
    @ivar _refused: the connection was refused here and is closing.
    """

    def __init__(
        self,
        session: Session,
        opened: Opened,
        client: RelayTransport,
        version: int,
    ) -> None:
        super().__init__(session)
        self._opened = opened
        self._clientTransport = client
        self._version = version
        self._watching = True
        self._refused = False
        self._retry = False
        self._upstreamHead = b""
        self._client = b""
        session.upstreamWatcher = self._upstreamData

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # the connection is closing: nothing more goes upstream
        if not self._watching:
            self._session.clientData(data)
            return
        self._client += data
        if len(self._client) > MAX_HELD:
            self._refuse(
                ECHError(
                    f"{len(self._client)} bytes of handshake records held without"
                    " a complete second ClientHello"
                )
            )
            return
        self._passClientRecords()

    def _upstreamData(self, data: bytes) -> None:
        """
        The backend's first bytes, before the client gets them: a
        ServerHello whose random is the HRR value means a second
        ClientHello follows; anything else ends the watch.
        """
        self._upstreamHead += data
        head = self._upstreamHead
        if head[:1] != bytes([_HANDSHAKE]) or (
            len(head) >= 6 and head[5] != _SERVER_HELLO
        ):
            self._stopWatching()
            return
        if len(head) < _SERVER_HELLO_HEAD:
            return
        self._session.upstreamWatcher = None
        self._upstreamHead = b""
        if head[11:_SERVER_HELLO_HEAD] == _HRR_RANDOM:
            self._retry = True
            self._passClientRecords()
        else:
            self._stopWatching()

    def _stopWatching(self) -> None:
        self._session.upstreamWatcher = None
        self._upstreamHead = b""
        self._watching = False
        pending, self._client = self._client, b""
        if pending:
            self._session.clientData(pending)

    def _passClientRecords(self) -> None:
        """
        Pass on the client's records that are not handshake records
        (ChangeCipherSpec, early data) as they come; hold handshake ones
        until the backend's answer says what they are, and replace a
        second ClientHello by its inner hello.
        """
        while len(self._client) >= 5:
            size = 5 + int.from_bytes(self._client[3:5], "big")
            if self._client[0] == _HANDSHAKE:
                if not self._retry:
                    return
                self._replaceSecondHello()
                return
            if len(self._client) < size:
                return
            record, self._client = self._client[:size], self._client[size:]
            self._session.clientData(record)

    def _replaceSecondHello(self) -> None:
        try:
            message = helloMessage(self._client)
            if message is None:
                return
            inner = self._opened.openSecond(message.body)
        except ECHError as e:
            self._refuse(e)
            return
        rest = self._client[message.end :]
        self._client = b""
        self._watching = False
        _log.debug(
            "ECH: HelloRetryRequest: the second ClientHello was decrypted and"
            " sent on as its inner hello"
        )
        records = helloRecords(inner, message.recordVersion)
        # bytes_in counts what the client sent (the outer hello, counted by
        # the owner as it arrived), not the inner one sent in its place.
        self._session.clientData(records + rest)

    def _refuse(self, error: ECHError) -> None:
        """
        A second ClientHello that does not open: the client is told with
        the alert RFC 9849 gives and both sides close.
        """
        self._watching = False
        self._refused = True
        self._client = b""
        alert = alertRecord(error.alert, self._version)
        self._clientTransport.write(alert)
        relay = self._session.relay
        reason = f"{error.reason}: second ClientHello: {error}"
        if relay is not None:
            relay.abort(Event.TLS_ERROR, reason)
        else:
            self._session.shutdown()
