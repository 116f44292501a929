"""
The errors of the TLS layer, and how they become configuration problems.

Every problem with a TLS file or setting is a L{TLSConfigError}; no message
ever contains key material, and no OpenSSL error text is passed on without
being reduced to its reason strings (L{openSSLReasons}), which never contain
any either.  L{problemAt} and L{warningAt} put a message at the section and
key of the configuration file it is about, as the INI loader's own problems
are.
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL

from gateway.config import ConfigWarning, Location, Problem

__all__ = [
    "TLSConfigError",
    "TLSConfigErrors",
    "TLSHandshakeError",
    "UpstreamVerificationError",
    "callbackFailed",
    "openSSLReasons",
    "problemAt",
    "warningAt",
]


class TLSConfigError(Exception):
    """
    A TLS file or setting cannot be used; the root of the TLS layer's errors.

    The message names the file and says what to do; it never quotes the
    file's contents, since a key file's contents are the secret.

    @ivar path: the file at fault, if there is one.
    @ivar key: the configuration key that names that file or setting
        (C{certificate}, C{private_key}, C{ocsp_response}, C{client_ca},
        C{tls_ca}, C{ciphers}...), so a L{Problem} can point at it.
    @cvar reason: stable slug for logs and metrics.
    """

    reason = "tls_config"

    def __init__(
        self, message: str, *, path: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.key = key

    def __str__(self) -> str:
        return self.message


class TLSConfigErrors(TLSConfigError):
    """
    Several keys are wrong at once; each is in L{errors}, reported on its
    own.
    """

    def __init__(self, errors: Sequence[TLSConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors), key=errors[0].key)
        self.errors = tuple(errors)


class TLSHandshakeError(TLSConfigError, SSL.Error):
    """
    One of our callbacks refused, or failed, during a handshake.

    Also an C{SSL.Error}: pyOpenSSL re-raises what a callback raised from
    C{do_handshake}, and code that drives handshakes (C{TLSTransport},
    Twisted's C{TLSMemoryBIOProtocol}) catches C{SSL.Error}; so a failing
    callback fails that one handshake, and never escapes as an unexpected
    exception.
    """

    reason = "handshake_failed"


class UpstreamVerificationError(TLSHandshakeError):
    """
    An upstream's certificate is not trusted, or not for the expected name.
    """

    reason = "upstream_verify_failed"


def openSSLReasons(error: SSL.Error) -> str:
    """
    The reason strings of an OpenSSL error (C{no cipher match}, C{ca md too
    weak}): what an operator needs, and never key material.
    """
    if error.args and isinstance(error.args[0], list):
        reasons = [str(item[-1]) for item in error.args[0] if item]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return "OpenSSL refused it"


def problemAt(
    location: Location, section: str, key: str | None, message: str
) -> Problem:
    """
    A problem at a section of the configuration file.

    Problems about a key point at the key's line.
    """
    return Problem(location.path, location.lineOf(key), section, key, message)


def warningAt(
    location: Location, section: str, key: str | None, message: str
) -> ConfigWarning:
    """
    A warning at a section (and key) of the configuration file.
    """
    return ConfigWarning(location.path, location.lineOf(key), section, key, message)


def callbackFailed(what: str, error: Exception) -> TLSHandshakeError:
    """
    What a callback of ours that failed unexpectedly raises: a
    L{TLSHandshakeError} fails that one handshake, where any other
    exception would escape from C{do_handshake} as a crash.
    """
    return TLSHandshakeError(f"{what} failed: {type(error).__name__}: {error}")
