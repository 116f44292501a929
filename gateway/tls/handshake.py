"""
The facts of a finished handshake, as the access log records them.

Apart from the contexts that made the handshake: termination and the
status of a connection both read them, and reading them must never break
the connection it describes.
"""

from __future__ import annotations

from OpenSSL import SSL

from gateway.rules.accesslog import ExtraFields

__all__ = ["describe"]


def describe(connection: SSL.Connection) -> ExtraFields:
    """
    The facts of a finished handshake, for the access log.

    @return: C{tls_version} (C{TLSv1.3}), C{cipher}, C{tls_group} (the key
        exchange group, such as C{X25519MLKEM768}), C{alpn_selected} and
        C{client_cert} (the client certificate's subject as an RFC 4514
        string); L{None} for what does not apply or is not known yet.
        Never raises: a log line must not break a connection.
    """
    facts: ExtraFields = {
        "tls_version": None,
        "cipher": None,
        "tls_group": None,
        "alpn_selected": None,
        "client_cert": None,
    }
    try:
        cipher = connection.get_cipher_name()
        if cipher is None:
            return facts
        facts["cipher"] = cipher
        facts["tls_version"] = connection.get_protocol_version_name()
        facts["tls_group"] = connection.get_group_name()
        alpn = connection.get_alpn_proto_negotiated()
        if alpn:
            facts["alpn_selected"] = alpn.decode("ascii", "replace")
        peer = connection.get_peer_certificate(as_cryptography=True)
        if peer is not None:
            facts["client_cert"] = peer.subject.rfc4514_string()
    except (SSL.Error, ValueError):
        pass
    return facts
