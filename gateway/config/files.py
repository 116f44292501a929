"""
Every file a configuration names that a reload reads again.

A reload (C{SIGHUP}) reads the INI file and every certificate, key, CA,
CRL and OCSP response it names, in the process that serves: after a drop
of privileges (twistd's C{--uid}, C{[gateway] user}), as that account.  A
file only root can read then makes every reload fail, silently until
someone reads the log; L{gateway.run.privileges} checks this list at start
instead.

One list, in one place: a key that names a file read at reload is added to
L{FILE_KEYS} (or, for a file not named by a key, to L{reloadedFiles}), and
the start check covers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from gateway.config import GatewayConfig, Location, Problem

#: By section kind: the keys whose value is a file (or a tuple of files)
#: read when a configuration is loaded, at start and at every reload.
FILE_KEYS: Mapping[str, tuple[str, ...]] = {
    "listener": ("certificate", "private_key", "client_ca", "client_crl"),
    "certificate": ("certificate", "private_key", "ocsp_response"),
    "upstream": ("tls_ca",),
    "acme": ("ca_bundle",),
}


@attrs.frozen
class NamedFile:
    """
    A file, and the key that names it, for messages that point into the
    INI file.

    @ivar section: the section header without brackets (C{listener:web}),
        or L{None} for the INI file itself.
    """

    path: str
    configPath: str
    line: int | None
    section: str | None
    key: str | None

    def problem(self, message: str) -> Problem:
        """
        C{message} about this file, located at its key.
        """
        return Problem(self.configPath, self.line, self.section, self.key, message)


def _named(
    config: GatewayConfig, section: str, location: Location, settings: object
) -> Iterable[NamedFile]:
    kind = section.partition(":")[0]
    for key in FILE_KEYS.get(kind, ()):
        value = getattr(settings, key, None)
        paths = value if isinstance(value, tuple) else (value,)
        for path in paths:
            if isinstance(path, str):
                yield NamedFile(path, config.path, location.lineOf(key), section, key)


def reloadedFiles(config: GatewayConfig) -> list[NamedFile]:
    """
    The INI file, then every file its sections name that a reload reads,
    in file order, each once per key that names it.
    """
    files = [NamedFile(config.path, config.path, None, None, None)]
    for listener in config.listeners:
        files += _named(
            config, f"listener:{listener.name}", listener.location, listener
        )
    for name, upstream in config.upstreams.items():
        files += _named(config, f"upstream:{name}", upstream.location, upstream)
    for name, certificate in config.certificates.items():
        files += _named(
            config, f"certificate:{name}", certificate.location, certificate
        )
    if config.acme is not None:
        files += _named(config, "acme", config.acme.location, config.acme)
    return sorted(files, key=lambda f: f.line or 0)
