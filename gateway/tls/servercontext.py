"""
Server contexts: the certificates of one listener grouped by the names they
are for, and one C{SSL.Context} built per group from the listener's
L{ListenerSettings}, with the callbacks that run inside its handshakes
(ALPN choice, OCSP stapling, client certificate verdicts).

A context is built once and never changed afterwards: pyOpenSSL refuses to
change a context once a connection used it, so new certificates or settings
mean new contexts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from gateway.fast.internals import refuseEarlyData, setGroups, verifyErrorText
from gateway.tls.certificates import LoadedCertificate, trust
from gateway.tls.errors import (
    TLSConfigError,
    TLSHandshakeError,
    callbackFailed,
    openSSLReasons,
)
from gateway.tls.settings import ListenerSettings

__all__ = ["ServedGroup", "groupCertificates", "serverContext"]


class _ALPNSelector:
    """
    The server's ALPN choice: its own order of preference among what the
    client offers.  No overlap means no ALPN rather than a failed
    handshake (RFC 7301 allows either): a client that offers only
    protocols the gateway does not list still gets its bytes relayed, and
    the upstream decides what it speaks.
    """

    def __init__(self, protocols: Sequence[bytes]) -> None:
        self._protocols = tuple(protocols)

    def __call__(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        try:
            return self.choose(offered)
        except Exception as e:
            raise callbackFailed("ALPN selection", e) from e

    def choose(self, offered: Sequence[bytes]) -> Any:
        for protocol in self._protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS


class _Stapler:
    """
    Serve the OCSP response of the certificate OpenSSL chose for this
    handshake (an RSA and an ECDSA certificate in one context each have
    their own), to clients that asked for one.  OpenSSL selects the
    certificate before it calls this, so C{get_certificate} is the one
    being sent.
    """

    def __init__(self, responses: Mapping[bytes, bytes]) -> None:
        self._responses = dict(responses)

    def __call__(self, connection: SSL.Connection, data: object) -> bytes:
        try:
            return self.responseFor(connection)
        except Exception as e:
            raise callbackFailed("OCSP stapling", e) from e

    def responseFor(self, connection: SSL.Connection) -> bytes:
        certificate = connection.get_certificate(as_cryptography=True)
        if certificate is None:
            return b""
        return self._responses.get(
            certificate.public_bytes(serialization.Encoding.DER), b""
        )


@attrs.frozen
class ServedGroup:
    """
    The certificates one context serves: at most one per key type, all for
    the same names.
    """

    names: frozenset[str]
    certificates: tuple[LoadedCertificate, ...]


def groupCertificates(
    loaded: Sequence[tuple[str, LoadedCertificate]],
) -> tuple[list[ServedGroup], list[tuple[str, str]]]:
    """
    Put certificates for the same names into one context, one per key type.

    Only identical name sets share a context: OpenSSL picks among a
    context's certificates by the client's signature algorithms alone, so
    certificates sharing a context must be good for the same names.

    @param loaded: (section, certificate) in configuration order.
    @return: the groups in order of their first certificate, and
        (section, message) warnings for certificates that can never be
        served because an earlier one has the same names and key type.
    """
    groups: list[ServedGroup] = []
    warnings = []
    for section, certificate in loaded:
        names = frozenset(certificate.names)
        for index, group in enumerate(groups):
            if group.names != names:
                continue
            if any(c.keyType == certificate.keyType for c in group.certificates):
                warnings.append(
                    (
                        section,
                        f"{certificate.certificatePath} is never served: an"
                        f" earlier {certificate.keyType} certificate has the"
                        " same names",
                    )
                )
                break
            groups[index] = ServedGroup(names, (*group.certificates, certificate))
            break
        else:
            groups.append(ServedGroup(names, (certificate,)))
    return groups, warnings


def _useChain(context: SSL.Context, certificate: LoadedCertificate) -> None:
    """
    Load a certificate, its own chain, and its key into a context.

    Through C{use_certificate_chain_file}, because it is the only call
    pyOpenSSL offers that attaches a chain to I{one} certificate:
    C{add_extra_chain_cert} sets one chain for the whole context, which
    would send an RSA certificate's intermediates with the ECDSA one, and
    C{SSL_CTX_add1_chain_cert} is a macro cryptography's bindings do not
    expose.  The file it reads is a temporary copy of the certificates that
    L{loadCertificate} checked (public data only), not the operator's file
    again: a file replaced between the check and the load is never served
    unchecked.
    """
    pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in certificate.chain
    )
    descriptor, name = tempfile.mkstemp(prefix="tlsgateway-", suffix=".pem")
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(pem)
        context.use_certificate_chain_file(name)
    finally:
        os.unlink(name)
    context.use_privatekey(certificate.privateKey)
    context.check_privatekey()


def serverContext(settings: ListenerSettings, served: ServedGroup) -> SSL.Context:
    """
    Build one server context.

    Key exchange groups, unless C{groups} is set, are OpenSSL's default,
    which puts the hybrid post-quantum X25519MLKEM768 first (OpenSSL 3.5
    and later) and keeps X25519 and the NIST curves for older clients.
    TLS 1.3 early data is refused explicitly (L{refuseEarlyData}): a
    replayable request the gateway would relay upstream before the
    handshake is done is not something a gateway can make safe.

    @raise TLSConfigError: OpenSSL refused a setting or a certificate; the
        error's C{key} names the setting.
    """
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    step = "protocols"
    try:
        context.set_min_proto_version(settings.minVersion)
        context.set_max_proto_version(settings.maxVersion)
        context.set_options(settings.options)
        step = "ciphers"
        context.set_cipher_list(settings.ciphers)
        if settings.ciphersuites is not None:
            step = "ciphersuites"
            context.set_tls13_ciphersuites(settings.ciphersuites)
        step = "session_cache"
        context.set_session_cache_mode(settings.sessionCacheMode)
        context.set_session_id(settings.sessionID)
        step = "session_ticket_lifetime"
        context.set_timeout(settings.ticketLifetime)
        refuseEarlyData(context)
        if settings.groups:
            step = "groups"
            if not setGroups(context, settings.groups):
                raise TLSConfigError(
                    f"OpenSSL refused {':'.join(settings.groups)}", key="groups"
                )
        if settings.clientCAs:
            step = "client_ca"
            trust(context, settings.clientCAs)
            for authority in settings.clientCAs:
                context.add_client_ca(authority)
        if settings.clientCRLs:
            step = "client_crl"
            store = context.get_cert_store()
            assert store is not None
            for crl in settings.clientCRLs:
                store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        if settings.verifyMode == SSL.VERIFY_NONE:
            context.set_verify(settings.verifyMode)
        else:
            context.set_verify(settings.verifyMode, _verifyClient)
        if settings.alpn:
            context.set_alpn_select_callback(_ALPNSelector(settings.alpn))
        step = "certificate"
        _serveCertificates(context, served)
    except SSL.Error as e:
        raise TLSConfigError(
            f"OpenSSL refused it: {openSSLReasons(e)}", key=step
        ) from None
    except OSError as e:
        raise TLSConfigError(
            f"cannot write a temporary file: {e.strerror or e}", key=step
        ) from None
    return context


def _serveCertificates(context: SSL.Context, served: ServedGroup) -> None:
    """
    Load each certificate of a group, its chain and its key into a
    context, and staple the OCSP responses there are.

    @raise TLSConfigError: OpenSSL refused a certificate or its key; the
        error names the certificate's file.
    """
    responses = {}
    for certificate in served.certificates:
        try:
            _useChain(context, certificate)
        except SSL.Error as e:
            raise TLSConfigError(
                f"{certificate.certificatePath}: OpenSSL refused the"
                f" certificate or its key: {openSSLReasons(e)}",
                path=certificate.certificatePath,
                key="certificate",
            ) from None
        if certificate.ocspResponse is not None:
            der = certificate.leaf.public_bytes(serialization.Encoding.DER)
            responses[der] = certificate.ocspResponse
    if responses:
        context.set_ocsp_server_callback(_Stapler(responses))


def _verifyClient(
    connection: SSL.Connection,
    certificate: crypto.X509,
    errorNumber: int,
    depth: int,
    ok: int,
) -> bool:
    """
    OpenSSL's verdict on a client certificate, with words: a failure
    raises an error naming what is wrong (C{certificate revoked},
    C{certificate has expired}, C{unable to get local issuer certificate})
    and which certificate, which becomes the access log's reason.  OpenSSL
    still sends the alert for its own error (C{certificate_revoked},
    C{unknown_ca}...).  Never turns a failure into a success.
    """
    if ok:
        return True
    try:
        subject = certificate.to_cryptography().subject.rfc4514_string()
    except Exception:  # noqa: BLE001 - a log detail must not change the verdict
        subject = "?"
    what = "the client certificate" if depth == 0 else "a client CA certificate"
    raise TLSHandshakeError(
        f"{what} is refused: {verifyErrorText(errorNumber)}"
        f" (at depth {depth}: {subject})"
    )
