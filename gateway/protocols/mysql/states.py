"""
The states of a C{protocol = mysql} connection and of its server legs, and
every transition between them, in two tables.

A MySQL connection's protocol states (greeting, C{SSLRequest}, login,
authentication) all happen while the connection owner's lifecycle
(L{gateway.rules.lifecycle}) says C{decided}, C{handshaking} or
C{connecting}: they are the stage's own, so they are a machine of their
own, written down here as h2 writes its connection states: a dict of
C{(state, input) -> next state}.  A pair the table does not list is a bug
in the stage and raises L{ForbiddenTransition}, so a change that breaks the
order fails its tests instead of going on in a state nobody planned.
Pure: no Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from twisted.logger import Logger

from gateway.core import strictness
from gateway.core.strictness import ForbiddenEvent

__all__ = [
    "CONNECTION_TRANSITIONS",
    "LEG_TRANSITIONS",
    "ConnectionInput",
    "ConnectionState",
    "ForbiddenTransition",
    "LegInput",
    "LegState",
    "Machine",
]


class ConnectionState(enum.Enum):
    """Where one client connection is; the values read in access-log reasons."""

    GREETING = "waiting for the server's greeting"
    REQUEST = "waiting for the client's SSLRequest"
    HELLO = "reading the client's ClientHello"
    HANDSHAKE = "in the client's TLS handshake"
    LOGIN = "waiting for the client's login"
    DIALING = "connecting to the routed server"
    AUTH = "relaying the authentication"
    RELAY = "relaying"
    OVER = "over"


class ConnectionInput(enum.Enum):
    GREETED = "a server greeted; the client has its greeting"
    SSL_REQUESTED = "the client asked for TLS"
    PLAINTEXT_LOGIN = "the client logged in without TLS, and may"
    ROUTED = "the ClientHello is routed; the handshake starts"
    HANDSHAKE_DONE = "the client's TLS handshake is done"
    REROUTED = "the login goes to another server, which is dialed"
    LOGIN_SENT = "the login went to the server"
    AUTHENTICATED = "the server answered the login with OK or ERR"
    END = "refused, lost or stopped"


class LegState(enum.Enum):
    """Where one connection to one MySQL server is."""

    GREETING = "greeting"
    GREETED = "greeted"
    SECURING = "securing"
    PACKETS = "packets"
    RELAY = "relay"
    CLOSED = "closed"


class LegInput(enum.Enum):
    GREETED = "the server's greeting is read"
    SECURE = "the gateway's SSLRequest went out; TLS starts"
    SECURED = "the TLS handshake is done and verified"
    LOGIN_SENT = "the login went out: the server's answers are read"
    RELAY = "the relay has the leg"
    CLOSE = "unusable, aborted or lost"


_C = ConnectionState
_CI = ConnectionInput

CONNECTION_TRANSITIONS: Final[
    Mapping[tuple[ConnectionState, ConnectionInput], ConnectionState]
] = {
    (_C.GREETING, _CI.GREETED): _C.REQUEST,
    (_C.REQUEST, _CI.SSL_REQUESTED): _C.HELLO,
    (_C.REQUEST, _CI.PLAINTEXT_LOGIN): _C.LOGIN,
    (_C.HELLO, _CI.ROUTED): _C.HANDSHAKE,
    (_C.HANDSHAKE, _CI.HANDSHAKE_DONE): _C.LOGIN,
    (_C.LOGIN, _CI.REROUTED): _C.DIALING,
    (_C.LOGIN, _CI.LOGIN_SENT): _C.AUTH,
    (_C.DIALING, _CI.LOGIN_SENT): _C.AUTH,
    (_C.AUTH, _CI.AUTHENTICATED): _C.RELAY,
    **{(state, _CI.END): _C.OVER for state in _C if state is not _C.OVER},
}
"""
Every move of a connection, in order: greeted, then TLS (or a plaintext
login where allowed), the login to the greeting server or, re-routed, to a
freshly dialed one, the authentication, the relay.  Any state before
C{over} may end; C{over} is final (the relay, once started, ends the
connection itself).
"""

_L = LegState
_LI = LegInput

LEG_TRANSITIONS: Final[Mapping[tuple[LegState, LegInput], LegState]] = {
    (_L.GREETING, _LI.GREETED): _L.GREETED,
    (_L.GREETED, _LI.SECURE): _L.SECURING,
    (_L.SECURING, _LI.SECURED): _L.PACKETS,
    (_L.GREETED, _LI.LOGIN_SENT): _L.PACKETS,
    # With re-encryption the login goes out once the leg is secured.
    (_L.PACKETS, _LI.LOGIN_SENT): _L.PACKETS,
    (_L.PACKETS, _LI.RELAY): _L.RELAY,
    # A leg may close at any moment, more than once (aborted, then lost).
    **{(state, _LI.CLOSE): _L.CLOSED for state in _L},
}
"""
Every move of a server leg: its greeting, then (with C{tls = on}) the
gateway's own TLS, the login's packets, the relay.
"""


_log = Logger()

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741


class ForbiddenTransition(ForbiddenEvent):
    """
    An input the table does not allow in the current state: a bug.
    """


class Machine(Generic[S, I]):
    """
    A state and the table that moves it: the only way the state changes.
    """

    def __init__(self, table: Mapping[tuple[S, I], S], initial: S) -> None:
        self._table = table
        self.state = initial

    def move(self, event: I) -> S:
        """
        Apply C{event}; return the new state.

        @raise ForbiddenTransition: the table has no move for C{event} in
            the current state, under tests (L{gateway.core.strictness});
            in production that is logged and the state stays.
        """
        try:
            self.state = self._table[self.state, event]
        except KeyError:
            message = f"{event.name} is not allowed in state {self.state.name}"
            if strictness.STRICT:
                raise ForbiddenTransition(message) from None
            _log.error("MySQL connection: {message}", message=message)
        return self.state
