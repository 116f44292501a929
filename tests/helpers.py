"""
Helpers shared by the unit tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from gateway.config import ServerConfig
from gateway.connection.upstream import IServerChooser
from gateway.fast.portable import PORTABLE

#: The checkout's root: where a fresh interpreter finds the C{gateway} package.
ROOT = Path(__file__).resolve().parent.parent


def frameworksImportedBy(module: str) -> list[str]:
    """
    The Twisted and OpenSSL modules that importing C{module} loads, in a
    fresh interpreter (this one has long imported both), sorted.

    The pure sans-IO modules must give C{[]}: they are usable, and
    testable, without an event loop or a TLS library.
    """
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules "
        "if m.partition('.')[0] in ('twisted', 'OpenSSL')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded: list[str] = ast.literal_eval(result.stdout.strip())
    return loaded


#: For a test of a fast path itself (L{gateway.fast.internals}): skipped in the
#: suite's run with C{TLSGATEWAY_PORTABLE=1}, which turns every fast path
#: off.  The normal run runs it; the portable run checks the fallbacks.
fastPathOnly = pytest.mark.skipif(
    PORTABLE, reason="tests a fast path, and TLSGATEWAY_PORTABLE=1 turns it off"
)


def appendingTo(events: list[LogEvent]) -> ILogObserver:
    """
    A log observer that appends each event to C{events}.

    A bound C{list.append} observes as well as any observer, but provides
    L{ILogObserver} only by duck typing, which the type checker cannot see.
    """
    return cast(ILogObserver, events.append)


@implementer(IServerChooser)
class FixedServers:
    """
    A chooser over fixed servers, in order, that records what it is told
    (C{failed}, C{succeeded}, C{released}): what a dialer owes the chooser
    is then one list to compare.
    """

    def __init__(self, *servers: ServerConfig) -> None:
        self._servers = servers
        self.events: list[tuple[str, ServerConfig]] = []

    def pick(
        self, clientKey: str, exclude: frozenset[ServerConfig]
    ) -> ServerConfig | None:
        return next((s for s in self._servers if s not in exclude), None)

    def connectFailed(self, server: ServerConfig) -> None:
        self.events.append(("failed", server))

    def connectSucceeded(self, server: ServerConfig) -> None:
        self.events.append(("succeeded", server))

    def released(self, server: ServerConfig) -> None:
        self.events.append(("released", server))
