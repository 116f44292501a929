"""
The balancing policies, on their own: pure code, plain candidates.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from gateway.core.balancers import (
    BALANCERS,
    ConsistentHash,
    IBalancer,
    LeastConnections,
    SmoothWeightedRoundRobin,
    TwoRandomChoices,
)


@attrs.define(eq=False)
class Server:
    """A candidate as the pool's members present themselves."""

    key: str
    weight: int = 1
    active: int = 0


def servers(*weights: int) -> list[Server]:
    return [Server("abcdefghij"[i], w) for i, w in enumerate(weights)]


def picks(
    balancer: IBalancer, candidates: Sequence[Server], count: int, key: str = ""
) -> str:
    chosen = [balancer.pick(candidates, key) for _ in range(count)]
    return "".join(c.key for c in chosen if c is not None)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_everyBalancerProvidesTheInterface(name: str) -> None:
    balancer = BALANCERS[name]()
    assert verifyObject(IBalancer, balancer)
    assert balancer.pick([], "192.0.2.1") is None
    only = Server("a")
    assert balancer.pick([only], "192.0.2.1") is only


def test_balanceValuesAreTheConfigurationChoices() -> None:
    assert set(BALANCERS) == {"round_robin", "least_conn", "random", "hash"}


# -- round_robin --------------------------------------------------------------


def test_weights511InterleaveAsNginxDoes() -> None:
    """
    NGINX's own example (the commit that introduced smooth weighted round
    robin): weights 5, 1, 1 give a a b a c a a, every cycle.
    """
    balancer = SmoothWeightedRoundRobin()
    assert picks(balancer, servers(5, 1, 1), 21) == "aabacaa" * 3


def test_equalWeightsAlternate() -> None:
    assert picks(SmoothWeightedRoundRobin(), servers(1, 1, 1), 7) == "abcabca"


@given(weights=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=6))
def test_eachCycleGivesEveryServerExactlyItsWeight(weights: list[int]) -> None:
    balancer = SmoothWeightedRoundRobin()
    candidates = servers(*weights)
    for _ in range(2):
        counts = Counter(picks(balancer, candidates, sum(weights)))
        assert [counts[s.key] for s in candidates] == weights


@given(weights=st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=6))
def test_smoothnessNoServerWaitsLongerThanItsShare(weights: list[int]) -> None:
    """
    Smooth: in any window of picks, each server's count stays within one
    of its exact share (NGINX's algorithm guarantees this; the naive
    "weight times in a row" does not).
    """
    balancer = SmoothWeightedRoundRobin()
    candidates = servers(*weights)
    total = sum(weights)
    sequence = picks(balancer, candidates, total)
    for server in candidates:
        for length in range(1, total + 1):
            share = server.weight * length / total
            counts = [
                sequence[start : start + length].count(server.key)
                for start in range(total - length + 1)
            ]
            assert all(abs(count - share) < 2 for count in counts)


def test_aServerThatDropsOutResumesWhereItWas() -> None:
    balancer = SmoothWeightedRoundRobin()
    a, b, c = servers(1, 1, 1)
    assert picks(balancer, [a, b, c], 2) == "ab"
    # c was owed the third turn and keeps its credit while b is out, so it
    # takes both picks; with b back, the cycle evens out.
    assert picks(balancer, [a, c], 2) == "cc"
    assert picks(balancer, [a, b, c], 3) == "acb"


# -- least_conn ----------------------------------------------------------------


def test_leastConnPicksTheFewestActivePerWeight() -> None:
    a, b, c = servers(1, 1, 1)
    a.active, b.active, c.active = 3, 1, 2
    assert LeastConnections().pick([a, b, c], "") is b


def test_leastConnIsWeighted() -> None:
    """3 connections on weight 4 is less load than 1 on weight 1."""
    heavy, light = Server("heavy", 4, 3), Server("light", 1, 1)
    assert LeastConnections().pick([heavy, light], "") is heavy
    heavy.active = 5
    assert LeastConnections().pick([heavy, light], "") is light


def test_leastConnTiesGoWeightedRoundRobin() -> None:
    balancer = LeastConnections()
    assert picks(balancer, servers(1, 1, 1), 6) == "abcabc"
    assert picks(LeastConnections(), servers(5, 1, 1), 7) == "aabacaa"


def test_leastConnSteersAwayFromABusyServer() -> None:
    """
    Connections that stay open: each pick adds one.  The server that
    starts busy gets nothing until the others have caught up with it.
    """
    balancer = LeastConnections()
    candidates = servers(1, 1, 1)
    candidates[0].active = 10
    for _ in range(20):
        chosen = balancer.pick(candidates, "")
        assert isinstance(chosen, Server)
        chosen.active += 1
    assert [s.active for s in candidates] == [10, 10, 10]
    chosen = balancer.pick(candidates, "")
    assert chosen is not None


