"""
The checks of keys together and of sections together: what no single
value parser can see.

A listener's mode, routes and upstream; its certificates; client
verification; the protocols that only some modes speak; the edge (PROXY
headers, passthrough versions); ECH; QUIC; and across sections, MySQL
health checks, two endpoints on one address, an ACME name claimed
twice, C{[cluster]} with several workers.  Each check reports through a
L{Report} (the loader), at the key or route line it is about, and goes
on: every problem of a file is found in one run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from gateway.config.endpoints import _bindingOf
from gateway.config.scan import _Section
from gateway.config.schema import (
    CertificateConfig,
    ClusterSettings,
    GatewaySettings,
    ListenerConfig,
    RouteConfig,
    UpstreamConfig,
)
from gateway.core.udpendpoints import isUDPEndpoint
from gateway.core.units import parseList


class Report(Protocol):
    """
    Where checks report what they find, located: the loader
    (L{gateway.config.loader._Loader}).
    """

    def problem(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        """
        Something that keeps the file from being used.
        """

    def warning(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        """
        Something that works but is unsafe or likely wrong.
        """

    def keyLine(self, section: _Section, key: str) -> int | None:
        """
        The line of C{key} in C{section}, or the section's own line.
        """


@attrs.frozen
class SectionReport:
    """
    A L{Report} for the problems of one section: each at its key's line.
    """

    report: Report
    section: _Section

    def at(self, key: str | None, message: str) -> None:
        """
        A problem at C{key}'s line, or the section's line for L{None}.
        """
        line = self.report.keyLine(self.section, key) if key else self.section.line
        self.report.problem(line, self.section.name, key, message)

    def atHeader(self, key: str, message: str) -> None:
        """
        A problem with C{key} reported at the section's header line: a key
        that is missing has no line of its own.
        """
        self.report.problem(self.section.line, self.section.name, key, message)

    def atRoute(self, route: RouteConfig, message: str) -> None:
        """
        A problem at the route's own line of C{routes}.
        """
        self.report.problem(route.line, self.section.name, "routes", message)

    def warn(self, key: str, message: str) -> None:
        """
        A warning at C{key}'s line.
        """
        line = self.report.keyLine(self.section, key)
        self.report.warning(line, self.section.name, key, message)


@attrs.frozen
class ListenerKeys:
    """
    A listener section as its keys converted, for the checks of keys
    together (a key with a problem of its own is missing from C{settings}).

    @ivar mode: the C{mode} key's value, C{passthrough} when it is not
        given, L{None} when it is given but did not convert.
    @ivar hasRoutes: C{routes} has lines, whether or not they converted.
    """

    section: _Section
    settings: Mapping[str, Any]
    mode: str | None
    routes: Sequence[RouteConfig]
    hasRoutes: bool

    @property
    def items(self) -> Mapping[str, str]:
        """
        The section's keys as written.
        """
        return self.section.items

    @property
    def hasUpstream(self) -> bool:
        """
        The section has an C{upstream} key.
        """
        return "upstream" in self.section.items


def checkListener(
    report: Report,
    listener: ListenerKeys,
    upstreamNames: set[str],
    certificateNames: set[str],
) -> None:
    """
    Every check of a listener's keys together, in the order their
    problems are reported.
    """
    where = SectionReport(report, listener.section)
    _checkTarget(where, listener, upstreamNames)
    _checkCertificates(where, listener, certificateNames)
    _checkClients(where, listener)
    _checkEdge(where, listener)
    if "ech_keys" in listener.items:
        _checkECHKeys(where, listener)
    _checkQUIC(where, listener)


def _checkTarget(
    where: SectionReport, listener: ListenerKeys, upstreamNames: set[str]
) -> None:
    """
    Where a listener sends its connections: C{upstream} or C{routes}, and
    what C{mode = tcp}, which reads nothing, cannot do.
    """
    settings, mode = listener.settings, listener.mode
    if mode == "tcp":
        if listener.hasRoutes:
            where.at(
                "routes",
                "mode = tcp reads no ClientHello, so it cannot route: use upstream",
            )
        elif not listener.hasUpstream:
            where.at("mode", "mode = tcp needs upstream")
        if settings.get("protocol") == "postgres":
            where.at(
                "protocol",
                "mode = tcp relays without reading anything, so it cannot speak"
                " the PostgreSQL preamble: use mode = passthrough or terminate",
            )
        if settings.get("protocol") == "mysql":
            where.at(
                "protocol",
                "mode = tcp relays MySQL untouched (its TLS included); protocol"
                " = mysql is for termination: use mode = terminate, or drop"
                " protocol",
            )
    elif listener.hasUpstream and listener.hasRoutes:
        where.at("routes", "use upstream or routes, not both")
    elif not listener.hasUpstream and not listener.hasRoutes:
        where.at(None, "needs upstream or routes")
    upstream = settings.get("upstream")
    if upstream is not None and upstream not in upstreamNames:
        where.at(
            "upstream",
            f"upstream {upstream!r} is not defined (no [upstream:{upstream}] section)",
        )


def _checkCertificates(
    where: SectionReport, listener: ListenerKeys, certificateNames: set[str]
) -> None:
    """
    A key pair or named certificates, not both, and one of them wherever
    TLS is terminated.
    """
    items = listener.items
    for key, other in (
        ("certificate", "private_key"),
        ("private_key", "certificate"),
    ):
        if key in items and other not in items:
            where.at(key, f"{key} needs {other}")
    hasPair = "certificate" in items or "private_key" in items
    if "certificates" in items and hasPair:
        where.at(
            "certificates",
            "use certificate and private_key, or certificates, not both",
        )
    for name in listener.settings.get("certificates", ()):
        if name not in certificateNames:
            where.at(
                "certificates",
                f"certificate {name!r} is not defined (no [certificate:{name}] section)",
            )
    if hasPair or "certificates" in items:
        return
    needs = "certificate and private_key, or certificates"
    routes = listener.routes
    if listener.mode == "terminate" and (
        listener.hasUpstream or any(r.action is None for r in routes)
    ):
        where.at("mode", f"mode = terminate needs {needs}")
    for route in routes:
        if route.action == "terminate":
            where.atRoute(
                route,
                f"route {route.pattern!r} terminates TLS, so the listener needs {needs}",
            )


def _checkClients(where: SectionReport, listener: ListenerKeys) -> None:
    """
    Client certificates, and the keys only some protocols speak.
    """
    settings, items = listener.settings, listener.items
    verify = settings.get("verify_client", "off")
    if verify != "off" and "client_ca" not in items:
        where.at("verify_client", f"verify_client = {verify} needs client_ca")
    if "client_crl" in items and verify == "off":
        where.at(
            "client_crl",
            "client_crl checks client certificates: it needs verify_client"
            " = on or optional",
        )
    if settings.get("allow_plaintext") and settings.get("protocol", "tls") not in (
        "postgres",
        "mysql",
    ):
        where.at(
            "allow_plaintext",
            "allow_plaintext only applies to protocol = postgres or mysql",
        )
    mode = listener.mode
    if settings.get("protocol") == "mysql" and mode in ("passthrough", "terminate"):
        assert mode is not None
        _checkMySQLPassthrough(where, listener.routes, listener.hasUpstream, mode)


def _checkMySQLPassthrough(
    where: SectionReport,
    routes: Sequence[RouteConfig],
    hasUpstream: bool,
    mode: str,
) -> None:
    """
    Report what a C{protocol = mysql} listener would pass through: the
    gateway answers a MySQL client's greeting and C{SSLRequest} itself,
    so it can only terminate; relaying MySQL TLS untouched is what
    C{mode = tcp} does.
    """
    advice = (
        "protocol = mysql terminates TLS (the gateway answers the greeting and"
        " the SSLRequest itself); to relay MySQL TLS untouched use mode = tcp"
    )
    actions = [route.action or mode for route in routes]
    if (hasUpstream and mode == "passthrough") or (
        routes and "terminate" not in actions
    ):
        where.at("protocol", advice)
        return
    for route, action in zip(routes, actions, strict=True):
        if action != "terminate":
            where.atRoute(
                route, f"route {route.pattern!r} passes TLS through: {advice}"
            )


def _checkEdge(where: SectionReport, listener: ListenerKeys) -> None:
    """
    The keys that guard a listener's edge: who may send a PROXY
    header, and which TLS versions may pass through.
    """
    settings, mode = listener.settings, listener.mode
    acceptProxy = settings.get("accept_proxy_protocol", False)
    if "proxy_protocol_from" in listener.items and not acceptProxy:
        where.at(
            "proxy_protocol_from",
            "proxy_protocol_from only applies with accept_proxy_protocol = on",
        )
    listen = settings.get("listen", ())
    overTCP = any(not endpoint.startswith("unix:") for endpoint in listen)
    if acceptProxy and not settings.get("proxy_protocol_from") and overTCP:
        where.warn(
            "accept_proxy_protocol",
            "on without proxy_protocol_from: any peer that can connect may"
            " send a PROXY header and choose its own client address, past"
            " allow/deny and the per-client limits; list your balancers in"
            " proxy_protocol_from",
        )
    if settings.get("passthrough_protocols") is not None:
        if mode == "tcp":
            where.at(
                "passthrough_protocols",
                "mode = tcp reads no ClientHello, so it cannot check its"
                " version: use mode = passthrough",
            )
        elif mode == "terminate" and all(
            route.action != "passthrough" for route in listener.routes
        ):
            where.at(
                "passthrough_protocols",
                "nothing on this listener passes through: terminated"
                " connections follow protocols",
            )


def _checkECHKeys(where: SectionReport, listener: ListenerKeys) -> None:
    """
    C{ech_keys} is split mode: the inner ClientHello goes on to a backend
    that terminates it.  Terminating it here (shared mode) would need ECH
    in pyOpenSSL, which has none (docs/ech.rst).
    """
    settings = listener.settings
    if listener.mode != "passthrough" or settings.get("protocol", "tls") != "tls":
        where.at(
            "ech_keys",
            "ech_keys needs mode = passthrough and protocol = tls: the gateway"
            " decrypts the ClientHello and passes the inner one on (split mode)",
        )
    elif any(route.action == "terminate" for route in listener.routes):
        where.at(
            "ech_keys",
            "a route terminates TLS: with ech_keys every route must pass"
            " through (the gateway cannot terminate an encrypted ClientHello)",
        )


def _checkQUIC(where: SectionReport, listener: ListenerKeys) -> None:
    """
    A UDP endpoint relays QUIC untouched: the gateway reads the Initial
    packets' ClientHello and cannot terminate QUIC, so everything on
    its listener must pass TLS through.
    """
    listen = parseList(listener.items.get("listen", ""))
    udp = [d for d in listen if isUDPEndpoint(d)]
    if not udp:
        return
    mode = listener.mode
    if mode is not None and mode != "passthrough":
        where.at(
            "mode",
            f"mode = {mode} on a listener with UDP endpoint {udp[0]!r}: QUIC"
            " is passed through only (use mode = passthrough, or move the"
            " UDP endpoint to a listener of its own)",
        )
    if listener.settings.get("protocol", "tls") != "tls":
        where.at(
            "protocol",
            f"UDP endpoint {udp[0]!r} carries QUIC: protocol must be tls",
        )
    for route in listener.routes:
        if route.action == "terminate":
            where.atRoute(
                route,
                f"route {route.pattern!r} terminates TLS, but QUIC on UDP"
                f" endpoint {udp[0]!r} is passed through only",
            )


def checkCertificate(
    where: SectionReport, kwargs: Mapping[str, Any], hasAcme: bool
) -> None:
    """
    A certificate section names its files, or has them issued by ACME
    (C{acme = on} with C{names}), never both.
    """
    items = where.section.items
    if kwargs.get("acme", False):
        if "names" not in items:
            where.at(
                "names",
                "required key is missing (acme = on issues a certificate for names)",
            )
        for key in ("certificate", "private_key", "ocsp_response"):
            if key in items:
                where.at(
                    key,
                    "acme = on: the certificate and its key come from the ACME"
                    " server, remove this key",
                )
        if not hasAcme:
            where.at("acme", "acme = on needs an [acme] section (directory, state_dir)")
    elif "acme" not in items or "acme" in kwargs:
        for key in ("certificate", "private_key"):
            if key not in items:
                where.atHeader(key, "required key is missing")
        if "names" in items:
            where.at("names", "names is for acme = on (the files name themselves)")


def checkClusterKeys(where: SectionReport, kwargs: Mapping[str, Any]) -> None:
    """
    The C{[cluster]} keys that only make sense together.
    """
    items = where.section.items
    for key, other in (("etcd_cert", "etcd_key"), ("etcd_key", "etcd_cert")):
        if key in items and other not in items:
            where.at(key, f"{key} needs {other}")
    secure = any(e.startswith("https://") for e in kwargs.get("etcd", ()))
    for key in ("etcd_ca", "etcd_cert", "etcd_key"):
        if key in items and "etcd" in kwargs and not secure:
            where.at(key, f"{key} applies to https:// etcd endpoints only")


def checkClusterWorkers(
    report: Report, settings: GatewaySettings, cluster: ClusterSettings | None
) -> None:
    """
    A cluster member is one process: C{[cluster]} with C{workers > 1}
    would make several members of one name.
    """
    if cluster is not None and settings.workers > 1:
        report.problem(
            cluster.location.line,
            "cluster",
            None,
            "[cluster] runs with workers = 1 (one member per process):"
            " run one replica per core instead",
        )


def checkBindings(
    report: Report, bindings: Sequence[tuple[_Section, str, Sequence[str]]]
) -> None:
    """
    Report two endpoints that would listen on the same address.
    """
    owners: dict[tuple[object, ...], tuple[str, str]] = {}
    for section, key, descriptions in bindings:
        for description in descriptions:
            try:
                binding = _bindingOf(description)
            except ValueError:
                continue  # reported by the key's own conversion
            if binding is None:
                continue
            if binding in owners:
                otherSection, other = owners[binding]
                report.problem(
                    report.keyLine(section, key),
                    section.name,
                    key,
                    f"{description!r} listens on the same address as {other!r}"
                    f" in [{otherSection}]",
                )
            else:
                owners[binding] = (section.name, description)


def checkMySQLHealthChecks(
    report: Report,
    sections: Sequence[_Section],
    listeners: Sequence[ListenerConfig],
    upstreams: Mapping[str, UpstreamConfig],
) -> None:
    """
    Report C{health_check = tls} on an upstream of a C{protocol = mysql}
    listener: a MySQL server speaks first and never answers a
    ClientHello, so every server would be marked down.
    """
    users: dict[str, str] = {}
    for listener in listeners:
        if listener.protocol != "mysql":
            continue
        names = [listener.upstream, *(route.upstream for route in listener.routes)]
        for name in names:
            if name is not None:
                users.setdefault(name, listener.name)
    for section in sections:
        upstream = upstreams.get(section.sub) if section.kind == "upstream" else None
        if upstream is None or upstream.health_check != "tls":
            continue
        user = users.get(upstream.name)
        if user is not None:
            report.problem(
                report.keyLine(section, "health_check"),
                section.name,
                "health_check",
                f"health_check = tls cannot check a MySQL server (listener"
                f" {user!r} has protocol = mysql): the server speaks first"
                " and TLS starts inside its protocol; use tcp",
            )


def checkAcmeNames(report: Report, certificates: Iterable[CertificateConfig]) -> None:
    """
    Report a name that two ACME certificates both claim: its
    C{tls-alpn-01} challenge could not tell them apart.
    """
    owners: dict[str, str] = {}
    for certificate in certificates:
        if not certificate.acme:
            continue
        for name in certificate.names:
            owner = owners.setdefault(name, certificate.name)
            if owner != certificate.name:
                report.problem(
                    certificate.location.lineOf("names"),
                    f"certificate:{certificate.name}",
                    "names",
                    f"{name!r} is already issued by ACME for [certificate:{owner}]",
                )


def checkSomethingListens(report: Report, sections: Sequence[_Section]) -> None:
    """
    A file without a listener would start a gateway that does nothing.
    """
    if not any(s.kind == "listener" for s in sections):
        report.problem(
            None, None, None, "no [listener:NAME] section: nothing would listen"
        )
