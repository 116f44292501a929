"""
HAProxy C{mode tcp} configuration into a gateway INI file.

Pure: text in, L{gateway.cli.convert.draft.Draft} out; the one thing it
cannot know from the text, what a C{crt} folder holds, it asks a function
it is given.  Each C{frontend} (and C{listen}) in C{mode tcp} becomes a
C{[listener:NAME]}, each C{backend} (and C{listen} with servers) an
C{[upstream:NAME]}.  C{use_backend} rules on C{req_ssl_sni} become routes,
C{default_backend} the C{default} route; C{tcp-request} rules on C{src}
become C{allow}/C{deny}.  What HAProxy sets per server but the gateway per
listener (C{send-proxy}, timeouts) moves to the listeners that use the
backend; what it sets per server but the gateway per upstream (C{check
inter rise fall}) moves to the upstream.  Whatever has no equivalent is
noted with its line.
"""

from __future__ import annotations

from gateway.cli.convert.draft import Draft
from gateway.cli.convert.haproxybackends import convertBackend
from gateway.cli.convert.haproxyfrontends import (
    ListFolder,
    Proxies,
    bindOption,
    convertFrontend,
    noFolders,
)
from gateway.cli.convert.haproxyreasons import reasonFor
from gateway.cli.convert.haproxysyntax import Line, Section, parseHaproxy

__all__ = ["convertHaproxy"]


def convertHaproxy(
    text: str,
    source: str,
    folder: str | None = None,
    listFolder: ListFolder = noFolders,
) -> Draft:
    """
    Convert an HAProxy configuration's C{mode tcp} proxies.

    @param source: the file's name, as notes and comments will show it.
    @param folder: the folder relative paths are taken from (HAProxy takes
        them from the folder it was started in); written absolute.
    @param listFolder: lists a C{crt} folder's files (and finds the C{.key}
        files beside certificates); the default knows no folders.
    @raise gateway.cli.convert.draft.ConvertError: for text that is not an
        HAProxy configuration at all.
    """
    sections = parseHaproxy(text)
    context = Proxies(Draft(source, "haproxy"), folder, listFolder)
    draft = context.draft
    defaults: list[Line] = []
    proxies: list[tuple[Section, list[Line]]] = []
    for section in sections:
        if section.kind == "global":
            _global(context, section)
        elif section.kind == "defaults":
            defaults = _defaults(draft, section)
        elif section.kind in ("frontend", "backend", "listen"):
            if section.args:
                draft.note(
                    section.number,
                    f"{section.kind} {section.name} {' '.join(section.args)}",
                    "named defaults (from) are not followed: the last defaults"
                    " section applies",
                )
            proxies.append((section, defaults))
        else:
            draft.note(
                section.number,
                f"{section.kind} {section.name}".strip(),
                "a section the gateway has no equivalent for",
            )
    for section, inherited in proxies:
        if section.kind in ("backend", "listen") and _mode(section, inherited) == "tcp":
            hasServers = any(line.words[0] == "server" for line in section.lines)
            if section.kind == "backend" or hasServers:
                context.backends[section.name] = convertBackend(
                    draft, section, inherited
                )
    for section, inherited in proxies:
        if _mode(section, inherited) != "tcp":
            draft.note(
                section.number,
                f"{section.kind} {section.name}",
                "mode http: the gateway relays TLS and TCP only",
            )
        elif section.kind in ("frontend", "listen"):
            convertFrontend(context, section, inherited)
    return draft


def _mode(section: Section, inherited: list[Line]) -> str:
    mode = "tcp"
    for line in [*inherited, *section.lines]:
        if line.words[0] == "mode" and len(line.words) > 1:
            mode = line.words[1]
    return mode


def _global(context: Proxies, section: Section) -> None:
    draft = context.draft
    for line in section.lines:
        keyword, args = line.words[0], line.words[1:]
        if keyword == "crt-base" and args:
            context.crtBase = args[0]
        elif keyword == "ca-base" and args:
            context.caBase = args[0]
        elif keyword == "ssl-default-bind-ciphers" and args:
            context.bindDefaults["ciphers"] = args[0]
        elif keyword == "ssl-default-bind-ciphersuites" and args:
            context.bindDefaults["ciphersuites"] = args[0]
        elif keyword == "ssl-default-bind-options":
            for option in args:
                bindOption(context.bindDefaults, option, args, draft, line)
        else:
            draft.note(line.number, line.text, reasonFor(line.words))


_DEFAULTS_KNOWN = {"mode", "timeout", "balance", "default-server", "option", "maxconn"}


def _defaults(draft: Draft, section: Section) -> list[Line]:
    """The lines of a defaults section the proxies inherit; the rest noted once."""
    kept = []
    for line in section.lines:
        keyword = line.words[0]
        if keyword in _DEFAULTS_KNOWN - {"option"} or line.words[:2] in (
            ("option", "ssl-hello-chk"),
            ("option", "tcp-check"),
        ):
            kept.append(line)
        else:
            draft.note(line.number, line.text, reasonFor(line.words))
    return kept
