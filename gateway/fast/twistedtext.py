"""
What the gateway reads of Twisted's log wording.

Twisted announces every port and factory it starts and stops in words
that are no API ("ListenerFactory starting on 443", "(TCP Port 443
Closed)", "Starting factory ..."); they change between releases without
notice, like its private attributes, so the one reader of them is here,
in the quarantine.  Should the words change, L{isChatter} stops matching
and those lines are logged at C{info} again: noisier, and otherwise the
same.
"""

from __future__ import annotations

import re

from twisted.logger import LogEvent

#: Twisted's per-port and per-factory lines (legacy C{log.msg} text from
#: C{twisted.internet.tcp} and C{unix}, and C{Factory.doStart}/C{doStop}).
_CHATTER = re.compile(
    r"\S.* starting on \S+"
    r"|\((?:\S+ )?Port \S+ Closed\)"
    r"|(?:Starting|Stopping) factory .*",
    re.DOTALL,
)


def isChatter(event: LogEvent) -> bool:
    """
    Whether C{event} is one of Twisted's port or factory start/stop lines.
    """
    message = event.get("message")
    if isinstance(message, tuple) and message:
        return bool(_CHATTER.fullmatch(" ".join(str(part) for part in message)))
    text = event.get("log_format")
    return isinstance(text, str) and text.startswith(
        ("Starting factory", "Stopping factory")
    )
