"""
The rules every relay keeps, written once for all of its providers.

The portable and copy relays (L{gateway.connection.relay}) and the splice
relay (L{gateway.connection.splicerelay}) move bytes in different ways, but
end a connection by the same rules, which live here:

  - idle: a re-arming timer, not a delayed call reset per chunk (a heap
    operation per read on the hot path); the providers only stamp
    C{_lastActivity} as bytes move;
  - a peer's reset (a C{connectionLost} the relay did not start) is
    passed on as a reset (L{reset}, L{ResetAfterFlush}), never as a clean
    end of stream, and recorded as C{closed_by = <side>_reset};
  - an abort (shutdown, idle) is reported to the connection's owner once,
    then both sides stop at once;
  - C{done} runs exactly once, after both transports are lost, so the
    access log sees final byte counts.

Only the way each provider stops and closes its sockets is its own
(L{RelayRules._stop}, L{RelayRules._passReset}, L{RelayRules._abortBoth}).
"""

from __future__ import annotations

import abc
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

from gateway.connection.timers import Deadline, cancel, later
from gateway.core.transports import RelayTransport
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.lifecycle import ConnectionOwner, Event

#: SO_LINGER with a zero timeout: close() then sends RST instead of FIN.
LINGER0 = struct.pack("ii", 1, 0)

#: What a provider calls one side of the relay: a transport or a socket.
End = TypeVar("End")


def reset(transport: RelayTransport) -> None:
    """
    Close a TCP transport with RST, so a reset on one side of the relay
    reaches the other side as a reset and not as a clean end of stream
    (which a peer could take for a complete response).
    """
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    transport.abortConnection()


class ResetAfterFlush:
    """
    Reset a TCP transport once Twisted has written what it holds for it.

    When one peer of a relay resets, the other is reset too (L{reset}); but
    the portable relay's transports keep a write buffer, and what the lost
    peer sent just before its reset may still be in it.  Aborting at once
    would drop those bytes, which the peer did send.  So the buffer drains
    first: registered as a pull producer and followed by
    C{loseConnection}, this object is asked for more data (its
    C{resumeProducing}) only once the transport's buffer is empty, and it
    answers with the reset.  A reader that never drains the buffer is cut
    after C{timeout} seconds, as an idle connection would be; L{cut} resets
    at once (a shutdown that will not wait).

    A transport without a socket of its own (TLS over TCP) is reset at
    once, as before: its C{loseConnection} would say C{close_notify}, a
    clean end, which a reset must not.
    """

    __slots__ = ("_armed", "_deadline", "_transport")

    def __init__(
        self, transport: RelayTransport, clock: IReactorTime, timeout: float
    ) -> None:
        self._transport: RelayTransport | None = transport
        self._deadline: Deadline | None = None
        self._armed = False
        if getattr(transport, "socket", None) is None:
            self.cut()
            return
        transport.unregisterProducer()
        # A pull producer is asked for data at once on registration; only
        # the calls after loseConnection mean "the buffer is empty".
        transport.registerProducer(self, False)
        self._armed = True
        self._deadline = later(clock, timeout, self.cut)
        transport.loseConnection()

    def resumeProducing(self) -> None:
        if self._armed:
            self.cut()

    def stopProducing(self) -> None:
        # The transport is gone (lost or aborted): nothing left to reset.
        self._transport = None
        self._stopDeadline()

    def cut(self) -> None:
        """
        Reset now, flushed or not.
        """
        transport, self._transport = self._transport, None
        self._stopDeadline()
        if transport is not None:
            reset(transport)

    def _stopDeadline(self) -> None:
        cancel(self._deadline)
        self._deadline = None


class RelayRules(abc.ABC, Generic[End]):
    """
    The end of a relayed connection, as every relay provider keeps it.

    @ivar _open: how many of the two sides are not yet lost; C{done} runs
        when it reaches zero.
    @ivar _lastActivity: reactor time bytes last moved, either way; the
        providers stamp it (or keep their own, L{_activeAt}), L{_checkIdle}
        reads it.
    @ivar _timer: the idle check, re-armed from L{_lastActivity}.
    """

    # Slots, here and in the providers: an idle connection's relay is most
    # of what the gateway keeps for it.
    __slots__ = (
        "_clock",
        "_done",
        "_idleTimeout",
        "_lastActivity",
        "_open",
        "_owner",
        "_record",
        "_timer",
    )

    def __init__(
        self,
        record: ConnectionRecord,
        clock: IReactorTime,
        idleTimeout: float,
        done: Callable[[], None],
        owner: ConnectionOwner,
    ) -> None:
        self._owner = owner
        self._record = record
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._done: Callable[[], None] | None = done
        self._open = 2
        self._lastActivity = clock.seconds()
        self._timer: Deadline | None = later(clock, idleTimeout, self._checkIdle)

    # what each provider does its own way

    @abc.abstractmethod
    def _closing(self) -> bool:
        """
        The relay is ending: a loss that follows is expected, not a peer's
        reset to pass on.
        """

    @abc.abstractmethod
    def _stop(self) -> None:
        """
        Stop relaying for good (the idle timer with L{_stopTimer}, and
        whatever reads for the relay); L{_closing} is true from now.
        """

    @abc.abstractmethod
    def _passReset(self, other: End, side: str) -> None:
        """
        C{side} reset: reset C{other}, the side still there.
        """

    @abc.abstractmethod
    def _abortBoth(self) -> None:
        """
        Close both sides at once, sending nothing more.
        """

    def _abortWhileClosing(self) -> None:
        """
        An abort came while the relay was already ending: by default there
        is nothing left to stop.
        """

    def _bothLost(self) -> None:
        """
        Both sides are lost, just before C{done}.
        """

    # the shared rules

    def abort(self, event: Event, reason: str) -> None:
        if self._closing():
            self._abortWhileClosing()
            return
        self._owner.report(event, reason)
        self._stop()
        self._abortBoth()

    def _lost(self, other: End, side: str) -> None:
        """
        One side is gone.  Not a close the relay started: the peer reset
        or the socket failed, so the other side is reset too rather than
        told the stream ended.
        """
        self._open -= 1
        if not self._closing():
            self._stop()
            self._record.extra.setdefault("closed_by", f"{side}_reset")
            self._passReset(other, side)
        if self._open == 0:
            self._bothLost()
            if self._done is not None:
                done, self._done = self._done, None
                done()

    def _activeAt(self) -> float:
        """
        When bytes last moved, either way (reactor time).
        """
        return self._lastActivity

    def _checkIdle(self) -> None:
        self._timer = None
        idle = self._clock.seconds() - self._activeAt()
        if idle >= self._idleTimeout:
            self.abort(Event.IDLE, f"no bytes for {idle:.1f}s")
        else:
            self._timer = later(self._clock, self._idleTimeout - idle, self._checkIdle)

    def _stopTimer(self) -> None:
        cancel(self._timer)
        self._timer = None
