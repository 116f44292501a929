"""
The states of a client connection and every transition between them, in
one table.

L{gateway.connection.preread.PrereadProtocol} owns each client connection for its
whole life and moves through L{TRANSITIONS} only::

    accepted -> (proxy header) -> (preamble) -> ClientHello -> decided
        -> (handshaking -> decided) -> connecting -> relaying -> closing -> logged
    any state before decided -> closing -> logged (refused, lost, shut down)

C{decided}: the verdict is known and the hand-off hook runs (a C{Reject}
still refuses); the stage it starts (L{gateway.connection.passthrough},
L{gateway.connection.terminate}, a protocol's stage) then has every transport event
and reports how it goes on (L{STAGE_EVENTS}, through
L{ConnectionOwner.report}): C{handshaking} is the gateway's own handshake
with the client (termination, an ACME challenge), after which the stage
is C{decided} again until it connects (a terminated PostgreSQL session
reads its startup message there); C{connecting} covers every upstream
attempt, an upstream TLS handshake (re-encryption) included; C{relaying}
from the first relayed byte.  C{closing}: a cause was recorded (before the
stage, or by what it reported) and the sockets are closing.  Every state
ends in C{logged}: the owner stamps the end (before a stage, or when its
stage says it is over: L{ConnectionOwner.stageEnded}) and the listener
writes the access-log line, once.

Every access-log C{status} is set by one transition here, applied by
L{apply}: the first cause on the way to C{closing} (L{VERDICT}: the
refusal's own), or C{ok} for a live connection logged with none; in
C{closing} whatever the stage still reports records nothing (the first
cause wins).  An event the table does not list for the current state is a
bug: it raises under tests (L{gateway.core.strictness}); in production the
owner logs it (state and event named) and ignores it.  The table also
drives the owner: until a stage has the connection, each client event goes
to a handler of the current state, and a state has one only where the
table allows that event's outcomes (L{Input}, L{allowedStates}).  Pure: no
Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from gateway.core.vocabulary import Status

if TYPE_CHECKING:
    from gateway.rules.accesslog import ConnectionRecord
    from gateway.rules.clientbytes import ClientBytes


class State(enum.Enum):
    # Members are singletons: hashed by identity, in C, not by name in
    # Python (Enum's own __hash__), since every event looks one up.
    __hash__ = object.__hash__

    ACCEPTED = "accepted"
    PROXY_HEADER = "proxy header"
    PREAMBLE = "preamble"
    CLIENT_HELLO = "ClientHello"
    DECIDED = "decided"
    HANDSHAKING = "handshaking"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSING = "closing"
    LOGGED = "logged"


class Event(enum.Enum):
    __hash__ = object.__hash__

    EXPECT_HEADER = "expect the PROXY header"
    EXPECT_PREAMBLE = "expect the preamble"
    EXPECT_HELLO = "expect the ClientHello"
    SERVE = "hand to the stage"
    REFUSE = "refuse"
    BAD_INPUT = "bad input"
    TIME_OUT = "time out"
    CLIENT_CLOSED = "client closed"
    STOPPED_SHORT = "client closed mid-message"
    LOST = "connection lost"
    SHUT_DOWN = "shut down"
    LOG = "log"
    # What the stages report (see STAGE_EVENTS).
    HANDSHAKE = "handshake"
    HANDSHAKE_DONE = "handshake done"
    HANDSHAKE_FAILED = "handshake failed"
    CONNECT = "connect upstream"
    CONNECTED = "connected"
    UPSTREAM_UNAVAILABLE = "upstream unavailable"
    TLS_ERROR = "TLS error"
    IDLE = "idle"
    CLOSED_AT_ACCEPT = "closed at accept"


class Input(enum.Enum):
    """
    What the client's transport tells the owner while no stage has the
    connection; each has a handler table by state in
    L{gateway.connection.preread} (C{ON_DATA}, C{ON_FIN}, C{ON_DEADLINE}).
    """

    __hash__ = object.__hash__

    DATA = "client data"
    FIN = "client FIN"
    DEADLINE = "deadline"


class _Verdict(enum.Enum):
    VERDICT = "the verdict's status"


VERDICT: Final = _Verdict.VERDICT
"""A transition whose status is the one of the verdict that refused."""


@attrs.frozen
class Transition:
    """
    @ivar status: the access-log status this transition records, or
        L{None} for one that records none.
    """

    target: State
    status: Status | _Verdict | None = None


_PREREAD = (State.ACCEPTED, State.PROXY_HEADER, State.PREAMBLE, State.CLIENT_HELLO)
_LIVE = (State.DECIDED, State.HANDSHAKING, State.CONNECTING, State.RELAYING)

STAGE_EVENTS: Final = frozenset(
    {
        Event.REFUSE,
        Event.HANDSHAKE,
        Event.HANDSHAKE_DONE,
        Event.HANDSHAKE_FAILED,
        Event.CONNECT,
        Event.CONNECTED,
        Event.UPSTREAM_UNAVAILABLE,
        Event.TLS_ERROR,
        Event.IDLE,
    }
)
"""What a stage reports to the owner (with C{shut down}, C{log})."""

_TABLE: dict[tuple[State, Event], Transition] = {
    (State.ACCEPTED, Event.EXPECT_HEADER): Transition(State.PROXY_HEADER),
    (State.ACCEPTED, Event.EXPECT_PREAMBLE): Transition(State.PREAMBLE),
    (State.ACCEPTED, Event.EXPECT_HELLO): Transition(State.CLIENT_HELLO),
    (State.ACCEPTED, Event.SERVE): Transition(State.DECIDED),
    (State.PROXY_HEADER, Event.EXPECT_PREAMBLE): Transition(State.PREAMBLE),
    (State.PROXY_HEADER, Event.EXPECT_HELLO): Transition(State.CLIENT_HELLO),
    (State.PROXY_HEADER, Event.SERVE): Transition(State.DECIDED),
    (State.PREAMBLE, Event.EXPECT_HELLO): Transition(State.CLIENT_HELLO),
    (State.PREAMBLE, Event.SERVE): Transition(State.DECIDED),
    (State.CLIENT_HELLO, Event.SERVE): Transition(State.DECIDED),
    # Ends before any stage: each records its status.
    (State.PROXY_HEADER, Event.BAD_INPUT): Transition(
        State.CLOSING, Status.BAD_PROXY_HEADER
    ),
    (State.PREAMBLE, Event.BAD_INPUT): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.CLIENT_HELLO, Event.BAD_INPUT): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.PROXY_HEADER, Event.TIME_OUT): Transition(
        State.CLOSING, Status.BAD_PROXY_HEADER
    ),
    (State.PREAMBLE, Event.TIME_OUT): Transition(State.CLOSING, Status.PREREAD_TIMEOUT),
    (State.CLIENT_HELLO, Event.TIME_OUT): Transition(
        State.CLOSING, Status.PREREAD_TIMEOUT
    ),
    # A client that leaves before sending a byte is not a bad hello: a
    # port scan, a balancer's TCP check, a client that gave up.  One that
    # stops in the middle of its hello sent a truncated, so bad, one.
    **{
        (s, Event.CLIENT_CLOSED): Transition(State.CLOSING, Status.CLIENT_CLOSED)
        for s in _PREREAD
    },
    (State.PREAMBLE, Event.STOPPED_SHORT): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.CLIENT_HELLO, Event.STOPPED_SHORT): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.ACCEPTED, Event.LOST): Transition(State.CLOSING, Status.CLIENT_CLOSED),
    (State.PROXY_HEADER, Event.LOST): Transition(
        State.CLOSING, Status.BAD_PROXY_HEADER
    ),
    (State.PREAMBLE, Event.LOST): Transition(State.CLOSING, Status.BAD_CLIENT_HELLO),
    (State.CLIENT_HELLO, Event.LOST): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    **{(s, Event.REFUSE): Transition(State.CLOSING, VERDICT) for s in _PREREAD},
    **{
        (s, Event.SHUT_DOWN): Transition(State.CLOSING, Status.SHUTDOWN)
        for s in _PREREAD
    },
    # Closing: the refusal's linger, the client's FIN, the end.
    (State.CLOSING, Event.TIME_OUT): Transition(State.CLOSING),
    (State.CLOSING, Event.CLIENT_CLOSED): Transition(State.CLOSING),
    (State.CLOSING, Event.SHUT_DOWN): Transition(State.CLOSING),
    (State.CLOSING, Event.LOST): Transition(State.CLOSING),
    (State.CLOSING, Event.LOG): Transition(State.LOGGED),
    # Twisted closed it at once, out of descriptors (no owner ever ran).
    (State.ACCEPTED, Event.CLOSED_AT_ACCEPT): Transition(
        State.CLOSING, Status.UPSTREAM_UNAVAILABLE
    ),
    # Decided: the hand-off hook runs (a Reject still refuses), then the
    # stage has every transport event and reports how it goes on.
    (State.DECIDED, Event.REFUSE): Transition(State.CLOSING, VERDICT),
    (State.DECIDED, Event.HANDSHAKE): Transition(State.HANDSHAKING),
    (State.CONNECTING, Event.HANDSHAKE): Transition(State.HANDSHAKING),
    (State.HANDSHAKING, Event.HANDSHAKE_DONE): Transition(State.DECIDED),
    (State.DECIDED, Event.CONNECT): Transition(State.CONNECTING),
    (State.DECIDED, Event.CONNECTED): Transition(State.RELAYING),
    (State.CONNECTING, Event.CONNECTED): Transition(State.RELAYING),
    (State.HANDSHAKING, Event.HANDSHAKE_FAILED): Transition(
        State.CLOSING, Status.HANDSHAKE_FAILED
    ),
    (State.RELAYING, Event.IDLE): Transition(State.CLOSING, Status.IDLE_TIMEOUT),
    **{
        (s, e): Transition(State.CLOSING, status)
        for s in _LIVE
        for e, status in (
            (Event.UPSTREAM_UNAVAILABLE, Status.UPSTREAM_UNAVAILABLE),
            (Event.TLS_ERROR, Status.TLS_ERROR),
            (Event.SHUT_DOWN, Status.SHUTDOWN),
        )
    },
    **{(s, Event.REFUSE): Transition(State.CLOSING, VERDICT) for s in _LIVE},
    # The stage ended with no cause recorded: ok.
    **{(s, Event.LOG): Transition(State.LOGGED, Status.OK) for s in _LIVE},
    # Closing with a stage: the first cause is recorded; whatever the
    # stage still reports while its sockets close records nothing.
    **{(State.CLOSING, e): Transition(State.CLOSING) for e in STAGE_EVENTS},
}

INPUT_EVENTS: Final[Mapping[Input, frozenset[Event]]] = {
    Input.DATA: frozenset(
        {
            Event.EXPECT_PREAMBLE,
            Event.EXPECT_HELLO,
            Event.SERVE,
            Event.REFUSE,
            Event.BAD_INPUT,
        }
    ),
    Input.FIN: frozenset({Event.CLIENT_CLOSED, Event.STOPPED_SHORT, Event.BAD_INPUT}),
    Input.DEADLINE: frozenset({Event.TIME_OUT}),
}
"""The events each input may lead the owner to take."""

READING: Final = (State.PROXY_HEADER, State.PREAMBLE, State.CLIENT_HELLO)
"""
The states in which the owner reads the client: each input has a handler
in each.  (It leaves C{accepted} before its C{connectionMade} returns.)
"""

DISCARDING: Final = frozenset({State.CLOSING, State.LOGGED})
"""
The states in which what a client with no stage still sends is discarded:
data there takes no transition.
"""

TRANSITIONS: Final[Mapping[tuple[State, Event], Transition]] = _TABLE
"""Every allowed (state, event), and where it leads."""

STEPS: Final[Mapping[State, Mapping[Event, Transition]]] = {
    state: {e: t for (s, e), t in _TABLE.items() if s is state} for state in State
}
"""L{TRANSITIONS} by state: what the protocol looks up (no key built)."""


def allowedStates(input: Input) -> frozenset[State]:
    """
    The states in which the table allows an event C{input} may lead to:
    the only ones where the owner may have a handler for it (data aside,
    which is discarded in L{DISCARDING}).
    """
    events = INPUT_EVENTS[input]
    return frozenset(state for state, event in _TABLE if event in events)


def apply(
    state: State,
    event: Event,
    record: ConnectionRecord,
    reason: str | None = None,
    status: Status | None = None,
) -> State | None:
    """
    Take the transition the table gives C{event} in C{state}, recording
    its status in C{record}: the one place an access-log C{status} is set.

    @param status: the verdict's (or the stage's refusal's), for a
        transition whose status is L{VERDICT}.
    @return: the next state, or L{None} if the table does not allow
        C{event} in C{state} (nothing recorded).
    """
    transition = STEPS[state].get(event)
    if transition is None:
        return None
    recorded = transition.status
    if recorded is VERDICT:
        recorded = status
        assert recorded is not None
    if recorded is Status.OK:
        # No cause: the reason a stage may have noted stays.
        record.fail(recorded, record.reason)
    elif recorded is not None:
        record.fail(recorded, reason)
    return transition.target


class ConnectionOwner(Protocol):
    """
    What a stage reports its events to: the connection's owner
    (L{gateway.connection.preread.PrereadProtocol}), which applies them to the table.
    """

    @property
    def clientBytes(self) -> ClientBytes:
        """
        The connection's count of client bytes
        (L{gateway.rules.clientbytes}).
        """

    def report(
        self, event: Event, reason: str | None = None, status: Status | None = None
    ) -> bool:
        """
        Take C{event}'s transition (L{apply}); an event the table does not
        allow is logged as the bug it is.

        @return: whether the table allowed it.
        """

    def stageEnded(self) -> None:
        """
        The stage is over on every side (the client's connection and any
        upstream's are closed): the owner stamps the end and has the
        connection logged.  Called once; a second call is a bug (it raises
        under tests, L{gateway.core.strictness}).
        """
