"""
A listener's termination keys translated to OpenSSL settings, checked once
for all the contexts of that listener (L{listenerSettings}), and the
warnings about settings that work but are likely wrong
(L{policyWarnings}).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

import attrs
from cryptography import x509
from OpenSSL import SSL

from gateway.config import ListenerConfig
from gateway.fast.internals import setGroups
from gateway.tls.certificates import LoadWarning, readCertificates, readCRLs
from gateway.tls.errors import TLSConfigError, TLSConfigErrors

__all__ = [
    "DEFAULT_CIPHERS",
    "ListenerSettings",
    "listenerSettings",
    "policyWarnings",
    "unknownGroups",
    "weakCiphers",
]

#: The TLS 1.2 cipher list when C{ciphers} is not set: ECDHE key exchange
#: only (forward secrecy; no static-RSA key exchange, whose recorded
#: traffic a later key compromise decrypts) and AEAD ciphers only (no CBC,
#: the mode behind Lucky13 and POODLE-style padding oracles).  Every TLS 1.2
#: client of the last decade offers one of these; older ones must upgrade
#: anyway, since TLS 1.0/1.1 are refused.  OpenSSL expands it to AES-GCM
#: (256 then 128) and ChaCha20-Poly1305, each with ECDSA and RSA
#: authentication, so both kinds of certificate work.  TLS 1.3 suites are
#: all AEAD with ephemeral key exchange and stay at OpenSSL's default.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

_VERIFY_MODES = {
    "off": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "on": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


def _sessionID(listenerName: str) -> bytes:
    """
    The session id context: stable for a listener across reloads and
    workers, so it could be shared, and different between listeners, so a
    session from one listener never resumes on another (whose client
    certificate policy may differ).  32 bytes, OpenSSL's maximum.
    """
    return hashlib.sha256(f"tlsgateway listener {listenerName}".encode()).digest()


@attrs.frozen
class ListenerSettings:
    """
    What every context of a listener shares, checked once.
    """

    minVersion: int
    maxVersion: int
    ciphers: bytes
    ciphersuites: bytes | None
    options: int
    sessionCacheMode: int
    sessionID: bytes
    alpn: tuple[bytes, ...]
    verifyMode: int
    clientCAs: tuple[x509.Certificate, ...]
    groups: tuple[str, ...] = ()
    ticketLifetime: int = 300
    clientCRLs: tuple[x509.CertificateRevocationList, ...] = ()


#: Parts of an OpenSSL TLS 1.2 cipher name that mean an AEAD cipher; any
#: other enabled TLS 1.2 cipher is CBC (or worse) with a SHA-1 or SHA-2 MAC.
_AEAD = ("GCM", "CHACHA20", "CCM")


def weakCiphers(ciphers: str) -> list[str]:
    """
    The TLS 1.2 cipher suites an OpenSSL cipher string enables that are
    not AEAD: CBC suites (Lucky13 and padding-oracle history), most with
    SHA-1 MACs.  NGINX's long-standing example C{HIGH:!aNULL:!MD5} enables
    dozens of them.

    @return: their OpenSSL names, in OpenSSL's order; empty for a string
        OpenSSL refuses (that is reported as a problem elsewhere).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_cipher_list(ciphers.encode("ascii", "replace"))
    except SSL.Error:
        return []
    names = SSL.Connection(context, None).get_cipher_list()
    return [
        name
        for name in names
        if not name.startswith("TLS_") and not any(part in name for part in _AEAD)
    ]


def policyWarnings(listener: ListenerConfig) -> list[tuple[str, str]]:
    """
    Termination settings that work but are likely wrong, as (key, message).
    """
    warnings = []
    if listener.ciphers is not None and "TLSv1.2" in listener.protocols:
        weak = weakCiphers(listener.ciphers)
        if weak:
            shown = ", ".join(weak[:3]) + (", ..." if len(weak) > 3 else "")
            warnings.append(
                (
                    "ciphers",
                    f"{listener.ciphers!r} allows CBC or SHA-1 cipher suites"
                    f" ({len(weak)} of them: {shown}): leave ciphers unset for"
                    " the AEAD-only default, or use"
                    " ECDHE+AESGCM:ECDHE+CHACHA20",
                )
            )
    terminating = listener.mode == "terminate" or any(
        route.action == "terminate" for route in listener.routes
    )
    if "h2" in listener.alpn and terminating:
        warnings.append(
            (
                "alpn",
                "offers h2 on terminated connections, and the gateway relays"
                " the decrypted bytes as they are: a client that picks h2"
                " speaks HTTP/2 to the upstream, which an HTTP/1.1 server does"
                " not understand (curl gets an empty reply); offer h2 only if"
                " every upstream speaks HTTP/2 without TLS (prior knowledge),"
                " otherwise alpn = http/1.1",
            )
        )
    return warnings


def unknownGroups(names: Sequence[str]) -> list[str]:
    """
    The names in C{names} that this OpenSSL does not know as key exchange
    groups, each tried on a scratch context of its own (OpenSSL refuses a
    whole list for one bad name, without saying which).
    """
    return [
        name
        for name in names
        if not setGroups(SSL.Context(SSL.TLS_SERVER_METHOD), (name,))
    ]


