"""
Active health checks: is each server of an upstream up?

With C{health_check = tcp} or C{tls}, a L{HealthChecker} probes every
server of a L{Pool} every C{health_interval}: a connect, or a connect and a
TLS handshake (that verifies nothing: a server whose TLS stack is broken
is down, one with an odd certificate is the verifying session's business).
Each result moves the server's L{HealthState} through L{TRANSITIONS}:
C{health_fall} failures in a row take a server down, C{health_rise}
passes in a row bring it back, as HAProxy's C{fall}/C{rise} do.  Changes
of up/down are logged and given to the pool, which stops or resumes
sending it connections; L{Pool.serverStates} exports them.

Every probe is bounded (L{probeTimeout}) and L{HealthChecker.stop} cancels
the timer and every probe in flight, so a stopped service leaves no
delayed call or connection behind.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection.timers import cancel
from gateway.connection.upstream import (
    Member,
    Pool,
    connectServer,
    isAddress,
    localError,
)
from gateway.tls.transport import ITLSEvents, TLSTransport

__all__ = [
    "TRANSITIONS",
    "Health",
    "HealthChecker",
    "HealthState",
    "probeTimeout",
]


class Health(enum.Enum):
    """
    Where a server stands with its health checks.

    C{UNCHECKED}, C{UP} and C{FAILING} take connections; C{DOWN} and
    C{RISING} do not.
    """

    #: not checked yet: taken on trust, as a server without checks is;
    #: its first check decides at once, so a server that is down when the
    #: gateway starts is found out after one interval, not C{fall}.
    UNCHECKED = "unchecked"
    UP = "up"
    #: up, but failed its last check(s): C{fall} in a row take it down.
    FAILING = "failing"
    DOWN = "down"
    #: down, but passed its last check(s): C{rise} in a row bring it up.
    RISING = "rising"


_UP_STATES = frozenset({Health.UNCHECKED, Health.UP, Health.FAILING})

#: Every transition, in one place: C{(state, check passed) -> (next state
#: while the streak is short, next state once it reaches its threshold,
#: the threshold: "rise", "fall" or None)}.  With no threshold the first
#: state is taken at once and the streak starts over.
TRANSITIONS: Mapping[tuple[Health, bool], tuple[Health, Health, str | None]] = {
    (Health.UNCHECKED, True): (Health.UP, Health.UP, None),
    (Health.UNCHECKED, False): (Health.DOWN, Health.DOWN, None),
    (Health.UP, True): (Health.UP, Health.UP, None),
    (Health.UP, False): (Health.FAILING, Health.DOWN, "fall"),
    (Health.FAILING, True): (Health.UP, Health.UP, None),
    (Health.FAILING, False): (Health.FAILING, Health.DOWN, "fall"),
    (Health.DOWN, True): (Health.RISING, Health.UP, "rise"),
    (Health.DOWN, False): (Health.DOWN, Health.DOWN, None),
    (Health.RISING, True): (Health.RISING, Health.UP, "rise"),
    (Health.RISING, False): (Health.DOWN, Health.DOWN, None),
}


@attrs.frozen
class HealthState:
    """
    One server's health: a state of L{TRANSITIONS} and the length of the
    streak of results moving it towards the other side.
    """

    state: Health = Health.UNCHECKED
    streak: int = 0

    @property
    def up(self) -> bool:
        """
        Whether the server takes connections.
        """
        return self.state in _UP_STATES

    def observe(self, passed: bool, rise: int, fall: int) -> HealthState:
        """
        The state after one more check result.
        """
        short, reached, threshold = TRANSITIONS[(self.state, passed)]
        if threshold is None:
            return HealthState(short)
        streak = self.streak + 1
        if streak >= (rise if threshold == "rise" else fall):
            return HealthState(reached)
        return HealthState(short, streak)


#: The most a probe may take, connect and handshake together.
MAX_PROBE_TIME = 5.0


def probeTimeout(interval: float) -> float:
    """
    How long one probe may take: at most one interval, so a slow server
    never has two probes at once, and at most L{MAX_PROBE_TIME}, because a
    server that takes longer to accept a connection is not healthy.
    """
    return min(interval, MAX_PROBE_TIME)


def _clientContext() -> SSL.Context:
    """
    The TLS checks' client context: any version and certificate, because
    the check asks only whether the server completes a handshake.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    return context


