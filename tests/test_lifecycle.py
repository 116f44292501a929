"""
The connection's state table (L{gateway.lifecycle}), on its own and
as L{gateway.preread.PrereadProtocol} follows it: only table transitions
happen, and every path ends in C{logged} exactly once.  In memory: a fake
clock and transport, no sockets.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure

import gateway.preread
from gateway.accesslog import ConnectionRecord
from gateway.decision import Reject
from gateway.lifecycle import STEPS, TRANSITIONS, VERDICT, Event, State
from gateway.pgstage import POSTGRES
from gateway.postgres import SSL_REQUEST
from gateway.preread import PrereadProtocol
from gateway.proxyprotocol import Command, ProxyAddress, ProxyHeader, encode
from gateway.testing import makeClientHello
from gateway.tlsstrategy import TCP, TLS
from gateway.vocabulary import Status
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
        State.CLOSING,
    }


def test_statusesAreRecordedOnlyOnTheWayToClosing() -> None:
    for (state, event), transition in TRANSITIONS.items():
        if transition.status is not None:
            assert transition.target is State.CLOSING, (state, event)
            assert state is not State.CLOSING
        if transition.status is VERDICT:
            assert event is Event.REFUSE


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
        self.listener.ended(self.protocol)

    def shutdown(self) -> None:
        assert self.protocol.transport is not None
        self.protocol.transport.loseConnection()


class Listener:
    """
    Answers every hook as told; logs (and tells the protocol) once.
    """

    def __init__(self, refuseAt: str | None) -> None:
        self.refuseAt = refuseAt
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
    original = gateway.preread._log
    gateway.preread._log = Logger(observer=errors.append)
    try:
        clock = MemoryReactorClock()
        listener = Listener(refuseAt)
        record = ConnectionRecord("l", "198.51.100.7:1", 0.0, 0.0)
        protocol = PrereadProtocol(
            listener,  # type: ignore[arg-type]
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
        if transport.connected:
            transport.loseConnection()
        assert listener.ended_ == [protocol]
        assert protocol.state is State.LOGGED
        # A connection handed to its stage ends there; any other was given
        # its status on the way to closing.
        assert [stage.lost for stage in listener.stages] in ([], [True])
        assert record.status is not None or listener.stages
        assert errors == []
    finally:
        gateway.preread._log = original


def test_anEventTheTableDoesNotAllowIsLogged() -> None:
    errors: list[dict[str, Any]] = []
    original = gateway.preread._log
    gateway.preread._log = Logger(observer=errors.append)
    try:
        listener = Listener(None)
        protocol = PrereadProtocol(
            listener,  # type: ignore[arg-type]
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
        gateway.preread._log = original
    [error] = errors
    assert error["log_level"].name == "error"
    assert (error["state"], error["event"]) == ("logged", "log")
