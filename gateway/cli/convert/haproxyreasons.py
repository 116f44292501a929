"""
What to tell an operator about an HAProxy keyword the gateway has no use
for: where its job went, or that it has no equivalent.

Pure.  One table, so the same keyword gets the same words in C{global},
C{defaults} and a proxy.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["reasonFor"]

_KEYWORDS = {
    "log": "the gateway writes one access-log line per connection (access_log)",
    "daemon": "twistd daemonizes; tlsgateway run stays in the foreground",
    "chroot": "not supported: run the gateway in a container or with systemd's sandboxing",
    "user": "run the gateway as that user with twistd --uid",
    "group": "run the gateway as that group with twistd --gid",
    "pidfile": "use tlsgateway run --pidfile FILE, or twistd's --pidfile",
    "stats": "the gateway's status page is [gateway] metrics, at /status",
    "nbthread": "the gateway scales with processes: [gateway] workers",
    "master-worker": "the gateway's supervisor starts with [gateway] workers",
}

_OPTIONS = {
    "tcplog": "the gateway writes one access-log line per connection (access_log)",
    "dontlognull": "the gateway logs every connection, refused ones included",
    "redispatch": "the gateway retries on other servers: next_upstream_tries",
    "log-health-checks": "the gateway logs every server going down or up",
    "httplog": "HTTP logging: the gateway relays TLS and TCP, not HTTP",
}


def reasonFor(words: Sequence[str]) -> str:
    """Why the line C{words} is not converted, for the operator."""
    if words[:1] == ("option",) and len(words) > 1 and words[1] in _OPTIONS:
        return _OPTIONS[words[1]]
    return _KEYWORDS.get(words[0], "no equivalent in the gateway")
