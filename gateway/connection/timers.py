"""
Deadlines of connections: one mechanism to set them, one way to stop them.

Every connection carries a few deadlines (pre-read, connect, handshake,
upstream answer, idle), and nearly all of them are stopped long before
they are due.  One Twisted C{DelayedCall} each would cost, per deadline,
an object of a dozen attributes pushed on the reactor's heap and a
cancellation the reactor counts and later sweeps out of it: a few
microseconds per connection for timers that almost never fire.

L{later} files a deadline in a coarse wheel instead, one per clock: the
deadline goes into the bucket of its L{RESOLUTION}-long tick (a set add),
and stopping it takes it out again (a set discard).  The wheel keeps a
single C{DelayedCall}, for its earliest bucket, so a clock's deadlines cost
the reactor one timer however many connections are open, and a clock with
no deadline pending has none at all (what tests assert of a connection
that ended).

A deadline fires no earlier than asked and at most one L{RESOLUTION} later,
which is fine for timeouts counted in seconds.  L{RESOLUTION} is a power of
two, so on a clock that counts from zero (C{twisted.internet.task.Clock})
a deadline of whole or half seconds fires exactly when asked.

A call that already fired cannot be cancelled (Twisted raises
C{AlreadyCalled}), so stopping one is always "cancel if still pending,
then forget": L{cancel} is the first half, once, for deadlines and
C{DelayedCall}s alike.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: Seconds per tick of the wheel: how late at most a deadline fires.  A
#: power of two, so tick times are exact in floating point.
RESOLUTION = 0.125
_TICKS_PER_SECOND = 8


class Stoppable(Protocol):
    """
    A pending call that can be stopped: a L{Deadline} or an C{IDelayedCall}.
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


def cancel(call: Stoppable | IDelayedCall | None) -> None:
    """
    Cancel C{call} if it is there and still pending.
    """
    if call is not None and call.active():
        call.cancel()


class Deadline:
    """
    One deadline in a L{_Wheel}: pending until it fires or is cancelled.

    @ivar _call: what to call when it is due; L{None} once fired or
        cancelled.
    """

    __slots__ = ("_call", "_tick", "_wheel")

    def __init__(self, wheel: _Wheel, tick: int, call: Callable[[], object]) -> None:
        self._wheel = wheel
        self._tick = tick
        self._call: Callable[[], object] | None = call

    def active(self) -> bool:
        return self._call is not None

    def cancel(self) -> None:
        """
        Stop it.  Unlike C{IDelayedCall.cancel}, stopping one that is no
        longer pending does nothing.
        """
        if self._call is not None:
            self._call = None
            self._wheel.remove(self)

    def getTime(self) -> float:
        """
        When the wheel will fire it: the end of its tick.
        """
        return self._tick * RESOLUTION


class _Wheel:
    """
    The deadlines of one clock, in buckets of one tick each.

    @ivar _buckets: tick -> the pending deadlines due in that tick.
    @ivar _ticks: a heap of the ticks in L{_buckets}.
    @ivar _sweep: the one C{DelayedCall}, for tick L{_sweepTick}, while any
        deadline is pending.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buckets: dict[int, set[Deadline]] = {}
        self._ticks: list[int] = []
        self._pending = 0
        self._sweep: IDelayedCall | None = None
        self._sweepTick = 0

    def add(self, delay: float, call: Callable[[], object]) -> Deadline:
        now = self.clock.seconds()
        # The first tick that ends at or after the deadline, and never the
        # tick being swept now: a deadline always waits for a later sweep.
        tick = math.ceil((now + delay) * _TICKS_PER_SECOND)
        current = math.floor(now * _TICKS_PER_SECOND)
        if tick <= current:
            tick = current + 1
        deadline = Deadline(self, tick, call)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
        bucket.add(deadline)
        self._pending += 1
        if self._sweep is None:
            self._sweepTick = tick
            self._sweep = self.clock.callLater(tick * RESOLUTION - now, self._fire)
        elif tick < self._sweepTick:
            self._sweepTick = tick
            self._sweep.reset(tick * RESOLUTION - now)
        return deadline

    def remove(self, deadline: Deadline) -> None:
        # An emptied bucket stays until its tick is swept, so the heap
        # holds each tick once however often its bucket empties and fills.
        bucket = self._buckets.get(deadline._tick)
        if bucket is None:
            # Its bucket is being swept; it was taken out of the count there.
            return
        bucket.discard(deadline)
        self._pending -= 1
        if self._pending == 0:
            self._buckets.clear()
            self._ticks.clear()
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
            _retire(self)

    def _fire(self) -> None:
        self._sweep = None
        due = math.floor(self.clock.seconds() * _TICKS_PER_SECOND)
        while self._ticks and self._ticks[0] <= due:
            bucket = self._buckets.pop(heapq.heappop(self._ticks), None)
            if bucket is None:
                continue
            self._pending -= len(bucket)
            for deadline in bucket:
                call, deadline._call = deadline._call, None
                if call is None:
                    continue
                try:
                    call()
                except Exception:  # noqa: BLE001 - as the reactor does a timed call's
                    _log.failure("deadline {call!r} failed", call=call)
        if self._pending == 0:
            # Only emptied buckets are left.
            self._buckets.clear()
            self._ticks.clear()
            _retire(self)
            return
        # A deadline added by a call above scheduled a sweep for its own
        # tick, which may come after ones already filed.
        head = self._ticks[0]
        delay = max(0.0, head * RESOLUTION - self.clock.seconds())
        if self._sweep is None:
            self._sweep = self.clock.callLater(delay, self._fire)
        elif head != self._sweepTick:
            self._sweep.reset(delay)
        self._sweepTick = head


#: id(clock) -> the wheel of each clock with deadlines pending.  A wheel
#: with none is dropped, so nothing here keeps a clock alive after its last
#: deadline.
_wheels: dict[int, _Wheel] = {}
#: The wheel used last: nearly always the reactor's, and cheaper to check
#: than a mapping is to look up.
_last: _Wheel | None = None


def _retire(wheel: _Wheel) -> None:
    global _last
    if _wheels.get(id(wheel.clock)) is wheel:
        del _wheels[id(wheel.clock)]
    if _last is wheel:
        _last = None


def later(clock: IReactorTime, delay: float, call: Callable[[], object]) -> Deadline:
    """
    Call C{call} once, C{delay} seconds from now on C{clock} (up to one
    L{RESOLUTION} later), unless the returned deadline is cancelled first.
    """
    global _last
    wheel = _last
    if wheel is None or wheel.clock is not clock:
        wheel = _wheels.get(id(clock))
        if wheel is None:
            wheel = _wheels[id(clock)] = _Wheel(clock)
        _last = wheel
    return wheel.add(delay, call)
