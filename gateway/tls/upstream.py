"""
Re-encryption: the client side of the gateway's TLS, towards the servers of
an C{[upstream:NAME]} with C{tls = on} (L{UpstreamTLS}).

The chain is verified by OpenSSL, the name by service-identity, both during
the handshake, so a wrong upstream fails before a byte of the client's is
sent to it.
"""

from __future__ import annotations

import ipaddress
import weakref

import service_identity
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from service_identity.pyopenssl import verify_hostname, verify_ip_address

from gateway.config import ConfigWarning, Problem, ServerConfig, UpstreamConfig
from gateway.fast.internals import verifyErrorText
from gateway.tls.certificates import certificateNames, readCertificates, trust
from gateway.tls.errors import (
    TLSConfigError,
    UpstreamVerificationError,
    callbackFailed,
    openSSLReasons,
    problemAt,
)

__all__ = ["UpstreamTLS"]


def _isAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class UpstreamTLS:
    """
    How to re-encrypt to the servers of one C{[upstream:NAME]} with
    C{tls = on}, for one configuration generation.

    The chain is verified by OpenSSL during the handshake, against
    C{tls_ca} or the system store; the name (C{tls_server_name}, or the
    server's host) is checked with service-identity: during the handshake
    for connections made by L{connectionFor}, and again by L{verifyPeer}
    (or L{verify}), which the caller runs before sending a byte.  With
    C{tls_verify = off} nothing is verified (the caller warns about that).
    """

    def __init__(self, upstream: UpstreamConfig, context: SSL.Context) -> None:
        self.upstream = upstream
        self._context = context
        self._expected: weakref.WeakKeyDictionary[SSL.Connection, str] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def fromConfig(
        cls, upstream: UpstreamConfig
    ) -> tuple[UpstreamTLS | None, list[Problem], list[ConfigWarning]]:
        """
        Build the client context of an upstream.

        @return: the policy, or L{None} when there are problems or the
            upstream has C{tls = off}; the problems; warnings (none today,
            kept for symmetry with L{ServerTLS.fromConfig}).
        """
        if not upstream.tls:
            return None, [], []
        section = f"upstream:{upstream.name}"
        problems = []
        authorities: tuple[x509.Certificate, ...] = ()
        if upstream.tls_ca is not None:
            try:
                authorities = readCertificates(upstream.tls_ca, "tls_ca")
            except TLSConfigError as e:
                problems.append(problemAt(upstream.location, section, "tls_ca", str(e)))
        if upstream.tls_verify and upstream.tls_server_name is None:
            unnamed = [s.address for s in upstream.servers if s.host is None]
            if unnamed:
                problems.append(
                    problemAt(
                        upstream.location,
                        section,
                        "tls_server_name",
                        f"{unnamed[0]} has no host name to verify: set"
                        " tls_server_name (or tls_verify = off)",
                    )
                )
        if problems:
            return None, problems, []
        policy = cls(upstream, SSL.Context(SSL.TLS_CLIENT_METHOD))
        context = policy._context
        try:
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
            if upstream.tls_verify:
                if authorities:
                    trust(context, authorities)
                else:
                    context.set_default_verify_paths()
                context.set_verify(SSL.VERIFY_PEER, policy._verifyCallback)
            else:
                context.set_verify(SSL.VERIFY_NONE)
        except SSL.Error as e:
            problem = problemAt(
                upstream.location,
                section,
                "tls_ca",
                f"OpenSSL refused it: {openSSLReasons(e)}",
            )
            return None, [problem], []
        return policy, [], []

    def contextFor(self) -> SSL.Context:
        """
        The client context: TLS 1.2 or later, verifying unless
        C{tls_verify = off}.  Prefer L{connectionFor}, which also sets SNI
        and checks the name during the handshake.
        """
        return self._context

    def serverName(self, server: ServerConfig) -> str | None:
        """
        The name to send as SNI and verify: C{tls_server_name}, or the
        server's host.  L{None} only for a C{unix:} server without
        C{tls_server_name}, which C{fromConfig} allows only with
        C{tls_verify = off}.
        """
        return self.upstream.tls_server_name or server.host

    def connectionFor(self, server: ServerConfig) -> SSL.Connection:
        """
        A client connection to C{server}, in connect state, on memory BIOs.

        SNI carries the server name unless it is an IP address (RFC 6066
        forbids literal addresses in SNI).  When verifying, the name is
        also checked as soon as OpenSSL has the certificate, so a wrong
        server fails the handshake itself.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_connect_state()
        name = self.serverName(server)
        if name is not None:
            if not _isAddress(name):
                connection.set_tlsext_host_name(name.encode("ascii"))
            if self.upstream.tls_verify:
                self._expected[connection] = name
        return connection

    def verifyPeer(self, connection: SSL.Connection, name: str | None) -> None:
        """
        Check, after the handshake, that the upstream's certificate is for
        C{name} (a DNS name, or an IP address checked against IP
        subjectAltNames).  The chain was verified during the handshake.

        @raise UpstreamVerificationError: no certificate, or not for
            C{name}.
        """
        if not self.upstream.tls_verify:
            return
        if name is None:
            raise UpstreamVerificationError("no name to verify the upstream against")
        if connection.get_peer_certificate() is None:
            raise UpstreamVerificationError("the upstream sent no certificate")
        try:
            if _isAddress(name):
                verify_ip_address(connection, name)
            else:
                verify_hostname(connection, name)
        except (service_identity.VerificationError, service_identity.CertificateError):
            peer = connection.get_peer_certificate(as_cryptography=True)
            raise self._mismatch(peer, name) from None

    def verify(self, connection: SSL.Connection, server: ServerConfig) -> str | None:
        """
        L{verifyPeer} for C{server}'s name, as the session asks it.

        @return: L{None} when the certificate is good, or why it is not.
        """
        try:
            self.verifyPeer(connection, self.serverName(server))
        except UpstreamVerificationError as e:
            return str(e)
        return None

    def _mismatch(
        self, certificate: x509.Certificate | None, name: str
    ) -> UpstreamVerificationError:
        names = certificateNames(certificate, commonName=False) if certificate else ()
        offered = ", ".join(names) if names else "no subjectAltName"
        return UpstreamVerificationError(
            f"the upstream certificate is not for {name!r} (it is for {offered})"
        )

    def _verifyCallback(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errorNumber: int,
        depth: int,
        ok: int,
    ) -> bool:
        """
        OpenSSL's verification, with words: the first failure raises an
        error that says what is wrong with which certificate, and the
        leaf's name is checked here too, so the handshake itself fails.
        """
        try:
            self._checkCertificate(connection, certificate, errorNumber, depth, ok)
        except UpstreamVerificationError:
            raise
        except Exception as e:
            raise callbackFailed("upstream certificate verification", e) from e
        return True

    def _checkCertificate(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        errorNumber: int,
        depth: int,
        ok: int,
    ) -> None:
        subject = certificate.to_cryptography().subject.rfc4514_string()
        if not ok:
            raise UpstreamVerificationError(
                f"the upstream certificate is not trusted:"
                f" {verifyErrorText(errorNumber)} (at depth {depth}: {subject})"
            )
        name = self._expected.get(connection)
        if depth == 0 and name is not None:
            leaf = certificate.to_cryptography()
            try:
                if _isAddress(name):
                    verify_certificate_ip_address(leaf, name)
                else:
                    verify_certificate_hostname(leaf, name)
            except (
                service_identity.VerificationError,
                service_identity.CertificateError,
            ):
                raise self._mismatch(leaf, name) from None
