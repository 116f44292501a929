"""
Read the Encrypted Client Hello key files of the listeners (C{ech_keys}).

Like certificates, they are read at start, by C{check} and at every reload
(C{SIGHUP}), and every problem is reported with the file, line, section
and key that named the file.  The private keys stay in the returned
L{ECHKeyring}: no message, log line or status page shows one.
"""

from __future__ import annotations

from gateway.config import ListenerConfig, Problem
from gateway.wire.echopen import ECHKeyFileError, ECHKeyring, parseKeyFile

__all__ = ["loadECHKeys"]


def loadECHKeys(listener: ListenerConfig) -> tuple[ECHKeyring | None, list[Problem]]:
    """
    Read every file of a listener's C{ech_keys}, first file first (its
    config is the current one; the others are kept for rotation).

    @return: the keyring (L{None} without C{ech_keys} or with problems),
        and the problems: unreadable files, files not in the RFC 9934
        format, suites or KEMs the gateway cannot decrypt, and a config id
        found in two files (trial decryption goes by config id, so one of
        the two keys could never be used).
    """
    if not listener.ech_keys:
        return None, []
    location = listener.location
    problems: list[Problem] = []

    def problem(message: str) -> None:
        problems.append(
            Problem(
                location.path,
                location.lineOf("ech_keys"),
                f"listener:{listener.name}",
                "ech_keys",
                message,
            )
        )

    keys = []
    owners: dict[int, str] = {}
    for path in listener.ech_keys:
        try:
            with open(path, encoding="ascii") as keyFile:
                text = keyFile.read()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not a PEM text file"
            problem(f"cannot read {path}: {reason}")
            continue
        try:
            found = parseKeyFile(text)
        except ECHKeyFileError as e:
            problem(f"{path}: {e}")
            continue
        for key in found:
            configId = key.config.configId
            if configId in owners:
                problem(
                    f"{path}: config id {configId} is also in {owners[configId]};"
                    " give each key its own (tlsgateway ech-keygen --config-id)"
                )
                continue
            owners[configId] = path
            keys.append(key)
    if problems:
        return None, problems
    return ECHKeyring(tuple(keys)), []
