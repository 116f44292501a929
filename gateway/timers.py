"""
Deadlines of connections: one way to stop them.

Every per-connection deadline (pre-read, handshake, upstream answer, idle)
is a Twisted C{IDelayedCall} kept in an attribute until it fires or is
stopped.  A call that already fired cannot be cancelled (Twisted raises
C{AlreadyCalled}), so stopping one is always "cancel if still pending,
then forget": L{cancel} is the first half, once.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall


def cancel(call: IDelayedCall | None) -> None:
    """
    Cancel C{call} if it is there and still pending.
    """
    if call is not None and call.active():
        call.cancel()
