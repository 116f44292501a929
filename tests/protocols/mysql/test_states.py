"""
L{gateway.protocols.mysql.states}: the two transition tables, over every
(state, input) pair: a listed pair moves where the table says, any other
raises L{ForbiddenTransition} and leaves the state as it was.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping

import pytest

from gateway.protocols.mysql.states import (
    CONNECTION_TRANSITIONS,
    LEG_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    ForbiddenTransition,
    LegInput,
    LegState,
    Machine,
)

C = ConnectionState
CI = ConnectionInput
L = LegState
LI = LegInput

CONNECTION_PAIRS = list(itertools.product(ConnectionState, ConnectionInput))
LEG_PAIRS = list(itertools.product(LegState, LegInput))


def check(
    table: Mapping[tuple[enum.Enum, enum.Enum], enum.Enum],
    state: enum.Enum,
    event: enum.Enum,
) -> None:
    machine = Machine(table, state)
    if (state, event) in table:
        assert machine.move(event) is table[state, event]
        assert machine.state is table[state, event]
    else:
        with pytest.raises(ForbiddenTransition) as raised:
            machine.move(event)
        assert raised.value.reason == "forbidden_transition"
        assert event.name in str(raised.value)
        assert state.name in str(raised.value)
        assert machine.state is state


@pytest.mark.parametrize(("state", "event"), CONNECTION_PAIRS)
def test_everyConnectionPairMovesOrRaises(
    state: ConnectionState, event: ConnectionInput
) -> None:
    check(CONNECTION_TRANSITIONS, state, event)  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "event"), LEG_PAIRS)
def test_everyLegPairMovesOrRaises(state: LegState, event: LegInput) -> None:
    check(LEG_TRANSITIONS, state, event)  # type: ignore[arg-type]


def test_overIsFinal() -> None:
    assert not [e for (s, e) in CONNECTION_TRANSITIONS if s is C.OVER]


def test_everyStateBeforeOverMayEnd() -> None:
    for state in ConnectionState:
        if state is not C.OVER:
            assert CONNECTION_TRANSITIONS[state, CI.END] is C.OVER


def test_theTLSLoginPathInOrder() -> None:
    machine = Machine(CONNECTION_TRANSITIONS, C.GREETING)
    path = [
        CI.GREETED,
        CI.SSL_REQUESTED,
        CI.ROUTED,
        CI.HANDSHAKE_DONE,
        CI.REROUTED,
        CI.LOGIN_SENT,
        CI.AUTHENTICATED,
    ]
    assert [machine.move(e) for e in path] == [
        C.REQUEST,
        C.HELLO,
        C.HANDSHAKE,
        C.LOGIN,
        C.DIALING,
        C.AUTH,
        C.RELAY,
    ]


def test_aPlaintextLoginSkipsTLS() -> None:
    machine = Machine(CONNECTION_TRANSITIONS, C.REQUEST)
    assert machine.move(CI.PLAINTEXT_LOGIN) is C.LOGIN
    assert machine.move(CI.LOGIN_SENT) is C.AUTH


def test_aReencryptedLegSecuresBeforeItsLogin() -> None:
    machine = Machine(LEG_TRANSITIONS, L.GREETING)
    path = [LI.GREETED, LI.SECURE, LI.SECURED, LI.LOGIN_SENT, LI.RELAY, LI.CLOSE]
    assert [machine.move(e) for e in path] == [
        L.GREETED,
        L.SECURING,
        L.PACKETS,
        L.PACKETS,
        L.RELAY,
        L.CLOSED,
    ]


def test_aLegCannotSendItsLoginBeforeItGreeted() -> None:
    with pytest.raises(ForbiddenTransition):
        Machine(LEG_TRANSITIONS, L.GREETING).move(LI.LOGIN_SENT)


def test_aClosedLegStaysClosed() -> None:
    machine = Machine(LEG_TRANSITIONS, L.CLOSED)
    assert machine.move(LI.CLOSE) is L.CLOSED
    for event in LegInput:
        if event is not LI.CLOSE:
            with pytest.raises(ForbiddenTransition):
                machine.move(event)


def test_inProductionAForbiddenInputIsLoggedAndTheStateStays() -> None:
    """
    Outside the tests (L{gateway.core.strictness} off) a forbidden input is
    logged at error level, as the bug it is, and the connection goes on.
    """
    from twisted.logger import Logger

    from gateway.core import strictness
    from gateway.protocols.mysql import states
    from tests.helpers import appendingTo

    errors: list[dict[str, object]] = []
    original = states._log
    states._log = Logger(observer=appendingTo(errors))
    strictness.STRICT = False
    try:
        state, event = next(
            (s, e) for s, e in CONNECTION_PAIRS if (s, e) not in CONNECTION_TRANSITIONS
        )
        machine = Machine(CONNECTION_TRANSITIONS, state)
        assert machine.move(event) is state
    finally:
        strictness.STRICT = True
        states._log = original
    [error] = errors
    assert "is not allowed in state" in str(error["message"])
