"""
Which process C{tlsgateway reload --pid N} (or C{--pidfile}) may signal.

C{SIGHUP} ends most programs.  A pid file outlives its process (a crash,
a reboot with the file on disk), and the number in it is soon another
process's; an operator may type the wrong number.  Either way, signalling
blindly ends an unrelated program and reports success.  So the target's
command line is read first, and only a gateway is signalled: the
C{tlsgateway} command, C{python -m gateway}, or C{twistd} running the
C{tlsgateway} plugin.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

#: Interpreter options that take a value as the next argument.
_VALUED = frozenset({"-W", "-X", "-Q"})


def isGatewayCommand(argv: Sequence[str]) -> bool:
    """
    Whether C{argv} (a process's command line) runs the gateway.

    Scripts are usually started through their interpreter (a console
    script's C{#!} line makes C{argv} C{python3 /usr/bin/tlsgateway run}),
    so the interpreter and its options are skipped first.
    """
    args = list(argv)
    if args and os.path.basename(args[0]).startswith("python"):
        args = args[1:]
        while args and args[0].startswith("-") and args[0] != "-m":
            option = args.pop(0)
            if option in _VALUED and args:
                args.pop(0)
        if args[:2] == ["-m", "gateway"]:
            return True
    if not args:
        return False
    name = os.path.basename(args[0])
    if name == "tlsgateway":
        return True
    return name.startswith("twistd") and "tlsgateway" in args[1:]


def commandLine(pid: int) -> list[str] | None:
    """
    The command line of process C{pid}, or L{None} if there is no such
    process.  Linux's C{/proc}, else C{ps} (which splits at spaces: good
    enough to tell a gateway from anything else).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except OSError:
        return None
    else:
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    result = subprocess.run(  # noqa: S603 - a fixed program, a number
        ["ps", "-o", "args=", "-p", str(pid)],  # noqa: S607 - ps from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.split()


def refusal(pid: int, source: str | None = None) -> str | None:
    """
    Why process C{pid} must not be signalled, or L{None} if it is a
    gateway.

    @param source: the pid file the number came from, named in the message.
    """
    origin = f" (from {source})" if source else ""
    argv = commandLine(pid)
    if argv is None:
        stale = ": the pid file is stale" if source else ""
        return f"no process {pid}{origin}{stale}; nothing signalled"
    if isGatewayCommand(argv):
        return None
    shown = " ".join(argv) or "(none: the process has ended)"
    return (
        f"process {pid}{origin} is not a tlsgateway (its command line: {shown});"
        " not signalled"
    )
