"""
The UDP endpoints (QUIC) a service has open, by C{listen} description.

Kept apart from the stream ports because they live differently: a reload
points an open endpoint at the new configuration's listener (its flows
stay), and a drain keeps them open (every datagram of an established flow
arrives on them) until the last flow has ended.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gateway.connection.datagram import MAX_DATAGRAM, QuicEndpoint, QuicListener
from gateway.core.udpendpoints import parseUDPEndpoint

#: The receive buffer asked for on UDP endpoints: a few thousand datagrams.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class UDPPorts:
    """
    @ivar _open: the port and its endpoint, by C{listen} description.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._open: dict[str, tuple[IListeningPort, QuicEndpoint]] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._open))

    def bind(self, reactor: Any, description: str, quic: QuicListener) -> str | None:
        """
        Point a UDP endpoint at C{quic} (new flows are its), opening it
        if it is new.

        @return: why it could not be opened, or L{None}.
        """
        opened = self._open.get(description)
        if opened is not None:
            opened[1].listener = quic
            return None
        endpoint = QuicEndpoint(quic, reactor)
        udp = parseUDPEndpoint(description)
        try:
            port = reactor.listenUDP(udp.port, endpoint, udp.bindAddress, MAX_DATAGRAM)
        except Exception as e:  # noqa: BLE001 - CannotListenError, OSError
            return f"cannot listen on {description}: {e}"
        with contextlib.suppress(OSError):
            # Bursts of datagrams wait here while the reactor is busy; the
            # kernel caps this at net.core.rmem_max.
            port.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER
            )
        self._open[description] = (port, endpoint)
        self._log.info(
            "listener {listener} listening on {description}",
            listener=quic.config.name,
            description=description,
        )
        return None

    def close(self, descriptions: list[str] | None = None) -> None:
        """
        Close UDP endpoints (all by default): their flows end, logged
        C{shutdown}.
        """
        for description in list(self._open) if descriptions is None else descriptions:
            opened = self._open.pop(description, None)
            if opened is not None:
                opened[0].stopListening()

    def stopAccepting(self) -> None:
        """
        A drain: established flows go on, no new one starts.
        """
        for _, endpoint in self._open.values():
            endpoint.accepting = False

    def shutdown(self) -> None:
        """
        The drain's deadline: end every flow.
        """
        for _, endpoint in self._open.values():
            endpoint.shutdown()
