"""
L{gateway.rules.decision}: every rule that refuses or routes a client, on plain
data: no connection, no reactor, no TLS library.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ListenerConfig, RouteConfig
from gateway.core.ratelimit import parseRate
from gateway.core.vocabulary import Action, Status
from gateway.rules.decision import (
    ACCEPTED,
    ADMIT,
    BY_STATUS,
    CHALLENGE,
    PROXIED,
    Plaintext,
    Policy,
    Reject,
    Relay,
    decide,
)
from gateway.wire.alerts import AlertDescription
from gateway.wire.clienthello import ClientHello

HELLO = ClientHello("db.example.com", supportedVersions=(0x0304, 0x0303))


def policy(**keys: object) -> Policy:
    keys.setdefault("upstream", None if "routes" in keys else "app")
    config = ListenerConfig(name="web", listen=("tcp:443",), **keys)  # type: ignore[arg-type]
    return Policy.fromConfig(config)


def networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def test_anOpenListenerAdmitsAndRelaysToItsUpstream() -> None:
    rules = policy()
    assert decide(rules, ACCEPTED, "198.51.100.7") is ADMIT
    assert decide(rules, HELLO, "198.51.100.7") == Relay(Action.PASSTHROUGH, "app")


def test_denyWinsOverAllow() -> None:
    rules = policy(allow=networks("10.0.0.0/8"), deny=networks("10.1.0.0/16"))
    assert decide(rules, ACCEPTED, "10.2.3.4") is ADMIT
    assert decide(rules, ACCEPTED, "10.1.3.4") == Reject(
        Status.DENIED, "10.1.3.4 is refused by allow/deny"
    )
    assert decide(rules, ACCEPTED, "192.0.2.1").status is Status.DENIED  # type: ignore[union-attr]


def test_aMappedIPv4ClientMatchesIPv4Networks() -> None:
    rules = policy(deny=networks("192.0.2.0/24"))
    verdict = decide(rules, ACCEPTED, "::ffff:192.0.2.1")
    assert isinstance(verdict, Reject)
    assert verdict.status is Status.DENIED


def test_aUnixClientPassesUnlessAllowIsSet() -> None:
    assert decide(policy(deny=networks("0.0.0.0/0")), ACCEPTED, "unix") is ADMIT
    verdict = decide(policy(allow=networks("0.0.0.0/0")), ACCEPTED, "unix")
    assert isinstance(verdict, Reject)
    assert verdict.status is Status.DENIED


def test_limits() -> None:
    rules = policy(max_connections=2, max_connections_per_client=1)
    assert decide(rules, ACCEPTED, "a", admitted=1, fromClient=0) is ADMIT
    assert decide(rules, ACCEPTED, "a", admitted=2) == Reject(
        Status.LIMITED, "max_connections: 2 connections already open"
    )
    assert decide(rules, ACCEPTED, "a", fromClient=1) == Reject(
        Status.LIMITED, "max_connections_per_client: 1 connections already open from a"
    )


def test_theRateBucketsAnswer() -> None:
    rules = policy(max_connection_rate=parseRate("3/s"))
    assert decide(rules, ACCEPTED, "a", rateAllows=True) is ADMIT
    assert decide(rules, ACCEPTED, "a", rateAllows=False) == Reject(
        Status.LIMITED, "max_connection_rate: more than 3/s new connections from a"
    )


def test_withProxyProtocolTheClientWaitsForTheHeader() -> None:
    rules = policy(
        accept_proxy_protocol=True,
        proxy_protocol_from=networks("10.0.0.0/8"),
        deny=networks("203.0.113.0/24"),
        max_connections=1,
    )
    # The balancer itself is not filtered by allow/deny...
    assert decide(rules, ACCEPTED, "10.0.0.2") is ADMIT
    # ...but must be a listed sender...
    assert decide(rules, ACCEPTED, "192.0.2.1") == Reject(
        Status.DENIED,
        "192.0.2.1 is not in proxy_protocol_from: it may not send a PROXY header",
    )
    # ...and max_connections counts connections at accept.
    assert decide(rules, ACCEPTED, "10.0.0.2", admitted=1).status is Status.LIMITED  # type: ignore[union-attr]
    # The client the header names is the one filtered.
    assert decide(rules, PROXIED, "203.0.113.7").status is Status.DENIED  # type: ignore[union-attr]
    assert decide(rules, PROXIED, "198.51.100.7") is ADMIT


def test_denyJA4IsCaseInsensitive() -> None:
    rules = policy(deny_ja4=("T13D1516H2_8DAAF6152771_B0DA82DD1658",))
    verdict = decide(
        rules, HELLO, "", fingerprint="t13d1516h2_8daaf6152771_b0da82dd1658"
    )
    assert verdict == Reject(
        Status.DENIED,
        "JA4 fingerprint t13d1516h2_8daaf6152771_b0da82dd1658 is in deny_ja4",
    )


def test_routing() -> None:
    rules = policy(
        routes=(
            RouteConfig("db.example.com", "db", "terminate"),
            RouteConfig("ALPN:h2", "web"),
        ),
    )
    assert decide(rules, HELLO, "") == Relay(Action.TERMINATE, "db", "db.example.com")
    assert decide(rules, ClientHello("x.example", alpn=("h2",)), "") == Relay(
        Action.PASSTHROUGH, "web", "ALPN:h2"
    )
    assert decide(rules, ClientHello("x.example"), "") == Reject(
        Status.NO_ROUTE, "no route for server name 'x.example'"
    )
    # No SNI: said in words, never "None".
    refused = decide(rules, ClientHello(None), "")
    assert refused == Reject(
        Status.NO_ROUTE, "no server name (SNI) and no default route"
    )
    assert isinstance(refused, Reject)
    assert "None" not in refused.reason


def test_passthroughProtocolsRefusesWithProtocolVersionAfterRouting() -> None:
    rules = policy(passthrough_protocols=("TLSv1.2", "TLSv1.3"))
    tls10 = ClientHello("db.example.com", legacyVersion=0x0301)
    assert decide(rules, tls10, "") == Reject(
        Status.DENIED,
        "ClientHello offers TLSv1 (legacy_version, no supported_versions);"
        " passthrough_protocols allows TLSv1.2, TLSv1.3",
        alert=AlertDescription.PROTOCOL_VERSION,
        action=Action.PASSTHROUGH,
    )
    assert isinstance(decide(rules, HELLO, ""), Relay)


def test_acmeValidationsAreAnsweredOnlyForManagedNames() -> None:
    config = ListenerConfig(name="web", listen=("tcp:443",), upstream="app")
    rules = Policy.fromConfig(config, lambda name: name == "db.example.com")
    acme = ClientHello("db.example.com", alpn=("acme-tls/1",))
    assert decide(rules, acme, "") is CHALLENGE
    other = ClientHello("other.example", alpn=("acme-tls/1",))
    assert decide(rules, other, "") == Relay(Action.PASSTHROUGH, "app")


def test_plaintextPostgres() -> None:
    rules = policy(protocol="postgres", routes=(RouteConfig("db.example.com", "db"),))
    assert decide(rules, Plaintext(True, "startup"), "") == Reject(
        Status.PLAINTEXT_REFUSED,
        "client sent a startup message without TLS (allow_plaintext is off)",
    )
    assert decide(rules, Plaintext(False, "cancel request"), "") == Reject(
        Status.NO_ROUTE, "cancel request: no default route"
    )
    open_ = policy(protocol="postgres", allow_plaintext=True)
    assert decide(open_, Plaintext(True, "startup"), "") == Relay(
        Action.PASSTHROUGH, "app"
    )


def test_plaintextMySQLLogin() -> None:
    """A MySQL login without TLS is refused in its own words, by the same rule."""
    routes = (RouteConfig("db.example.com", "db"),)
    rules = policy(protocol="mysql", mode="terminate", routes=routes)
    login = Plaintext(True, "plaintext login", sent="a login")
    assert decide(rules, login, "") == Reject(
        Status.PLAINTEXT_REFUSED,
        "client sent a login without TLS (allow_plaintext is off)",
    )
    open_ = policy(
        protocol="mysql", mode="terminate", routes=routes, allow_plaintext=True
    )
    assert decide(open_, login, "") == Reject(
        Status.NO_ROUTE, "plaintext login: no default route"
    )


def test_aRejectsAlertIsTheStatusesByDefault() -> None:
    assert Reject(Status.DENIED, "x").alert is BY_STATUS


_octet = st.integers(0, 255)
_ipv4 = st.builds(lambda *o: ".".join(map(str, o)), _octet, _octet, _octet, _octet)


@given(
    client=_ipv4,
    admitted=st.integers(0, 5),
    fromClient=st.integers(0, 5),
    rateAllows=st.booleans(),
    maxConnections=st.none() | st.integers(1, 5),
    perClient=st.none() | st.integers(1, 5),
    denied=st.booleans(),
)
def test_atAcceptOneRuleRefusesOrTheClientIsAdmitted(
    client: str,
    admitted: int,
    fromClient: int,
    rateAllows: bool,
    maxConnections: int | None,
    perClient: int | None,
    denied: bool,
) -> None:
    """
    The verdict at accept is exactly what the rules say, in their order:
    allow/deny, then the rate, then the per-client and listener limits.
    """
    rules = policy(
        deny=networks("0.0.0.0/0") if denied else (),
        max_connection_rate=parseRate("1/s"),
        max_connections=maxConnections,
        max_connections_per_client=perClient,
    )
    verdict = decide(rules, ACCEPTED, client, admitted, fromClient, rateAllows)
    overPerClient = perClient is not None and fromClient >= perClient
    overListener = maxConnections is not None and admitted >= maxConnections
    if denied:
        assert isinstance(verdict, Reject)
        assert verdict.status is Status.DENIED
    elif not rateAllows or overPerClient or overListener:
        assert isinstance(verdict, Reject)
        assert verdict.status is Status.LIMITED
        if not rateAllows:
            assert verdict.reason.startswith("max_connection_rate")
        elif overPerClient:
            assert verdict.reason.startswith("max_connections_per_client")
    else:
        assert verdict is ADMIT


def test_greetingsStartWithTheDefaultRouteThenTheListenersOthers() -> None:
    """
    A MySQL listener's greeting may come from any of its upstreams, the
    default route's first, each once.
    """
    rules = policy(
        routes=(
            RouteConfig("a.example", "alpha"),
            RouteConfig("b.example", "beta"),
            RouteConfig("c.example", "alpha"),
            RouteConfig("default", "gamma"),
        )
    )
    assert rules.greetings() == ("gamma", "alpha", "beta")
    noDefault = policy(
        routes=(RouteConfig("a.example", "alpha"), RouteConfig("b.example", "beta"))
    )
    assert noDefault.greetings() == ("alpha", "beta")
    assert policy(upstream="app").greetings() == ("app",)
