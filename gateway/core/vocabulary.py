"""
The contract's words as enums: connection statuses, listener modes and
route actions.

The values are exactly the words of C{CONTRACT.md}: an access-log line's
C{status} and C{action} and the metrics' C{status} label are these strings,
and C{enum.StrEnum} members I{are} those strings (C{json.dumps}, C{%s} and
C{==} all see the plain word), so code can name a status without a typo
going unnoticed while every reader of the log sees what it always did.
Pure: imports neither Twisted nor OpenSSL.
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """
    How a connection ended: the access log's C{status}.
    """

    OK = "ok"
    NO_ROUTE = "no_route"
    DENIED = "denied"
    LIMITED = "limited"
    PREREAD_TIMEOUT = "preread_timeout"
    BAD_CLIENT_HELLO = "bad_client_hello"
    CLIENT_CLOSED = "client_closed"
    BAD_PROXY_HEADER = "bad_proxy_header"
    HANDSHAKE_FAILED = "handshake_failed"
    TLS_ERROR = "tls_error"
    PLAINTEXT_REFUSED = "plaintext_refused"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"


class Mode(enum.StrEnum):
    """
    A listener's C{mode}: what it does with a connection by default.
    """

    PASSTHROUGH = "passthrough"
    TERMINATE = "terminate"
    TCP = "tcp"


class Action(enum.StrEnum):
    """
    What was done with a connection: the access log's C{action} (a route's
    action, or C{tcp} for a connection relayed without TLS on the client
    side).
    """

    PASSTHROUGH = "passthrough"
    TERMINATE = "terminate"
    TCP = "tcp"
