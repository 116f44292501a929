"""
Tests for L{gateway.wire.ech} and L{gateway.wire.echopen}: the formats by
hand-built bytes and properties, and decryption against the ClientHellos
of a real ECH client (Go's C{crypto/tls}, L{tests.echtool}).
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.clienthello import ClientHello
from gateway.wire.ech import (
    AEAD_AES_128_GCM,
    EXT_ECH,
    EXT_ECH_OUTER_EXTENSIONS,
    INNER,
    KDF_HKDF_SHA256,
    ECHConfig,
    ECHError,
    ECHIllegalParameter,
    OuterECH,
    SymmetricSuite,
    decodeInner,
    encodeConfigList,
    helloMessage,
    helloRecords,
    outerAAD,
    parseConfigList,
    parseExtension,
)
from gateway.wire.echopen import (
    ECHDecryptError,
    ECHKeyFileError,
    ECHKeyring,
    generateKeyFile,
    parseKeyFile,
)
from gateway.wire.helloreader import ClientHelloReader
from tests.echtool import captureHello, echtool  # noqa: F401 (fixture)

_SUITE = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _hello(extensions: bytes, sessionId: bytes = b"", random: bytes = b"") -> bytes:
    """A ClientHello body with these extensions."""
    return (
        b"\x03\x03"
        + (random or bytes(range(32)))
        + bytes([len(sessionId)])
        + sessionId
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )


_TLS13_ONLY = _extension(43, b"\x02\x03\x04")
_INNER_ECH = _extension(EXT_ECH, b"\x01")


def _sni(name: bytes) -> bytes:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    return _extension(0, len(entry).to_bytes(2, "big") + entry)


# -- ECHConfig and key files -----------------------------------------------


def test_generatedKeyFileReadsBack() -> None:
    """
    C{generateKeyFile} writes what C{parseKeyFile} reads: one X25519
    config with AES-128-GCM and ChaCha20Poly1305, the public name given.
    """
    text, configList = generateKeyFile("Public.Example.", 7)
    (key,) = parseKeyFile(text)
    assert key.config.configId == 7
    assert key.config.publicName == "public.example"
    assert key.config.kemId == 0x0020
    assert [(s.kdf, s.aead) for s in key.config.suites] == [(1, 1), (1, 3)]
    assert encodeConfigList([key.config]) == configList
    assert parseConfigList(configList) == (key.config,)


def test_configListSkipsOtherVersions() -> None:
    """
    An ECHConfig of another version is skipped, as clients skip it.
    """
    _, configList = generateKeyFile("p.example", 1)
    other = b"\xfe\x0c\x00\x02\xab\xcd"
    merged = (len(configList) - 2 + len(other)).to_bytes(2, "big")
    merged += other + configList[2:]
    (config,) = parseConfigList(merged)
    assert config.configId == 1
    with pytest.raises(ECHError, match="no config of version"):
        parseConfigList(len(other).to_bytes(2, "big") + other)


def _keyFile(private: bytes, configList: bytes) -> str:
    encoded = base64.b64encode(configList).decode()
    return (
        private.decode()
        + f"-----BEGIN ECHCONFIG-----\n{encoded}\n-----END ECHCONFIG-----\n"
    )


def test_keyFileProblems() -> None:
    """
    Each way a key file can be unusable is an L{ECHKeyFileError} that says
    which, and never shows the key.
    """
    text, configList = generateKeyFile("p.example", 1)
    privateBlock = text[: text.index("-----BEGIN ECHCONFIG")].encode()
    cases = {
        "needs a PRIVATE KEY and an ECHCONFIG": text.split("-----BEGIN ECHCONFIG")[0],
        "not base64": text.replace(text.split("\n")[4], "!!!!"),
        "not an X25519": _keyFile(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            configList,
        ),
        "not the file's private key": _keyFile(
            generateKeyFile("p.example", 1)[0]
            .split("-----BEGIN ECHCONFIG")[0]
            .encode(),
            configList,
        ),
    }
    config = parseConfigList(configList)[0]
    unsupported = ECHConfig(
        1, config.kemId, config.publicKey, (SymmetricSuite(1, 0x99),), 0, "p.example"
    )
    cases["cannot decrypt"] = _keyFile(privateBlock, encodeConfigList([unsupported]))
    otherKem = ECHConfig(1, 0x10, config.publicKey, (_SUITE,), 0, "p.example")
    cases["only DHKEM"] = _keyFile(privateBlock, encodeConfigList([otherKem]))
    secret = text.split("\n")[1]
    for message, bad in cases.items():
        with pytest.raises(ECHKeyFileError, match=message) as caught:
            parseKeyFile(bad)
        assert secret not in str(caught.value)


@given(st.binary(max_size=300))
def test_configListGarbage(data: bytes) -> None:
    """
    Any bytes give configs or an L{ECHError}, nothing else.
    """
    with contextlib.suppress(ECHError):
        parseConfigList(data)


@given(st.text(max_size=400))
def test_keyFileGarbage(text: str) -> None:
    with contextlib.suppress(ECHKeyFileError):
        parseKeyFile(text)


# -- the extension and the inner hello --------------------------------------


def test_extensionForms() -> None:
    """
    The outer form carries suite, config id, enc and payload; the inner
    form is one byte; an unknown type is C{illegal_parameter}, a short one
    C{decode_error}.
    """
    outer = b"\x00\x00\x01\x00\x03\x2a\x00\x02ab\x00\x03xyz"
    assert parseExtension(outer) == OuterECH(SymmetricSuite(1, 3), 42, b"ab", b"xyz")
    assert parseExtension(b"\x01") is INNER
    with pytest.raises(ECHIllegalParameter) as illegal:
        parseExtension(b"\x02")
    assert illegal.value.alert == 47
    with pytest.raises(ECHError) as short:
        parseExtension(outer[:-1])
    assert short.value.alert == 50
    assert short.value.reason == "ech_malformed"
    with pytest.raises(ECHError, match="at least 1"):
        parseExtension(b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00")


@given(st.binary(max_size=64))
def test_extensionGarbage(data: bytes) -> None:
    with contextlib.suppress(ECHError):
        parseExtension(data)


def test_outerAADZeroesThePayloadInPlace() -> None:
    """
    The ClientHelloOuterAAD is the outer hello with the payload's bytes
    zeroed where they are, even if the same bytes occur earlier.
    """
    payload = bytes(range(10, 20))
    ech = (
        b"\x00\x00\x01\x00\x01\x05\x00\x00" + len(payload).to_bytes(2, "big") + payload
    )
    body = _hello(_extension(0xAAAA, payload) + _extension(EXT_ECH, ech))
    found, aad = outerAAD(body)
    assert found.payload == payload
    assert aad == body[: -len(payload)] + bytes(len(payload))
    with pytest.raises(ECHError, match="no encrypted_client_hello"):
        outerAAD(_hello(_TLS13_ONLY))


def test_decodeInnerExpandsOuterExtensions() -> None:
    """
    C{ech_outer_extensions} is replaced by the outer hello's extensions it
    names, in place; the outer session id is put back; padding dropped.
    """
    outer = _hello(
        _extension(10, b"\x00\x02\x00\x1d")
        + _extension(13, b"\x00\x02\x08\x04")
        + _extension(EXT_ECH, b"\x00"),
        sessionId=b"S" * 32,
    )
    references = _extension(EXT_ECH_OUTER_EXTENSIONS, b"\x04\x00\x0a\x00\x0d")
    encoded = _hello(_sni(b"secret.example") + references + _TLS13_ONLY + _INNER_ECH)
    inner = decodeInner(outer, encoded + bytes(17))
    expected = _hello(
        _sni(b"secret.example")
        + _extension(10, b"\x00\x02\x00\x1d")
        + _extension(13, b"\x00\x02\x08\x04")
        + _TLS13_ONLY
        + _INNER_ECH,
        sessionId=b"S" * 32,
    )
    assert inner == expected
    message = helloMessage(helloRecords(inner, 0x0301))
    assert message is not None
    assert message.body == inner


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (_hello(_TLS13_ONLY + _INNER_ECH) + b"\x00\x01", "padding"),
        (_hello(_TLS13_ONLY + _INNER_ECH, sessionId=b"x"), "session_id"),
        (_hello(_TLS13_ONLY), "no inner encrypted_client_hello"),
        (_hello(_extension(43, b"\x04\x03\x04\x03\x03") + _INNER_ECH), "TLS 1.3"),
        (
            _hello(
                _extension(EXT_ECH_OUTER_EXTENSIONS, b"\x04\x00\x0d\x00\x0a")
                + _TLS13_ONLY
                + _INNER_ECH
            ),
            "does not have",
        ),
        (
            _hello(
                _extension(EXT_ECH_OUTER_EXTENSIONS, b"\x02\xfe\x0d")
                + _TLS13_ONLY
                + _INNER_ECH
            ),
            "names extension",
        ),
        (b"\x03\x03" + bytes(10), "invalid EncodedClientHelloInner"),
    ],
)
def test_decodeInnerRefuses(encoded: bytes, message: str) -> None:
    """
    What RFC 9849 forbids in an inner hello is C{illegal_parameter}: the
    outer extensions are referenced in order, once, never ECH itself.
    """
    outer = _hello(
        _extension(10, b"\x00\x02\x00\x1d")
        + _extension(13, b"\x00\x02\x08\x04")
        + _extension(EXT_ECH, b"\x00")
    )
    with pytest.raises(ECHIllegalParameter, match=message):
        decodeInner(outer, encoded)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_decodeInnerGarbage(outer: bytes, encoded: bytes) -> None:
    with contextlib.suppress(ECHError):
        decodeInner(_hello(outer) if len(outer) % 2 else outer, encoded)


@given(st.binary(max_size=300))
def test_helloMessageGarbage(data: bytes) -> None:
    with contextlib.suppress(ECHError):
        helloMessage(data)


def test_helloRecordsSplitLargeHellos() -> None:
    """
    An inner hello over 2^14 bytes travels in several records.
    """
    body = _hello(_extension(0xAAAA, bytes(20000)))
    records = helloRecords(body, 0x0303)
    assert records[3:5] == (2**14).to_bytes(2, "big")
    message = helloMessage(records + b"extra")
    assert message is not None
    assert message.body == body
    assert message.end == len(records)
    assert helloMessage(records[:-1]) is None


# -- against a real ECH client ----------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[str, bytes]:
    return generateKeyFile("public.example", 3)


def test_goClientHelloDecrypts(echtool: Path, keys: tuple[str, bytes]) -> None:  # noqa: F811
    """
    The ClientHello of Go's ECH client, encrypted to a config from
    C{generateKeyFile}, opens with the keyring: the outer hello shows the
    public name, the rebuilt inner one the hidden name, with the outer's
    session id.
    """
    text, configList = keys
    records = captureHello(
        echtool, "secret.example", base64.b64encode(configList).decode()
    )
    reader = ClientHelloReader()
    outer = reader.feed(records)
    assert isinstance(outer, ClientHello)
    assert outer.serverName == "public.example"
    assert outer.ech is not None
    ech = parseExtension(outer.ech)
    assert isinstance(ech, OuterECH)
    assert ech.configId == 3
    message = helloMessage(records)
    assert message is not None
    opened = ECHKeyring(parseKeyFile(text)).open(message.body)
    inner = ClientHelloReader().feed(helloRecords(opened.inner, message.recordVersion))
    assert inner.serverName == "secret.example"  # type: ignore[union-attr]
    assert inner.ech == b"\x01"  # type: ignore[union-attr]
    sessionId = message.body[35 : 35 + message.body[34]]
    assert opened.inner[35 : 35 + opened.inner[34]] == sessionId


def test_goClientHelloOtherKeys(echtool: Path, keys: tuple[str, bytes]) -> None:  # noqa: F811
    """
    Encrypted to another key with the same config id, or to another config
    id: L{ECHDecryptError} (routed on the outer name, not refused).  A
    tampered outer hello (the AAD) does not open either.
    """
    text, configList = keys
    records = captureHello(
        echtool, "secret.example", base64.b64encode(configList).decode()
    )
    message = helloMessage(records)
    assert message is not None
    for other in (generateKeyFile("public.example", 3), generateKeyFile("p", 4)):
        with pytest.raises(ECHDecryptError):
            ECHKeyring(parseKeyFile(other[0])).open(message.body)
    tampered = bytearray(message.body)
    tampered[5] ^= 1  # in the random
    with pytest.raises(ECHDecryptError):
        ECHKeyring(parseKeyFile(text)).open(bytes(tampered))


# -- tlsgateway ech-keygen ---------------------------------------------------


def test_echKeygenCommand(tmp_path: Path) -> None:
    """
    C{tlsgateway ech-keygen} writes a 0600 key file and prints its
    ECHConfigList in base64; it never overwrites a file.
    """
    out = tmp_path / "ech.pem"
    command = [sys.executable, "-m", "gateway", "ech-keygen"]
    command += ["--public-name", "gw.example", "--config-id", "9", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    (key,) = parseKeyFile(out.read_text())
    assert base64.b64decode(done.stdout.strip()) == encodeConfigList([key.config])
    assert key.config.configId == 9
    assert key.config.publicName == "gw.example"
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1
    assert "cannot create" in again.stderr
    bad = subprocess.run(
        [*command[:-1], str(tmp_path / "x.pem"), "--config-id", "256"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "0 to 255" in bad.stderr
    for name in ("two words", "", "10.0.0.1", "-x.example", "é.example"):
        with pytest.raises(ValueError, match="not a DNS name"):
            generateKeyFile(name, 1)


_RING = ECHKeyring(parseKeyFile(generateKeyFile("public.example", 1)[0]))


@given(
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 0x99]),
    st.binary(max_size=40),
    st.binary(min_size=1, max_size=80),
)
def test_openGarbage(configId: int, aead: int, enc: bytes, payload: bytes) -> None:
    """
    An outer hello with any config id, suite, enc and payload gives an
    L{ECHError} (never another exception): mostly L{ECHDecryptError},
    which routes on the outer name.
    """
    ech = bytes([0, 0, 1, 0, aead, configId]) + len(enc).to_bytes(2, "big") + enc
    ech += len(payload).to_bytes(2, "big") + payload
    body = _hello(_sni(b"public.example") + _extension(EXT_ECH, ech))
    with pytest.raises(ECHError):
        _RING.open(body)
