"""
C{tlsgateway ech-keygen}: write a new ECH key file for C{ech_keys}.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys

from gateway.wire.echopen import generateKeyFile


def echKeygen(args: argparse.Namespace) -> int:
    """
    Write a key file in the RFC 9934 format, readable by its owner only
    (mode 0600 from its creation, so the key is never readable by others,
    even for a moment), and print the ECHConfigList in base64: the C{ech=}
    parameter of the HTTPS DNS record that tells clients to use it.

    An existing file is not overwritten: rotation keeps the old key
    listed for a while, so losing it by a typo would break clients that
    still have the old record cached.
    """
    try:
        text, configList = generateKeyFile(args.public_name, args.config_id)
    except ValueError as e:
        print(f"tlsgateway ech-keygen: {e}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        problem = f"tlsgateway ech-keygen: cannot create {args.out}: {e.strerror}"
        print(problem, file=sys.stderr)  # noqa: T201
        return 1
    with os.fdopen(descriptor, "w", encoding="ascii") as out:
        out.write(text)
    print(base64.b64encode(configList).decode("ascii"))  # noqa: T201
    return 0


def addParser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add the command to C{tlsgateway}'s.
    """
    sub = commands.add_parser(
        "ech-keygen",
        help="write a new ECH key file for ech_keys and print its ECHConfigList",
    )
    sub.add_argument(
        "--public-name",
        required=True,
        help="the outer server name clients show (the gateway's own name)",
    )
    sub.add_argument(
        "--config-id",
        type=int,
        default=0,
        help="config id 0-255 (default 0); give each key a new one when rotating",
    )
    sub.add_argument("--out", required=True, help="key file to create (mode 0600)")
    sub.set_defaults(func=echKeygen)
