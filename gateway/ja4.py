"""
JA4 client fingerprints (FoxIO's JA4 specification), from a parsed ClientHello.

A fingerprint names the TLS stack a client runs (curl, a browser, a bot
framework) whatever name it claims to be, so operators can log and refuse
stacks without decrypting anything.  It falls out of the pre-read: every
field it needs is already parsed.  Pure: no Twisted, no OpenSSL.
"""

from __future__ import annotations

import hashlib

from gateway.clienthello import ClientHello, isGrease

_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
_SNI, _ALPN = 0x0000, 0x0010
_EMPTY = "000000000000"


def _hash12(text: str) -> str:
    if not text:
        return _EMPTY
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _alpnCode(alpn: tuple[str, ...]) -> str:
    """
    First and last character of the first offered protocol (C{h2},
    C{h1} for C{http/1.1}); for a non-alphanumeric one, the first and last
    hex digits of its bytes, as the specification says.
    """
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    if (
        first[0].isascii()
        and first[0].isalnum()
        and first[-1].isascii()
        and first[-1].isalnum()
    ):
        return first[0] + first[-1]
    raw = first.encode("latin-1").hex()
    return raw[0] + raw[-1]


def ja4(hello: ClientHello) -> str:
    """
    The C{ja4} fingerprint of a ClientHello received over TCP.

    GREASE values are ignored everywhere; ciphers and extensions are sorted
    before hashing (so a client that shuffles its extensions, as Chrome
    does, keeps one fingerprint), while signature algorithms keep their
    order; SNI and ALPN count as extensions but are left out of the hash.
    """
    ciphers = [c for c in hello.ciphers if not isGrease(c)]
    extensions = [e for e in hello.extensions if not isGrease(e)]
    version = _VERSIONS.get(hello.highestVersion, "00")
    sni = "d" if _SNI in extensions else "i"
    partA = (
        f"t{version}{sni}{min(len(ciphers), 99):02d}"
        f"{min(len(extensions), 99):02d}{_alpnCode(hello.alpn)}"
    )
    partB = _hash12(",".join(sorted(f"{c:04x}" for c in ciphers)))
    tail = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (_SNI, _ALPN)))
    algorithms = [a for a in hello.signatureAlgorithms if not isGrease(a)]
    if algorithms:
        tail += "_" + ",".join(f"{a:04x}" for a in algorithms)
    return f"{partA}_{partB}_{_hash12(tail)}"
