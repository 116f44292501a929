"""
Tests for L{gateway.wire.clienthello}, read through the record reassembler
of L{gateway.wire.helloreader}: real captured hellos and hand-built ones
the parser must read (the malformed ones, which must fail with a
L{ClientHelloError} and nothing else: L{tests.wire.test_clienthello_malformed};
how the reader takes segmentation and its size bound:
L{tests.wire.test_helloreader}).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from gateway.testing import makeClientHello, splitIntoRecords
from gateway.wire import clienthello
from gateway.wire.clienthello import (
    ClientHello,
    ClientHelloError,
    isGrease,
)
from gateway.wire.helloreader import ClientHelloReader
from tests.helpers import frameworksImportedBy
from tests.wire.hellobuilders import (
    CAPTURED,
    DATA,
    FAST,
    PARSED,
    alpn,
    extension,
    feedAll,
    helloBody,
    oneByteAtATime,
    outcome,
    serverNames,
    sni,
    vector,
    wrap,
)


@pytest.mark.parametrize(("name", "serverName", "protocols", "versions"), CAPTURED)
def test_capturedHelloParses(
    name: str, serverName: str, protocols: tuple[str, ...], versions: tuple[int, ...]
) -> None:
    data = (DATA / f"{name}.bin").read_bytes()
    hello = ClientHelloReader().feed(data)
    assert isinstance(hello, ClientHello)
    assert hello.serverName == serverName
    assert hello.alpn == protocols
    assert hello.legacyVersion == 0x0303
    assert hello.supportedVersions == versions
    assert hello.highestVersion == 0x0304
    assert hello.ciphers
    assert 0x1301 in hello.ciphers
    assert {0, 10, 13, 43} <= set(hello.extensions)
    assert hello.signatureAlgorithms
    assert hello.supportedGroups


@pytest.mark.parametrize("name", [c[0] for c in CAPTURED])
def test_capturedHelloFedOneByteAtATime(name: str) -> None:
    data = (DATA / f"{name}.bin").read_bytes()
    assert feedAll(oneByteAtATime(data)) == ClientHelloReader().feed(data)


@pytest.mark.parametrize("name", [c[0] for c in CAPTURED])
def test_capturedHelloInOneByteRecords(name: str) -> None:
    """
    A hello cut into records of one handshake byte each is six times as
    long on the wire and still reads the same.
    """
    data = (DATA / f"{name}.bin").read_bytes()
    split = splitIntoRecords(data, [1])
    assert len(split) == 6 * (len(data) - 5)
    assert feedAll([split], maxSize=len(split)) == ClientHelloReader().feed(data)


def test_postQuantumHelloIsLargerThanAnMTU() -> None:
    """
    The bundled OpenSSL offers an X25519MLKEM768 key share, which puts its
    hello over 1,200 bytes: too big for one packet on many paths.
    """
    data = (DATA / "pyopenssl_pq.bin").read_bytes()
    assert len(data) > 1200
    hello = ClientHelloReader().feed(data)
    assert isinstance(hello, ClientHello)
    assert 0x11EC in hello.supportedGroups
    fresh = makeClientHello("pq.example.com")
    assert len(fresh) > 1200
    assert feedAll([fresh[:1000], fresh[1000:]]).serverName == "pq.example.com"


def test_makeClientHelloOffersWhatItIsGiven() -> None:
    assert isinstance(PARSED, ClientHello)
    assert PARSED.serverName == "api.example.com"
    assert PARSED.alpn == ("h2", "http/1.1")
    assert PARSED.highestVersion == 0x0304


def test_noServerNameIsNone() -> None:
    hello = ClientHelloReader().feed(makeClientHello())
    assert isinstance(hello, ClientHello)
    assert hello.serverName is None
    assert hello.alpn == ()
    assert 0 not in hello.extensions
    assert 16 not in hello.extensions


def test_tls12OnlyClientSendsNoSupportedVersions() -> None:
    hello = ClientHelloReader().feed(
        makeClientHello("old.example.com", maxVersion=SSL.TLS1_2_VERSION)
    )
    assert isinstance(hello, ClientHello)
    assert hello.supportedVersions == ()
    assert hello.highestVersion == 0x0303
    assert hello.serverName == "old.example.com"


def test_helloWithoutExtensions() -> None:
    """
    TLS 1.2 allows a ClientHello that ends after its compression methods.
    """
    hello = feedAll([wrap(helloBody(extensionsBlock=b""))])
    assert hello == ClientHello(
        serverName=None, legacyVersion=0x0303, ciphers=(0x1301, 0x1302)
    )


def test_serverNameIsLowerCasedWithoutTrailingDot() -> None:
    hello = feedAll([makeClientHello("API.Example.COM.")])
    assert hello.serverName == "api.example.com"


def test_serverNameMayHaveUnderscoresAndDigits() -> None:
    hello = feedAll([wrap(helloBody(sni(b"_srv.node-01.Example.com")))])
    assert hello.serverName == "_srv.node-01.example.com"


def test_aNameTypeOtherThanHostNameFailsClosed() -> None:
    """
    A server_name list mixing name types (a type-1 entry, then a
    host_name) is refused: OpenSSL refuses the same bytes, so routing on
    the host_name would route a hello the server then reads differently.
    """
    data = wrap(helloBody(serverNames((1, b"x"), (0, b"a.example"))))
    with pytest.raises(ClientHelloError, match="type 1, not host_name"):
        ClientHelloReader().feed(data)


def test_aNameTypeAfterTheHostNameFailsClosed() -> None:
    data = wrap(helloBody(serverNames((0, b"a.example"), (5, b"x"))))
    with pytest.raises(ClientHelloError, match="type 5, not host_name"):
        ClientHelloReader().feed(data)


@FAST
@given(
    before=st.lists(st.tuples(st.integers(1, 255), st.binary(min_size=1, max_size=20))),
    after=st.lists(st.tuples(st.integers(1, 255), st.binary(min_size=1, max_size=20))),
)
def test_anyListWithAnotherNameTypeFailsClosed(
    before: list[tuple[int, bytes]], after: list[tuple[int, bytes]]
) -> None:
    """
    Wherever entries of other types sit around the host_name, the hello is
    a L{ClientHelloError}, never a routed name, fed whole or byte by byte.
    """
    if not (before or after):
        return
    data = wrap(helloBody(serverNames(*before, (0, b"a.example"), *after)))
    with pytest.raises(ClientHelloError):
        ClientHelloReader().feed(data)
    result = outcome(oneByteAtATime(data))
    assert isinstance(result, tuple)
    assert result[0] is ClientHelloError


def test_alpnIsDecodedAsLatin1() -> None:
    hello = feedAll([wrap(helloBody(alpn(b"h2", b"\xff\x00x")))])
    assert hello.alpn == ("h2", "\xff\x00x")
    assert hello.alpn[1].encode("latin-1") == b"\xff\x00x"


def test_fieldsKeepTheClientsOrderAndGrease() -> None:
    body = helloBody(
        extension(0x1A1A, b""),
        extension(43, vector(1, b"\x2a\x2a\x03\x04\x03\x03")),
        extension(13, vector(2, b"\x04\x03\x08\x04")),
        extension(10, vector(2, b"\x3a\x3a\x00\x1d")),
        ciphers=vector(2, b"\x0a\x0a\x13\x01"),
    )
    hello = feedAll([wrap(body)])
    assert hello.extensions == (0x1A1A, 43, 13, 10)
    assert hello.supportedVersions == (0x2A2A, 0x0304, 0x0303)
    assert hello.signatureAlgorithms == (0x0403, 0x0804)
    assert hello.supportedGroups == (0x3A3A, 0x001D)
    assert hello.ciphers == (0x0A0A, 0x1301)
    assert hello.highestVersion == 0x0304


def test_highestVersionSkipsGrease() -> None:
    assert (
        ClientHello(None, supportedVersions=(0xFAFA, 0x0303)).highestVersion == 0x0303
    )
    assert (
        ClientHello(
            None, supportedVersions=(0x7A7A,), legacyVersion=0x0303
        ).highestVersion
        == 0x0303
    )
    assert ClientHello(None, legacyVersion=0x0301).highestVersion == 0x0301


def test_isGrease() -> None:
    grease = {0x0A0A + 0x1010 * i for i in range(16)}
    assert {v for v in range(0x10000) if isGrease(v)} == grease


def test_helloesFromOneClientShareTheirLists() -> None:
    """
    Two hellos from the same client stack hold the very same tuples, so an
    idle connection does not keep a private copy of some 70 code points.
    """
    first = ClientHelloReader().feed(makeClientHello("a.example", [b"h2"]))
    second = ClientHelloReader().feed(makeClientHello("b.example", [b"h2"]))
    assert isinstance(first, ClientHello)
    assert isinstance(second, ClientHello)
    assert first.serverName != second.serverName
    for field in ("ciphers", "extensions", "signatureAlgorithms", "supportedGroups"):
        assert getattr(first, field) is getattr(second, field)


def test_sharedListsAreBounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A client that varies its lists on purpose cannot grow the shared copies
    without bound: past the limit they start over.
    """
    monkeypatch.setattr(clienthello, "_MAX_SHARED", 8)
    monkeypatch.setattr(clienthello, "_SHARED", {})
    for suite in range(0x1300, 0x1340):
        body = helloBody(ciphers=vector(2, suite.to_bytes(2, "big")))
        hello = ClientHelloReader().feed(wrap(body))
        assert isinstance(hello, ClientHello)
        assert hello.ciphers == (suite,)
        assert len(clienthello._SHARED) <= 8


# Layering.


def test_readerImportsNeitherTwistedNorOpenSSL() -> None:
    """
    The reader is sans-I/O: importing it must not pull in Twisted or
    OpenSSL (STYLE section 2).
    """
    assert frameworksImportedBy("gateway.wire.clienthello") == []
