"""
Serving as an unprivileged account: twistd's C{--uid}/C{--gid}, or
C{[gateway] user}/C{group} for C{tlsgateway run}.

The process binds its listeners and opens its logs with the privileges it
was started with, then drops them; every reload after that runs as the
account, and reads the INI file and every certificate, key, CA, CRL and
OCSP response again (L{gateway.config.files}).  A key only root can read
(certbot's C{privkey.pem} is 0600) would make every reload fail, and a
deploy hook that sends C{SIGHUP} would report success while the renewed
certificate never goes live.  So a start checks every such file as the
account, and refuses, naming each one, if it cannot read it.

The check is exact rather than guessed from permission bits: a child
process takes the account's identity (groups, group, user) and opens each
file, so ACLs, the folders on the way and supplementary groups all count
as they will for the reload.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Sequence

import attrs

from gateway.config import GatewayConfig
from gateway.config.files import NamedFile, reloadedFiles


class AccountError(Exception):
    """
    A C{user} or C{group} that does not exist, or a drop that failed.
    """


@attrs.frozen
class Account:
    """
    The identity a gateway serves as once it has dropped its privileges.

    @ivar groups: the supplementary groups (the user's, from the group
        database), or the process's own when only a group is given (as
        twistd keeps them for C{--gid} alone).
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return f"user {self.name} (uid {self.uid}, gid {self.gid})"

    @property
    def isCurrent(self) -> bool:
        return (self.uid, self.gid) == (os.geteuid(), os.getegid())


def _user(user: str | int) -> pwd.struct_passwd:
    text = str(user)
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        raise AccountError(f"no such user: {text}") from None


def _group(group: str | int) -> int:
    text = str(group)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise AccountError(f"no such group: {text}") from None


def accountFor(user: str | int | None, group: str | int | None) -> Account | None:
    """
    The account named by C{user} and C{group} (names or ids), or L{None}
    when neither is given (no drop).  A user alone serves with its own
    group, as twistd's C{--uid} and NGINX's C{user} do.

    @raise AccountError: the user or group does not exist.
    """
    if user is None and group is None:
        return None
    if user is None:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        assert group is not None
        return Account(name, uid, _group(group), tuple(os.getgroups()))
    entry = _user(user)
    gid = entry.pw_gid if group is None else _group(group)
    groups = tuple(os.getgrouplist(entry.pw_name, gid))
    return Account(entry.pw_name, entry.pw_uid, gid, groups)


def configuredAccount(config: GatewayConfig) -> Account | None:
    """
    The account of C{[gateway] user}/C{group}, or L{None}.

    @raise AccountError: it does not exist.
    """
    return accountFor(config.gateway.user, config.gateway.group)


def _become(account: Account) -> None:
    """
    Take C{account}'s identity, for good: groups first, then group, then
    user (once the user is changed, the others can no longer be).
    """
    if os.geteuid() == 0:
        os.setgroups(list(account.groups))
    os.setgid(account.gid)
    os.setuid(account.uid)


def _unopenable(paths: Sequence[str]) -> list[tuple[int, str]]:
    problems = []
    for index, path in enumerate(paths):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            problems.append((index, e.strerror or str(e)))
    return problems


def _unopenableAs(account: Account, paths: Sequence[str]) -> list[tuple[int, str]]:
    """
    Which of C{paths} C{account} cannot open, asked in a child process
    that takes its identity: the answer is the kernel's.  Forked, not
    started afresh, so that nothing but this process's own code has to
    be readable by the account.
    """
    if account.isCurrent or os.geteuid() != 0:
        # Nothing to switch to (or no right to): as this process, which
        # is what the drop, if it can happen, would leave anyway.
        return _unopenable(paths)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its answer is what is tested
        code = 0
        try:
            os.close(read)
            _become(account)
            text = "".join(f"{i} {reason}\n" for i, reason in _unopenable(paths))
            os.write(write, text.encode())
        except BaseException:  # noqa: BLE001 - the child must not return
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    with os.fdopen(read, "rb") as answers:
        chunks.append(answers.read())
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AccountError(f"cannot take the identity of {account}")
    found = []
    for line in b"".join(chunks).decode().splitlines():
        index, _, reason = line.partition(" ")
        found.append((int(index), reason))
    return found


def unreadableFiles(
    config: GatewayConfig, account: Account, files: Sequence[NamedFile] | None = None
) -> list[str]:
    """
    One message for each file a reload reads that C{account} cannot,
    located at the key that names it; empty when all are readable.

    @param files: the files to check; L{None} for every one a reload
        reads (L{reloadedFiles}).
    """
    named = reloadedFiles(config) if files is None else list(files)
    failures = _unopenableAs(account, [f.path for f in named])
    return [
        str(
            named[index].problem(
                f"{named[index].path} is not readable by {account}: {reason}"
                " (a reload reads it again after the start has dropped"
                " privileges)"
            )
        )
        for index, reason in failures
    ]


def handOver(config: GatewayConfig, account: Account) -> None:
    """
    Before the drop: give C{account} the access-log file, created here if
    need be, when this process owns it, so that the account can open it
    (twistd opens it after its drop), reopen it (C{SIGUSR1}) and check it
    at a reload.  NGINX's master does the same for its workers' logs.
    """
    destination = config.gateway.access_log
    if destination in ("-", "off") or os.geteuid() != 0 or account.isCurrent:
        return
    with contextlib.suppress(OSError):
        with open(destination, "a", encoding="utf-8"):
            pass
        if os.stat(destination).st_uid == os.geteuid():
            os.chown(destination, account.uid, account.gid)


def dropPrivileges(account: Account) -> None:
    """
    Serve as C{account} from now on.

    @raise AccountError: the process may not (it is not root).
    """
    if account.isCurrent:
        return
    try:
        _become(account)
    except OSError as e:
        raise AccountError(f"cannot switch to {account}: {e.strerror}") from None


def chownFolder(folder: str, account: Account) -> None:
    """
    Let C{account} write in C{folder}, one this process created (the
    metrics folder its workers share).
    """
    if os.geteuid() == 0 and not account.isCurrent:
        os.chown(folder, account.uid, account.gid)
