"""
C{listen} and C{metrics} endpoint strings: checked with Twisted's own
C{serverFromString} against a C{MemoryReactor}, and what each would bind,
to find two listeners on one address.

The one part of L{gateway.config} that reads Twisted: it imports it only
inside the functions that run when a file is loaded, so importing the
package stays Twisted-free (C{tests/test_layering.py}).
"""

from __future__ import annotations

import ipaddress
import os
import re

from gateway.config.values import _eachItem, _text
from gateway.core.udpendpoints import isUDPEndpoint, parseUDPEndpoint
from gateway.core.units import parseList

_UNIX_ENDPOINT = re.compile(r"unix:(address=)?((?:\\.|[^:\\])*)(.*)", re.DOTALL)


def _absoluteUnixEndpoint(description: str, folder: str) -> str:
    """
    Make the path of a C{unix:} endpoint string absolute.

    Other endpoint types are returned unchanged.
    """
    match = _UNIX_ENDPOINT.fullmatch(description)
    if match is None:
        return description
    keyword, escaped, rest = match.groups()
    path = re.sub(r"\\(.)", r"\1", escaped)
    if not path or os.path.isabs(path):
        return description
    absolute = os.path.normpath(os.path.join(folder, path))
    reescaped = re.sub(r"([\\:=])", r"\\\1", absolute)
    return f"unix:{keyword or ''}{reescaped}{rest}"


def _endpointHint(description: str) -> str | None:
    """
    The endpoint string meant by an NGINX-style C{listen} value (C{443},
    C{0.0.0.0:443}, C{[::]:443}), or L{None} when it is not one.
    """
    match = re.fullmatch(r"(?:\*:)?([0-9]{1,5})", description)
    if match:
        return f"tcp:{match[1]}"
    match = re.fullmatch(r"([0-9.]+):([0-9]{1,5})", description)
    if match:
        return f"tcp:{match[2]}:interface={match[1]}"
    match = re.fullmatch(r"localhost:([0-9]{1,5})", description, re.IGNORECASE)
    if match:
        return f"tcp:{match[1]}:interface=127.0.0.1"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})", description)
    if match:
        escaped = match[1].replace(":", "\\:")
        return f"tcp6:{match[2]}:interface={escaped}"
    return None


def _makeEndpoint(description: str) -> tuple[object, tuple[object, str, str]]:
    """
    Build the endpoint a description stands for, on a reactor that
    listens on nothing, to learn whether Twisted can read it.

    @return: the endpoint, and what it binds (L{_bindingInMemory}).
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    hint = _endpointHint(description)
    if hint is not None:
        raise ValueError(
            f"{description!r} is not a Twisted server endpoint string: write {hint}"
        )

    if description.split(":", 1)[0].lower() in ("ssl", "tls"):
        raise ValueError(
            f"{description!r} would decrypt TLS before the gateway reads the"
            " ClientHello: use tcp: (and mode = terminate to terminate TLS)"
        )
    reactor = MemoryReactor()
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:  # noqa: BLE001 - endpoint parsers raise anything
        raise ValueError(
            f"{description!r} is not a Twisted server endpoint: {e}"
        ) from None
    binding = _bindingInMemory(endpoint, reactor)
    port, interface, _ = binding
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"{description!r}: port {port} is not in 0..65535")
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(
                f"{description!r}: interface {interface!r} is not an IP address"
            ) from None
    return endpoint, binding


def _bindingInMemory(endpoint: object, reactor: object) -> tuple[object, str, str]:
    """
    What a Twisted server endpoint would bind: C{(port, interface, UNIX
    path)}, learnt by letting it listen on C{reactor}, a C{MemoryReactor},
    which records the call (Twisted has no public way to ask an endpoint).
    An endpoint that listens some other way gives C{None}, C{""} and
    C{""}, so that the checks that use them (a port out of range, an
    interface that is not an address, two listeners on one address) pass
    it as one they cannot judge.
    """
    from twisted.internet.interfaces import IStreamServerEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactor

    assert isinstance(reactor, MemoryReactor)
    if not IStreamServerEndpoint.providedBy(endpoint):
        return None, "", ""
    try:
        listening = endpoint.listen(Factory.forProtocol(Protocol))
    except Exception:  # noqa: BLE001 - an endpoint that cannot listen here
        return None, "", ""
    listening.addErrback(lambda _: None)
    if reactor.tcpServers:
        port, _, _, interface = reactor.tcpServers[0]
        return port, str(interface or ""), ""
    if reactor.unixServers:
        return None, "", str(reactor.unixServers[0][0])
    return None, "", ""


def _endpoint(text: str, folder: str) -> str:
    description = _absoluteUnixEndpoint(_text(text), folder)
    _makeEndpoint(description)
    return description


def _listenEndpoint(description: str, folder: str) -> str:
    if isUDPEndpoint(description):
        parseUDPEndpoint(description)  # QUIC: Twisted has no UDP endpoint strings
        return description
    return _endpoint(description, folder)


def _endpoints(text: str, folder: str) -> tuple[str, ...]:
    descriptions = parseList(text)
    if not descriptions:
        raise ValueError("is empty")
    return tuple(
        _eachItem(
            descriptions, lambda description: _listenEndpoint(description, folder)
        )
    )


def _bindingOf(description: str) -> tuple[object, ...] | None:
    """
    What a valid endpoint description binds, for finding two listeners on
    one address: C{tcp:443} and C{tcp:443:interface=0.0.0.0} are the same.

    @return: L{None} for what cannot clash (port 0 is a fresh port each
        time) or what this function does not know.
    """
    if isUDPEndpoint(description):
        udp = parseUDPEndpoint(description)
        address = ipaddress.ip_address(udp.bindAddress)
        return ("udp", udp.port, address) if udp.port else None
    endpoint, (port, interface, path) = _makeEndpoint(description)
    kind = type(endpoint).__name__
    if kind in ("TCP4ServerEndpoint", "TCP6ServerEndpoint"):
        if not port:
            return None
        # Twisted listens with IPv6 when a tcp: interface is an IPv6
        # address, so the address decides, not the endpoint type.
        wildcard = "::" if kind == "TCP6ServerEndpoint" else "0.0.0.0"  # noqa: S104 - compared, never bound
        return ("tcp", port, ipaddress.ip_address(interface or wildcard))
    if kind == "UNIXServerEndpoint":
        return (kind, os.path.normpath(path))
    return None


def _endpointText(text: str, folder: str) -> str:
    return _absoluteUnixEndpoint(text.strip(), folder)


def _endpointTexts(text: str, folder: str) -> list[str]:
    return [_absoluteUnixEndpoint(item, folder) for item in parseList(text)]
