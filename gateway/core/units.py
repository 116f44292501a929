"""
Parsers for the value syntaxes an operator types in the INI file.

Pure functions, no Twisted: durations, sizes, booleans and lists are
spelled the same in every section, so they are parsed in one place and
every key says the same thing about the same mistake.  Each parser raises
L{ValueError} whose single argument is a message for the operator: it
quotes what was typed and says what would have been accepted, because
L{gateway.config} prints it after C{FILE:LINE: [section] key:}.
"""

from __future__ import annotations

import math
import re

__all__ = ["parseBool", "parseDuration", "parseList", "parseSize"]

_DURATION = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h|d)?", re.IGNORECASE
)
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"(?P<number>[0-9]+)\s*(?P<unit>[kmg])?", re.IGNORECASE)
_BYTES_PER_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

_BOOLEANS = {
    "on": True,
    "yes": True,
    "true": True,
    "1": True,
    "off": False,
    "no": False,
    "false": False,
    "0": False,
}


def parseDuration(text: str) -> float:
    """
    Parse a duration as NGINX writes them, into float seconds.

    A bare number is seconds because that is what both NGINX and
    C{socket.settimeout} mean by it.  Fractions are allowed (C{1.5s}) since
    nothing is gained by making an operator convert to milliseconds.

    @raise ValueError: for negative, empty or otherwise unreadable text.
    """
    stripped = text.strip()
    match = _DURATION.fullmatch(stripped)
    if match is None:
        if stripped.startswith("-") and _DURATION.fullmatch(stripped[1:]):
            raise ValueError(f"{stripped!r} is negative: a duration must be 0 or more")
        raise ValueError(
            f"{stripped!r} is not a duration (use 500ms, 5s, 10m, 1h or seconds)"
        )
    seconds = float(match["number"]) * _SECONDS_PER_UNIT[(match["unit"] or "s").lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"{stripped!r} is too long a duration")
    return seconds


def parseSize(text: str) -> int:
    """
    Parse a byte count: bare bytes, or C{k}/C{m}/C{g} for binary multiples.

    Whole numbers only: a buffer of 1.5 kilobytes is never what was meant.

    @raise ValueError: for negative, fractional or unreadable text.
    """
    stripped = text.strip()
    match = _SIZE.fullmatch(stripped)
    if match is None:
        if stripped.startswith("-") and _SIZE.fullmatch(stripped[1:]):
            raise ValueError(f"{stripped!r} is negative: a size must be 0 or more")
        raise ValueError(f"{stripped!r} is not a size (use 16k, 1m, 1g or bytes)")
    return int(match["number"]) * _BYTES_PER_UNIT[(match["unit"] or "").lower()]


def parseBool(text: str) -> bool:
    """
    Parse the boolean spellings configparser and NGINX accept, in any case.

    @raise ValueError: for anything else, naming the accepted spellings.
    """
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{text.strip()!r} is not a boolean (use on/off, yes/no, true/false or 1/0)"
        ) from None


def parseList(text: str) -> tuple[str, ...]:
    """
    Split a comma-separated value into its stripped, non-empty items.

    Newlines separate items as well, so a long list may be written one item
    per continuation line; a trailing comma is harmless.  Returns a tuple
    because the configuration model is immutable.
    """
    return tuple(
        item
        for line in text.splitlines()
        for item in (part.strip() for part in line.split(","))
        if item
    )
