"""
JA4 fingerprints against published values.
"""

from gateway.testing import makeClientHello
from gateway.wire.clienthello import ClientHello, isGrease
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.ja4 import _GREASE, ja4


def _hex(text: str) -> tuple[int, ...]:
    return tuple(int(part, 16) for part in text.split(","))


# A Chrome 143 ClientHello as published by browserleaks.com's TLS page in its
# `ja4_ro` field (ciphers, extensions and signature algorithms in wire
# order), with its published `ja4` of t13d1516h2_8daaf6152771_d8a2da3f94cd.
# The `8daaf6152771` cipher hash is also the one FoxIO's JA4 specification
# (technical_details/JA4.md) shows for Chrome.
CHROME = ClientHello(
    serverName="tls.browserleaks.com",
    alpn=("h2", "http/1.1"),
    legacyVersion=0x0303,
    supportedVersions=(0x0A0A, 0x0304, 0x0303),
    ciphers=(
        0x2A2A,
        *_hex(
            "1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035"
        ),
    ),
    extensions=(
        0x1A1A,
        *_hex(
            "002d,0033,0010,fe0d,0017,44cd,0000,000b,000a,002b,ff01,0023,0012,0005,000d,001b"
        ),
        0x3A3A,
    ),
    signatureAlgorithms=_hex("0403,0804,0401,0503,0805,0501,0806,0601"),
)


def test_publishedChromeFingerprint() -> None:
    assert ja4(CHROME) == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_greaseAndExtensionOrderDoNotChangeTheFingerprint() -> None:
    shuffled = ClientHello(
        serverName=CHROME.serverName,
        alpn=CHROME.alpn,
        supportedVersions=(0x0304, 0x0303),
        ciphers=tuple(reversed([c for c in CHROME.ciphers if c != 0x2A2A])),
        extensions=tuple(
            sorted(e for e in CHROME.extensions if e not in (0x1A1A, 0x3A3A))
        ),
        signatureAlgorithms=CHROME.signatureAlgorithms,
    )
    assert ja4(shuffled) == ja4(CHROME)


def test_noSniNoAlpn() -> None:
    hello = ClientHello(serverName=None, ciphers=(0x1301,), extensions=(0x002B,))
    assert ja4(hello).startswith("t12i010100_")


def test_nonAlphanumericAlpnUsesHex() -> None:
    hello = ClientHello(serverName="x", alpn=("\x01ab\xff",), extensions=(0, 16))
    assert ja4(hello)[8:10] == "0f"


def test_realClientHelloFingerprintIsStable() -> None:
    first = ClientHelloReader().feed(makeClientHello("a.example", [b"h2"]))
    second = ClientHelloReader().feed(makeClientHello("b.example", [b"h2"]))
    assert isinstance(first, ClientHello)
    assert isinstance(second, ClientHello)
    assert ja4(first) == ja4(second)
    assert ja4(first).startswith("t13d")
    assert ja4(first)[8:10] == "h2"


def test_greaseSetIsExactlyWhatIsGreaseRecognises() -> None:
    """
    The fingerprint filters GREASE through a set, for speed: it must be
    the same values that L{isGrease} names.
    """
    assert {value for value in range(1 << 16) if isGrease(value)} == _GREASE


def test_cachedFingerprintFollowsEveryField() -> None:
    """
    The fingerprint is cached by the fields it reads: a hello that differs
    in any of them gets its own answer, not a neighbour's.
    """
    base = ja4(CHROME)
    variants = [
        ClientHello(
            CHROME.serverName,
            CHROME.alpn,
            0x0303,
            (0x0303,),
            CHROME.ciphers,
            CHROME.extensions,
            CHROME.signatureAlgorithms,
        ),
        ClientHello(
            CHROME.serverName,
            ("http/1.1",),
            0x0303,
            CHROME.supportedVersions,
            CHROME.ciphers,
            CHROME.extensions,
            CHROME.signatureAlgorithms,
        ),
        ClientHello(
            CHROME.serverName,
            CHROME.alpn,
            0x0303,
            CHROME.supportedVersions,
            CHROME.ciphers[:-1],
            CHROME.extensions,
            CHROME.signatureAlgorithms,
        ),
        ClientHello(
            CHROME.serverName,
            CHROME.alpn,
            0x0303,
            CHROME.supportedVersions,
            CHROME.ciphers,
            CHROME.extensions[:-2],
            CHROME.signatureAlgorithms,
        ),
        ClientHello(
            CHROME.serverName,
            CHROME.alpn,
            0x0303,
            CHROME.supportedVersions,
            CHROME.ciphers,
            CHROME.extensions,
            CHROME.signatureAlgorithms[::-1],
        ),
    ]
    fingerprints = [ja4(hello) for hello in variants]
    assert base not in fingerprints
    assert len(set(fingerprints)) == len(variants)
    assert ja4(CHROME) == base