@implementer(ITLSEvents)
class _Probe(Protocol):
    """
    One check of one server: connect (and handshake), report once, close.

    @ivar _report: called once with C{(passed, why)} (C{passed} L{None}: no
        verdict, a local resource error kept the probe from running); set
        to L{None} after,
        so the close that follows, a late connect failure or the timer
        cannot report again.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float,
        tls: SSL.Connection | None,
        report: Callable[[bool | None, str], None],
    ) -> None:
        self._connection = tls
        self._tls: TLSTransport | None = None
        self._report: Callable[[bool | None, str], None] | None = report
        self.connector: IConnector | None = None
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._timedOut)

    def _done(self, passed: bool | None, why: str) -> None:
        cancel(self._timer)
        self._timer = None
        report, self._report = self._report, None
        if report is not None:
            report(passed, why)

    def connectFailed(self, reason: Failure) -> None:
        local = localError(reason)
        # A local resource error says nothing about the server: no verdict.
        self._done(
            None if local is not None else False, local or reason.getErrorMessage()
        )

    def _timedOut(self) -> None:
        self._timer = None
        self._done(False, "timed out")
        self.cancel()

    def cancel(self) -> None:
        """
        Stop without a verdict: the connect, or the connection.
        """
        self._done(False, "cancelled")
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        elif self.connector is not None:
            self.connector.stopConnecting()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._connection is None:
            self._done(True, "connected")
            self.transport.loseConnection()
            return
        self._tls = TLSTransport(
            self._connection,
            self.transport,  # type: ignore[arg-type]
            self,
        )
        self._tls.startHandshake()

    def dataReceived(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.ciphertextReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done(False, "closed before the check passed")

    # TLSEvents

    def tlsHandshakeDone(self) -> None:
        assert self._tls is not None
        self._done(True, "TLS handshake done")
        self._tls.loseConnection()

    def tlsHandshakeFailed(self, reason: str) -> None:
        assert self.transport is not None
        self._done(False, f"TLS: {reason}")
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def tlsData(self, data: bytes) -> None:
        pass

    def tlsReadClosed(self) -> None:
        pass

    def tlsError(self, reason: str) -> None:
        pass


class HealthChecker:
    """
    Checks every server of one pool every C{health_interval}.

    @ivar states: each member's L{HealthState}, for tests and metrics.
    @ivar _probes: the probe in flight for each member: a member is not
        probed again before its last probe ended (L{probeTimeout} makes
        that one interval at most).
    """

    _log = Logger()

    def __init__(self, pool: Pool, reactor: Any) -> None:
        config = pool.config
        self._pool = pool
        self._reactor = reactor
        self._kind = config.health_check
        self._interval = config.health_interval
        self._rise = config.health_rise
        self._fall = config.health_fall
        self._timeout = probeTimeout(self._interval)
        self._context = _clientContext() if self._kind == "tls" else None
        self.states: dict[Member, HealthState] = {}
        self._probes: dict[Member, _Probe] = {}
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """
        Check every server now, then every C{health_interval}.
        """
        loop = self._loop = LoopingCall(self._round)
        loop.clock = self._reactor
        loop.start(self._interval, now=True).addErrback(
            lambda failure: self._log.failure(
                "upstream {upstream}: health checks stopped",
                failure,
                upstream=self._pool.name,
            )
        )

    def stop(self) -> None:
        """
        No more checks: cancel the timer and every probe in flight.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        probes, self._probes = self._probes, {}
        for probe in probes.values():
            probe.cancel()

    def _round(self) -> None:
        members = self._pool.members()
        for gone in set(self.states) - set(members):
            del self.states[gone]
        for member in members:
            if member not in self._probes:
                self._probe(member)

    def _probe(self, member: Member) -> None:
        probe = _Probe(
            self._reactor,
            self._timeout,
            self._connectionFor(member),
            lambda passed, why: self._result(member, probe, passed, why),
        )
        self._probes[member] = probe
        probe.connector = connectServer(
            self._reactor, member.server, probe, self._timeout, probe.connectFailed
        )

    def _connectionFor(self, member: Member) -> SSL.Connection | None:
        if self._context is None:
            return None
        connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        name = self._pool.config.tls_server_name or member.configured.host
        if name is not None and not isAddress(name):
            connection.set_tlsext_host_name(name.encode("ascii"))
        return connection

    def _result(
        self, member: Member, probe: _Probe, passed: bool | None, why: str
    ) -> None:
        if self._probes.get(member) is not probe:
            return  # stopped: a cancelled probe has no verdict
        del self._probes[member]
        if passed is None:
            self._log.warn(
                "upstream {upstream}: server {server} not checked: {why}",
                upstream=self._pool.name,
                server=member.key,
                why=why,
            )
            return
        before = self.states.get(member, HealthState())
        after = before.observe(passed, self._rise, self._fall)
        self.states[member] = after
        member.checkError = None if passed else why
        if after.up == before.up:
            return
        member.downSince = None if after.up else self._reactor.seconds()
        self._pool.setHealthy(member, after.up)
        if after.up:
            self._log.info(
                "upstream {upstream}: server {server} is up (health check: {why})",
                upstream=self._pool.name,
                server=member.key,
                why=why,
            )
        else:
            self._log.warn(
                "upstream {upstream}: server {server} is down (health check: {why})",
                upstream=self._pool.name,
                server=member.key,
                why=why,
            )
