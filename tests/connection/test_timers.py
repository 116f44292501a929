"""
Tests for L{gateway.connection.timers}: the wheel that holds connections' deadlines.
"""

from __future__ import annotations

from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.connection.timers import RESOLUTION, Deadline, cancel, later


def test_firesWhenDueOnAClockFromZero() -> None:
    """
    On a clock counting from zero, a deadline of whole seconds fires
    exactly when asked, not a tick before.
    """
    clock = Clock()
    fired: list[float] = []
    later(clock, 5, lambda: fired.append(clock.seconds()))
    clock.advance(5 - RESOLUTION / 2)
    assert fired == []
    clock.advance(RESOLUTION / 2)
    assert fired == [5.0]


def test_oneDelayedCallForManyDeadlines() -> None:
    """
    However many deadlines are pending, the clock holds one timed call,
    for the earliest; none once they are all gone.
    """
    clock = Clock()
    deadlines = [later(clock, 10 + i, lambda: None) for i in range(100)]
    early = later(clock, 2, lambda: None)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.0]
    early.cancel()
    for deadline in deadlines:
        cancel(deadline)
    assert clock.getDelayedCalls() == []


def test_cancelledDeadlineDoesNotFire() -> None:
    clock = Clock()
    fired: list[str] = []
    keep = later(clock, 1, lambda: fired.append("keep"))
    drop = later(clock, 1, lambda: fired.append("drop"))
    drop.cancel()
    assert not drop.active()
    assert keep.active()
    clock.advance(1)
    assert fired == ["keep"]
    assert not keep.active()
    # Stopping what already fired does nothing, unlike a DelayedCall.
    keep.cancel()
    assert clock.getDelayedCalls() == []


def test_rounding() -> None:
    """
    A deadline between ticks fires at the end of its tick: late by less
    than one L{RESOLUTION}, never early.
    """
    clock = Clock()
    clock.advance(0.01)
    fired: list[float] = []
    deadline = later(clock, 0.3, lambda: fired.append(clock.seconds()))
    assert deadline.getTime() == 3 * RESOLUTION
    clock.advance(0.3)
    assert fired == []
    clock.advance(3 * RESOLUTION - 0.31)
    assert fired == [3 * RESOLUTION]


def test_zeroDelayWaitsForTheNextTick() -> None:
    """
    A deadline never lands in the tick being swept, so a call that sets a
    new deadline of nothing (an idle check of a connection that was
    active a moment ago) cannot keep a sweep going for ever.
    """
    clock = Clock()
    fired: list[float] = []

    def again() -> None:
        fired.append(clock.seconds())
        if len(fired) < 3:
            later(clock, 0, again)

    later(clock, 1, again)
    clock.advance(1)
    assert fired == [1.0]
    clock.advance(RESOLUTION)
    clock.advance(RESOLUTION)
    assert fired == [1.0, 1 + RESOLUTION, 1 + 2 * RESOLUTION]
    assert clock.getDelayedCalls() == []


def test_callsMayCancelAndAddDeadlines() -> None:
    """
    A call that fires may cancel a deadline due in the same tick (it then
    does not fire) and add earlier ones than the wheel's next sweep.
    """
    clock = Clock()
    fired: list[str] = []
    second = later(clock, 1, lambda: fired.append("second"))

    def first() -> None:
        fired.append("first")
        second.cancel()
        later(clock, 1, lambda: fired.append("soon"))

    # Filed in the same tick as `second`; sets are unordered, so either
    # may come first: both orders must end the same way.
    later(clock, 1, first)
    later(clock, 5, lambda: fired.append("late"))
    clock.advance(1)
    if fired == ["second", "first"]:
        fired.remove("second")
    assert fired == ["first"]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [2.0]
    clock.advance(1)
    assert fired == ["first", "soon"]
    clock.advance(3)
    assert fired == ["first", "soon", "late"]
    assert clock.getDelayedCalls() == []


def test_aFailingCallIsLoggedAndTheRestFire() -> None:
    clock = Clock()
    fired: list[str] = []

    def boom() -> None:
        raise ZeroDivisionError()

    later(clock, 1, boom)
    later(clock, 1, lambda: fired.append("other"))
    later(clock, 2, lambda: fired.append("later"))
    clock.advance(1)
    clock.advance(1)
    assert fired == ["other", "later"]


def test_clocksHaveTheirOwnWheels() -> None:
    one, two = Clock(), Clock()
    fired: list[str] = []
    later(one, 1, lambda: fired.append("one"))
    later(two, 1, lambda: fired.append("two"))
    assert len(one.getDelayedCalls()) == len(two.getDelayedCalls()) == 1
    two.advance(1)
    assert fired == ["two"]


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0, 20, allow_nan=False)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.floats(0, 3, allow_nan=False)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_everyDeadlineFiresOnceInItsWindowUnlessCancelled(
    steps: list[tuple[str, float]],
) -> None:
    """
    Whatever the mix of deadlines, cancellations and time passing: each
    deadline fires at most once, never before its time and no later than
    one L{RESOLUTION} after it (as soon as the clock gets there); a
    cancelled one never fires; the clock holds one timed call while any
    is pending and none after.
    """
    clock = Clock()
    added: list[tuple[float, Deadline]] = []
    fired: dict[int, list[float]] = {}
    cancelled: set[int] = set()

    def firing(n: int) -> None:
        fired.setdefault(n, []).append(clock.seconds())

    for step, value in steps:
        if step == "add":
            n = len(added)
            added.append(
                (clock.seconds() + value, later(clock, value, partial(firing, n)))
            )
        elif step == "cancel" and added:
            n = int(value) % len(added)
            if n not in fired:
                cancelled.add(n)
            cancel(added[n][1])
        else:
            clock.advance(value)
        pending = [d for _, d in added if d.active()]
        assert len(clock.getDelayedCalls()) == (1 if pending else 0)
    clock.advance(25)
    for n, (due, _) in enumerate(added):
        if n in cancelled:
            assert n not in fired
            continue
        (when,) = fired[n]
        assert when >= due - 1e-9
    assert clock.getDelayedCalls() == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=30),
    st.floats(0.001, RESOLUTION, allow_nan=False),
)
def test_lateByLessThanATick(delays: list[float], step: float) -> None:
    """
    With the clock moving in small steps, as a reactor's does, every
    deadline fires within one L{RESOLUTION} (plus the step) of its time.
    """
    clock = Clock()
    fired: dict[int, float] = {}

    def record(n: int) -> None:
        fired[n] = clock.seconds()

    for n, delay in enumerate(delays):
        later(clock, delay, partial(record, n))
    while clock.seconds() < 11 and len(fired) < len(delays):
        clock.advance(step)
    assert sorted(fired) == list(range(len(delays)))
    for n, delay in enumerate(delays):
        assert delay - 1e-9 <= fired[n] <= delay + RESOLUTION + step + 1e-9
