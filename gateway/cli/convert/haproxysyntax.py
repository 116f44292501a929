"""
HAProxy configuration syntax: text into sections of argument lists.

Pure.  HAProxy's format is line based: a section keyword (C{global},
C{defaults}, C{frontend NAME}, C{backend NAME}, C{listen NAME}, ...)
starts a section, every other line is a keyword and its arguments, split
on whitespace; C{#} starts a comment, quotes group words and a backslash
escapes the next character, as in HAProxy's own C{parse_line()}.
"""

from __future__ import annotations

import attrs

from gateway.cli.convert.draft import ConvertError

__all__ = ["SECTIONS", "Line", "Section", "parseHaproxy"]

#: Every section keyword HAProxy knows, so that a line starting with one
#: is never taken for a keyword of the section before it.
SECTIONS = {
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "log-forward",
    "crt-store",
    "traces",
}


@attrs.frozen
class Line:
    """One keyword line: its words and its line number."""

    words: tuple[str, ...]
    number: int

    @property
    def text(self) -> str:
        return " ".join(self.words)


@attrs.frozen
class Section:
    """One section: its kind, its name (or C{""}), where it starts, its lines."""

    kind: str
    name: str
    number: int
    args: tuple[str, ...]
    lines: tuple[Line, ...]


def _escaped(c: str) -> str:
    """
    What a backslash and C{c} stand for: HAProxy unescapes spaces, quotes,
    C{#} and backslashes, and keeps any other backslash (a regex's C{\\.}).
    """
    return c if c in " \\#\"'" else "\\" + c


def _words(line: str, number: int) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    started = False  # a word is open, even an empty quoted one
    quote = ""
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(line):
                i += 1
                word.append(_escaped(line[i]))
            else:
                word.append(c)
        elif c in "\"'":
            quote, started = c, True
        elif c == "\\" and i + 1 < len(line):
            i += 1
            word.append(_escaped(line[i]))
            started = True
        elif c == "#":
            break
        elif c.isspace():
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    if quote:
        raise ConvertError("a quote is never closed", number)
    if started:
        words.append("".join(word))
    return words


def parseHaproxy(text: str) -> tuple[Section, ...]:
    """
    The sections of an HAProxy configuration file.

    @raise ConvertError: for an unclosed quote, or keywords before any
        section.
    """
    sections: list[Section] = []
    current: tuple[str, str, int, tuple[str, ...]] | None = None
    lines: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        words = _words(raw, number)
        if not words:
            continue
        if words[0] in SECTIONS:
            if current is not None:
                sections.append(Section(*current, tuple(lines)))
            name = words[1] if len(words) > 1 else ""
            current, lines = (words[0], name, number, tuple(words[2:])), []
            continue
        if current is None:
            raise ConvertError(f"'{words[0]}' comes before any section", number)
        lines.append(Line(tuple(words), number))
    if current is not None:
        sections.append(Section(*current, tuple(lines)))
    return tuple(sections)
