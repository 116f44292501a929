"""
L{gateway.protocols.mysql.strategy.verdictFor}: a MySQL client is refused
or routed by L{gateway.rules.decision.decide}, the one place every
protocol's refusals come from, with a real listener policy.
"""

from __future__ import annotations

from gateway.config import ListenerConfig, RouteConfig
from gateway.core.vocabulary import Action, Status
from gateway.protocols.mysql.strategy import verdictFor
from gateway.rules.decision import Policy, Reject, Relay
from gateway.wire.clienthello import ClientHello

FINGERPRINT = "t13d1516h2_8daaf6152771_b0da82dd1658"


def policy(acme: bool = False, **keys: object) -> Policy:
    keys.setdefault(
        "routes",
        (RouteConfig("db.example.com", "db"), RouteConfig("default", "main")),
    )
    config = ListenerConfig(
        name="mysql",
        listen=("tcp:3306",),
        protocol="mysql",
        mode="terminate",
        **keys,  # type: ignore[arg-type]
    )
    return Policy.fromConfig(config, (lambda name: True) if acme else None)


def test_aHelloGoesWhereItsServerNameRoutes() -> None:
    hello = ClientHello("db.example.com")
    assert verdictFor(policy(), hello, None) == Relay(
        Action.TERMINATE, "db", "db.example.com"
    )


def test_aHelloWithoutARouteIsNoRoute() -> None:
    rules = policy(routes=(RouteConfig("db.example.com", "db"),))
    assert verdictFor(rules, ClientHello("other.example.com"), None) == Reject(
        Status.NO_ROUTE, "no route for server name 'other.example.com'"
    )
    assert verdictFor(rules, ClientHello(None), None) == Reject(
        Status.NO_ROUTE, "no server name (SNI) and no default route"
    )


def test_aDeniedFingerprintIsDenied() -> None:
    rules = policy(deny_ja4=(FINGERPRINT.upper(),))
    verdict = verdictFor(rules, ClientHello("db.example.com"), FINGERPRINT)
    assert verdict == Reject(
        Status.DENIED, f"JA4 fingerprint {FINGERPRINT} is in deny_ja4"
    )
    assert isinstance(
        verdictFor(rules, ClientHello("db.example.com"), "t13d0000_x_y"), Relay
    )


def test_aPlaintextLoginIsRefusedWithoutAllowPlaintext() -> None:
    assert verdictFor(policy(), None, None) == Reject(
        Status.PLAINTEXT_REFUSED,
        "client sent a login without TLS (allow_plaintext is off)",
    )


def test_anAllowedPlaintextLoginGoesToTheDefaultRoute() -> None:
    rules = policy(allow_plaintext=True)
    verdict = verdictFor(rules, None, None)
    assert isinstance(verdict, Relay)
    assert verdict.upstream == "main"


def test_anAllowedPlaintextLoginWithoutADefaultRouteIsNoRoute() -> None:
    rules = policy(allow_plaintext=True, routes=(RouteConfig("db.example.com", "db"),))
    assert verdictFor(rules, None, None) == Reject(
        Status.NO_ROUTE, "plaintext login: no default route"
    )


def test_anAcmeValidationInsideMySQLIsRefused() -> None:
    hello = ClientHello("db.example.com", alpn=("acme-tls/1",))
    verdict = verdictFor(policy(acme=True), hello, None)
    assert isinstance(verdict, Reject)
    assert verdict.status is Status.DENIED
    assert "ACME" in verdict.reason
