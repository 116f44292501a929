"""
L{gateway.run.privileges}: accounts, and the start check that every file a
reload reads is readable by the account the gateway will serve as, asked
of the kernel in a child that takes that identity.  The end-to-end side
(twistd C{--uid}, C{[gateway] user}) is in
C{tests/integration/test_process.py}.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, parseConfigText
from gateway.run.loading import load_config_text
from gateway.run.privileges import (
    Account,
    AccountError,
    accountFor,
    handOver,
    unreadableFiles,
)

asRoot = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")


def test_noUserNoGroupMeansNoDrop() -> None:
    assert accountFor(None, None) is None


def test_aUserServesWithItsOwnGroupAndItsSupplementaryGroups() -> None:
    entry = pwd.getpwuid(os.getuid())
    account = accountFor(entry.pw_name, None)
    assert account == accountFor(str(entry.pw_uid), None)
    assert account is not None
    assert (account.uid, account.gid) == (entry.pw_uid, entry.pw_gid)
    assert entry.pw_gid in account.groups
    assert (
        str(account) == f"user {entry.pw_name} (uid {entry.pw_uid}, gid {entry.pw_gid})"
    )


def test_unknownAccountsAreErrors() -> None:
    with pytest.raises(AccountError, match="no such user: no-such-user-here"):
        accountFor("no-such-user-here", None)
    with pytest.raises(AccountError, match="no such group: no-such-group-here"):
        accountFor(None, "no-such-group-here")


def test_checkNamesAnUnknownUserAtItsLine() -> None:
    text = "[gateway]\nuser = no-such-user-here\n[listener:a]\nlisten = tcp:1\nupstream = u\n[upstream:u]\nservers = 127.0.0.1:9\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "/etc/gw.ini")
    assert (
        str(caught.value)
        == "/etc/gw.ini:2: [gateway] user: no such user: no-such-user-here"
    )


def test_aUserThatIsNotAName() -> None:
    with pytest.raises(ConfigError, match=r"\[gateway\] user: 'no body' is not"):
        parseConfigText("[gateway]\nuser = no body\n", "/etc/gw.ini")


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tlsgateway-privileges-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def configWithKey(folder: Path) -> str:
    (folder / "site.pem").write_text("certificate\n")
    (folder / "site.key").write_text("key\n")
    ini = folder / "gateway.ini"
    ini.write_text(
        "[listener:web]\nlisten = tcp:443\nmode = terminate\n"
        f"certificate = {folder}/site.pem\nprivate_key = {folder}/site.key\n"
        "upstream = app\n[upstream:app]\nservers = 127.0.0.1:9\n"
    )
    ini.chmod(0o644)
    return str(ini)


def nobody() -> Account:
    account = accountFor("nobody", "nogroup")
    assert account is not None
    return account


@asRoot
def test_aKeyOnlyRootReadsIsNamedAndTheRestPasses(folder: Path) -> None:
    path = configWithKey(folder)
    (folder / "site.pem").chmod(0o644)
    (folder / "site.key").chmod(0o600)
    config = parseConfigText(Path(path).read_text(), path)
    assert unreadableFiles(config, nobody()) == [
        f"{path}:5: [listener:web] private_key: {folder}/site.key is not readable by"
        " user nobody (uid 65534, gid 65534): Permission denied (a reload reads it"
        " again after the start has dropped privileges)"
    ]
    assert unreadableFiles(config, accountFor("root", None)) == []  # type: ignore[arg-type]


@asRoot
def test_theAccountsGroupAndTheFoldersOnTheWayCount(folder: Path) -> None:
    path = configWithKey(folder)
    os.chown(folder / "site.key", 0, grp.getgrnam("nogroup").gr_gid)
    (folder / "site.key").chmod(0o640)
    config = parseConfigText(Path(path).read_text(), path)
    assert unreadableFiles(config, nobody()) == []
    folder.chmod(0o700)
    problems = unreadableFiles(config, nobody())
    assert len(problems) == 3  # the INI file, the certificate, the key
    assert all("Permission denied" in p for p in problems)


@asRoot
def test_theAccessLogIsCreatedAndGivenToTheAccount(folder: Path) -> None:
    log = folder / "access.log"
    text = (
        f"[gateway]\naccess_log = {log}\n[listener:a]\nlisten = tcp:1\nupstream = u\n"
    )
    config = parseConfigText(f"{text}[upstream:u]\nservers = 127.0.0.1:9\n", "g.ini")
    handOver(config, nobody())
    assert (log.stat().st_uid, log.stat().st_gid) == (65534, 65534)