def listenerSettings(
    listener: ListenerConfig,
) -> tuple[ListenerSettings, list[LoadWarning]]:
    """
    Translate a listener's termination keys to OpenSSL settings.

    Session resumption: C{session_tickets} is stateless resumption
    (C{OP_NO_TICKET} turns it off), C{session_cache} OpenSSL's server-side
    cache of each context (so per worker).  With both off no session is
    resumed, in TLS 1.2 and 1.3 alike.  One wart remains: in TLS 1.3 with
    C{OP_NO_TICKET}, OpenSSL still sends NewSessionTicket messages, as
    "stateful tickets" that are nothing but a session ID to look up in the
    cache; with the cache off there is nothing to find, so they never
    resume anything, but they cost a few dozen bytes per handshake.
    Stopping them takes C{SSL_CTX_set_num_tickets(ctx, 0)}, which neither
    pyOpenSSL nor cryptography's cffi bindings expose (and the bundled
    OpenSSL exports no symbols to reach it otherwise).  Ticket keys are
    random per context, so a reload, or another worker, cannot decrypt an
    earlier ticket: the client then does a full handshake.

    Client certificates: C{optional} requests one and verifies it if it
    is sent, so an untrusted certificate still fails the handshake (as
    with NGINX's stream module); C{on} also fails a client that sends none.
    The CA subjects are sent to clients, so they know which certificate
    to present.

    Key exchange groups: C{groups}, or OpenSSL's default list.  Session
    lifetime: C{session_ticket_lifetime}, which is both the lifetime hint
    in every ticket and how long the server accepts a session (ticket or
    cache) after it was made (C{SSL_CTX_set_timeout}).

    Revocation: with C{client_crl}, OpenSSL checks the client's own
    certificate against the CRL of its issuer (C{X509_V_FLAG_CRL_CHECK});
    a certificate whose issuer has no CRL there fails ("unable to get
    certificate CRL"), so every CA of C{client_ca} that issues client
    certificates needs its CRL listed.

    @return: the settings, and warnings about the CRLs.
    @raise TLSConfigError: a C{protocols} value other than TLSv1.2/1.3, an
        unreadable C{client_ca} or C{client_crl}, or a group OpenSSL does
        not know.
    """
    versions = _versions(listener)
    clientCAs, crls, warnings = _clientTrust(listener)
    return ListenerSettings(
        minVersion=min(versions),
        maxVersion=max(versions),
        ciphers=(listener.ciphers or DEFAULT_CIPHERS).encode("ascii", "replace"),
        ciphersuites=(
            None
            if listener.ciphersuites is None
            else listener.ciphersuites.encode("ascii", "replace")
        ),
        options=_options(listener),
        sessionCacheMode=(
            SSL.SESS_CACHE_SERVER if listener.session_cache else SSL.SESS_CACHE_OFF
        ),
        sessionID=_sessionID(listener.name),
        alpn=_alpn(listener),
        verifyMode=_VERIFY_MODES[listener.verify_client],
        clientCAs=clientCAs,
        groups=listener.groups,
        ticketLifetime=listener.session_ticket_lifetime,
        clientCRLs=crls,
    ), warnings


def _versions(listener: ListenerConfig) -> list[int]:
    """
    @raise TLSConfigError: a C{protocols} value other than TLSv1.2/1.3, or
        none at all.
    """
    unknown = [p for p in listener.protocols if p not in _VERSIONS]
    if unknown or not listener.protocols:
        raise TLSConfigError(
            f"{', '.join(unknown) or 'nothing'} is not TLSv1.2 or TLSv1.3",
            key="protocols",
        )
    return [_VERSIONS[p] for p in listener.protocols]


def _options(listener: ListenerConfig) -> int:
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if not listener.session_tickets:
        options |= SSL.OP_NO_TICKET
    if listener.prefer_server_ciphers:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    return options


def _alpn(listener: ListenerConfig) -> tuple[bytes, ...]:
    """
    The protocols offered, in the server's order of preference; a
    PostgreSQL listener always offers C{postgresql} (direct SSL, PostgreSQL
    17 and later, requires it).
    """
    alpn = [p.encode("ascii") for p in listener.alpn]
    if listener.protocol == "postgres" and b"postgresql" not in alpn:
        alpn.append(b"postgresql")
    return tuple(alpn)


def _clientTrust(
    listener: ListenerConfig,
) -> tuple[
    tuple[x509.Certificate, ...],
    tuple[x509.CertificateRevocationList, ...],
    list[LoadWarning],
]:
    """
    Read C{client_ca} and C{client_crl}, and check C{groups}: each key on
    its own, so one load reports every one of them that is wrong.

    @return: the client authorities, their CRLs, and warnings about the
        CRLs.
    @raise TLSConfigErrors: one error per key that is wrong.
    """
    errors: list[TLSConfigError] = []
    clientCAs: tuple[x509.Certificate, ...] | None = ()
    if listener.client_ca is not None:
        try:
            clientCAs = readCertificates(listener.client_ca, "client_ca")
        except TLSConfigError as e:
            errors.append(e)
            clientCAs = None
    unknown = unknownGroups(listener.groups)
    if unknown:
        errors.append(
            TLSConfigError(
                f"{', '.join(unknown)}: not a key exchange group this OpenSSL knows"
                f" ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})",
                key="groups",
            )
        )
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    warnings: list[LoadWarning] = []
    try:
        crls, warnings = readCRLs(
            listener.client_crl, clientCAs, datetime.datetime.now(datetime.UTC)
        )
    except TLSConfigError as e:
        errors.append(e)
    if errors:
        raise TLSConfigErrors(errors)
    assert clientCAs is not None
    return clientCAs, crls, warnings
