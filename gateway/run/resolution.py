"""
Whether the host names of upstream servers resolve now, for C{tlsgateway
check}.

The gateway resolves a server's name when it starts and at each reload,
and a name that did not resolve then is resolved again at each connect; a
name that does not resolve is therefore not an error: it may exist by the
time traffic comes (a service started after the gateway, a record being
published).  But a typo (C{backend.invalid}) would then
pass C{check} silently and fail only at the first connection, so C{check}
asks the system resolver once and warns, naming the file, line, section
and key, exactly as for any other warning.

Only C{check} does this: a start or a reload must not wait on DNS, and
the resolver runs in threads with one bound for all names, so a resolver
that hangs delays C{check} by that bound at most.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from gateway.config import ConfigWarning, GatewayConfig, UpstreamConfig

__all__ = ["RESOLVE_TIMEOUT", "unresolvedServers"]

RESOLVE_TIMEOUT = 5.0
"""Seconds C{check} waits for all the names together."""

Resolve = Callable[[str, int], Any]


def _systemResolve(host: str, port: int) -> Any:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _serverLine(upstream: UpstreamConfig, host: str) -> int | None:
    """
    The line of the C{servers} entry that names C{host}: the continuation
    line itself when the file can still be read, else the key's.
    """
    keyLine = upstream.location.lineOf("servers")
    if keyLine is None:
        return None
    try:
        with open(upstream.location.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return keyLine
    for number in range(keyLine, len(lines) + 1):
        text = lines[number - 1].split("#", 1)[0].split(";", 1)[0]
        if host in text:
            return number
        if number > keyLine and text.strip() and not text[:1].isspace():
            break  # the next key: the value ended
    return keyLine


def unresolvedServers(
    config: GatewayConfig,
    resolve: Resolve = _systemResolve,
    timeout: float = RESOLVE_TIMEOUT,
) -> list[ConfigWarning]:
    """
    A warning for each upstream server whose host name does not resolve
    now (IP addresses and UNIX sockets are not looked up).

    @param resolve: C{getaddrinfo}'s shape; raises C{OSError} for a name
        that does not resolve.
    @param timeout: the bound on all the look-ups together; a name not
        answered by then is reported as such.
    """
    wanted: dict[tuple[str, int], list[UpstreamConfig]] = {}
    for upstream in config.upstreams.values():
        for server in upstream.servers:
            if server.host is None or server.port is None or _isAddress(server.host):
                continue
            wanted.setdefault((server.host, server.port), []).append(upstream)
    if not wanted:
        return []
    pool = ThreadPoolExecutor(max_workers=min(8, len(wanted)))
    futures = {key: pool.submit(resolve, *key) for key in wanted}
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    warnings = []
    for (host, port), upstreams in wanted.items():
        future = futures[(host, port)]
        if not future.done():
            why = f"no answer from the resolver within {timeout:g}s"
        else:
            error = future.exception()
            if error is None:
                continue
            why = _describe(error)
        warnings += _warn(upstreams, host, why)
    return warnings


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.gaierror) and len(error.args) > 1:
        return str(error.args[1])
    return str(error) or type(error).__name__


def _warn(
    upstreams: Iterable[UpstreamConfig], host: str, why: str
) -> list[ConfigWarning]:
    return [
        ConfigWarning(
            upstream.location.path,
            _serverLine(upstream, host),
            f"upstream:{upstream.name}",
            "servers",
            f"{host} does not resolve now ({why}); the gateway resolves it"
            " again at each connection",
        )
        for upstream in dict.fromkeys(upstreams)
    ]
