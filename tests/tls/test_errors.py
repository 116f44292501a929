"""
The TLS layer's errors (L{gateway.tls.errors}): OpenSSL's refusals reduced
to their reason strings, several keys' errors kept apart, and problems put
at the line of the key they are about.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from gateway.config import ConfigWarning, Location, Problem
from gateway.tls.errors import (
    TLSConfigError,
    TLSConfigErrors,
    TLSHandshakeError,
    UpstreamVerificationError,
    callbackFailed,
    openSSLReasons,
    problemAt,
    warningAt,
)


def test_openSSLReasonsAreTheReasonStringsOfARealRefusal() -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    with pytest.raises(SSL.Error) as caught:
        context.set_cipher_list(b"NO-SUCH-CIPHER")
    assert openSSLReasons(caught.value) == "no cipher match"


def test_anErrorWithoutReasonsSaysOpenSSLRefusedIt() -> None:
    assert openSSLReasons(SSL.Error()) == "OpenSSL refused it"
    assert openSSLReasons(SSL.Error([])) == "OpenSSL refused it"


def test_severalErrorsKeepEachOneAndItsKey() -> None:
    errors = [
        TLSConfigError("ca.pem: no certificate found", path="ca.pem", key="client_ca"),
        TLSConfigError("bogus: not a key exchange group", key="groups"),
    ]
    combined = TLSConfigErrors(errors)
    assert combined.errors == tuple(errors)
    assert combined.key == "client_ca"
    assert (
        str(combined) == "ca.pem: no certificate found; bogus: not a key exchange group"
    )


def test_handshakeErrorsAreSSLErrorsWithTheirReason() -> None:
    """
    pyOpenSSL re-raises what a callback raised from C{do_handshake}, and
    the code driving handshakes catches C{SSL.Error}: a failing callback
    fails that one handshake.
    """
    failed = callbackFailed("ALPN selection", KeyError("h2"))
    assert isinstance(failed, SSL.Error)
    assert failed.reason == "handshake_failed"
    assert str(failed) == "ALPN selection failed: KeyError: 'h2'"
    refused = UpstreamVerificationError("the upstream sent no certificate")
    assert isinstance(refused, TLSHandshakeError)
    assert refused.reason == "upstream_verify_failed"


def test_problemsAndWarningsPointAtTheKeysLine() -> None:
    location = Location("gw.ini", 7, keys={"ciphers": 9})
    assert problemAt(location, "listener:web", "ciphers", "no") == Problem(
        "gw.ini", 9, "listener:web", "ciphers", "no"
    )
    assert problemAt(location, "listener:web", None, "no").line == 7
    warning = warningAt(location, "listener:web", "alpn", "maybe")
    assert warning == ConfigWarning("gw.ini", 7, "listener:web", "alpn", "maybe")
