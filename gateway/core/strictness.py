"""
What an impossible event does: raise, or be logged as the bug it is.

A state table (L{gateway.rules.lifecycle}, MySQL's in
L{gateway.protocols.mysql.states}) that is handed an event it does not
allow in the current state has met a bug.  Under tests it raises, so that a
new stage that breaks the table fails its tests; in production it is
logged at error level and the connection goes on as the table left it,
since one confused connection must not take a process down.  It lives at
the bottom of the layers so that any of them may ask; the test suite's
C{conftest} is the one writer.
"""

from __future__ import annotations

#: L{True}: a forbidden transition raises.  Off in production.
STRICT = False


class ForbiddenEvent(Exception):
    """
    An event the state table does not allow in the current state: a bug.

    @ivar reason: a stable slug, as every error of the gateway has.
    """

    reason = "forbidden_transition"
