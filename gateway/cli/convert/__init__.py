"""
C{tlsgateway convert}: an NGINX C{stream} or HAProxy C{mode tcp}
configuration into a gateway INI file, and a list of what did not convert.

The converters are pure (text in; an INI text and its notes out), so they
are tested with plain calls and property tests; L{gateway.cli.convert.command}
is the command around them.  A conversion never guesses silently: every
directive it cannot carry over is a L{Note} naming its line, printed on
standard error and written as a comment at the top of the INI file, and
the INI file itself always passes the gateway's own loader.
"""

from __future__ import annotations

import attrs

from gateway.cli.convert.draft import ConvertError, Draft, Note
from gateway.cli.convert.haproxy import convertHaproxy
from gateway.cli.convert.haproxyfrontends import ListFolder, noFolders
from gateway.cli.convert.nginx import convertNginx

__all__ = ["KINDS", "Conversion", "ConvertError", "Note", "convert"]

#: The configuration kinds C{tlsgateway convert} reads.
KINDS = ("nginx", "haproxy")


@attrs.frozen
class Conversion:
    """
    A converted configuration.

    @ivar ini: the INI text, its notes as comments at the top.
    @ivar notes: what was not converted, in the order it was found.
    @ivar listeners: how many listeners the INI file has (0: nothing would
        listen, and the gateway would refuse the file).
    """

    ini: str
    notes: tuple[Note, ...]
    listeners: int


def convert(
    kind: str,
    text: str,
    source: str,
    folder: str | None = None,
    listFolder: ListFolder = noFolders,
) -> Conversion:
    """
    Convert C{text}, an NGINX (C{kind = "nginx"}) or HAProxy
    (C{"haproxy"}) configuration read from C{source}.

    @param folder: relative paths in C{text} are taken from here and
        written absolute (L{None}: kept as written).
    @param listFolder: what a folder holds, for HAProxy's C{crt FOLDER}.
    @raise ConvertError: C{text} cannot be read as a configuration of that
        kind at all.
    @raise ValueError: an unknown C{kind}.
    """
    draft: Draft
    if kind == "nginx":
        draft = convertNginx(text, source, folder)
    elif kind == "haproxy":
        draft = convertHaproxy(text, source, folder, listFolder)
    else:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    ini = draft.render()
    return Conversion(ini, tuple(draft.notes), len(draft.listeners))
