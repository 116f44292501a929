"""
JA4 client fingerprints (FoxIO's JA4 specification), from a parsed ClientHello.

A fingerprint names the TLS stack a client runs (curl, a browser, a bot
framework) whatever name it claims to be, so operators can log and refuse
stacks without decrypting anything.  It falls out of the pre-read: every
field it needs is already parsed.  Pure: no Twisted, no OpenSSL.
"""

from __future__ import annotations

import functools
import hashlib

from gateway.wire.clienthello import ClientHello

_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
_SNI, _ALPN = 0x0000, 0x0010
_EMPTY = "000000000000"
#: The 16 GREASE code points of RFC 8701 (what L{isGrease} recognises), as
#: a set: filtering a list through it is several times faster than a call
#: per value.
_GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))


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

    Computed once per distinct client stack, not per connection: the
    fields it reads are the same in every hello a given client build
    sends (what varies, the random, the key shares and the server name,
    is not part of it), so a small cache keyed on them answers nearly
    every connection of a busy listener with one tuple hash instead of
    two sorts, two SHA-256 and a dozen string joins (about 15 us, 20
    times the cached answer).  Clients that GREASE (Chrome) put random
    values in those fields, so a miss filters GREASE out and tries a
    second cache keyed on what is left, which such a client hits.  Both
    are bounded: a client that varies its hellos on purpose only evicts.
    """
    return _cachedByWire(
        hello.ciphers,
        hello.extensions,
        hello.signatureAlgorithms,
        hello.alpn[0] if hello.alpn else "",
        hello.highestVersion,
    )


@functools.lru_cache(maxsize=1024)
def _cachedByWire(
    ciphers: tuple[int, ...],
    extensions: tuple[int, ...],
    signatureAlgorithms: tuple[int, ...],
    firstALPN: str,
    highestVersion: int,
) -> str:
    return _fingerprint(
        tuple([c for c in ciphers if c not in _GREASE]),
        tuple([e for e in extensions if e not in _GREASE]),
        tuple([a for a in signatureAlgorithms if a not in _GREASE]),
        firstALPN,
        highestVersion,
    )


@functools.lru_cache(maxsize=256)
def _fingerprint(
    ciphers: tuple[int, ...],
    extensions: tuple[int, ...],
    algorithms: tuple[int, ...],
    firstALPN: str,
    highestVersion: int,
) -> str:
    """
    The fingerprint from GREASE-free fields.
    """
    version = _VERSIONS.get(highestVersion, "00")
    sni = "d" if _SNI in extensions else "i"
    alpn = _alpnCode((firstALPN,) if firstALPN else ())
    partA = (
        f"t{version}{sni}{min(len(ciphers), 99):02d}"
        f"{min(len(extensions), 99):02d}{alpn}"
    )
    partB = _hash12(",".join(sorted(f"{c:04x}" for c in ciphers)))
    tail = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (_SNI, _ALPN)))
    if algorithms:
        tail += "_" + ",".join(f"{a:04x}" for a in algorithms)
    return f"{partA}_{partB}_{_hash12(tail)}"
