"""
Loading a configuration: the one entry point that converts the INI file
and checks every file it names, and certificates read once per start or
reload (the contexts the check built are the ones served).
"""

from __future__ import annotations

import builtins
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme
from twisted.internet.testing import MemoryReactorClock

from gateway.config import ConfigError
from gateway.run import loading
from gateway.run.loading import load_config, load_config_text, loadChecked, takeContexts
from gateway.run.service import GatewayService
from gateway.run.supervisor import Supervisor
from tests.run.mistakes import unmatched, writeMistakes

INI = """\
[gateway]
access_log = {folder}/access.log

[listener:web]
listen = tcp:0:interface=127.0.0.1
mode = terminate
certificate = {folder}/site.pem
private_key = {folder}/site.key
upstream = app

[upstream:app]
servers = 127.0.0.1:9
tls = on
tls_ca = {folder}/ca.pem
"""


def writeFiles(folder: Path, name: str) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert(name)
    leaf.cert_chain_pems[0].write_to_path(str(folder / "site.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "site.key"))
    os.chmod(folder / "site.key", 0o600)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))


@pytest.fixture
def gatewayIni(tmp_path: Path) -> Path:
    writeFiles(tmp_path, "one.example.test")
    path = tmp_path / "gateway.ini"
    path.write_text(INI.format(folder=tmp_path))
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Counter[str]:
    """
    How often each certificate, key and CA file is opened, by its name.
    """
    counts: Counter[str] = Counter()
    names = {str(tmp_path / name) for name in ("site.pem", "site.key", "ca.pem")}
    realOpen = builtins.open

    def countingOpen(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and os.fspath(file) in names:
            counts[os.path.basename(os.fspath(file))] += 1
        return realOpen(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", countingOpen)
    return counts


ONCE = {"site.pem": 1, "site.key": 1, "ca.pem": 1}


def servedNames(service: GatewayService) -> list[tuple[str, ...]]:
    return [c.names for c in service.served]


def test_aStartReadsEachFileOnce(gatewayIni: Path, reads: Counter[str]) -> None:
    """
    C{GatewayService(load_config(path))}, the embedding API (and what
    C{run} and twistd do): the check reads each file, the start serves
    what the check built.
    """
    service = GatewayService(load_config(gatewayIni), MemoryReactorClock())
    service.startService()
    try:
        assert reads == ONCE
        assert servedNames(service) == [("one.example.test",)]
    finally:
        service.stopService()


def test_aReloadReadsEachFileOnceAndServesTheNewOnes(
    gatewayIni: Path, reads: Counter[str], tmp_path: Path
) -> None:
    service = GatewayService(load_config(gatewayIni), MemoryReactorClock())
    service.startService()
    try:
        writeFiles(tmp_path, "two.example.test")
        reads.clear()
        assert service.reload()
        assert reads == ONCE
        assert servedNames(service) == [("two.example.test",)]
    finally:
        service.stopService()


def test_aSecondStartOfTheSameConfigurationReadsTheFilesAgain(
    gatewayIni: Path, reads: Counter[str]
) -> None:
    """
    The checked contexts go to one start only: they are that service's
    own (an ACME certificate is swapped into them), so another service on
    the same configuration builds its own.
    """
    config = load_config(gatewayIni)
    first = GatewayService(config, MemoryReactorClock())
    first.startService()
    second = GatewayService(config, MemoryReactorClock())
    second.startService()
    try:
        assert reads == {name: 2 for name in ONCE}
        assert first._current is not None
        assert second._current is not None
        assert first._current.servers["web"] is not second._current.servers["web"]
    finally:
        first.stopService()
        second.stopService()


def test_theSupervisorShowsTheCheckedCertificatesWithoutReadingThemAgain(
    gatewayIni: Path, reads: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(gatewayIni)
    supervisor = Supervisor(config, MemoryReactorClock())
    monkeypatch.setattr(supervisor, "_openPorts", lambda config: None)
    monkeypatch.setattr(supervisor, "_startGeneration", lambda: None)
    supervisor.startService()
    try:
        assert reads == ONCE
        assert [c.names for c in supervisor.served] == [("one.example.test",)]
    finally:
        supervisor.stopService()


def test_contextsAreTakenOnceAndOnlyForTheirConfiguration(gatewayIni: Path) -> None:
    config = load_config(gatewayIni)
    other = load_config(gatewayIni)
    assert config == other
    first = takeContexts(config)
    assert first is not None
    assert takeContexts(config) is None
    assert takeContexts(other) is not None


def test_aConfigurationThatIsGoneLeavesNothingKept(gatewayIni: Path) -> None:
    before = len(loading._checked)
    load_config(gatewayIni)
    assert len(loading._checked) == before


def test_loadCheckedReportsFileProblemsWithTheOthers(
    gatewayIni: Path, tmp_path: Path
) -> None:
    (tmp_path / "site.key").write_text("not a key\n")
    gatewayIni.write_text(gatewayIni.read_text() + "typo = 1\n")
    with pytest.raises(ConfigError) as caught:
        loadChecked(gatewayIni)
    found = str(caught.value)
    assert "[upstream:app] typo: unknown key" in found
    assert "[listener:web] private_key:" in found


def test_acmeCertificatesSwappedIntoCheckedContextsAreTheOnesABuildServes(
    tmp_path: Path,
) -> None:
    """
    A start serves the checked contexts with the ACME manager's
    certificates swapped in (L{withAcme}): what building them with those
    certificates would serve, without reading the files again.
    """
    from gateway.tls.contexts import buildContexts, servedCertificates, withAcme
    from tests.acme.test_acme import ACME, LISTENER, SITE, _issued

    config = load_config_text(ACME + SITE + LISTENER, str(tmp_path / "gw.ini"))
    issued = _issued(tmp_path, "example.com", "www.example.com")
    acme = {"site": issued}.get
    built = buildContexts(config, acme)
    swapped = withAcme(buildContexts(config), acme)
    assert swapped.problems == built.problems == []
    assert servedCertificates(swapped.servers.values(), config) == (
        servedCertificates(built.servers.values(), config)
    )
    assert swapped.servers["web"].certificates == (issued,)
    swapped.servers["web"].contextFor("www.example.com")


def problemsOf(tmp_path: Path, text: str) -> list[str]:
    """
    What C{check} says of C{text} as C{gw.ini} in C{tmp_path}, with the
    folder shortened to C{.}.
    """
    path = tmp_path / "gw.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        loadChecked(path)
    return [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems]


def test_theFilesOfSectionsWithProblemsAreCheckedToo(tmp_path: Path) -> None:
    """
    A listener, an upstream or a certificate with a typo still has its
    files read: a missing certificate and an unreadable key are named in
    the same run as the typo, and a listener naming a certificate section
    with problems is not told that section is undefined.
    """
    writeFiles(tmp_path, "site.test")
    (tmp_path / "folder.key").mkdir()
    assert problemsOf(
        tmp_path,
        "[listener:one]\n"  # 1
        "listen = tcp:0\n"
        "mode = terminate\n"
        "upstream = app\n"
        "certificates = shared\n"  # 5
        "\n"
        "[listener:two]\n"  # 7
        "listen = tcp:0\n"
        "mode = terminate\n"
        "upstream = app\n"
        "certificate = missing.pem\n"  # 11
        "private_key = site.key\n"
        "bogus = 1\n"  # 13
        "\n"
        "[listener:three]\n"  # 15
        "listen = tcp:0\n"
        "mode = terminate\n"
        "upstream = app\n"
        "certificate = site.pem\n"
        "private_key = folder.key\n"  # 20
        "client_ca = missing-ca.pem\n"  # 21
        "verify_client = on\n"
        "preread_timeout = -1\n"  # 23
        "\n"
        "[certificate:shared]\n"  # 25
        "certificate = site.pem\n"
        "private_key = missing.key\n"  # 27
        "wrong = 1\n"  # 28
        "\n"
        "[upstream:app]\n"  # 30
        "servers = 127.0.0.1:8080\n"
        "tls = on\n"
        "tls_ca = missing-upstream-ca.pem\n"  # 33
        "balance = x\n",  # 34
    ) == [
        "gw.ini:11: [listener:two] certificate: cannot read missing.pem:"
        " No such file or directory",
        "gw.ini:13: [listener:two] bogus: unknown key",
        "gw.ini:20: [listener:three] private_key: cannot read folder.key:"
        " Is a directory",
        "gw.ini:21: [listener:three] client_ca: cannot read missing-ca.pem:"
        " No such file or directory",
        "gw.ini:23: [listener:three] preread_timeout: '-1' is negative: a duration"
        " must be 0 or more",
        "gw.ini:27: [certificate:shared] private_key: cannot read missing.key:"
        " No such file or directory",
        "gw.ini:28: [certificate:shared] wrong: unknown key",
        "gw.ini:33: [upstream:app] tls_ca: cannot read missing-upstream-ca.pem:"
        " No such file or directory",
        "gw.ini:34: [upstream:app] balance: 'x' is not one of round_robin,"
        " least_conn, random, hash",
    ]


def test_whatASectionWithProblemsLacksIsSaidOnce(tmp_path: Path) -> None:
    """
    Only its files are news: a terminating listener without certificates
    is told so by the conversion, not a second time by the TLS check.
    """
    assert problemsOf(
        tmp_path,
        "[listener:web]\n"
        "listen = tcp:0\n"
        "mode = terminate\n"  # 3
        "upstream = app\n"
        "bogus = 1\n"  # 5
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n",
    ) == [
        "gw.ini:3: [listener:web] mode: mode = terminate needs certificate and"
        " private_key, or certificates",
        "gw.ini:5: [listener:web] bogus: unknown key",
    ]


def test_aCertificateNoListenerNamesYetIsLoadedToo(tmp_path: Path) -> None:
    writeFiles(tmp_path, "site.test")
    other = trustme.CA().issue_cert("other.test")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    assert problemsOf(
        tmp_path,
        "[listener:web]\n"
        "listen = tcp:0\n"
        "upstream = app\n"
        "\n"
        "[certificate:later]\n"
        "certificate = site.pem\n"
        "private_key = other.key\n"  # 7
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n",
    ) == [
        "gw.ini:7: [certificate:later] private_key: the private key in other.key"
        " does not match the certificate in site.pem"
    ]


def test_oneFileWithEveryKindOfMistakeHasEachNamed(tmp_path: Path) -> None:
    """
    The regression file of "every problem at once": a duplicate section
    whose first copy has mistakes, every bad entry of a list, a bad port
    and a bad weight on one server line, missing and unreadable files in
    listeners with other mistakes, a key mismatch behind certbot's links:
    each is one problem at its line, section and key, and nothing else is.
    """
    path, expected = writeMistakes(tmp_path)
    assert len(expected) >= 20
    with pytest.raises(ConfigError) as caught:
        loadChecked(path)
    printed = [str(problem) for problem in caught.value.problems]
    assert unmatched(printed, expected, str(path)) == []


def test_aCertificateOrKeyWithoutItsPairIsReadAllTheSame(tmp_path: Path) -> None:
    (tmp_path / "not-a-key.pem").write_text("hello\n")
    assert problemsOf(
        tmp_path,
        "[listener:web]\n"
        "listen = tcp:0\n"
        "upstream = app\n"
        "certificate = gone.pem\n"  # 4
        "\n"
        "[certificate:half]\n"
        "private_key = not-a-key.pem\n"  # 7
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n",
    ) == [
        "gw.ini:4: [listener:web] certificate: certificate needs private_key",
        "gw.ini:4: [listener:web] certificate: cannot read gone.pem: No such file"
        " or directory",
        "gw.ini:6: [certificate:half] certificate: required key is missing",
        "gw.ini:7: [certificate:half] private_key: not-a-key.pem: no private key"
        " found: expected PEM (-----BEGIN PRIVATE KEY-----)",
    ]
