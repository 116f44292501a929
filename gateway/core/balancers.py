"""
Load-balancing policies: which server of a pool takes the next connection.

Each policy is an L{IBalancer}, named in L{BALANCERS} by the value an
operator writes as C{balance =} in an C{[upstream:NAME]} section.  A
balancer only I{chooses}: the pool (L{gateway.connection.upstream.Pool}) decides which
servers are candidates (usable, not yet tried for this connection, backups
only when no primary is left) and keeps the counts the choice reads.

The algorithms are NGINX's, so an operator who knows C{upstream} blocks
gets what they expect:

  - C{round_robin}: smooth weighted round robin (NGINX's
    C{ngx_http_upstream_get_peer}), which interleaves: weights 5:1:1 give
    C{a a b a c a a}, not C{a a a a a b c}.
  - C{least_conn}: fewest active connections per unit of weight; ties
    are broken by smooth weighted round robin among the tied servers.
  - C{random}: NGINX's C{random two least_conn}: two servers drawn at
    random in proportion to their weights, the less loaded one wins.
  - C{hash}: consistent hashing of the client address on a ring of
    virtual nodes (ketama, as NGINX's C{hash ... consistent}), so that
    adding or removing one of N servers moves about 1/N of the clients.

This module is pure: no Twisted, no clock, no sockets.  Randomness is
injectable so tests are deterministic.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from zope.interface import Interface, implementer

__all__ = [
    "BALANCERS",
    "Candidate",
    "ConsistentHash",
    "IBalancer",
    "LeastConnections",
    "SmoothWeightedRoundRobin",
    "TwoRandomChoices",
]


class Candidate(Protocol):
    """
    What a balancer reads of a server: provided by the pool's members.

    @ivar key: a stable identity (the server's C{host:port}): the hash ring
        is built from it, so the same client lands on the same server in
        every worker and after every restart.
    @ivar weight: the server's C{weight}, at least 1.
    @ivar active: connections the pool counts as open to it now.
    """

    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def active(self) -> int: ...


class IBalancer(Interface):
    """
    Chooses the server for the next connection of one pool.

    One provider exists per pool, so it may keep state; it is only called
    from the reactor thread, so it needs no locks.  State is kept per
    candidate, never per position, because the candidate list changes from
    one call to the next as servers fail, recover or are excluded.
    """

    def pick(candidates: Sequence[Candidate], clientKey: str) -> Candidate | None:
        """
        @param candidates: the servers that may take this connection, in
            configuration order.  May be empty.
        @param clientKey: the client's address, for policies that must keep
            one client on one server.
        @return: one of C{candidates}, or L{None} when it is empty.
        """


def _lessLoaded(a: Candidate, b: Candidate) -> int:
    """
    Compare C{active / weight} without division: negative when C{a} is
    less loaded than C{b}, zero when equal.  Integers, so ties are exact
    and the round robin among tied servers is what breaks them.
    """
    return a.active * b.weight - b.active * a.weight


@implementer(IBalancer)
class SmoothWeightedRoundRobin:
    """
    NGINX's smooth weighted round robin.

    On each pick every candidate's current weight grows by its weight; the
    largest wins (the first on a tie) and gives back the total.  Over one
    cycle each server is chosen exactly C{weight} times, spread out.

    @ivar _current: the current weight of each candidate ever seen.  A
        server that drops out keeps its value, as in NGINX, and resumes
        from it when it comes back.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Candidate], clientKey: str) -> Candidate | None:
        best: Candidate | None = None
        bestCurrent = 0
        total = 0
        current = self._current
        for candidate in candidates:
            value = current.get(candidate.key, 0) + candidate.weight
            current[candidate.key] = value
            total += candidate.weight
            if best is None or value > bestCurrent:
                best, bestCurrent = candidate, value
        if best is not None:
            current[best.key] = bestCurrent - total
        return best


@implementer(IBalancer)
class LeastConnections:
    """
    The candidate with the fewest active connections per unit of weight.

    Ties (common: every idle server has zero) go round robin, weighted, so
    a quiet pool still spreads its connections as C{round_robin} would.
    """

    def __init__(self) -> None:
        self._tieBreak = SmoothWeightedRoundRobin()

    def pick(self, candidates: Sequence[Candidate], clientKey: str) -> Candidate | None:
        tied: list[Candidate] = []
        for candidate in candidates:
            order = _lessLoaded(candidate, tied[0]) if tied else -1
            if order < 0:
                tied = [candidate]
            elif order == 0:
                tied.append(candidate)
        if len(tied) <= 1:
            return tied[0] if tied else None
        return self._tieBreak.pick(tied, clientKey)


