"""
The INI scanner: where every section, key and continuation line is.

C{configparser} does the syntax but keeps no line numbers, so L{_scan}
walks the text once with configparser's own rules (comments, inline
comments, indented continuation lines) to number what it parses: a
route or server problem points at that route's or server's own line.
The scan also finds every duplicate section and key (configparser in
strict mode would stop at the first) and the values a duplicate key
replaced, so that what is wrong with those is reported too.
"""

from __future__ import annotations

import configparser
import io
import sys

import attrs


@attrs.define
class _Scan:
    """
    Where things are in the text, found with configparser's own rules.

    @ivar sections: section name -> line of its first header.
    @ivar keys: (section, key) -> line of the key's last assignment (the
        one configparser keeps).
    @ivar values: (section, key) -> the non-empty lines of that value, as
        (line number, text without comment).
    @ivar sectionAt: line number -> the section the line belongs to.
    @ivar duplicates: (line, section, key, message) for each repeat.
    @ivar shadowed: (section, key, line, value lines) of each assignment
        that a later one of the same key replaced (configparser keeps the
        last, also across two copies of a section): converted too, so a
        duplicate does not hide what is wrong with the value it replaced.
    """

    lines: list[str]
    sections: dict[str, int] = attrs.Factory(dict)
    keys: dict[tuple[str, str], int] = attrs.Factory(dict)
    values: dict[tuple[str, str], list[tuple[int, str]]] = attrs.Factory(dict)
    sectionAt: dict[int, str] = attrs.Factory(dict)
    duplicates: list[tuple[int, str, str | None, str]] = attrs.Factory(list)
    shadowed: list[tuple[str, str, int, list[tuple[int, str]]]] = attrs.Factory(list)


_COMMENTS = ("#", ";")


def _withoutComment(line: str) -> str:
    """
    Strip comments from a line exactly as C{RawConfigParser._read} does with
    C{comment_prefixes} and C{inline_comment_prefixes} both C{("#", ";")}.
    """
    commentStart = sys.maxsize
    inline = dict.fromkeys(_COMMENTS, -1)
    while commentStart == sys.maxsize and inline:
        following = {}
        for prefix, index in inline.items():
            index = line.find(prefix, index + 1)
            if index == -1:
                continue
            following[prefix] = index
            if index == 0 or (index > 0 and line[index - 1].isspace()):
                commentStart = min(commentStart, index)
        inline = following
    if line.strip().startswith(_COMMENTS):
        commentStart = 0
    return line[: None if commentStart == sys.maxsize else commentStart].strip()


def _scan(text: str) -> _Scan:
    """
    Walk the text once, mirroring configparser's continuation rules (with
    C{empty_lines_in_values} on, its default), to number what it parses.
    """
    parser = configparser.RawConfigParser
    scan = _Scan(lines=list(io.StringIO(text)))
    section: str | None = None
    option: str | None = None
    indent = 0
    firstSeen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(scan.lines, start=1):
        value = _withoutComment(line)
        if section is not None:
            scan.sectionAt[number] = section
        if not value:
            continue
        nonSpace = parser.NONSPACECRE.search(line)
        lineIndent = nonSpace.start() if nonSpace else 0
        if section is not None and option and lineIndent > indent:
            scan.values[(section, option)].append((number, value))
            continue
        indent = lineIndent
        header = parser.SECTCRE.match(value)
        if header:
            section = header["header"]
            scan.sectionAt[number] = section
            option = None
            if section in scan.sections:
                scan.duplicates.append(
                    (
                        number,
                        section,
                        None,
                        f"duplicate section (first on line {scan.sections[section]})",
                    )
                )
            else:
                scan.sections[section] = number
            continue
        if section is None:
            break  # configparser raises MissingSectionHeaderError here
        assignment = parser.OPTCRE.match(value)
        if assignment is None:
            continue  # configparser reports the line; the option continues
        option = assignment["option"].rstrip().lower()
        if not option:
            continue  # configparser reports "= value" as a bad line
        key = (section, option)
        if key in firstSeen:
            scan.duplicates.append(
                (
                    number,
                    section,
                    option,
                    f"duplicate key (first on line {firstSeen[key]})",
                )
            )
        else:
            firstSeen[key] = number
        if key in scan.values:
            scan.shadowed.append((*key, scan.keys[key], scan.values[key]))
        scan.keys[key] = number  # configparser keeps the last value
        first = assignment["value"].strip()
        scan.values[key] = [(number, first)] if first else []
    return scan


@attrs.define
class _Section:
    """
    One section as configparser read it.

    @ivar name: the header without brackets, as problems show it.
    @ivar kind: C{gateway}, C{listener}, C{upstream} or C{certificate}.
    @ivar sub: the part after the colon: the listener's, upstream's or
        certificate's name.
    """

    name: str
    kind: str
    sub: str
    items: dict[str, str]
    line: int | None
