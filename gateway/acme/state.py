"""
The ACME state directory: what the gateway keeps between runs and shares
between workers.

Layout of C{[acme] state_dir} (created with mode 0700)::

    account.key          the ACME account's private key (PEM, 0600)
    account.json         the account's registration (its URL) and the
                         directory it belongs to, so a restart does not
                         register again
    account.lock         held while the account is registered
    certs/NAME.pem       [certificate:NAME]'s private key and full chain
                         (one file, 0600, replaced by one rename: a reader
                         never sees a new key with an old chain)
    certs/NAME.lock      held by the one worker that orders NAME
    challenges/DOMAIN.pem
                         the tls-alpn-01 challenge certificate and key of a
                         validation in progress, read by whichever worker
                         the ACME server's validation connection reaches

Blocking file I/O only, and no Twisted: the manager calls this from a
thread (everything but L{StateDirectory.challenge}, which a validation
connection reads on the reactor: one small local file, rarely).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator

import attrs

__all__ = ["Locked", "StateDirectory"]

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


class Locked(Exception):
    """
    Another process (worker) holds the lock: it is doing the work.
    """


def _safe(name: str) -> str:
    if not _SAFE.fullmatch(name) or name.startswith("."):
        raise ValueError(f"{name!r} cannot be a file name in the state directory")
    return name


def writePrivate(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path} with mode 0600, atomically: a temporary file
    in the same folder (created 0600, so the secret is never readable by
    others, not even for a moment), fsynced, then renamed over C{path}.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@attrs.frozen
class StateDirectory:
    """
    @ivar path: C{[acme] state_dir}, absolute.
    """

    path: str

    def prepare(self) -> None:
        """
        Create the folders (mode 0700) if they are missing.

        @raise OSError: the folder cannot be created or written.
        """
        for folder in (self.path, self.certsDir, self.challengesDir):
            os.makedirs(folder, mode=0o700, exist_ok=True)

    @property
    def certsDir(self) -> str:
        return os.path.join(self.path, "certs")

    @property
    def challengesDir(self) -> str:
        return os.path.join(self.path, "challenges")

    @property
    def accountKeyPath(self) -> str:
        return os.path.join(self.path, "account.key")

    @property
    def accountPath(self) -> str:
        return os.path.join(self.path, "account.json")

    def certificatePath(self, name: str) -> str:
        """
        The file of C{[certificate:NAME]}: its key and full chain.
        """
        return os.path.join(self.certsDir, f"{_safe(name)}.pem")

    def challengePath(self, domain: str) -> str:
        return os.path.join(self.challengesDir, f"{_safe(domain)}.pem")

    # -- reading and writing -----------------------------------------------

    def read(self, path: str) -> bytes | None:
        """
        @return: the file's bytes, or L{None} when there is no such file.
        """
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def saveCertificate(self, name: str, keyPEM: bytes, chainPEM: bytes) -> str:
        """
        Store a new key and full chain for C{[certificate:NAME]} in one
        atomic replacement.

        @return: the file's path.
        """
        path = self.certificatePath(name)
        writePrivate(path, keyPEM.rstrip(b"\n") + b"\n" + chainPEM)
        return path

    def publishChallenge(self, domain: str, keyAndCertificatePEM: bytes) -> None:
        writePrivate(self.challengePath(domain), keyAndCertificatePEM)

    def withdrawChallenge(self, domain: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.challengePath(domain))

    def challenge(self, domain: str) -> bytes | None:
        """
        The challenge certificate and key published for C{domain}, if a
        validation is in progress.
        """
        try:
            return self.read(self.challengePath(domain))
        except (OSError, ValueError):
            return None

    def refresh(self, name: str) -> None:
        """
        Bring the local copy of C{[certificate:NAME]} up to date before it
        is read: nothing to do for a folder of one machine; a fleet's
        shared state (L{gateway.cluster.acmestate}) writes the copy the
        fleet holds.
        """

    # -- locks ---------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = False) -> Iterator[None]:
        """
        Hold C{NAME.lock} (an C{flock}, so it is released however the
        holder ends, even killed).

        @param wait: block until the lock is free, instead of raising.
        @raise Locked: another process holds it and C{wait} is false.
        """
        folder = self.path if name == "account" else self.certsDir
        path = os.path.join(folder, f"{_safe(name)}.lock")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Locked(path) from None
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)