@implementer(IBalancer)
class TwoRandomChoices:
    """
    Two candidates drawn at random, in proportion to their weights; the one
    with fewer active connections per unit of weight wins.

    On a tie the first drawn wins, which NGINX does the other way round:
    the first draw alone is in proportion to weight, so an idle pool (where
    every comparison is a tie) is spread by weight, whereas the second
    draw of a pair of 3:1 servers is the light one three times in four.

    Two choices instead of one keep a pool balanced even when many
    gateways (or workers) choose independently and none sees the whole
    load, without the herd that C{least_conn} in each of them would cause.

    @ivar _random: the source of randomness; a seeded one in tests.  Load
        spreading needs no unpredictability, only uniformity.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng if rng is not None else random.Random()  # noqa: S311

    def _draw(self, candidates: Sequence[Candidate]) -> int:
        total = 0
        edges = []
        for candidate in candidates:
            total += candidate.weight
            edges.append(total)
        return bisect.bisect_right(edges, self._random.randrange(total))

    def pick(self, candidates: Sequence[Candidate], clientKey: str) -> Candidate | None:
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        first = self._draw(candidates)
        others = [c for i, c in enumerate(candidates) if i != first]
        a, b = candidates[first], others[self._draw(others)]
        return b if _lessLoaded(b, a) < 0 else a


def _point(text: str) -> int:
    """
    A position on the ring: 64 bits of BLAKE2b, so points are spread
    evenly and are the same in every process (Python's C{hash()} of a
    string is salted per process).
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


@implementer(IBalancer)
class ConsistentHash:
    """
    Consistent hashing of the client address over a ring of virtual nodes.

    Each server owns C{POINTS_PER_WEIGHT * weight} points, placed by
    hashing C{"<key>#<n>"}; a client goes to the owner of the first point
    at or after its own hash, walking on past servers that are not
    candidates.  Walking past is the same as building a ring of the
    candidates only, so a server that fails, or is removed, moves just
    its own clients: about 1/N of them.

    @ivar _points: sorted positions of every point of every server seen.
    @ivar _owners: the key of the server owning each point of C{_points}.
    @ivar _known: the C{(key, weight)} of every server on the ring; a new
        server (a fresh DNS answer) rebuilds the ring, which is rare.
    """

    #: 160 points per unit of weight, as ketama and NGINX use: each server's
    #: share of the ring is then within a few percent of its weight's share.
    POINTS_PER_WEIGHT = 160

    def __init__(self) -> None:
        self._points: list[int] = []
        self._owners: list[str] = []
        self._known: set[tuple[str, int]] = set()

    def _learn(self, candidates: Sequence[Candidate]) -> None:
        new = {(c.key, c.weight) for c in candidates} - self._known
        if not new:
            return
        self._known |= new
        ring = sorted(
            (_point(f"{key}#{n}"), key)
            for key, weight in self._known
            for n in range(self.POINTS_PER_WEIGHT * weight)
        )
        self._points = [point for point, _ in ring]
        self._owners = [key for _, key in ring]

    def pick(self, candidates: Sequence[Candidate], clientKey: str) -> Candidate | None:
        if not candidates:
            return None
        self._learn(candidates)
        byKey = {c.key: c for c in candidates}
        count = len(self._points)
        start = bisect.bisect_left(self._points, _point(clientKey))
        for step in range(count):
            owner = byKey.get(self._owners[(start + step) % count])
            if owner is not None:
                return owner
        raise AssertionError("every candidate has points on the ring")


#: C{balance =} values, as C{[upstream:NAME]} sections name them.  A table,
#: not plugin discovery: that can come when a second package ships one.
BALANCERS: Mapping[str, Callable[[], IBalancer]] = {
    "round_robin": SmoothWeightedRoundRobin,
    "least_conn": LeastConnections,
    "random": TwoRandomChoices,
    "hash": ConsistentHash,
}
