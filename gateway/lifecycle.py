"""
The states of a client connection and every transition between them, in
one table.

L{gateway.preread.PrereadProtocol} owns each client connection for its
whole life and moves through L{TRANSITIONS} only::

    accepted -> (proxy header) -> (preamble) -> ClientHello -> decided -> logged
        \\______________________________________________/
                    any of them -> closing -> logged

C{decided}: the connection was handed to the stage its verdict calls for
(L{gateway.passthrough}, L{gateway.terminate}, a protocol's stage), which
connects upstream, handshakes and relays; C{closing}: it was refused (or
lost, or cut by a shutdown) before that, and waits for its socket to close.
Both end in C{logged} when the listener writes its access-log line, once.

Each transition that ends a connection before its stage records the
access-log C{status} the table names (L{VERDICT}: the refusing verdict's).
An event the table does not list for the current state is a bug: the
protocol logs it (state and event named) and ignores it.  Pure: no Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

import attrs

from gateway.vocabulary import Status


class State(enum.Enum):
    # Members are singletons: hashed by identity, in C, not by name in
    # Python (Enum's own __hash__), since every event looks one up.
    __hash__ = object.__hash__

    ACCEPTED = "accepted"
    PROXY_HEADER = "proxy header"
    PREAMBLE = "preamble"
    CLIENT_HELLO = "ClientHello"
    DECIDED = "decided"
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
    LOST = "connection lost"
    SHUT_DOWN = "shut down"
    LOG = "log"


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
    (State.PREAMBLE, Event.CLIENT_CLOSED): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.CLIENT_HELLO, Event.CLIENT_CLOSED): Transition(
        State.CLOSING, Status.BAD_CLIENT_HELLO
    ),
    (State.ACCEPTED, Event.LOST): Transition(State.CLOSING, Status.BAD_CLIENT_HELLO),
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
    # Decided: the stage has every transport event; its end is logged.
    (State.DECIDED, Event.LOG): Transition(State.LOGGED),
}

TRANSITIONS: Final[Mapping[tuple[State, Event], Transition]] = _TABLE
"""Every allowed (state, event), and where it leads."""

STEPS: Final[Mapping[State, Mapping[Event, Transition]]] = {
    state: {e: t for (s, e), t in _TABLE.items() if s is state} for state in State
}
"""L{TRANSITIONS} by state: what the protocol looks up (no key built)."""
