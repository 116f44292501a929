"""
The TLS keys of an NGINX C{stream} server that terminates (C{listen ...
ssl}): certificates, protocols, ciphers, client certificates, sessions.

Pure.  Each C{ssl_*} directive has a termination key of the same meaning
(docs/configuration.rst names the NGINX directive of each key); several
C{ssl_certificate} pairs become C{[certificate:NAME]} sections, chosen by
SNI as NGINX chooses among them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gateway.cli.convert.draft import Draft, Listener, formatDuration
from gateway.cli.convert.nginxsyntax import Directive, seconds

__all__ = ["nginxDuration", "terminationKeys"]


def nginxDuration(draft: Draft, directive: Directive) -> str | None:
    """The gateway's spelling of a directive's NGINX time, or None (noted)."""
    try:
        return formatDuration(seconds(directive.args[0]))
    except (ValueError, IndexError):
        draft.note(directive.line, directive.text, "not an NGINX time")
        return None


_TLS_KEYS: dict[str, tuple[str, Callable[[tuple[str, ...]], str | None]]] = {
    "ssl_ciphers": ("ciphers", lambda a: a[0]),
    "ssl_prefer_server_ciphers": ("prefer_server_ciphers", lambda a: a[0]),
    "ssl_alpn": ("alpn", lambda a: ", ".join(a)),
    "ssl_session_tickets": ("session_tickets", lambda a: a[0]),
    "ssl_ecdh_curve": ("groups", lambda a: None if a[0] == "auto" else a[0]),
    "ssl_verify_client": (
        "verify_client",
        lambda a: a[0] if a[0] in ("on", "off", "optional") else None,
    ),
    "ssl_session_cache": (
        "session_cache",
        lambda a: "off" if a[0] in ("off", "none") else "on",
    ),
}


def terminationKeys(
    draft: Draft,
    path: Callable[[str], str],
    listener: Listener,
    byName: dict[str, list[Directive]],
) -> set[str]:
    """
    The termination keys of a C{listen ... ssl} server.

    @param path: makes a path of the file absolute, as NGINX reads it.
    @return: the directive names handled.
    """
    handled = {"ssl_certificate", "ssl_certificate_key"}
    certificates = [
        path(d.args[0]) for d in byName.get("ssl_certificate", ()) if d.args
    ]
    keys = [path(d.args[0]) for d in byName.get("ssl_certificate_key", ()) if d.args]
    if len(certificates) != len(keys) or any("$" in p for p in certificates + keys):
        draft.note(
            listener.line,
            "ssl_certificate",
            "certificates and keys do not pair up (or use variables)",
        )
    elif len(certificates) == 1:
        listener.keys["certificate"] = certificates[0]
        listener.keys["private_key"] = keys[0]
    elif certificates:
        names = [
            draft.addCertificate(
                os.path.basename(c).partition(".")[0], c, k, listener.line
            )
            for c, k in zip(certificates, keys, strict=True)
        ]
        listener.keys["certificates"] = ", ".join(names)
    for directive in byName.get("ssl_protocols", ()):
        handled.add(directive.name)
        kept = [p for p in directive.args if p in ("TLSv1.2", "TLSv1.3")]
        if len(kept) != len(directive.args):
            draft.note(
                directive.line, directive.text, "the gateway never offers below TLSv1.2"
            )
        if kept:
            listener.keys["protocols"] = " ".join(kept)
    for name, (key, convert) in _TLS_KEYS.items():
        for directive in byName.get(name, ()):
            value = convert(directive.args) if directive.args else None
            if value is not None:
                listener.keys[key] = value
                handled.add(name)
    for directive in byName.get("ssl_client_certificate", ()):
        listener.keys["client_ca"] = path(directive.args[0])
        handled.add(directive.name)
    if byName.get("ssl_crl"):
        listener.keys["client_crl"] = ", ".join(
            path(d.args[0]) for d in byName["ssl_crl"]
        )
        handled.add("ssl_crl")
    for directive in byName.get("ssl_session_timeout", ()):
        value = nginxDuration(draft, directive)
        if value is not None:
            listener.keys["session_ticket_lifetime"] = value
        handled.add(directive.name)
    for directive in byName.get("ssl_conf_command", ()):
        if directive.args[:1] == ("Ciphersuites",) and len(directive.args) == 2:
            listener.keys["ciphersuites"] = directive.args[1]
            handled.add(directive.name)
    return handled
