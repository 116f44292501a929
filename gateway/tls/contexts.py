"""
Every TLS context of one configuration generation, built in one go.

Loading a configuration (L{gateway.run.loading}: C{tlsgateway check}, start,
reload) builds them to report every certificate problem with the rest of
the file's problems, and the service then serves the very contexts that
check built: each file is read once per start or reload.  A reload always
gets new contexts and never mutates live ones.  ACME certificates are not
files of the configuration: a check builds them pending, and the service
swaps in those its manager holds (L{withAcme}) before serving.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

from gateway.config import (
    AcmeSettings,
    ConfigWarning,
    GatewayConfig,
    ListenerConfig,
    Problem,
)
from gateway.tls.certificates import (
    LoadedCertificate,
    loadCertificate,
    readCertificates,
    readPrivateKey,
)
from gateway.tls.echkeys import loadECHKeys
from gateway.tls.errors import TLSConfigError
from gateway.tls.served import ServedCertificate
from gateway.tls.server import AcmeCertificates, PendingCertificate, ServerTLS
from gateway.tls.settings import unknownGroups
from gateway.tls.upstream import UpstreamTLS
from gateway.wire.echopen import ECHKeyring


def terminates(listener: ListenerConfig) -> bool:
    """
    Whether a listener needs server contexts: it terminates, one of its
    routes does, or it names certificates (which are then checked even if
    no route uses them yet).
    """
    return (
        listener.mode == "terminate"
        or any(route.action == "terminate" for route in listener.routes)
        or listener.certificate is not None
        or bool(listener.certificates)
    )


@attrs.frozen
class Contexts:
    """
    @ivar servers: the termination policy of each listener that needs one.
    @ivar upstreams: the re-encryption policy of each upstream with
        C{tls = on}.
    @ivar problems: every problem; when there are any, the policies are
        incomplete and must not be served.
    @ivar warnings: things an operator should fix, formatted as problems
        are (an expiring certificate, a readable key, C{tls_verify = off}).
    """

    servers: dict[str, ServerTLS]
    upstreams: dict[str, UpstreamTLS]
    problems: list[Problem]
    warnings: list[ConfigWarning]
    #: The ECH keys of each listener with C{ech_keys} (L{gateway.tls.echkeys}).
    ech: dict[str, ECHKeyring] = attrs.field(factory=dict)


def buildContexts(
    config: GatewayConfig, acme: AcmeCertificates | None = None
) -> Contexts:
    """
    @param acme: the ACME certificates being served (by section name);
        without it every ACME certificate is pending, as for C{check}.
    """
    servers: dict[str, ServerTLS] = {}
    upstreams: dict[str, UpstreamTLS] = {}
    problems: list[Problem] = []
    warnings: list[ConfigWarning] = []
    ech: dict[str, ECHKeyring] = {}
    for listener in config.listeners:
        keyring, found = loadECHKeys(listener)
        problems += found
        if keyring is not None:
            ech[listener.name] = keyring
        if not terminates(listener):
            # Nothing is built for it, but a group name is still checked,
            # so a typo fails now rather than when a route terminates.
            unknown = unknownGroups(listener.groups)
            if unknown:
                location = listener.location
                problems.append(
                    Problem(
                        location.path,
                        location.lineOf("groups"),
                        f"listener:{listener.name}",
                        "groups",
                        f"{', '.join(unknown)}: not a key exchange group this"
                        " OpenSSL knows",
                    )
                )
            continue
        server, found, warned = ServerTLS.fromConfig(
            listener, config.certificates, acme
        )
        problems += found
        warnings += warned
        if server is not None:
            servers[listener.name] = server
    for name, upstream in config.upstreams.items():
        client, found, warned = UpstreamTLS.fromConfig(upstream)
        problems += found
        warnings += warned
        if client is not None:
            upstreams[name] = client
        if upstream.tls and not upstream.tls_verify:
            location = upstream.location
            warnings.append(
                ConfigWarning(
                    location.path,
                    location.lineOf("tls_verify"),
                    f"upstream:{name}",
                    "tls_verify",
                    "off: upstream certificates and names are not verified",
                )
            )
    problems += unusedCertificateProblems(config)
    problems += loneFileProblems(config)
    if config.acme is not None:
        problems += acmeProblems(config.acme)
    # A [certificate:NAME] shared by listeners is loaded once per listener:
    # report what is wrong with it once.
    return Contexts(
        servers,
        upstreams,
        list(dict.fromkeys(problems)),
        list(dict.fromkeys(warnings)),
        ech,
    )


def unusedCertificateProblems(config: GatewayConfig) -> list[Problem]:
    """
    Load the C{[certificate:NAME]} files no listener names yet: C{check}
    loads every certificate and key, so a section waiting for its listener
    does not hide a missing or mismatched file until it is used.
    """
    used = {name for listener in config.listeners for name in listener.certificates}
    problems = []
    for name, certificate in config.certificates.items():
        if name in used or certificate.certificate is None:
            continue
        if certificate.private_key is None:
            continue  # reported by the conversion
        try:
            loadCertificate(
                certificate.certificate,
                certificate.private_key,
                certificate.ocsp_response,
            )
        except TLSConfigError as e:
            location = certificate.location
            problems.append(
                Problem(
                    location.path,
                    location.lineOf(e.key),
                    f"certificate:{name}",
                    e.key,
                    str(e),
                )
            )
    return problems


def loneFileProblems(config: GatewayConfig) -> list[Problem]:
    """
    Read a certificate named without its C{private_key}, or a key without
    its C{certificate}: the missing half is a problem of the conversion
    (C{certificate needs private_key}), and the half that is there may
    have its own, reported in the same run.
    """
    pairs = [
        (f"listener:{s.name}", s.location, s.certificate, s.private_key)
        for s in config.listeners
    ] + [
        (f"certificate:{c.name}", c.location, c.certificate, c.private_key)
        for c in config.certificates.values()
    ]
    problems = []
    for section, location, certificate, key in pairs:
        try:
            if certificate is not None and key is None:
                readCertificates(certificate, "certificate")
            elif key is not None and certificate is None:
                readPrivateKey(key)
        except TLSConfigError as e:
            problems.append(
                Problem(location.path, location.lineOf(e.key), section, e.key, str(e))
            )
    return problems


def withAcme(contexts: Contexts, acme: AcmeCertificates) -> Contexts:
    """
    Serve the ACME certificates C{acme} holds in C{contexts}, built
    without them (by a check): what L{buildContexts} with C{acme} would
    have built, without reading any file again.  Changes C{contexts}' own
    policies: call it only on contexts nothing serves yet.

    @return: C{contexts}, with a problem for each certificate OpenSSL
        refused.
    """
    problems = list(contexts.problems)
    for server in contexts.servers.values():
        for section, entry in server.entries:
            if not isinstance(entry, PendingCertificate):
                continue
            issued = acme(section.partition(":")[2])
            if issued is None:
                continue
            try:
                server.update(section, issued)
            except TLSConfigError as e:
                problems.append(
                    Problem(issued.certificatePath, None, section, e.key, str(e))
                )
    return attrs.evolve(contexts, problems=list(dict.fromkeys(problems)))


def acmeProblems(settings: AcmeSettings) -> list[Problem]:
    """
    What would stop C{[acme]} from working, found without the network:
    a C{state_dir} that is not a folder the gateway can create or write,
    a C{ca_bundle} without certificates.
    """
    problems = []
    location = settings.location

    def problem(key: str, message: str) -> None:
        problems.append(
            Problem(location.path, location.lineOf(key), "acme", key, message)
        )

    folder = settings.state_dir
    existing = folder
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        problem("state_dir", f"{existing} is not a folder")
    elif not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f" (to create {folder})"
        problem("state_dir", f"{existing} is not writable{what}")
    if settings.ca_bundle is not None:
        try:
            readCertificates(settings.ca_bundle, "ca_bundle")
        except TLSConfigError as e:
            problem("ca_bundle", str(e))
    return problems


def servedCertificates(
    servers: Iterable[ServerTLS],
    config: GatewayConfig,
    acme: AcmeCertificates | None = None,
) -> list[ServedCertificate]:
    """
    The certificates termination policies serve, for the served-certificates
    registry (status page, expiry gauge): file-based and ACME alike, as the
    policies hold them now (an ACME certificate is swapped into its policy
    when issued or renewed; one still pending is not served yet).  Each is
    named by its C{[certificate:NAME]}, or C{listener:NAME} for a
    listener's own C{certificate} key; a section shared by listeners once.

    @param acme: where to look up an ACME certificate that the policies
        hold as pending (the supervisor's view: the certificates its
        workers stored).
    """
    served: dict[str, ServedCertificate] = {}
    for server in servers:
        for section, entry in server.entries:
            loaded: LoadedCertificate | PendingCertificate | None = entry
            if isinstance(entry, PendingCertificate) and acme is not None:
                loaded = acme(section.partition(":")[2])
            if not section or not isinstance(loaded, LoadedCertificate):
                continue
            kind, _, sub = section.partition(":")
            name = sub if kind == "certificate" else section
            certificate = (
                config.certificates.get(sub) if kind == "certificate" else None
            )
            served.setdefault(
                name,
                ServedCertificate(
                    name,
                    loaded.names,
                    loaded.notAfter,
                    source="acme"
                    if certificate is not None and certificate.acme
                    else "files",
                    path=loaded.certificatePath,
                ),
            )
    return list(served.values())
