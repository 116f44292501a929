"""
The pieces both converters share: ordered allow/deny rules into the
gateway's lists, durations, and the checks of the whole before writing.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.convert.draft import (
    AccessRule,
    Draft,
    Note,
    accessLists,
    formatDuration,
)
from gateway.config import parseConfigText
from gateway.core.units import parseDuration

NETWORKS = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "192.168.0.0/24",
    "192.168.0.7/32",
]
CLIENTS = [
    "10.0.0.1",
    "10.1.0.1",
    "10.1.2.3",
    "192.168.0.7",
    "192.168.0.9",
    "172.16.0.1",
]


def firstMatch(rules: list[AccessRule], client: str) -> bool:
    """What NGINX and HAProxy do: the first rule that matches decides."""
    address = ipaddress.ip_address(client)
    for rule in rules:
        if rule.networks is None or any(
            address in ipaddress.ip_network(n) for n in rule.networks
        ):
            return rule.allow
    return True


def gatewayAllows(allow: list[str], deny: list[str], client: str) -> bool:
    """What the gateway does: deny wins; with allow set, only allow passes."""
    address = ipaddress.ip_address(client)

    def inside(networks: list[str]) -> bool:
        return any(n == "all" or address in ipaddress.ip_network(n) for n in networks)

    if inside(deny):
        return False
    return not allow or inside(allow)


rules = st.lists(
    st.builds(
        AccessRule,
        st.booleans(),
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=2).map(tuple),
        ),
        st.integers(1, 99),
        st.just("rule"),
    ),
    max_size=6,
)


@given(rules)
def test_gatewayListsNeverLetInWhatFirstMatchRefuses(ordered: list[AccessRule]) -> None:
    notes: list[Note] = []
    allow, deny = accessLists(ordered, notes)
    for client in CLIENTS:
        if not firstMatch(ordered, client):
            assert not gatewayAllows(allow, deny, client), (client, allow, deny)


@given(rules)
def test_withoutNotesTheListsAgreeExactly(ordered: list[AccessRule]) -> None:
    notes: list[Note] = []
    allow, deny = accessLists(ordered, notes)
    if not notes:
        for client in CLIENTS:
            assert gatewayAllows(allow, deny, client) == firstMatch(ordered, client)


def test_allowThenDenyAllIsAnAllowList() -> None:
    ordered = [
        AccessRule(False, ("10.1.2.3/32",), 1, "deny 10.1.2.3"),
        AccessRule(True, ("10.0.0.0/8",), 2, "allow 10.0.0.0/8"),
        AccessRule(False, None, 3, "deny all"),
    ]
    assert accessLists(ordered, []) == (["10.0.0.0/8"], ["10.1.2.3/32"])


@given(st.floats(min_value=0.001, max_value=10**7, allow_nan=False))
def test_formattedDurationsParseNoShorter(seconds: float) -> None:
    parsed = parseDuration(formatDuration(seconds))
    assert seconds <= parsed < seconds + 0.001 + 1e-9


def test_renderDropsWhatWouldNotLoadAndSaysSo() -> None:
    draft = Draft("x.conf", "nginx")
    empty = draft.addUpstream("empty", 3, "upstream empty")
    good = draft.addUpstream("good", 5, "upstream good")
    good.servers.append("10.0.0.1:443")
    first = draft.addListener("one", 7, "server")
    first.listen.append(("tcp:443", 8))
    first.routes += [
        ("a.example.com", empty.name, 9),
        ("b.example.com", good.name, 10),
        ("B.example.com.", good.name, 11),
        ("*.*.example.com", good.name, 12),
    ]
    second = draft.addListener("one", 14, "server")
    second.listen.append(("tcp:443", 15))
    second.upstream = good.name
    ini = draft.render()
    config = parseConfigText(ini, "/etc/tlsgateway/x.ini")
    assert [listener.name for listener in config.listeners] == ["one"]
    assert [r.pattern for r in config.listeners[0].routes] == ["b.example.com"]
    assert [n.line for n in draft.notes] == [3, 9, 12, 14, 15]
    assert "#   x.conf:15: tcp:443: already the address of [listener:one]" in ini