# -- random (two choices) --------------------------------------------------------


def test_twoChoicesNeverPickTheBusiestOfThree() -> None:
    """
    Two distinct servers are compared, so the single most loaded one can
    never win.
    """
    balancer = TwoRandomChoices(random.Random(1))
    candidates = servers(1, 1, 1)
    candidates[1].active = 50
    counts = Counter(picks(balancer, candidates, 1000))
    assert counts["b"] == 0
    assert 400 < counts["a"] < 600


def test_twoChoicesPreferTheLessLoaded() -> None:
    balancer = TwoRandomChoices(random.Random(2))
    a, b = servers(1, 1)
    a.active = 1
    assert picks(balancer, [a, b], 50) == "b" * 50


def test_twoChoicesFollowWeightsWhenIdle() -> None:
    """
    With every server idle the first draw wins the tie, and it is drawn
    in proportion to weight: the distribution is the weights'.
    """
    balancer = TwoRandomChoices(random.Random(3))
    counts = Counter(picks(balancer, servers(3, 1), 4000))
    assert 2800 < counts["a"] < 3200


def test_twoChoicesDrawInProportionToWeight() -> None:
    """Under load, too, a heavier server is compared more often."""
    balancer = TwoRandomChoices(random.Random(4))
    candidates = servers(6, 1, 1)
    for _ in range(800):
        chosen = balancer.pick(candidates, "")
        assert isinstance(chosen, Server)
        chosen.active += 1
    # Load per unit of weight ends up about equal: 600 : 100 : 100.
    assert [s.active for s in candidates] == pytest.approx([600, 100, 100], abs=25)


# -- hash ------------------------------------------------------------------------

CLIENTS = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10000)]


def assign(balancer: IBalancer, candidates: Sequence[Server]) -> dict[str, str]:
    result = {}
    for client in CLIENTS:
        chosen = balancer.pick(candidates, client)
        assert chosen is not None
        result[client] = chosen.key
    return result


def named(count: int) -> list[Server]:
    return [Server(f"192.0.2.{i}:443") for i in range(1, count + 1)]


def test_hashKeepsAClientOnItsServer() -> None:
    balancer = ConsistentHash()
    candidates = named(5)
    first = assign(balancer, candidates)
    assert assign(balancer, candidates) == first
    # A fresh balancer (another worker, a restart) agrees: no process salt.
    assert assign(ConsistentHash(), list(reversed(candidates))) == first


def test_hashSpreadsClientsEvenly() -> None:
    counts = Counter(assign(ConsistentHash(), named(5)).values())
    # 160 points per server: each share is within 25% of the fair 2000.
    assert all(1500 < n < 2500 for n in counts.values()), counts


def test_hashSharesFollowWeights() -> None:
    heavy, light = Server("192.0.2.1:443", 3), Server("192.0.2.2:443", 1)
    counts = Counter(assign(ConsistentHash(), [heavy, light]).values())
    assert 0.68 < counts[heavy.key] / len(CLIENTS) < 0.82, counts


def test_removingOneOfFiveServersMovesOnlyItsClients() -> None:
    balancer = ConsistentHash()
    candidates = named(5)
    before = assign(balancer, candidates)
    removed = candidates.pop(2)
    after = assign(balancer, candidates)
    moved = [c for c in CLIENTS if before[c] != after[c]]
    assert all(before[c] == removed.key for c in moved)
    assert len(moved) == sum(1 for v in before.values() if v == removed.key)
    assert 0.13 < len(moved) / len(CLIENTS) < 0.27  # about 1/5


def test_addingASixthServerMovesAboutASixthToIt() -> None:
    before = assign(ConsistentHash(), named(5))
    balancer = ConsistentHash()
    after = assign(balancer, named(6))
    moved = [c for c in CLIENTS if before[c] != after[c]]
    assert all(after[c] == "192.0.2.6:443" for c in moved)
    assert 0.11 < len(moved) / len(CLIENTS) < 0.23  # about 1/6


@settings(max_examples=50, deadline=None)
@given(
    count=st.integers(min_value=2, max_value=8),
    data=st.data(),
    clients=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=30),
)
def test_hashMovesNoClientOfAServerThatStays(
    count: int, data: st.DataObject, clients: list[str]
) -> None:
    """
    Whatever subset of servers is left (failures, removals), a client
    whose server is still there stays on it.
    """
    candidates = named(count)
    left = data.draw(
        st.lists(st.sampled_from(candidates), min_size=1, unique=True), label="left"
    )
    balancer = ConsistentHash()
    for client in clients:
        full = balancer.pick(candidates, client)
        assert full is not None
        part = balancer.pick(left, client)
        if full in left:
            assert part is full
        else:
            assert part in left
