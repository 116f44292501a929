"""
NGINX configuration syntax: text into a tree of directives.

Pure.  The reader follows NGINX's own lexer (C{ngx_conf_file.c}) closely
enough for real configurations: words separated by whitespace, C{;} ends a
directive, C{{ ... }} is its block, C{#} starts a comment where a word
could start, quotes group words and backslashes escape inside them, and
C{${name}} is a variable, not a block.
"""

from __future__ import annotations

import re

import attrs

from gateway.cli.convert.draft import ConvertError

__all__ = ["TIME", "Directive", "parseNginx", "seconds"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: One part of an NGINX time: C{1m30s} is two.
TIME = re.compile(r"([0-9]+)(ms|s|m|h|d|w)?")


@attrs.frozen
class Directive:
    """
    One directive: its name, arguments, line, and its block if it has one.
    """

    name: str
    args: tuple[str, ...]
    line: int
    block: tuple[Directive, ...] | None = None

    @property
    def text(self) -> str:
        """The directive as it would be written (without its block)."""
        return " ".join((self.name, *self.args)) + (" {...}" if self.block else "")


_SPECIAL = ";{}"


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """
    Every word and special character, with its line and whether it was
    quoted (a quoted C{;} is a word, not the end of a directive).

    @raise ConvertError: for a quote that is never closed.
    """
    tokens: list[tuple[str, int, bool]] = []
    i, line, size = 0, 1, len(text)
    while i < size:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < size and text[i] != "\n":
                i += 1
        elif c in _SPECIAL:
            tokens.append((c, line, False))
            i += 1
        elif c in "\"'":
            start, word = line, []
            i += 1
            while i < size and text[i] != c:
                if text[i] == "\\" and i + 1 < size:
                    # As NGINX: only quotes and backslashes are unescaped;
                    # a regex's \d keeps its backslash.
                    escaped = text[i + 1]
                    word.append(escaped if escaped in "\"'\\" else text[i : i + 2])
                    i += 2
                    continue
                if text[i] == "\n":
                    line += 1
                word.append(text[i])
                i += 1
            if i >= size:
                raise ConvertError("a quote is never closed", start)
            i += 1
            tokens.append(("".join(word), start, True))
        else:
            word = []
            while i < size and not text[i].isspace() and text[i] not in _SPECIAL:
                if text[i] == "\\" and i + 1 < size:
                    word.append(text[i : i + 2])
                    i += 2
                    continue
                if text[i] == "$" and text[i + 1 : i + 2] == "{":
                    end = text.find("}", i)
                    if end < 0:
                        raise ConvertError("a ${variable} is never closed", line)
                    word.append(text[i : end + 1])
                    i = end + 1
                    continue
                word.append(text[i])
                i += 1
            tokens.append(("".join(word), line, False))
    return tokens


def parseNginx(text: str) -> tuple[Directive, ...]:
    """
    The directives of an NGINX configuration file, blocks nested.

    @raise ConvertError: for text NGINX itself would refuse to read: an
        unbalanced brace, a directive without its C{;}, an unclosed quote.
    """
    stack: list[tuple[list[Directive], str, tuple[str, ...], int]] = []
    current: list[Directive] = []
    words: list[tuple[str, int]] = []
    for word, line, quoted in _tokens(text):
        if quoted or word not in _SPECIAL:
            words.append((word, line))
            continue
        if word == ";":
            if not words:
                raise ConvertError("unexpected ';'", line)
            current.append(
                Directive(words[0][0], tuple(w for w, _ in words[1:]), words[0][1])
            )
            words = []
        elif word == "{":
            if not words:
                raise ConvertError("unexpected '{'", line)
            stack.append(
                (current, words[0][0], tuple(w for w, _ in words[1:]), words[0][1])
            )
            current, words = [], []
        else:
            if words:
                raise ConvertError(f"'{words[0][0]}' has no ';' before '}}'", line)
            if not stack:
                raise ConvertError("unexpected '}'", line)
            parent, name, args, start = stack.pop()
            parent.append(Directive(name, args, start, tuple(current)))
            current = parent
    if words:
        raise ConvertError(f"'{words[0][0]}' has no ';' at the end", words[0][1])
    if stack:
        raise ConvertError(
            f"the block of '{stack[-1][1]}' is never closed", stack[-1][3]
        )
    return tuple(current)


def seconds(text: str) -> float:
    """
    An NGINX time (C{30s}, C{1m30s}, C{500ms}; bare numbers are seconds).

    @raise ValueError: for anything else.
    """
    if not text or TIME.sub("", text):
        raise ValueError(f"{text!r} is not an NGINX time")
    return sum(int(n) * _UNITS[unit or "s"] for n, unit in TIME.findall(text))
