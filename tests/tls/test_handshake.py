"""
The handshake facts for the access log (L{gateway.tls.handshake}).
"""

from __future__ import annotations

from OpenSSL import SSL

from gateway.tls.handshake import describe
from tests.tls.fixtures import (
    PKI,
    pki,
    serverTLS,
)

__all__ = ["pki"]  # the shared fixture, re-exported for pytest


def test_describeBeforeTheHandshakeIsEmpty(pki: PKI) -> None:
    connection = SSL.Connection(serverTLS(pki.rsa).contextFor(None), None)
    assert set(describe(connection).values()) == {None}
