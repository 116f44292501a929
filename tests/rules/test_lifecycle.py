"""
The connection's state table (L{gateway.rules.lifecycle}), on its own and
as L{gateway.connection.preread.PrereadProtocol} follows it: only table transitions
happen, and every path ends in C{logged} exactly once.  In memory: a fake
clock and transport, no sockets.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure

import gateway.connection.preread
from gateway.connection.preread import PrereadProtocol
from gateway.core import strictness
from gateway.core.strictness import ForbiddenEvent
from gateway.core.vocabulary import Status
from gateway.protocols.postgres import POSTGRES
from gateway.protocols.tls import TCP, TLS
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.decision import Reject
from gateway.rules.lifecycle import (
    STAGE_EVENTS,
    STEPS,
    TRANSITIONS,
    VERDICT,
    Event,
    State,
    apply,
)
from gateway.testing import makeClientHello
from gateway.wire.postgres import SSL_REQUEST
from gateway.wire.proxyprotocol import Command, ProxyAddress, ProxyHeader, encode
from tests.helpers import appendingTo
from tests.transports import HalfCloseableTransport

HELLO = makeClientHello("db.example.com", [b"h2"])
HEADER = encode(
    ProxyHeader(
        2, Command.PROXY, ProxyAddress("203.0.113.7", 1), ProxyAddress("192.0.2.1", 2)
    )
)


def reachable(start: State) -> set[State]:
    seen = {start}
    todo = [start]
    while todo:
        for transition in STEPS[todo.pop()].values():
            if transition.target not in seen:
                seen.add(transition.target)
                todo.append(transition.target)
    return seen


def test_everyStateIsReachableAndCanEndLogged() -> None:
    assert reachable(State.ACCEPTED) == set(State)
    for state in State:
        assert State.LOGGED in reachable(state)


def test_loggedIsFinal() -> None:
    assert STEPS[State.LOGGED] == {}
    assert {s for (s, e) in TRANSITIONS if e is Event.LOG} == {
        State.DECIDED,
        State.HANDSHAKING,
        State.CONNECTING,
        State.RELAYING,
        State.CLOSING,
    }


LIVE = {State.DECIDED, State.HANDSHAKING, State.CONNECTING, State.RELAYING}


def test_statusesAreRecordedOnlyOnTheWayToClosingOrAsOK() -> None:
    """
    A status is recorded on the way to C{closing} (the first cause), or as
    C{ok} when a live connection is logged with none; never once closing.
    """
    for (state, event), transition in TRANSITIONS.items():
        if transition.status is not None:
            assert state is not State.CLOSING, (state, event)
            if transition.status is Status.OK:
                assert (event, transition.target) == (Event.LOG, State.LOGGED)
                assert state in LIVE
            else:
                assert transition.target is State.CLOSING, (state, event)
        if transition.status is VERDICT:
            assert event is Event.REFUSE


def test_everyStatusAStageEndsWithIsTheTables() -> None:
    """
    The statuses the stages used to set themselves each have their
    transition: C{ok}, C{upstream_unavailable}, C{idle_timeout},
    C{tls_error}, C{handshake_failed}, C{shutdown}.
    """
    recorded = {t.status for (s, e), t in TRANSITIONS.items() if s in LIVE and t.status}
    assert {
        Status.OK,
        Status.UPSTREAM_UNAVAILABLE,
        Status.IDLE_TIMEOUT,
        Status.TLS_ERROR,
        Status.HANDSHAKE_FAILED,
        Status.SHUTDOWN,
        VERDICT,
    } == recorded


def test_theStagesWayIsTheTables() -> None:
    """
    decided -> (handshaking) -> connecting -> relaying -> closing ->
    logged, as the stages report it.
    """
    record = ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0)
    state: State | None = State.DECIDED
    for event, expected in [
        (Event.HANDSHAKE, State.HANDSHAKING),
        (Event.HANDSHAKE_DONE, State.DECIDED),
        (Event.CONNECT, State.CONNECTING),
        (Event.CONNECTED, State.RELAYING),
        (Event.IDLE, State.CLOSING),
        (Event.SHUT_DOWN, State.CLOSING),
        (Event.LOG, State.LOGGED),
    ]:
        assert state is not None
        state = apply(state, event, record, f"after {event.value}")
        assert state is expected, event
    assert (record.status, record.reason) == (Status.IDLE_TIMEOUT, "after idle")


@given(
    st.lists(st.sampled_from(sorted(STAGE_EVENTS | {Event.SHUT_DOWN}, key=str))),
    st.sampled_from([None, Status.DENIED, Status.BAD_CLIENT_HELLO]),
)
def test_aStageRecordsOneStatusTheFirstCause(
    events: list[Event], refusal: Status | None
) -> None:
    """
    Whatever a stage reports, from C{decided} until it is logged: the
    status is set once, by the first transition that records one (a cause
    on the way to C{closing}, or C{ok} at the end), and never changed.
    """
    record = ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0)
    state = State.DECIDED
    first: object = None
    for event in [*events, Event.LOG]:
        transition = TRANSITIONS.get((state, event))
        target = apply(state, event, record, event.value, refusal or Status.DENIED)
        if transition is None:
            assert target is None
            continue
        assert target is transition.target
        if first is None and transition.status is not None:
            first = (
                refusal or Status.DENIED
                if transition.status is VERDICT
                else transition.status
            )
        state = target
    assert state is State.LOGGED
    assert first is not None
    assert record.status == first


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_onlyTableTransitionsHappenAndLoggedIsReachedOnce(events: list[Event]) -> None:
    """
    Any event sequence: a step is the table's or none, and C{logged} is
    entered at most once, and never left.
    """
    state = State.ACCEPTED
    entered = 0
    for event in events:
        transition = TRANSITIONS.get((state, event))
        if transition is None:
            continue
        assert state is not State.LOGGED
        state = transition.target
        entered += state is State.LOGGED and event is Event.LOG
    assert entered <= 1


class Stage:
    def __init__(self, listener: Listener, protocol: PrereadProtocol) -> None:
        self.listener = listener
        self.protocol = protocol
        self.lost = False
        listener.stages.append(self)

    def dataReceived(self, data: bytes) -> None:
        pass

    def readConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        self.protocol.stageEnded()

    def shutdown(self) -> None:
        assert self.protocol.transport is not None
        self.protocol.transport.loseConnection()


class Listener:
    """
    Answers every hook as told; logs (and tells the protocol) once.
    """

    def __init__(self, refuseAt: str | None) -> None:
        self.refuseAt = refuseAt
        self.strategy = TLS
        self.ended_: list[PrereadProtocol] = []
        self.stages: list[Stage] = []

    def _answer(self, where: str) -> Reject | None:
        if self.refuseAt == where:
            return Reject(Status.DENIED, f"refused at {where}")
        return None

    def accepted(self, protocol: PrereadProtocol) -> Reject | None:
        return self._answer("accept")

    def proxied(self, protocol: PrereadProtocol, header: Any) -> Reject | None:
        return self._answer("header")

    def _stage(self, protocol: PrereadProtocol, where: str) -> Stage | Reject:
        return self._answer(where) or Stage(self, protocol)

    def handoff(self, protocol: PrereadProtocol, hello: Any, buffered: bytes) -> Any:
        return self._stage(protocol, "hello")

    def handoffPlaintext(self, protocol: PrereadProtocol, start: object) -> Any:
        return self._stage(protocol, "plaintext")

    def handoffAtAccept(self, protocol: PrereadProtocol, buffered: bytes) -> Any:
        return self._stage(protocol, "serve")

    def ended(self, protocol: PrereadProtocol) -> None:
        self.ended_.append(protocol)
        protocol.logged()


_action = st.one_of(
    st.tuples(st.just("data"), st.integers(1, 64)),
    st.tuples(st.just("data"), st.just(1 << 16)),  # all the rest
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 3.0, 11.0])),
    st.just(("fin", None)),
    st.just(("shutdown", None)),
    st.tuples(st.just("stage"), st.sampled_from(sorted(STAGE_EVENTS, key=str))),
)


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from([TLS, POSTGRES, TCP]),
    acceptProxy=st.booleans(),
    refuseAt=st.sampled_from([None, "accept", "header", "hello", "plaintext", "serve"]),
    actions=st.lists(_action, max_size=12),
)
def test_theProtocolFollowsTheTableAndIsLoggedOnce(
    strategy: Any,
    acceptProxy: bool,
    refuseAt: str | None,
    actions: list[tuple[str, Any]],
) -> None:
    errors: list[dict[str, Any]] = []
    original = gateway.connection.preread._log
    gateway.connection.preread._log = Logger(observer=appendingTo(errors))
    # As in production: what a stage reports out of turn is logged, and
    # counted here (under the tests it would raise).
    strictness.STRICT = False
    try:
        clock = MemoryReactorClock()
        listener = Listener(refuseAt)
        record = ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0)
        protocol = PrereadProtocol(
            listener,
            record,
            clock,
            10,
            16384,
            acceptProxy,
            strategy=strategy,
        )
        stream = (HEADER if acceptProxy else b"") + (
            SSL_REQUEST if strategy is POSTGRES else b""
        )
        stream += HELLO
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        finished = False
        disallowed = 0
        for kind, value in actions:
            if not transport.connected:
                break
            if kind == "data" and not finished:
                piece, stream = stream[:value], stream[value:]
                if piece:
                    protocol.dataReceived(piece)
            elif kind == "garbage" and not finished:
                protocol.dataReceived(value)
            elif kind == "advance":
                clock.advance(value)
            elif kind == "fin" and not finished:
                finished = True
                protocol.readConnectionLost()
            elif kind == "shutdown":
                protocol.shutdown()
            elif kind == "stage" and listener.stages:
                # What a stage reports: the table takes it or logs it.
                disallowed += not protocol.report(value, "stage", Status.DENIED)
        if transport.connected:
            transport.loseConnection()
        assert listener.ended_ == [protocol]
        assert protocol.state is State.LOGGED
        # A connection handed to its stage ends there; any other was given
        # its status on the way to closing.
        assert [stage.lost for stage in listener.stages] in ([], [True])
        # Every connection's status was set by the table: a cause, or ok.
        assert record.status is not None
        assert len(errors) == disallowed
    finally:
        gateway.connection.preread._log = original
        strictness.STRICT = True


def _loggedConnection() -> PrereadProtocol:
    protocol = PrereadProtocol(
        Listener(None),
        ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0),
        MemoryReactorClock(),
        10,
        16384,
    )
    transport = HalfCloseableTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    transport.loseConnection()
    assert protocol.state is State.LOGGED
    return protocol


def test_anEventTheTableDoesNotAllowRaisesUnderTheTests() -> None:
    """
    The suite runs strict (tests/conftest.py): a stage or owner that breaks
    the table fails its tests instead of logging.
    """
    assert strictness.STRICT
    protocol = _loggedConnection()
    with pytest.raises(ForbiddenEvent, match="'log' is not allowed in state 'logged'"):
        protocol.logged()  # a second end: a bug


def test_anEventTheTableDoesNotAllowIsLogged() -> None:
    errors: list[dict[str, Any]] = []
    original = gateway.connection.preread._log
    gateway.connection.preread._log = Logger(observer=appendingTo(errors))
    strictness.STRICT = False  # production
    try:
        listener = Listener(None)
        protocol = PrereadProtocol(
            listener,
            ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0),
            MemoryReactorClock(),
            10,
            16384,
        )
        transport = HalfCloseableTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        transport.loseConnection()
        assert protocol.state is State.LOGGED
        protocol.logged()  # a second end: a bug
    finally:
        gateway.connection.preread._log = original
        strictness.STRICT = True
    [error] = errors
    assert error["log_level"].name == "error"
    assert (error["state"], error["event"]) == ("logged", "log")
