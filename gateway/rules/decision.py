"""
What happens to a client connection, decided from plain data.

This is the one place to change to refuse (or admit) a client: address
filtering (C{allow}/C{deny}, C{proxy_protocol_from}), the limits
(C{max_connections}, C{max_connections_per_client}, the
C{max_connection_rate} bucket's answer), C{deny_ja4}, ACME C{tls-alpn-01}
validations, routing and C{passthrough_protocols}.  L{decide} takes the
listener's L{Policy} (its configuration and compiled router), what was
seen of the connection so far, the client's address and the counters,
and returns a verdict; the Twisted side (L{gateway.connection.listener}) only
carries it out.  Pure: no Twisted, no OpenSSL, no I/O, no clock, so every
rule is tested without a connection (C{tests/rules/test_decision.py}).

Decisions are taken at three moments, each named by what was seen:

  - L{Accepted}: the connection was just accepted; nothing is read yet.
  - L{Proxied}: its PROXY header named the client (C{accept_proxy_protocol}).
  - a L{ClientHello} (with its JA4 fingerprint), or L{Plaintext}: a client
    of a C{protocol = postgres} or C{mysql} listener that started without TLS.

The verdicts: L{ADMIT} (read on), a L{Relay} (passthrough, terminate or
relay as TCP, to an upstream), L{CHALLENGE} (answer an ACME validation
here), or a L{Reject} with its status, reason and TLS alert.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import Final, Literal

import attrs

from gateway.config import PASSTHROUGH_VERSIONS, ListenerConfig
from gateway.core.routing import Router
from gateway.core.vocabulary import Action, Status
from gateway.wire.alerts import AlertDescription
from gateway.wire.clienthello import ClientHello, isGrease


class _ByStatus(enum.Enum):
    BY_STATUS = "by-status"


BY_STATUS: Final = _ByStatus.BY_STATUS
"""
A L{Reject}'s default alert: the one L{gateway.wire.alerts.STATUS_ALERTS} gives
its status.
"""

Alert = AlertDescription | Literal[_ByStatus.BY_STATUS] | None


@attrs.frozen
class Accepted:
    """
    Seen: a connection was accepted; C{client} is its peer.
    """


@attrs.frozen
class Proxied:
    """
    Seen: the PROXY header was read; C{client} is the address it named (or
    the peer's, for a header without one).
    """


@attrs.frozen
class Plaintext:
    """
    Seen: a C{protocol = postgres} or C{mysql} client started without TLS.

    @ivar startup: it sent a startup message or a login (not a
        PostgreSQL C{CancelRequest}): refused unless C{allow_plaintext}.
    @ivar description: what it sent, for a refusal's reason.
    @ivar sent: the same, in the words of a C{plaintext_refused} reason.
    """

    startup: bool
    description: str
    sent: str = "a startup message"


Seen = Accepted | Proxied | ClientHello | Plaintext

ACCEPTED: Final = Accepted()
PROXIED: Final = Proxied()


@attrs.frozen
class Admit:
    """
    Verdict: go on reading the connection.
    """


@attrs.frozen
class Challenge:
    """
    Verdict: the ClientHello is an ACME C{tls-alpn-01} validation of a
    name the gateway orders a certificate for: answer it here.
    """


ADMIT: Final = Admit()
CHALLENGE: Final = Challenge()


@attrs.frozen
class Relay:
    """
    Verdict: take the connection to C{upstream}.

    @ivar action: passthrough, terminate then relay, or relay as TCP.
    @ivar pattern: the route's pattern, or C{""} for a listener's single
        C{upstream} (a verdict is a routable: the compiled router holds
        verdicts, built once per listener, not one per connection).
    """

    action: Action
    upstream: str
    pattern: str = ""


@attrs.frozen
class Reject:
    """
    Verdict: end the connection before it reaches any upstream.

    @ivar alert: the TLS alert for a client that speaks TLS: L{BY_STATUS}
        (the status's own), a given one, or L{None} for none.
    @ivar action: the route's action, for a refusal after routing (the
        access log shows what the connection was routed to).
    """

    status: Status
    reason: str
    alert: Alert = BY_STATUS
    action: Action | None = None


Verdict = Admit | Relay | Challenge | Reject


def _ipOf(clientKey: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The IP address of a client key, an IPv4 client on an IPv6 socket
    (C{::ffff:192.0.2.1}) as the IPv4 address it is; L{None} for a client
    without one (a UNIX socket).
    """
    try:
        ip = ipaddress.ip_address(clientKey.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_VERSION_NAMES = {code: name for name, code in PASSTHROUGH_VERSIONS.items()} | {
    0x0300: "SSLv3"
}


def _versionName(code: int) -> str:
    return _VERSION_NAMES.get(code, f"0x{code:04x}")


def offeredVersions(hello: ClientHello) -> tuple[tuple[int, ...], str]:
    """
    The protocol versions a ClientHello offers, and where they come from:
    its supported_versions extension (GREASE skipped), or, without one, its
    C{legacy_version}, which is then the one version it asks for.
    """
    versions = tuple(v for v in hello.supportedVersions if not isGrease(v))
    if versions:
        return versions, "supported_versions"
    return (hello.legacyVersion,), "legacy_version, no supported_versions"


def _noManagedNames(serverName: str | None) -> bool:
    return False


@attrs.frozen
class Policy:
    """
    One listener's rules, compiled once per configuration generation.

    @ivar router: the routes as L{Relay} verdicts, or L{None} for a
        listener with a single C{upstream} (then L{single}).
    @ivar acmeManages: whether the gateway orders a certificate for a
        server name (its C{tls-alpn-01} validations are answered here).
    @ivar unrestricted: no address filter and no limit but perhaps the
        rate: a client is admitted at accept without another look (the
        common case, kept cheap).
    """

    config: ListenerConfig
    router: Router[Relay] | None
    single: Relay | None
    denyJA4: frozenset[str]
    passthroughVersions: frozenset[int] | None
    acmeManages: Callable[[str | None], bool] = _noManagedNames
    unrestricted: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        object.__setattr__(
            self,
            "unrestricted",
            not (
                config.allow
                or config.deny
                or config.max_connections is not None
                or config.max_connections_per_client is not None
                or (config.accept_proxy_protocol and config.proxy_protocol_from)
            ),
        )

    @classmethod
    def fromConfig(
        cls,
        config: ListenerConfig,
        acmeManages: Callable[[str | None], bool] | None = None,
    ) -> Policy:
        mode = Action(config.mode)
        router = (
            Router(
                [
                    Relay(Action(route.action or mode), route.upstream, route.pattern)
                    for route in config.routes
                ]
            )
            if config.routes
            else None
        )
        single = None if config.upstream is None else Relay(mode, config.upstream)
        return cls(
            config,
            router,
            single,
            frozenset(f.lower() for f in config.deny_ja4),
            None
            if config.passthrough_protocols is None
            else frozenset(
                PASSTHROUGH_VERSIONS[p] for p in config.passthrough_protocols
            ),
            _noManagedNames if acmeManages is None else acmeManages,
        )

    def permitted(self, clientKey: str) -> bool:
        """
        C{deny} wins; with C{allow} set, only what it lists passes.  An
        IPv4 client on an IPv6 socket (C{::ffff:192.0.2.1}) is matched as
        the IPv4 address it is.  A client without an IP address (a UNIX
        socket) matches no network: it passes unless C{allow} is set.
        """
        config = self.config
        if not (config.allow or config.deny):
            return True
        ip = _ipOf(clientKey)
        if ip is None:
            return not config.allow
        if any(ip in network for network in config.deny):
            return False
        return not config.allow or any(ip in network for network in config.allow)

    def route(self, serverName: str | None, alpn: tuple[str, ...] = ()) -> Relay | None:
        """
        The relay for a server name (and offered ALPN): the listener's
        single C{upstream}, or its matching route; L{None} for none.
        """
        if self.router is None:
            return self.single
        return self.router.match(serverName, alpn)

    def greetings(self) -> tuple[str, ...]:
        """
        The upstreams whose servers may greet a client before it is routed
        (a C{protocol = mysql} listener), in the order to try them:
        C{upstream}, or the C{default} route's (the first route's without
        one), then every other upstream of the listener's routes, once each.
        """
        if self.router is None:
            assert self.single is not None
            return (self.single.upstream,)
        default = self.router.match(None)
        first = (default or self.config.routes[0]).upstream
        others = (route.upstream for route in self.config.routes)
        return tuple(dict.fromkeys((first, *others)))


def decide(
    policy: Policy,
    seen: Seen,
    client: str,
    admitted: int = 0,
    fromClient: int = 0,
    rateAllows: bool = True,
    fingerprint: str | None = None,
) -> Verdict:
    """
    Decide what happens to a connection, from what was C{seen} of it.

    @param client: the client key (its IP address, C{unix} for a UNIX
        socket): the peer's, or the one its PROXY header named.
    @param admitted: connections the listener counts against
        C{max_connections} (consulted at L{Accepted}).
    @param fromClient: connections open from C{client}
        (C{max_connections_per_client}).
    @param rateAllows: the C{max_connection_rate} bucket's answer for
        C{client}, taken when the client became known.
    @param fingerprint: the ClientHello's JA4 fingerprint.
    """
    if policy.unrestricted and rateAllows and (seen is ACCEPTED or seen is PROXIED):
        return ADMIT
    config = policy.config
    if seen is ACCEPTED or isinstance(seen, Accepted):
        if config.accept_proxy_protocol:
            senders = config.proxy_protocol_from
            if senders:
                ip = _ipOf(client)
                if ip is None or not any(ip in network for network in senders):
                    return Reject(
                        Status.DENIED,
                        f"{client} is not in proxy_protocol_from: it may not"
                        " send a PROXY header",
                    )
            # The client is not known until the PROXY header is read.
            return _full(config, admitted) or ADMIT
        return (
            _excluded(policy, client, fromClient, rateAllows)
            or _full(config, admitted)
            or ADMIT
        )
    if isinstance(seen, Proxied):
        return _excluded(policy, client, fromClient, rateAllows) or ADMIT
    if isinstance(seen, Plaintext):
        return _plaintext(policy, seen)
    return _hello(policy, seen, fingerprint)


def _full(config: ListenerConfig, admitted: int) -> Reject | None:
    limit = config.max_connections
    if limit is not None and admitted >= limit:
        return Reject(
            Status.LIMITED, f"max_connections: {limit} connections already open"
        )
    return None


def _excluded(
    policy: Policy, client: str, fromClient: int, rateAllows: bool
) -> Reject | None:
    """
    Address filtering first: a refused client is C{denied} whatever the
    limits say.
    """
    config = policy.config
    if not policy.permitted(client):
        return Reject(Status.DENIED, f"{client} is refused by allow/deny")
    if not rateAllows:
        return Reject(
            Status.LIMITED,
            f"max_connection_rate: more than {config.max_connection_rate} new"
            f" connections from {client}",
        )
    limit = config.max_connections_per_client
    if limit is not None and fromClient >= limit:
        return Reject(
            Status.LIMITED,
            f"max_connections_per_client: {limit} connections already open"
            f" from {client}",
        )
    return None


def deniedFingerprint(policy: Policy, fingerprint: str | None) -> Reject | None:
    """
    C{deny_ja4}, compared case-insensitively.
    """
    if fingerprint is not None and fingerprint.lower() in policy.denyJA4:
        return Reject(Status.DENIED, f"JA4 fingerprint {fingerprint} is in deny_ja4")
    return None


def _hello(policy: Policy, hello: ClientHello, fingerprint: str | None) -> Verdict:
    """
    A complete ClientHello: JA4 deny, ACME validations, routing, then
    C{passthrough_protocols} for what is not terminated.
    """
    if policy.denyJA4:
        denied = deniedFingerprint(policy, fingerprint)
        if denied is not None:
            return denied
    if (
        policy.acmeManages is not _noManagedNames
        and offersOnlyAcmeTLS(hello.alpn)
        and policy.acmeManages(hello.serverName)
    ):
        return CHALLENGE
    router = policy.router
    relay = (
        policy.single if router is None else router.match(hello.serverName, hello.alpn)
    )
    if relay is None:
        return Reject(Status.NO_ROUTE, noRouteReason(hello.serverName))
    if policy.passthroughVersions is not None and relay.action is not Action.TERMINATE:
        refused = _versionRefused(policy, hello, relay.action)
        if refused is not None:
            return refused
    return relay


def noRouteReason(serverName: str | None) -> str:
    """
    The C{reason} of a C{no_route} refusal, in words: a client that sent no
    server name (an IP address in the URL, a health check, a scanner) is
    told apart from one whose name matches no route, and the log never
    reads a language's C{None}.
    """
    if serverName is None:
        return "no server name (SNI) and no default route"
    return f"no route for server name {serverName!r}"


def offersOnlyAcmeTLS(alpn: tuple[str, ...]) -> bool:
    """
    Whether a ClientHello is a C{tls-alpn-01} validation: it offers
    C{acme-tls/1} and nothing else (RFC 8737, section 3).
    """
    return alpn == ("acme-tls/1",)


def _versionRefused(
    policy: Policy, hello: ClientHello, action: Action
) -> Reject | None:
    """
    C{passthrough_protocols}: refuse a hello that offers none of them,
    with the C{protocol_version} alert a server that speaks none of them
    sends.
    """
    allowed = policy.passthroughVersions
    if allowed is None:
        return None
    offered, source = offeredVersions(hello)
    if allowed.intersection(offered):
        return None
    names = ", ".join(_versionName(v) for v in offered)
    return Reject(
        Status.DENIED,
        f"ClientHello offers {names} ({source}); passthrough_protocols"
        f" allows {', '.join(policy.config.passthrough_protocols or ())}",
        alert=AlertDescription.PROTOCOL_VERSION,
        action=action,
    )


def _plaintext(policy: Policy, seen: Plaintext) -> Verdict:
    """
    A PostgreSQL or MySQL client without TLS: a startup message (a login)
    is refused unless C{allow_plaintext}; it (or a cancel) goes to
    C{upstream} or the C{default} route.
    """
    if seen.startup and not policy.config.allow_plaintext:
        return Reject(
            Status.PLAINTEXT_REFUSED,
            f"client sent {seen.sent} without TLS (allow_plaintext is off)",
        )
    relay = policy.route(None)
    if relay is None:
        return Reject(Status.NO_ROUTE, f"{seen.description}: no default route")
    return relay
