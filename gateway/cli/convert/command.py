"""
The C{tlsgateway convert nginx|haproxy FILE} command: reads the file,
converts it, writes the INI file, and lists what did not convert.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway.cli.convert import KINDS, ConvertError, convert
from gateway.config import ConfigError, parseConfigText

__all__ = ["addConvertCommand", "runConvert"]


def _listFolder(path: str) -> Sequence[str] | None:
    """A folder's file names, or None when C{path} is not a readable folder."""
    try:
        return os.listdir(path)
    except OSError:
        return None


def runConvert(args: argparse.Namespace) -> int:
    """
    Convert C{args.file}; write the INI to C{args.output} or standard output.

    Notes go to standard error, one per line as C{FILE:LINE: directive:
    reason}.  Exit status 0 when an INI file was written (notes or not), 1
    when the file cannot be read or nothing in it would listen.
    """
    try:
        with open(args.file, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        print(f"{args.file}: cannot read it: {reason}", file=sys.stderr)  # noqa: T201
        return 1
    folder = os.path.dirname(os.path.abspath(args.file))
    try:
        conversion = convert(args.kind, text, args.file, folder, _listFolder)
    except ConvertError as e:
        print(e.where(args.file), file=sys.stderr)  # noqa: T201
        return 1
    for note in conversion.notes:
        print(note.format(args.file), file=sys.stderr)  # noqa: T201
    if conversion.listeners == 0:
        print(  # noqa: T201
            f"{args.file}: nothing converted would listen: no INI file written",
            file=sys.stderr,
        )
        return 1
    target = args.output or "<converted>"
    try:
        parseConfigText(conversion.ini, os.path.abspath(target))
    except ConfigError as e:
        # A converter's mistake, not the operator's: say so, show it all.
        print(  # noqa: T201
            f"the converted configuration does not load (please report this):\n{e}",
            file=sys.stderr,
        )
        return 1
    if args.output is None:
        sys.stdout.write(conversion.ini)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(conversion.ini)
        except OSError as e:
            print(f"{args.output}: cannot write it: {e.strerror}", file=sys.stderr)  # noqa: T201
            return 1
    print(  # noqa: T201
        f"{args.file}: {conversion.listeners} listener(s) converted,"
        f" {len(conversion.notes)} item(s) not converted"
        + (
            " (listed above and at the top of the INI file)" if conversion.notes else ""
        ),
        file=sys.stderr,
    )
    return 0


def addConvertCommand(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The C{convert} subcommand, for L{gateway.cli.main.main}."""
    sub = commands.add_parser(
        "convert",
        help="write an INI file from an NGINX stream or HAProxy tcp configuration",
    )
    sub.add_argument("kind", choices=KINDS, help="what FILE is")
    sub.add_argument("file", metavar="FILE", help="nginx.conf or haproxy.cfg")
    sub.add_argument(
        "--output",
        "-o",
        metavar="INI",
        help="write the INI file here (default: stdout)",
    )
    sub.set_defaults(func=runConvert)
