"""
Helpers for the converter tests: convert, then load the INI with the
gateway's own loader.
"""

from __future__ import annotations

import configparser

from gateway.cli.convert import Conversion, convert
from gateway.config import GatewayConfig, parseConfigText


def converted(
    kind: str, text: str, **options: object
) -> tuple[Conversion, GatewayConfig]:
    """Convert C{text}; the conversion and the configuration its INI loads as."""
    conversion = convert(kind, text, f"{kind}.conf", **options)  # type: ignore[arg-type]
    return conversion, parseConfigText(conversion.ini, "/etc/tlsgateway/converted.ini")


def sections(ini: str) -> configparser.ConfigParser:
    """The INI text read back as plain sections, to compare keys as written."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), strict=True
    )
    parser.read_string(ini)
    return parser


def noteAt(conversion: Conversion, line: int) -> str:
    """The reasons noted for a source line, joined; fails when there is none."""
    found = [n.reason for n in conversion.notes if n.line == line]
    assert found, f"no note for line {line}: {conversion.notes}"
    return " | ".join(found)
