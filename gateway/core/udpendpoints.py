"""
C{udp:PORT[:interface=ADDR]} and C{udp6:...}: the C{listen} values that
open a UDP endpoint for QUIC.

Twisted's endpoint string parser knows stream endpoints only (there is no
UDP server endpoint), so these descriptions are read here, in the same
shape as C{tcp:}: a port, then optional C{key=value} arguments with
C{\\:} escaping colons (C{udp6:443:interface=\\:\\:1}).  Pure: the
configuration checks them, the service binds what they say.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

_PREFIXES = ("udp:", "udp6:")


class UDPEndpointError(ValueError):
    """
    A C{udp:} description that cannot be bound.
    """


@attrs.frozen
class UDPEndpoint:
    """
    Where a UDP endpoint listens.

    @ivar ipv6: opened as an IPv6 socket (C{udp6:}, or an IPv6 interface).
    @ivar port: the port; C{0} asks the kernel for a free one (tests).
    @ivar interface: the address bound, C{""} for every address.
    """

    ipv6: bool
    port: int
    interface: str

    @property
    def bindAddress(self) -> str:
        """
        The address to bind: the interface, or the wildcard of the family.
        """
        if self.interface:
            return self.interface
        return "::" if self.ipv6 else "0.0.0.0"  # noqa: S104 - what udp:PORT means


def isUDPEndpoint(description: str) -> bool:
    """
    Whether a C{listen} value names a UDP endpoint (C{udp:}, C{udp6:}).
    """
    return description.lower().startswith(_PREFIXES)


def _splitEscaped(text: str) -> list[str]:
    """
    Split on colons not escaped by a backslash, unescaping as Twisted's
    endpoint strings do.
    """
    return [re.sub(r"\\(.)", r"\1", part) for part in re.split(r"(?<!\\):", text)]


def parseUDPEndpoint(description: str) -> UDPEndpoint:
    """
    Read C{udp:PORT[:interface=ADDR]} or C{udp6:PORT[:interface=ADDR]}.

    @raise UDPEndpointError: not such a description, a bad port, an
        unknown argument or an interface that is not an IP address.
    """
    parts = _splitEscaped(description)
    kind = parts[0].lower()
    if kind not in ("udp", "udp6") or len(parts) < 2:
        raise UDPEndpointError(
            f"{description!r} is not a UDP endpoint (udp:PORT[:interface=ADDR])"
        )
    port = parts[1]
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise UDPEndpointError(f"{description!r}: port {port!r} is not in 0..65535")
    interface = ""
    for argument in parts[2:]:
        key, equals, value = argument.partition("=")
        if not equals or key != "interface":
            raise UDPEndpointError(
                f"{description!r}: unknown argument {argument!r} (only interface=ADDR)"
            )
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise UDPEndpointError(
                f"{description!r}: interface {value!r} is not an IP address"
            ) from None
        interface = str(address)
    ipv6 = kind == "udp6" or ":" in interface
    if kind == "udp6" and interface and ":" not in interface:
        raise UDPEndpointError(
            f"{description!r}: udp6 needs an IPv6 interface (or use udp:)"
        )
    return UDPEndpoint(ipv6, int(port), interface)
