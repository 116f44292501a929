"""
Tests for C{ech_keys}: the INI key (L{gateway.config}) and the files it
names (L{gateway.tls.echkeys}), through L{gateway.run.loading.load_config}
as C{check} and a start load them.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.run.loading import load_config, loadChecked
from gateway.wire.ech import ECHConfig, SymmetricSuite, encodeConfigList
from gateway.wire.echopen import generateKeyFile, parseKeyFile
from tests.config.test_config import listener, problems, write


def keyFile(folder: Path, name: str, configId: int) -> Path:
    path = folder / name
    path.write_text(generateKeyFile("public.example", configId)[0])
    path.chmod(0o600)
    return path


def test_keysAreReadRelativeToTheFile(tmp_path: Path) -> None:
    """
    C{ech_keys} lists files relative to the INI file's folder; every
    config of every file is in the listener's keyring, first file first.
    """
    keyFile(tmp_path, "new.pem", 2)
    keyFile(tmp_path, "old.pem", 1)
    path = write(
        tmp_path,
        listener("listen = tcp:1\nupstream = app\nech_keys = new.pem, old.pem\n"),
    )
    [web] = load_config(path, checkFiles=False).listeners
    assert web.ech_keys == (str(tmp_path / "new.pem"), str(tmp_path / "old.pem"))
    keyring = loadChecked(path).contexts.ech["web"]
    assert [k.config.configId for k in keyring.keys] == [2, 1]
    assert keyring.current.configId == 2
    assert "PRIVATE" not in repr(keyring)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("mode = terminate\ncertificate = c.pem\nprivate_key = c.key\n", "needs mode"),
        ("mode = tcp\n", "needs mode = passthrough"),
        ("protocol = postgres\n", "protocol = tls"),
    ],
)
def test_splitModeOnly(tmp_path: Path, keys: str, message: str) -> None:
    """
    ECH keys belong on a TLS passthrough listener: the gateway cannot
    terminate an encrypted ClientHello (no ECH in pyOpenSSL).
    """
    text = listener(f"listen = tcp:1\nupstream = app\n{keys}ech_keys = k.pem\n")
    found = problems(tmp_path, text, checkFiles=False)
    assert any("[listener:web] ech_keys: " in p and message in p for p in found), found


def test_noTerminatingRoute(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nroutes =\n    a.example app terminate\n"
        "certificate = c.pem\nprivate_key = c.key\nech_keys = k.pem\n"
    )
    found = problems(tmp_path, text, checkFiles=False)
    assert any(
        p.startswith("gw.ini:7: [listener:web] ech_keys: a route terminates TLS")
        for p in found
    ), found


def test_everyFileProblemAtOnce(tmp_path: Path) -> None:
    """
    Unreadable, not a key file, a suite the gateway cannot decrypt, a
    config id in two files: each is a problem at the key's line, all in
    one run, none showing key material.
    """
    first = keyFile(tmp_path, "first.pem", 7)
    keyFile(tmp_path, "second.pem", 7)
    (tmp_path / "text.pem").write_text("not a key\n")
    good = parseKeyFile(first.read_text())[0]
    config = good.config
    odd = ECHConfig(
        9, config.kemId, config.publicKey, (SymmetricSuite(1, 0x77),), 0, "p.example"
    )
    text = first.read_text().split("-----BEGIN ECHCONFIG")[0]
    encoded = base64.b64encode(encodeConfigList([odd])).decode()
    (tmp_path / "odd.pem").write_text(
        f"{text}-----BEGIN ECHCONFIG-----\n{encoded}\n-----END ECHCONFIG-----\n"
    )
    path = write(
        tmp_path,
        listener(
            "listen = tcp:1\nupstream = app\n"
            "ech_keys = first.pem, second.pem, text.pem, odd.pem, gone.pem\n"
        ),
    )
    with pytest.raises(ConfigError) as caught:
        loadChecked(path)
    found = [str(p).replace(str(tmp_path) + "/", "") for p in caught.value.problems]
    prefix = "gw.ini:4: [listener:web] ech_keys: "
    assert found == [
        f"{prefix}second.pem: config id 7 is also in first.pem; give each key its"
        " own (tlsgateway ech-keygen --config-id)",
        f"{prefix}text.pem: not an ECH key file: it needs a PRIVATE KEY and an"
        " ECHCONFIG block (RFC 9934)",
        f"{prefix}odd.pem: config 9 offers cipher suites the gateway cannot decrypt"
        " (KDF/AEAD 0x0001/0x0077)",
        f"{prefix}cannot read gone.pem: No such file or directory",
    ]
    secret = first.read_text().split("\n")[1]
    assert not any(secret in line for line in found)
