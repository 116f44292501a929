"""
TLS termination: the server side of one listener for one configuration
generation (L{ServerTLS}).

One C{SSL.Context} per set of certificate names, chosen by
L{ServerTLS.contextFor} from the SNI that the pre-read already knows, so no
servername callback runs inside the handshake.  Contexts are built by
L{ServerTLS.fromConfig} and never changed afterwards: a reload builds new
ones, and connections accepted before it finish on the old ones.  An ACME
certificate not issued yet is served as a failed handshake
(L{CertificatePending}), never as another certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
from OpenSSL import SSL

from gateway.config import (
    CertificateConfig,
    ConfigWarning,
    ListenerConfig,
    Location,
    Problem,
)
from gateway.rules.accesslog import ExtraFields
from gateway.tls.certificates import LoadedCertificate, loadCertificate
from gateway.tls.errors import (
    TLSConfigError,
    TLSConfigErrors,
    problemAt,
    warningAt,
)
from gateway.tls.handshake import describe
from gateway.tls.servercontext import ServedGroup, groupCertificates, serverContext
from gateway.tls.settings import ListenerSettings, listenerSettings, policyWarnings

__all__ = [
    "AcmeCertificates",
    "CertificatePending",
    "PendingCertificate",
    "ServerTLS",
]


@attrs.frozen
class PendingCertificate:
    """
    An ACME certificate (C{[certificate:NAME] acme = on}) not issued yet:
    its names are served by failing the handshake, not by another
    certificate.

    @ivar section: C{certificate:NAME}.
    """

    section: str
    names: tuple[str, ...]


class CertificatePending(Exception):
    """
    The certificate for a server name is an ACME certificate still being
    issued: the handshake fails (C{handshake_failed}).
    """

    reason = "handshake_failed"


#: What provides ACME certificates to L{ServerTLS.fromConfig}: the
#: certificate being served for C{[certificate:NAME]}, or L{None} while it
#: is pending.
AcmeCertificates = Callable[[str], "LoadedCertificate | None"]

_Entry = tuple[str, "LoadedCertificate | PendingCertificate"]
_Slot = SSL.Context | PendingCertificate


class ServerTLS:
    """
    The TLS termination policy of one listener, for one configuration
    generation.

    Build it with L{fromConfig}; pick a context with L{contextFor} once the
    pre-read knows the server name, then create the C{SSL.Connection} from
    it.  Choosing before the handshake, instead of in a servername callback,
    means no code of ours runs inside the handshake to choose, and nothing
    can fail open to the wrong certificate.

    The contexts change only when an ACME certificate is issued or renewed
    (L{update}): new contexts are built beside the old ones and swapped in
    with one assignment, so connections already using an old context keep
    it and new handshakes get the new certificate.

    @ivar listenerName: the C{[listener:NAME]} it was built for.
    @ivar certificates: every certificate served, grouped by context (an
        ECDSA certificate follows the RSA one it shares a context with).
    @ivar entries: (section, certificate) in configuration order: the
        C{[certificate:NAME]} or C{[listener:NAME]} each came from, with
        a L{PendingCertificate} for an ACME certificate not issued yet.
    """

    def __init__(
        self,
        listenerName: str,
        served: Sequence[tuple[ServedGroup, SSL.Context]],
        *,
        settings: ListenerSettings | None = None,
        entries: Sequence[_Entry] | None = None,
    ) -> None:
        self.listenerName = listenerName
        self._settings = settings
        if entries is None:
            entries = [
                ("", certificate)
                for group, _ in served
                for certificate in group.certificates
            ]
        self._install(list(entries), served)

    def _install(
        self, entries: list[_Entry], served: Sequence[tuple[ServedGroup, SSL.Context]]
    ) -> None:
        contextOf: dict[int, SSL.Context] = {}
        for group, context in served:
            for member in group.certificates:
                contextOf[id(member)] = context
        slots: list[_Slot] = []
        exact: dict[str, _Slot] = {}
        wildcard: dict[str, _Slot] = {}
        for _, certificate in entries:
            if isinstance(certificate, PendingCertificate):
                slot: _Slot = certificate
                names = certificate.names
            elif id(certificate) in contextOf:
                slot = contextOf[id(certificate)]
                names = certificate.names
            else:
                continue  # never served: an earlier one has its names and key type
            slots.append(slot)
            for name in sorted(names):
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], slot)
                elif "*" not in name:
                    exact.setdefault(name, slot)
        # One assignment: a handshake sees the old tables or the new ones.
        self._tables = (tuple(slots), exact, wildcard)
        self.entries = tuple(entries)
        self._contexts = tuple(context for _, context in served)
        self.certificates = tuple(c for group, _ in served for c in group.certificates)

    def update(self, section: str, certificate: LoadedCertificate) -> None:
        """
        Serve C{certificate} for C{section} (an ACME certificate just
        issued or renewed) from now on.

        @raise TLSConfigError: OpenSSL refused it; the old contexts stay.
        """
        if self._settings is None:
            raise TLSConfigError("this policy was not built by fromConfig")
        entries = [(s, certificate if s == section else c) for s, c in self.entries]
        loaded = [(s, c) for s, c in entries if isinstance(c, LoadedCertificate)]
        groups, _ = groupCertificates(loaded)
        served = [(group, serverContext(self._settings, group)) for group in groups]
        self._install(entries, served)

    def uses(self, section: str) -> bool:
        return any(s == section for s, _ in self.entries)

    @classmethod
    def fromConfig(
        cls,
        listener: ListenerConfig,
        certificates: Mapping[str, CertificateConfig],
        acme: AcmeCertificates | None = None,
    ) -> tuple[ServerTLS | None, list[Problem], list[ConfigWarning]]:
        """
        Load a listener's certificates and build its contexts.

        Certificates come from the listener's C{certificate} and
        C{private_key}, then from each C{[certificate:NAME]} in its
        C{certificates}, in that order; the first is served to clients
        whose server name matches none (or who send none).  Certificates
        for the same names and of different key types (RSA and ECDSA)
        share one context, where OpenSSL serves the one the client's
        signature algorithms allow.

        Every file is read now, and nothing is read later: a reload
        calls this again and gets new contexts.  An ACME certificate comes
        from C{acme}; without one (C{tlsgateway check}), or while it is
        not issued yet, its names are pending.

        @param certificates: the configuration's C{[certificate:NAME]}
            sections by name.
        @return: the policy, or L{None} when there are problems; every
            problem (each at its section and key); and warnings, formatted
            as problems are (C{FILE:LINE: [section] key: message}).
        """
        problems: list[Problem] = []
        warnings: list[ConfigWarning] = []
        sources, order, pending = _sources(listener, certificates, acme)
        if not order and not listener.certificates:
            problems.append(
                problemAt(
                    listener.location,
                    f"listener:{listener.name}",
                    None,
                    "terminating TLS needs certificate and private_key, or certificates",
                )
            )
        loaded = _load(sources, problems, warnings)
        entries: list[_Entry] = [
            (section, loaded[section] if section in loaded else pending[section])
            for section in order
            if section in loaded or section in pending
        ]
        settings = _checkedSettings(listener, problems, warnings)
        served = [(s, c) for s, c in entries if isinstance(c, LoadedCertificate)]
        groups, unused = groupCertificates(served)
        locations = {source.section: source.location for source in sources}
        warnings += [
            warningAt(locations[section], section, "certificate", message)
            for section, message in unused
            if section in locations
        ]
        warnings += [
            warningAt(listener.location, f"listener:{listener.name}", key, message)
            for key, message in policyWarnings(listener)
        ]
        if problems or settings is None:
            return None, list(dict.fromkeys(problems)), warnings
        contexts = _contexts(listener, settings, groups, served, locations, problems)
        if problems:
            return None, list(dict.fromkeys(problems)), warnings
        return (
            cls(listener.name, contexts, settings=settings, entries=entries),
            [],
            warnings,
        )

    def contextFor(self, serverName: str | None) -> SSL.Context:
        """
        The context for a client that asked for C{serverName}.

        An exact name wins over a wildcard; a wildcard C{*.example.com}
        matches exactly one label (C{a.example.com}, not C{example.com} nor
        C{a.b.example.com}), as RFC 6125 has clients match it, so the
        client will accept what it is served; among equals, the
        certificate configured first.  No name, or no match: the first
        certificate's context.

        @raise CertificatePending: the certificate chosen is an ACME
            certificate not issued yet.
        """
        slots, exact, wildcard = self._tables
        slot: _Slot | None = None
        if serverName:
            name = serverName.lower().removesuffix(".")
            slot = exact.get(name)
            if slot is None:
                _, dot, parent = name.partition(".")
                if dot and parent:
                    slot = wildcard.get(parent)
        if slot is None:
            slot = slots[0]
        if isinstance(slot, PendingCertificate):
            raise CertificatePending(
                f"the certificate for {serverName or slot.names[0]!r} is pending:"
                f" [{slot.section}] is not issued by the ACME server yet"
            )
        return slot

    def describe(self, connection: SSL.Connection) -> ExtraFields:
        """
        The facts of a finished handshake, for the access log: see
        L{describe}.
        """
        return describe(connection)


# --- the steps of ServerTLS.fromConfig ---------------------------------------------


@attrs.frozen
class _Source:
    """
    Where one certificate of a listener is read from.

    @ivar section: the C{[listener:NAME]} or C{[certificate:NAME]} that
        names the files, where problems with them are reported.
    """

    section: str
    location: Location
    certificatePath: str
    keyPath: str
    ocspPath: str | None


def _sources(
    listener: ListenerConfig,
    certificates: Mapping[str, CertificateConfig],
    acme: AcmeCertificates | None,
) -> tuple[list[_Source], list[str], dict[str, LoadedCertificate | PendingCertificate]]:
    """
    The certificates a listener names, in configuration order.

    A name with no C{[certificate:NAME]} section is skipped: the INI
    loader reports it, at the line of the listener's C{certificates} key
    (L{gateway.config}), in the same run, so it is not reported twice.

    @return: the files to read; the sections in the order their
        certificates are served; and the ACME certificates, issued or
        pending, by section.
    """
    listenerSection = f"listener:{listener.name}"
    sources: list[_Source] = []
    order: list[str] = []
    pending: dict[str, LoadedCertificate | PendingCertificate] = {}
    if listener.certificate is not None and listener.private_key is not None:
        sources.append(
            _Source(
                listenerSection,
                listener.location,
                listener.certificate,
                listener.private_key,
                None,
            )
        )
        order.append(listenerSection)
    for name in listener.certificates:
        config = certificates.get(name)
        if config is None:
            continue
        section = f"certificate:{name}"
        order.append(section)
        if config.acme:
            issued = None if acme is None else acme(name)
            pending[section] = (
                PendingCertificate(section, config.names) if issued is None else issued
            )
            continue
        if config.certificate is None or config.private_key is None:
            continue  # a section with problems (ConfigError.drafts)
        sources.append(
            _Source(
                section,
                config.location,
                config.certificate,
                config.private_key,
                config.ocsp_response,
            )
        )
    return sources, order, pending


def _load(
    sources: Sequence[_Source], problems: list[Problem], warnings: list[ConfigWarning]
) -> dict[str, LoadedCertificate]:
    """
    Read and check each certificate's files; add what is wrong with them to
    C{problems} and C{warnings}, at the section that names them.

    @return: the certificates that loaded, by section.
    """
    loaded: dict[str, LoadedCertificate] = {}
    for source in sources:
        section, location = source.section, source.location
        try:
            certificate = loadCertificate(
                source.certificatePath, source.keyPath, source.ocspPath
            )
        except TLSConfigError as e:
            problems.append(problemAt(location, section, e.key, str(e)))
            continue
        loaded[section] = certificate
        warnings += [
            warningAt(location, section, w.key, w.message) for w in certificate.warnings
        ]
    return loaded


def _checkedSettings(
    listener: ListenerConfig, problems: list[Problem], warnings: list[ConfigWarning]
) -> ListenerSettings | None:
    """
    The listener's settings, or L{None} with what is wrong with them added
    to C{problems}, each at its key.
    """
    section = f"listener:{listener.name}"
    try:
        settings, settingWarnings = listenerSettings(listener)
    except TLSConfigError as e:
        for error in e.errors if isinstance(e, TLSConfigErrors) else (e,):
            problems.append(
                problemAt(listener.location, section, error.key, str(error))
            )
        return None
    warnings += [
        warningAt(listener.location, section, w.key, w.message) for w in settingWarnings
    ]
    return settings


def _contexts(
    listener: ListenerConfig,
    settings: ListenerSettings,
    groups: Sequence[ServedGroup],
    served: Sequence[tuple[str, LoadedCertificate]],
    locations: Mapping[str, Location],
    problems: list[Problem],
) -> list[tuple[ServedGroup, SSL.Context]]:
    """
    One context per group; what OpenSSL refuses is added to C{problems}, at
    the section of the certificate it refused, or at the listener's key for
    a setting.
    """
    contexts = []
    for group in groups:
        try:
            contexts.append((group, serverContext(settings, group)))
        except TLSConfigError as e:
            section, location = f"listener:{listener.name}", listener.location
            if e.key == "certificate":
                section = next(
                    (s for s, c in served if c.certificatePath == e.path), section
                )
                location = locations.get(section, location)
            problems.append(problemAt(location, section, e.key, str(e)))
    return contexts
