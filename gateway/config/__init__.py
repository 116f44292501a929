"""
The INI file, read into an immutable model, with every problem at once.

L{parseConfig} turns the operator's file into a L{GatewayConfig} of frozen
attrs classes, or raises L{ConfigError} listing I{every} problem as
C{FILE:LINE: [section] key: message}, the way C{nginx -t} and compilers
do: an operator fixes a file in one edit, not one error per reload.

How it reads the file:

  - C{configparser} does the syntax (so the file is "standard
    configparser", as the contract promises): C{;} and C{#} comments, also
    inline after whitespace (a C{#} or C{;} inside a route pattern such as
    C{~^a#b} stays: patterns have no spaces, and a pattern that needs one
    writes C{\\s} or C{\\x20}), no interpolation (regexes contain C{$} and
    C{%}), indented continuation lines for C{routes}, C{servers} and long
    lists.
  - C{configparser} keeps no line numbers, so L{_scan} walks the text once
    with configparser's own line rules to find the line of every section,
    key and continuation line; a route or server problem points at that
    route's or server's own line.  The scan also finds every duplicate
    section and key (configparser in strict mode would stop at the first).
  - Each section is converted key by key, from the C{ini} metadata on the
    model's fields, so each problem names its key; cross-key and
    cross-section checks (references, listen addresses) come after.

This module knows nothing of certificates: L{gateway.run.loading} is what
loads a configuration the way C{check}, a start and a reload do, this
conversion first, then every file it names.

C{listen} and C{metrics} endpoint strings are checked with Twisted's own
C{serverFromString} against a C{MemoryReactor}; that import happens only
when a file is loaded, so importing this module stays Twisted-free.
"""

from __future__ import annotations

import configparser
import contextlib
import difflib
import functools
import io
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
from attrs import validators as v

from gateway.core.ratelimit import ConnectionRate, parseRate
from gateway.core.routing import normalizeName, normalizePattern
from gateway.core.udpendpoints import isUDPEndpoint, parseUDPEndpoint
from gateway.core.units import parseBool, parseDuration, parseList, parseSize

__all__ = [
    "AcmeSettings",
    "CertificateConfig",
    "ClusterSettings",
    "ConfigError",
    "ConfigWarning",
    "GatewayConfig",
    "GatewaySettings",
    "ListenerConfig",
    "Location",
    "Problem",
    "RouteConfig",
    "ServerConfig",
    "UpstreamConfig",
    "parseConfig",
    "parseConfigText",
]

_SECTION_KINDS = ("listener", "upstream", "certificate")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_OLD_PROTOCOLS = {"sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1"}
_PROTOCOLS = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}
# passthrough_protocols: what a passed-through ClientHello may offer, with
# the wire code of each version (gateway.connection.listener compares them).
PASSTHROUGH_VERSIONS: dict[str, int] = {
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}
_PASSTHROUGH_NAMES = {name.lower(): name for name in PASSTHROUGH_VERSIONS} | {
    "tlsv1.0": "TLSv1"
}
_JA4 = re.compile(r"[A-Za-z0-9]{10}_[0-9A-Fa-f]{12}_[0-9A-Fa-f]{12}")
_PORT = re.compile(r"[0-9]{1,5}")
_UNIX_ENDPOINT = re.compile(r"unix:(address=)?((?:\\.|[^:\\])*)(.*)", re.DOTALL)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


# --- problems ---------------------------------------------------------------


@attrs.frozen
class Problem:
    """
    One thing wrong with a configuration file, and where.

    @ivar section: the section header without brackets (C{listener:web}),
        or L{None} for a problem with the file itself.
    @ivar key: the key, or L{None} for a problem with a whole section.
    """

    path: str
    line: int | None
    section: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        section = f"[{self.section}]" if self.section is not None else None
        label = " ".join(part for part in (section, self.key) if part)
        return (
            f"{where}: {label}: {self.message}" if label else f"{where}: {self.message}"
        )


@attrs.frozen
class ConfigWarning(Problem):
    """
    A setting that works but is unsafe or likely wrong: C{tlsgateway check}
    prints it and still says C{configuration OK}; a start or reload logs it.

    Located as a L{Problem} is, so that whatever finds one (the loader, a
    certificate check, a TLS policy check) reports it at its key.
    """

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        section = f"[{self.section}]" if self.section is not None else None
        label = " ".join(part for part in (section, self.key) if part)
        prefix = f"{where}: {label}" if label else where
        return f"{prefix}: warning: {self.message}"


class ConfigError(Exception):
    """
    A configuration file cannot be used; C{str()} lists every problem.

    @ivar problems: in file order.
    @ivar partial: when the INI text itself has problems, what of it did
        convert (keys with problems left out), so that the files it names
        can be checked too and reported with these problems in one run
        (L{gateway.run.loading}); else L{None}.
    @ivar drafts: the sections of C{partial} that have problems of their
        own (a listener with a typo still has its certificate checked):
        built from the keys that converted, for their files only.
    @cvar reason: stable slug for logs and metrics.
    """

    reason = "invalid_config"

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        self.partial: GatewayConfig | None = None
        self.drafts: frozenset[str] = frozenset()
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# --- value parsers: text in, value out, ValueError with an operator message --


class _Invalid(ValueError):
    """
    Several things wrong with one value, each reported as a problem of its
    own at the value's key: one run names every bad entry of a list and
    every bad flag of a server line, not only the first.
    """

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__(messages[0])
        self.messages = tuple(messages)


def _messages(error: ValueError | TypeError) -> list[str]:
    """
    The operator messages an error carries: one, or each of an L{_Invalid}.
    """
    if isinstance(error, _Invalid):
        return list(error.messages)
    return [str(error.args[0] if error.args else error)]


def _eachItem(items: Iterable[str], convert: Callable[[str], _T]) -> list[_T]:
    """
    Convert every item of a list, going on past a bad one.

    @raise _Invalid: naming every item that did not convert.
    """
    converted: list[_T] = []
    messages: list[str] = []
    for item in items:
        try:
            converted.append(convert(item))
        except ValueError as e:
            messages += _messages(e)
    if messages:
        raise _Invalid(messages)
    return converted


def _choice(text: str, *allowed: str) -> str:
    value = text.strip().lower()
    if value not in allowed:
        raise ValueError(f"{text.strip()!r} is not one of {', '.join(allowed)}")
    return value


def _integer(text: str, minimum: int) -> int:
    stripped = text.strip()
    if not re.fullmatch(r"[0-9]+", stripped):
        raise ValueError(f"{stripped!r} is not a whole number")
    value = int(stripped)
    if value < minimum:
        raise ValueError(f"{value} is too small: use {minimum} or more")
    return value


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return _integer(text, 1)
    except ValueError:
        raise ValueError(
            f"{text.strip()!r} is not a number of workers (use 1 or more, or auto)"
        ) from None


_ACCOUNT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.$-]*")


def _account(text: str) -> str:
    """
    A user or group name, or a numeric id: whether it exists is checked
    where the accounts are (L{gateway.run.loading}), not here.
    """
    value = _text(text)
    if not _ACCOUNT.fullmatch(value):
        raise ValueError(f"{value!r} is not a user or group name, nor a number")
    return value


def _positiveDuration(text: str) -> float:
    seconds = parseDuration(text)
    if seconds <= 0:
        raise ValueError(f"{text.strip()!r} is too short: use more than 0")
    return seconds


def _positiveSize(text: str) -> int:
    size = parseSize(text)
    if size <= 0:
        raise ValueError(f"{text.strip()!r} is too small: use more than 0")
    return size


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    return text.strip()


def _path(text: str, folder: str) -> str:
    """
    An absolute path; a relative one is relative to the INI file's folder,
    so a configuration directory can be moved as a whole.
    """
    return os.path.normpath(os.path.join(folder, _text(text)))


def _accessLog(text: str, folder: str) -> str:
    value = _text(text)
    if value in ("-", "off"):
        return value
    return _path(value, folder)


def _url(text: str) -> str:
    """
    An ACME directory URL: C{https://} (or C{http://}, which only a test
    server on loopback would use) with a host.
    """
    from urllib.parse import urlsplit

    value = _text(text)
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(
            f"{value!r} is not an ACME directory URL (like"
            " https://acme-v02.api.letsencrypt.org/directory)"
        )
    return value


def _email(text: str) -> str:
    value = _text(text).removeprefix("mailto:")
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an email address")
    return value


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _acmeNames(text: str) -> tuple[str, ...]:
    """
    The DNS names of an ACME certificate.  C{tls-alpn-01} cannot validate
    wildcard names (RFC 8737, section 3) nor, here, IP addresses.
    """
    names: list[str] = []

    def acmeName(item: str) -> str:
        if item.startswith("*"):
            raise ValueError(
                f"{item!r}: tls-alpn-01 cannot validate wildcard names: list each name"
            )
        name = normalizeName(item)
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise ValueError(f"{item!r}: an IP address, not a DNS name")
        labels = name.split(".")
        if len(labels) < 2 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"{item!r} is not a DNS name (like www.example.com)")
        if name in names:
            raise ValueError(f"{item!r} is listed twice")
        names.append(name)
        return name

    _eachItem(parseList(text), acmeName)
    if not names:
        raise ValueError("is empty")
    return tuple(names)


def _sectionName(text: str) -> str:
    name = _text(text)
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a section name: use letters, digits, '_', '-' and '.'"
        )
    return name


def _sectionNames(text: str) -> tuple[str, ...]:
    names = parseList(text)
    if not names:
        raise ValueError("is empty")
    return tuple(_eachItem(names, _sectionName))


def _protocols(text: str) -> tuple[str, ...]:
    def protocol(item: str) -> str:
        if item.lower() in _OLD_PROTOCOLS:
            raise ValueError(f"{item} is not allowed: only TLSv1.2 and TLSv1.3")
        if item.lower() not in _PROTOCOLS:
            raise ValueError(f"{item!r} is not a TLS version (use TLSv1.2, TLSv1.3)")
        return _PROTOCOLS[item.lower()]

    items = [item for item in re.split(r"[\s,]+", text.strip()) if item]
    chosen = set(_eachItem(items, protocol))
    if not chosen:
        raise ValueError("is empty (use TLSv1.2, TLSv1.3)")
    return tuple(sorted(chosen))


def _passthroughProtocols(text: str) -> tuple[str, ...] | None:
    """
    C{any} (L{None}: no check), or the TLS versions a passed-through
    ClientHello must offer one of, oldest first.
    """
    items = [item for item in re.split(r"[\s,]+", text.strip()) if item]
    if [item.lower() for item in items] == ["any"]:
        return None

    def version(item: str) -> str:
        if item.lower() == "any":
            raise ValueError("any cannot be combined with versions")
        if item.lower() not in _PASSTHROUGH_NAMES:
            raise ValueError(
                f"{item!r} is not a TLS version (use any, or some of TLSv1,"
                " TLSv1.1, TLSv1.2, TLSv1.3)"
            )
        return _PASSTHROUGH_NAMES[item.lower()]

    chosen = set(_eachItem(items, version))
    if not chosen:
        raise ValueError("is empty (use any, or some of TLSv1 TLSv1.1 TLSv1.2 TLSv1.3)")
    return tuple(sorted(chosen, key=PASSTHROUGH_VERSIONS.__getitem__))


#: A key exchange group as OpenSSL names it (C{X25519MLKEM768},
#: C{secp256r1}, C{P-256}, C{ffdhe2048}): whether OpenSSL knows it is
#: checked by L{gateway.tls.settings}, which alone may import OpenSSL.
_GROUP = re.compile(r"[A-Za-z0-9_-]+")

#: The longest session ticket lifetime TLS 1.3 allows (RFC 8446, 4.6.1).
MAX_TICKET_LIFETIME = 7 * 24 * 3600


def _groups(text: str) -> tuple[str, ...]:
    """
    Key exchange groups, colon-separated, preferred first, as OpenSSL's
    C{-groups} and NGINX's C{ssl_ecdh_curve} take them.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("is empty (use names such as X25519MLKEM768:X25519:secp256r1)")
    names: list[str] = []

    def group(item: str) -> str:
        name = item.strip()
        if not _GROUP.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a group name: give OpenSSL group names separated"
                " by colons, such as X25519MLKEM768:X25519:secp256r1"
            )
        if name.lower() in (n.lower() for n in names):
            raise ValueError(f"{name} is listed twice")
        names.append(name)
        return name

    _eachItem(stripped.split(":"), group)
    return tuple(names)


def _ticketLifetime(text: str) -> int:
    """
    Whole seconds, from 1 s to the 7 days TLS 1.3 allows a ticket.
    """
    seconds = parseDuration(text)
    if seconds < 1:
        raise ValueError(f"{text.strip()!r} is too short: use 1s or more")
    if seconds > MAX_TICKET_LIFETIME:
        raise ValueError(
            f"{text.strip()!r} is too long: TLS 1.3 tickets live at most 168h (7 days)"
        )
    if seconds != int(seconds):
        raise ValueError(f"{text.strip()!r} is not a whole number of seconds")
    return int(seconds)


def _paths(text: str, folder: str) -> tuple[str, ...]:
    items = parseList(text)
    if not items:
        raise ValueError("is empty")
    return tuple(dict.fromkeys(_path(item, folder) for item in items))


def _alpnList(text: str) -> tuple[str, ...]:

    def protocol(item: str) -> str:
        if not all("!" <= c <= "~" for c in item) or len(item) > 255:
            raise ValueError(
                f"{item!r} is not an ALPN protocol: printable ASCII, at most 255 bytes"
            )
        return item

    return tuple(_eachItem(parseList(text), protocol))


def _networks(text: str) -> tuple[_Network, ...]:
    """
    Addresses and CIDR networks, or C{all} as NGINX spells everything.

    Host bits are an error, not silently cleared: C{10.0.0.1/8} is more
    likely a typo for C{10.0.0.1/32} than a way to write C{10.0.0.0/8}.
    """
    return tuple(
        network for each in _eachItem(parseList(text), _network) for network in each
    )


def _network(item: str) -> tuple[_Network, ...]:
    if item.lower() == "all":
        return (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))
    try:
        return (ipaddress.ip_network(item),)
    except ValueError:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(_badNetwork(item)) from None
        raise ValueError(
            f"{item!r} has host bits set (did you mean {loose}?)"
        ) from None


def _badNetwork(item: str) -> str:
    """
    What is wrong with a network that does not parse: its address, or a
    prefix length too long for the address (C{10.0.0.0/33}).
    """
    address, slash, prefix = item.partition("/")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"{item!r} is not an IP address or CIDR network"
    if slash:
        bits = parsed.max_prefixlen
        return (
            f"{item!r}: /{prefix} is not a prefix length for"
            f" IPv{parsed.version} (use 0..{bits})"
        )
    return f"{item!r} is not an IP address or CIDR network"


def _ja4List(text: str) -> tuple[str, ...]:

    def fingerprint(item: str) -> str:
        if not _JA4.fullmatch(item):
            raise ValueError(
                f"{item!r} is not a JA4 fingerprint"
                " (like t13d1516h2_8daaf6152771_02713d6af862)"
            )
        head, _, hashes = item.partition("_")
        return f"{head}_{hashes.lower()}"

    return tuple(_eachItem(parseList(text), fingerprint))


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


def _serverAddress(text: str, folder: str) -> tuple[str | None, int | None, str | None]:
    """
    Read C{HOST:PORT}, C{[IPv6]:PORT} or C{unix:PATH}.
    """
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError("'unix:' names no socket path")
        return None, None, _path(text[5:], folder)
    if text.startswith("["):
        host, closing, port = text[1:].partition("]:")
        if not closing:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} has no port (use HOST:PORT or unix:/path)")
        if ":" in host:
            raise ValueError(
                f"{text!r}: an IPv6 address needs brackets, as in [::1]:443"
            )
        if re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        else:
            host = normalizeName(host)
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: {port!r} is not a port (use 1..65535)")
    return host, int(port), None


# --- the model --------------------------------------------------------------


@attrs.frozen
class Location:
    """
    Where a section or line is, so runtime messages can point into the file.
    """

    path: str
    line: int | None = None
    keys: Mapping[str, int] = attrs.field(factory=dict, eq=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def lineOf(self, key: str | None) -> int | None:
        """
        The line of C{key} in this section, or the section's own line: so
        problems found after loading (a certificate file that does not
        load) point at the key that named it.
        """
        return self.line if key is None else self.keys.get(key, self.line)


_NOWHERE = Location("<config>")

#: NGINX C{stream} directives operators type out of habit, and what this
#: gateway calls them: an unknown key that is one of these says so rather
#: than guessing a spelling.
_NGINX_NAMES: Mapping[str, str] = {
    "proxy_pass": "a listener names its [upstream:NAME] with upstream = NAME"
    " (or routes = PATTERN NAME lines)",
    "ssl_preread": "the ClientHello is always read, and passthrough is the"
    " default mode: delete this line",
    "server_name": "routes match server names: routes = PATTERN UPSTREAM, one per line",
    "map": "routes match server names: routes = PATTERN UPSTREAM, one per line",
    "server": "an [upstream:NAME] lists its servers with servers =, one per line",
    "ssl_certificate": "use certificate = FILE (the PEM chain, leaf first)",
    "ssl_certificate_key": "use private_key = FILE",
    "ssl_protocols": "use protocols = TLSv1.2 TLSv1.3",
    "ssl_ciphers": "use ciphers = (TLS 1.2) and ciphersuites = (TLS 1.3)",
    "ssl_prefer_server_ciphers": "use prefer_server_ciphers = on|off",
    "ssl_session_tickets": "use session_tickets = on|off",
    "ssl_session_cache": "use session_cache = on|off",
    "ssl_client_certificate": "use client_ca = FILE",
    "ssl_trusted_certificate": "use client_ca = FILE",
    "ssl_verify_client": "use verify_client = on|optional|off",
    "ssl_alpn": "use alpn = PROTOCOL, ...",
    "ssl": "TLS is terminated with mode = terminate (or a route's third"
    " column), passthrough is the default",
    "proxy_ssl": "re-encrypt to the servers with tls = on in [upstream:NAME]",
    "proxy_ssl_verify": "use tls_verify = on|off in [upstream:NAME]",
    "proxy_ssl_trusted_certificate": "use tls_ca = FILE in [upstream:NAME]",
    "proxy_ssl_name": "use tls_server_name = NAME in [upstream:NAME]",
    "proxy_connect_timeout": "use connect_timeout = DURATION",
    "proxy_timeout": "use idle_timeout = DURATION",
    "proxy_next_upstream_tries": "use next_upstream_tries = N in [upstream:NAME]",
    "ssl_preread_timeout": "use preread_timeout = DURATION",
    "limit_conn": "use max_connections_per_client = N (or max_connections = N)",
    "least_conn": "use balance = least_conn in [upstream:NAME]",
    "hash": "use balance = hash in [upstream:NAME]",
    "random": "use balance = random in [upstream:NAME]",
    "set_real_ip_from": "use proxy_protocol_from = ADDRESSES, with"
    " accept_proxy_protocol = on",
    "ssl_ecdh_curve": "use groups = X25519MLKEM768:X25519:secp256r1",
    "ssl_session_timeout": "use session_ticket_lifetime = DURATION",
    "ssl_crl": "use client_crl = FILE",
    "limit_req": "use max_connection_rate = N/s (or N/m)",
    "access_log_format": "access_log_format belongs in [gateway]",
    "access_log": "access_log belongs in [gateway]",
    "error_log": "the gateway's own log goes to standard error (or twistd's"
    " --logfile); [gateway] log_level = info|debug|warn sets how much",
}

# The `ini` metadata of a field: how to convert its text.  Parsers get the
# INI file's folder too, because relative paths are relative to it.
_Parse = Callable[[str, str], Any]


def _ini(parse: Callable[[str], Any]) -> dict[str, _Parse]:
    """
    Field metadata for a key whose value does not depend on the folder.
    """
    return {"ini": lambda text, folder: parse(text)}


def _iniFolder(parse: _Parse) -> dict[str, _Parse]:
    """
    Field metadata for a key whose value may be a path, relative to the
    INI file's folder.
    """
    return {"ini": parse}


def _choiceField(default: str, *allowed: str) -> Any:
    """
    A key with a fixed set of values: checked when read, and by the
    validator when a model object is built in code.
    """
    return attrs.field(
        default=default,
        metadata=_ini(lambda text: _choice(text, *allowed)),
        validator=v.in_(allowed),
    )


# Keys whose value is a list of lines, each converted with its own line
# number (`routes`, `servers`): known keys, converted by their section.
_LINES = {"lines": True}


@attrs.frozen
class GatewaySettings:
    """
    The C{[gateway]} section: settings of the process, not of a listener.
    """

    access_log: str = attrs.field(default="-", metadata=_iniFolder(_accessLog))
    access_log_format: str = _choiceField("text", "text", "json")
    workers: int = attrs.field(default=1, metadata=_ini(_workers), validator=v.ge(1))
    metrics: str | None = attrs.field(default=None, metadata=_iniFolder(_endpoint))
    drain_timeout: float = attrs.field(default=30.0, metadata=_ini(parseDuration))
    log_level: str = _choiceField("info", "debug", "info", "warn")
    # `tlsgateway run` binds its listeners, then serves as this account
    # (gateway.run.privileges); twistd has --uid/--gid for the same.
    user: str | None = attrs.field(default=None, metadata=_ini(_account))
    group: str | None = attrs.field(default=None, metadata=_ini(_account))
    location: Location = attrs.field(default=_NOWHERE, eq=False)


def _formatAddress(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen(cache_hash=True)
class ServerConfig:
    """
    One line of C{servers}: a TCP C{host:port} or a C{unix:/path}.

    Hashed (pools key their state by server) and named (every access-log
    line) once per connection or more: both are computed once.

    @ivar host: a host name or IP address (IPv6 without brackets), or
        L{None} for a UNIX socket.
    @ivar path: the absolute socket path of a C{unix:} server.
    """

    host: str | None
    port: int | None
    path: str | None = None
    weight: int = attrs.field(default=1, validator=v.ge(1))
    max_fails: int = attrs.field(default=1, validator=v.ge(0))
    fail_timeout: float = attrs.field(default=10.0, validator=v.ge(0))
    backup: bool = False

    @functools.cached_property
    def address(self) -> str:
        """
        The server as logs show it: C{host:port}, C{[v6]:port} or
        C{unix:/path}.
        """
        if self.path is not None:
            return f"unix:{self.path}"
        assert self.host is not None
        assert self.port is not None
        return _formatAddress(self.host, self.port)


@attrs.frozen
class UpstreamConfig:
    """
    One C{[upstream:NAME]} section: servers a route may send a connection to.
    """

    name: str
    servers: tuple[ServerConfig, ...] = attrs.field(
        metadata=_LINES, validator=v.min_len(1)
    )
    balance: str = _choiceField(
        "round_robin", "round_robin", "least_conn", "random", "hash"
    )
    next_upstream_tries: int = attrs.field(
        default=3, metadata=_ini(lambda t: _integer(t, 1)), validator=v.ge(1)
    )
    health_check: str = _choiceField("off", "off", "tcp", "tls")
    health_interval: float = attrs.field(default=5.0, metadata=_ini(_positiveDuration))
    # Extensions (NGINX Plus has `passes`/`fails` on `health_check`):
    # consecutive passes that bring a server back, failures that take it
    # down; defaults as HAProxy's `rise`/`fall`.
    health_rise: int = attrs.field(
        default=2, metadata=_ini(lambda t: _integer(t, 1)), validator=v.ge(1)
    )
    health_fall: int = attrs.field(
        default=3, metadata=_ini(lambda t: _integer(t, 1)), validator=v.ge(1)
    )
    tls: bool = attrs.field(default=False, metadata=_ini(parseBool))
    tls_verify: bool = attrs.field(default=True, metadata=_ini(parseBool))
    tls_ca: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    tls_server_name: str | None = attrs.field(
        default=None, metadata=_ini(normalizeName)
    )
    location: Location = attrs.field(default=_NOWHERE, eq=False)


@attrs.frozen
class RouteConfig:
    """
    One line of C{routes}: C{PATTERN UPSTREAM [passthrough|terminate]}.

    @ivar pattern: normalised by L{gateway.core.routing.normalizePattern}.
    @ivar action: the third column, or L{None} to follow the listener's
        C{mode}.
    @ivar line: the route's own line, for runtime messages.
    """

    pattern: str
    upstream: str
    action: str | None = attrs.field(
        default=None, validator=v.optional(v.in_(("passthrough", "terminate")))
    )
    line: int | None = attrs.field(default=None, eq=False)


@attrs.frozen
class CertificateConfig:
    """
    One C{[certificate:NAME]} section: a PEM chain, its key, maybe OCSP;
    or, with C{acme = on}, the C{names} that the gateway has an ACME server
    issue a certificate for (L{gateway.acme.manager}).

    @ivar certificate: L{None} only with C{acme = on}.
    """

    name: str
    certificate: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    private_key: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    ocsp_response: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    acme: bool = attrs.field(default=False, metadata=_ini(parseBool))
    names: tuple[str, ...] = attrs.field(default=(), metadata=_ini(_acmeNames))
    location: Location = attrs.field(default=_NOWHERE, eq=False)


#: C{[acme] renew_before}'s default: Let's Encrypt's own advice for its
#: 90-day certificates (renew with a third of the lifetime left).
DEFAULT_RENEW_BEFORE = 30 * 86400.0


@attrs.frozen
class AcmeSettings:
    """
    The C{[acme]} section: the ACME server and where its results are kept.

    @ivar state_dir: the account key, issued certificates and their keys
        (mode 0600), the lock files that let one worker order while the
        others wait, and the challenge certificates of validations in
        progress.  Shared by workers, kept across restarts.
    @ivar ca_bundle: what verifies the ACME server's HTTPS; L{None} is the
        system store.
    """

    directory: str = attrs.field(metadata=_ini(_url))
    state_dir: str = attrs.field(metadata=_iniFolder(_path))
    email: str | None = attrs.field(default=None, metadata=_ini(_email))
    ca_bundle: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    renew_before: float = attrs.field(
        default=DEFAULT_RENEW_BEFORE, metadata=_ini(_positiveDuration)
    )
    location: Location = attrs.field(default=_NOWHERE, eq=False)


def _etcdEndpoints(text: str) -> tuple[str, ...]:
    """
    C{[cluster] etcd}: etcd v3 client URLs, C{http://HOST:PORT} or
    C{https://HOST:PORT}, comma-separated.
    """
    from urllib.parse import urlsplit

    endpoints = tuple(item.rstrip("/") for item in parseList(text))
    if not endpoints:
        raise ValueError("is empty")
    for endpoint in endpoints:
        parts = urlsplit(endpoint)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port is None
            or parts.path
        ):
            raise ValueError(
                f"{endpoint!r} is not an etcd client URL (like http://127.0.0.1:2379)"
            )
    return endpoints


def _clusterPrefix(text: str) -> str:
    """
    C{[cluster] prefix}: ends with C{/}, so that C{/tlsgateway} never
    reads the keys of C{/tlsgateway-staging}.
    """
    value = _text(text)
    if any(c.isspace() for c in value):
        raise ValueError(
            f"{value!r} has white space: use a key prefix like /tlsgateway/"
        )
    return value if value.endswith("/") else value + "/"


def _memberName(text: str) -> str:
    value = _text(text)
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a member name: use letters, digits, '_', '-' and '.'"
        )
    return value


def _leaseTTL(text: str) -> float:
    seconds = parseDuration(text)
    if seconds < 2:
        raise ValueError(
            f"{text.strip()!r} is too short: etcd keeps a lease 2 seconds or more"
        )
    return seconds


@attrs.frozen
class ClusterSettings:
    """
    The C{[cluster]} section: the etcd that a fleet of gateways shares
    (L{gateway.cluster}).

    @ivar name: L{None} until the process starts, which names itself
        after its host and process id.
    @ivar etcd_ca: verifies the etcd servers' HTTPS; L{None} is the system
        store.
    """

    etcd: tuple[str, ...] = attrs.field(metadata=_ini(_etcdEndpoints))
    prefix: str = attrs.field(default="/tlsgateway/", metadata=_ini(_clusterPrefix))
    name: str | None = attrs.field(default=None, metadata=_ini(_memberName))
    lease_ttl: float = attrs.field(default=10.0, metadata=_ini(_leaseTTL))
    etcd_ca: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    etcd_cert: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    etcd_key: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    location: Location = attrs.field(default=_NOWHERE, eq=False)


@attrs.frozen
class ListenerConfig:
    """
    One C{[listener:NAME]} section: where to accept, and where to send.
    """

    name: str
    listen: tuple[str, ...] = attrs.field(metadata=_iniFolder(_endpoints))
    mode: str = _choiceField("passthrough", "passthrough", "terminate", "tcp")
    protocol: str = _choiceField("tls", "tls", "postgres", "mysql")
    allow_plaintext: bool = attrs.field(default=False, metadata=_ini(parseBool))
    upstream: str | None = attrs.field(default=None, metadata=_ini(_sectionName))
    routes: tuple[RouteConfig, ...] = attrs.field(default=(), metadata=_LINES)
    preread_timeout: float = attrs.field(default=5.0, metadata=_ini(_positiveDuration))
    preread_buffer_size: int = attrs.field(
        default=65536, metadata=_ini(_positiveSize), validator=v.ge(1)
    )
    connect_timeout: float = attrs.field(default=10.0, metadata=_ini(_positiveDuration))
    idle_timeout: float = attrs.field(default=600.0, metadata=_ini(_positiveDuration))
    proxy_protocol: str = _choiceField("off", "off", "v1", "v2")
    accept_proxy_protocol: bool = attrs.field(default=False, metadata=_ini(parseBool))
    proxy_protocol_from: tuple[_Network, ...] = attrs.field(
        default=(), metadata=_ini(_networks)
    )
    allow: tuple[_Network, ...] = attrs.field(default=(), metadata=_ini(_networks))
    deny: tuple[_Network, ...] = attrs.field(default=(), metadata=_ini(_networks))
    deny_ja4: tuple[str, ...] = attrs.field(default=(), metadata=_ini(_ja4List))
    max_connections: int | None = attrs.field(
        default=None, metadata=_ini(lambda t: _integer(t, 1))
    )
    max_connections_per_client: int | None = attrs.field(
        default=None, metadata=_ini(lambda t: _integer(t, 1))
    )
    max_connection_rate: ConnectionRate | None = attrs.field(
        default=None, metadata=_ini(parseRate)
    )
    passthrough_protocols: tuple[str, ...] | None = attrs.field(
        default=None, metadata=_ini(_passthroughProtocols)
    )
    relay: str = _choiceField("auto", "auto", "splice", "portable")
    certificate: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    private_key: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    certificates: tuple[str, ...] = attrs.field(
        default=(), metadata=_ini(_sectionNames)
    )
    protocols: tuple[str, ...] = attrs.field(
        default=("TLSv1.2", "TLSv1.3"), metadata=_ini(_protocols)
    )
    ciphers: str | None = attrs.field(default=None, metadata=_ini(_text))
    ciphersuites: str | None = attrs.field(default=None, metadata=_ini(_text))
    prefer_server_ciphers: bool = attrs.field(default=True, metadata=_ini(parseBool))
    alpn: tuple[str, ...] = attrs.field(default=(), metadata=_ini(_alpnList))
    client_ca: str | None = attrs.field(default=None, metadata=_iniFolder(_path))
    verify_client: str = _choiceField("off", "off", "on", "optional")
    session_tickets: bool = attrs.field(default=True, metadata=_ini(parseBool))
    session_cache: bool = attrs.field(default=False, metadata=_ini(parseBool))
    groups: tuple[str, ...] = attrs.field(default=(), metadata=_ini(_groups))
    session_ticket_lifetime: int = attrs.field(
        default=300,
        metadata=_ini(_ticketLifetime),
        validator=[v.ge(1), v.le(MAX_TICKET_LIFETIME)],
    )
    client_crl: tuple[str, ...] = attrs.field(default=(), metadata=_iniFolder(_paths))
    #: Encrypted Client Hello key files (split mode, docs/ech.rst): read and
    #: checked by gateway.tls.echkeys, like certificates.
    ech_keys: tuple[str, ...] = attrs.field(default=(), metadata=_iniFolder(_paths))
    quic_idle_timeout: float = attrs.field(
        default=30.0, metadata=_ini(_positiveDuration)
    )
    quic_max_flows: int = attrs.field(
        default=100000, metadata=_ini(lambda t: _integer(t, 1))
    )
    location: Location = attrs.field(default=_NOWHERE, eq=False)

    @property
    def udpListen(self) -> tuple[str, ...]:
        """
        The C{udp:}/C{udp6:} endpoints of C{listen}: QUIC, passthrough only.
        """
        return tuple(d for d in self.listen if isUDPEndpoint(d))

    @property
    def streamListen(self) -> tuple[str, ...]:
        """
        The stream endpoints of C{listen} (C{tcp:}, C{tcp6:}, C{unix:}).
        """
        return tuple(d for d in self.listen if not isUDPEndpoint(d))


#: The model of each kind of section.
_MODELS: Mapping[str, type[Any]] = {
    "gateway": GatewaySettings,
    "acme": AcmeSettings,
    "listener": ListenerConfig,
    "upstream": UpstreamConfig,
    "certificate": CertificateConfig,
}


def _frozenMapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen
class GatewayConfig:
    """
    A whole configuration file: what one generation of the gateway runs.

    @ivar path: the absolute path of the INI file.
    @ivar warnings: what loading found worth fixing but not fatal (an
        expired certificate, a key others can read, a weak cipher string),
        each located as a problem is.
    """

    path: str
    gateway: GatewaySettings = GatewaySettings()
    listeners: tuple[ListenerConfig, ...] = ()
    upstreams: Mapping[str, UpstreamConfig] = attrs.field(
        factory=dict, converter=_frozenMapping
    )
    certificates: Mapping[str, CertificateConfig] = attrs.field(
        factory=dict, converter=_frozenMapping
    )
    acme: AcmeSettings | None = None
    warnings: tuple[ConfigWarning, ...] = attrs.field(default=(), eq=False)
    cluster: ClusterSettings | None = None


# --- the line scan ------------------------------------------------------------


@attrs.define
class _Scan:
    """
    Where things are in the text, found with configparser's own rules.

    @ivar sections: section name -> line of its first header.
    @ivar keys: (section, key) -> line of the key's last assignment (the
        one configparser keeps).
    @ivar values: (section, key) -> the non-empty lines of that value, as
        (line number, text without comment).
    @ivar sectionAt: line number -> the section the line belongs to.
    @ivar duplicates: (line, section, key, message) for each repeat.
    @ivar shadowed: (section, key, line, value lines) of each assignment
        that a later one of the same key replaced (configparser keeps the
        last, also across two copies of a section): converted too, so a
        duplicate does not hide what is wrong with the value it replaced.
    """

    lines: list[str]
    sections: dict[str, int] = attrs.Factory(dict)
    keys: dict[tuple[str, str], int] = attrs.Factory(dict)
    values: dict[tuple[str, str], list[tuple[int, str]]] = attrs.Factory(dict)
    sectionAt: dict[int, str] = attrs.Factory(dict)
    duplicates: list[tuple[int, str, str | None, str]] = attrs.Factory(list)
    shadowed: list[tuple[str, str, int, list[tuple[int, str]]]] = attrs.Factory(list)


_COMMENTS = ("#", ";")


def _withoutComment(line: str) -> str:
    """
    Strip comments from a line exactly as C{RawConfigParser._read} does with
    C{comment_prefixes} and C{inline_comment_prefixes} both C{("#", ";")}.
    """
    commentStart = sys.maxsize
    inline = dict.fromkeys(_COMMENTS, -1)
    while commentStart == sys.maxsize and inline:
        following = {}
        for prefix, index in inline.items():
            index = line.find(prefix, index + 1)
            if index == -1:
                continue
            following[prefix] = index
            if index == 0 or (index > 0 and line[index - 1].isspace()):
                commentStart = min(commentStart, index)
        inline = following
    if line.strip().startswith(_COMMENTS):
        commentStart = 0
    return line[: None if commentStart == sys.maxsize else commentStart].strip()


def _scan(text: str) -> _Scan:
    """
    Walk the text once, mirroring configparser's continuation rules (with
    C{empty_lines_in_values} on, its default), to number what it parses.
    """
    parser = configparser.RawConfigParser
    scan = _Scan(lines=list(io.StringIO(text)))
    section: str | None = None
    option: str | None = None
    indent = 0
    firstSeen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(scan.lines, start=1):
        value = _withoutComment(line)
        if section is not None:
            scan.sectionAt[number] = section
        if not value:
            continue
        nonSpace = parser.NONSPACECRE.search(line)
        lineIndent = nonSpace.start() if nonSpace else 0
        if section is not None and option and lineIndent > indent:
            scan.values[(section, option)].append((number, value))
            continue
        indent = lineIndent
        header = parser.SECTCRE.match(value)
        if header:
            section = header["header"]
            scan.sectionAt[number] = section
            option = None
            if section in scan.sections:
                scan.duplicates.append(
                    (
                        number,
                        section,
                        None,
                        f"duplicate section (first on line {scan.sections[section]})",
                    )
                )
            else:
                scan.sections[section] = number
            continue
        if section is None:
            break  # configparser raises MissingSectionHeaderError here
        assignment = parser.OPTCRE.match(value)
        if assignment is None:
            continue  # configparser reports the line; the option continues
        option = assignment["option"].rstrip().lower()
        if not option:
            continue  # configparser reports "= value" as a bad line
        key = (section, option)
        if key in firstSeen:
            scan.duplicates.append(
                (
                    number,
                    section,
                    option,
                    f"duplicate key (first on line {firstSeen[key]})",
                )
            )
        else:
            firstSeen[key] = number
        if key in scan.values:
            scan.shadowed.append((*key, scan.keys[key], scan.values[key]))
        scan.keys[key] = number  # configparser keeps the last value
        first = assignment["value"].strip()
        scan.values[key] = [(number, first)] if first else []
    return scan


# --- the loader ---------------------------------------------------------------


@attrs.define
class _Section:
    """
    One section as configparser read it.

    @ivar name: the header without brackets, as problems show it.
    @ivar kind: C{gateway}, C{listener}, C{upstream} or C{certificate}.
    @ivar sub: the part after the colon: the listener's, upstream's or
        certificate's name.
    """

    name: str
    kind: str
    sub: str
    items: dict[str, str]
    line: int | None


@attrs.define
class _Loader:
    """
    One conversion of one text: collects problems instead of stopping.

    @ivar path: the file name as the operator gave it, for messages.
    @ivar folder: what relative paths are relative to.
    """

    path: str
    folder: str
    text: str
    problems: list[Problem] = attrs.Factory(list)
    warnings: list[ConfigWarning] = attrs.Factory(list)
    scan: _Scan = attrs.field(init=False)
    upstreamNames: set[str] = attrs.Factory(set)
    certificateNames: set[str] = attrs.Factory(set)
    hasAcme: bool = False
    partial: GatewayConfig | None = None
    drafts: dict[str, Any] = attrs.Factory(dict)

    def problem(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        self.problems.append(Problem(self.path, line, section, key, message))

    def warning(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        """
        Something that works but is unsafe or likely wrong: located as a
        problem is (a L{ConfigWarning}), reported by C{check}, never fatal.
        """
        self.warnings.append(ConfigWarning(self.path, line, section, key, message))

    def load(self) -> GatewayConfig:
        self.scan = _scan(self.text)
        for line, sectionName, key, message in self.scan.duplicates:
            self.problem(line, sectionName, key, message)
        sections = self._read()
        self.upstreamNames = {s.sub for s in sections if s.kind == "upstream"}
        self.certificateNames = {s.sub for s in sections if s.kind == "certificate"}
        self.hasAcme = any(s.kind == "acme" for s in sections)
        settings = GatewaySettings()
        acme: AcmeSettings | None = None
        cluster: ClusterSettings | None = None
        listeners: list[ListenerConfig] = []
        upstreams: dict[str, UpstreamConfig] = {}
        certificates: dict[str, CertificateConfig] = {}
        bindings: list[tuple[_Section, str, Sequence[str]]] = []
        for section in sections:
            if section.kind == "gateway":
                kwargs = self._convert(section, GatewaySettings)
                # The keys that converted, even beside problems: the
                # access log is checked with them (gateway.run.loading).
                with contextlib.suppress(TypeError, ValueError):
                    settings = GatewaySettings(
                        location=self._location(section), **kwargs
                    )
                metrics = section.items.get("metrics")
                if metrics is not None:
                    bindings.append(
                        (section, "metrics", [_endpointText(metrics, self.folder)])
                    )
            elif section.kind == "acme":
                before = len(self.problems)
                kwargs = self._convert(section, AcmeSettings)
                if len(self.problems) == before:
                    acme = AcmeSettings(location=self._location(section), **kwargs)
            elif section.kind == "cluster":
                cluster = self._cluster(section)
            elif section.kind == "listener":
                listener = self._listener(section)
                if listener is not None:
                    listeners.append(listener)
                if "listen" in section.items:
                    bindings.append(
                        (
                            section,
                            "listen",
                            _endpointTexts(section.items["listen"], self.folder),
                        )
                    )
            elif section.kind == "upstream":
                upstream = self._upstream(section)
                if upstream is not None:
                    upstreams[upstream.name] = upstream
            else:
                certificate = self._certificate(section)
                if certificate is not None:
                    certificates[certificate.name] = certificate
        self._checkShadowed(sections)
        if cluster is not None and settings.workers > 1:
            self.problem(
                cluster.location.line,
                "cluster",
                None,
                "[cluster] runs with workers = 1 (one member per process):"
                " run one replica per core instead",
            )
        self._checkBindings(bindings)
        self._checkMySQLHealthChecks(sections, listeners, upstreams)
        self._checkAcmeNames(certificates.values())
        if not any(s.kind == "listener" for s in sections):
            self.problem(
                None, None, None, "no [listener:NAME] section: nothing would listen"
            )
        config = GatewayConfig(
            path=os.path.abspath(self.path),
            gateway=settings,
            listeners=tuple(listeners),
            upstreams=upstreams,
            certificates=certificates,
            warnings=tuple(self.warnings),
            acme=acme,
            cluster=cluster,
        )
        if self.problems:
            # What did convert, so that its files are checked too and
            # reported with these problems: one edit fixes them all.
            self.partial = self._withDrafts(config)
            raise ConfigError(self.problems)
        return config

    def _draft(self, model: type[Any], section: _Section, **kwargs: Any) -> None:
        """
        Keep what converted of a section that has problems, so that the
        files it names are checked with the rest (L{ConfigError.drafts}).
        A required key that did not convert is left empty: a draft is
        never served, so the model's validators are not run.
        """
        for field in attrs.fields(model):
            if field.default is attrs.NOTHING and field.name not in kwargs:
                kwargs[field.name] = ()
        kwargs.update(name=section.sub, location=self._location(section))
        with attrs.validators.disabled(), contextlib.suppress(TypeError, ValueError):
            self.drafts[section.name] = model(**kwargs)

    def _withDrafts(self, config: GatewayConfig) -> GatewayConfig:
        drafts = self.drafts.values()
        return attrs.evolve(
            config,
            listeners=(
                *config.listeners,
                *(d for d in drafts if isinstance(d, ListenerConfig)),
            ),
            upstreams={
                **config.upstreams,
                **{d.name: d for d in drafts if isinstance(d, UpstreamConfig)},
            },
            certificates={
                **config.certificates,
                **{d.name: d for d in drafts if isinstance(d, CertificateConfig)},
            },
        )

    def _checkShadowed(self, sections: Sequence[_Section]) -> None:
        """
        Convert each value a duplicate key (or a duplicate section's key)
        replaced, as its section converts that key, and report its
        problems at its own lines: the duplicate is reported, and so is
        whatever else is wrong there, in one run.
        """
        byName = {section.name: section for section in sections}
        for name, key, line, lines in self.scan.shadowed:
            section = byName.get(name)
            model = _MODELS.get(section.kind) if section is not None else None
            if section is None or model is None or not lines:
                continue
            if key == "servers" and model is UpstreamConfig:
                for number, text in lines:
                    try:
                        self._server(text)
                    except ValueError as e:
                        for message in _messages(e):
                            self.problem(number, name, key, message)
                continue
            if key == "routes" and model is ListenerConfig:
                self._routes(section, [(number, text) for number, text in lines])
                continue
            field = attrs.fields_dict(model).get(key)
            parse: _Parse | None = None if field is None else field.metadata.get("ini")
            if field is None or parse is None:
                continue  # an unknown key is reported at its last line
            try:
                value = parse("\n".join(text for _, text in lines), self.folder)
                if field.validator is not None:
                    field.validator(None, field, value)
            except (ValueError, TypeError) as e:
                for message in _messages(e):
                    self.problem(line, name, key, message)

    def _cluster(self, section: _Section) -> ClusterSettings | None:
        """
        C{[cluster]}: its keys, and the ones that only make sense together.
        Nothing is asked of etcd here: C{check} works without it.
        """
        before = len(self.problems)
        kwargs = self._convert(section, ClusterSettings)
        items = section.items
        for key, other in (("etcd_cert", "etcd_key"), ("etcd_key", "etcd_cert")):
            if key in items and other not in items:
                self.problem(
                    self._keyLine(section, key),
                    section.name,
                    key,
                    f"{key} needs {other}",
                )
        secure = any(e.startswith("https://") for e in kwargs.get("etcd", ()))
        for key in ("etcd_ca", "etcd_cert", "etcd_key"):
            if key in items and "etcd" in kwargs and not secure:
                self.problem(
                    self._keyLine(section, key),
                    section.name,
                    key,
                    f"{key} applies to https:// etcd endpoints only",
                )
        if len(self.problems) != before:
            return None
        return ClusterSettings(location=self._location(section), **kwargs)

    def _checkAcmeNames(self, certificates: Iterable[CertificateConfig]) -> None:
        """
        Report a name that two ACME certificates both claim: its
        C{tls-alpn-01} challenge could not tell them apart.
        """
        owners: dict[str, str] = {}
        for certificate in certificates:
            if not certificate.acme:
                continue
            for name in certificate.names:
                owner = owners.setdefault(name, certificate.name)
                if owner != certificate.name:
                    self.problem(
                        certificate.location.lineOf("names"),
                        f"certificate:{certificate.name}",
                        "names",
                        f"{name!r} is already issued by ACME for [certificate:{owner}]",
                    )

    def _read(self) -> list[_Section]:
        """
        Parse the syntax with configparser and sort out the sections.

        @raise ConfigError: when nothing more can be read (no first
            section header).
        """
        parser = configparser.ConfigParser(
            interpolation=None,
            comment_prefixes=_COMMENTS,
            inline_comment_prefixes=_COMMENTS,
            # Duplicates are all reported by _scan; strict mode would stop
            # at the first one.
            strict=False,
            # [DEFAULT] would silently add keys to every section: here it is
            # an unknown section like any other.
            default_section="\0",
        )
        try:
            parser.read_string(self.text, source=self.path)
        except configparser.MissingSectionHeaderError as e:
            self.problem(
                e.lineno, None, None, "expected a [section] header before this line"
            )
            raise ConfigError(self.problems) from None
        except configparser.ParsingError as e:
            for lineno, _ in e.errors:
                self.problem(
                    lineno,
                    self.scan.sectionAt.get(lineno),
                    None,
                    f"cannot read {self.scan.lines[lineno - 1].strip()!r}: expected"
                    " KEY = VALUE, a [SECTION] header or an indented continuation line",
                )
        sections: list[_Section] = []
        for name in parser.sections():
            line = self.scan.sections.get(name)
            kind, colon, sub = name.partition(":")
            items = {k: val for k, val in parser.items(name, raw=True) if k}
            if name in ("gateway", "acme", "cluster") or (
                colon and kind in _SECTION_KINDS
            ):
                if colon and not _NAME.fullmatch(sub):
                    self.problem(
                        line,
                        name,
                        None,
                        f"{sub!r} is not a {kind} name: use letters, digits,"
                        " '_', '-' and '.'",
                    )
                sections.append(_Section(name, kind, sub, items, line))
            elif kind in _SECTION_KINDS:
                self.problem(line, name, None, f"unknown section (use [{kind}:NAME])")
            else:
                self.problem(
                    line,
                    name,
                    None,
                    "unknown section (use [gateway], [listener:NAME],"
                    " [upstream:NAME] or [certificate:NAME])",
                )
        return sections

    def _location(self, section: _Section) -> Location:
        keys = {
            key: line
            for (name, key), line in self.scan.keys.items()
            if name == section.name and line is not None
        }
        return Location(self.path, section.line, keys)

    def _keyLine(self, section: _Section, key: str) -> int | None:
        return self.scan.keys.get((section.name, key), section.line)

    def _valueLines(self, section: _Section, key: str) -> list[tuple[int | None, str]]:
        """
        The non-empty lines of a multi-line value, each with its number.

        The numbers come from L{_scan}; should it ever disagree with
        configparser about the lines, every line gets the key's line
        rather than a wrong one.
        """
        expected = [
            t.strip() for t in section.items.get(key, "").splitlines() if t.strip()
        ]
        scanned = self.scan.values.get((section.name, key), [])
        if [text for _, text in scanned] == expected:
            return [(line, text) for line, text in scanned]
        return [(self._keyLine(section, key), text) for text in expected]

    def _convert(self, section: _Section, cls: type[Any]) -> dict[str, Any]:
        """
        Convert a section's keys to constructor arguments, key by key.

        Fields with C{ini} metadata are converted here; fields with
        C{lines} metadata are known keys that the caller converts.

        @return: the arguments from the keys that had no problem, so that
            cross-key checks can still run on those.
        """
        fields = attrs.fields_dict(cls)
        kwargs: dict[str, Any] = {}
        for field in fields.values():
            parse: _Parse | None = field.metadata.get("ini")
            if parse is None:
                continue
            if field.name not in section.items:
                if field.default is attrs.NOTHING:
                    self.problem(
                        section.line,
                        section.name,
                        field.name,
                        "required key is missing",
                    )
                continue
            line = self._keyLine(section, field.name)
            try:
                value = parse(section.items[field.name], self.folder)
                if field.validator is not None:
                    field.validator(None, field, value)
            except (ValueError, TypeError) as e:
                for message in _messages(e):
                    self.problem(line, section.name, field.name, message)
            else:
                kwargs[field.name] = value
        known = {
            name
            for name, field in fields.items()
            if "ini" in field.metadata or "lines" in field.metadata
        }
        for key in section.items:
            if key not in known:
                guess = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {guess[0]}?)" if guess else ""
                nginx = _NGINX_NAMES.get(key)
                if nginx is not None:
                    hint = f": this is NGINX's name; here {nginx}"
                self.problem(
                    self._keyLine(section, key), section.name, key, f"unknown key{hint}"
                )
        return kwargs

    def _certificate(self, section: _Section) -> CertificateConfig | None:
        before = len(self.problems)
        kwargs = self._convert(section, CertificateConfig)
        items = section.items

        def problem(key: str, message: str) -> None:
            self.problem(self._keyLine(section, key), section.name, key, message)

        if kwargs.get("acme", False):
            if "names" not in items:
                problem(
                    "names",
                    "required key is missing (acme = on issues a certificate for names)",
                )
            for key in ("certificate", "private_key", "ocsp_response"):
                if key in items:
                    problem(
                        key,
                        "acme = on: the certificate and its key come from the ACME"
                        " server, remove this key",
                    )
            if not self.hasAcme:
                problem(
                    "acme",
                    "acme = on needs an [acme] section (directory, state_dir)",
                )
        elif "acme" not in items or "acme" in kwargs:
            for key in ("certificate", "private_key"):
                if key not in items:
                    self.problem(
                        section.line, section.name, key, "required key is missing"
                    )
            if "names" in items:
                problem("names", "names is for acme = on (the files name themselves)")
        if len(self.problems) != before:
            self._draft(CertificateConfig, section, **kwargs)
            return None
        return CertificateConfig(
            name=section.sub, location=self._location(section), **kwargs
        )

    def _upstream(self, section: _Section) -> UpstreamConfig | None:
        before = len(self.problems)
        kwargs = self._convert(section, UpstreamConfig)
        servers: list[ServerConfig] = []
        lines = self._valueLines(section, "servers")
        if not lines:
            message = (
                "required key is missing"
                if "servers" not in section.items
                else "is empty"
            )
            self.problem(
                self._keyLine(section, "servers"), section.name, "servers", message
            )
        for line, text in lines:
            try:
                server = self._server(text)
            except ValueError as e:
                for message in _messages(e):
                    self.problem(line, section.name, "servers", message)
                continue
            servers.append(server)
        if len(self.problems) != before:
            self._draft(UpstreamConfig, section, servers=tuple(servers), **kwargs)
            return None
        return UpstreamConfig(
            name=section.sub,
            servers=tuple(servers),
            location=self._location(section),
            **kwargs,
        )

    def _server(self, text: str) -> ServerConfig:
        """
        Read one line of C{servers}: an address, then NGINX-style flags.
        """
        if "," in text:
            raise ValueError(
                f"{text!r}: servers takes one server per line, not a"
                " comma-separated list: put each server on its own indented"
                " line below 'servers ='"
            )
        address, *flags = text.split()
        # Every bad part of the line is reported, not only the first.
        messages: list[str] = []
        host, port, path = None, None, None
        try:
            host, port, path = _serverAddress(address, self.folder)
        except ValueError as e:
            messages.append(e.args[0])
        options: dict[str, Any] = {}
        given: set[str] = set()
        for token in flags:
            name, equals, value = token.partition("=")
            name = name.lower()
            if name in given:
                messages.append(f"{name} is given twice")
                continue
            given.add(name)
            try:
                if name == "backup" and not equals:
                    options[name] = True
                elif name == "weight" and equals:
                    options[name] = _integer(value, 1)
                elif name == "max_fails" and equals:
                    options[name] = _integer(value, 0)
                elif name == "fail_timeout" and equals:
                    options[name] = parseDuration(value)
                else:
                    raise LookupError(token)
            except ValueError as e:
                messages.append(f"{token}: {e.args[0]}")
            except LookupError:
                messages.append(
                    f"unknown server flag {token!r} (use weight=N, max_fails=N,"
                    " fail_timeout=DURATION or backup)"
                )
        if messages:
            raise _Invalid(messages)
        return ServerConfig(host=host, port=port, path=path, **options)

    def _routes(
        self, section: _Section, lines: Sequence[tuple[int | None, str]] | None = None
    ) -> list[RouteConfig]:
        """
        Read C{routes}, one C{PATTERN UPSTREAM [passthrough|terminate]} per
        line, reporting each problem at its route's own line.

        @param lines: the lines to read, when not the section's C{routes}
            (a value a duplicate C{routes} replaced).
        """
        routes: list[RouteConfig] = []
        seen: dict[str, int | None] = {}
        if lines is None:
            lines = self._valueLines(section, "routes")
        for line, text in lines:
            before = len(self.problems)

            def problem(message: str, line: int | None = line) -> None:
                self.problem(line, section.name, "routes", message)

            parts = text.split()
            if len(parts) not in (2, 3):
                problem(f"{text!r} is not PATTERN UPSTREAM [passthrough|terminate]")
                continue
            pattern = parts[0]
            try:
                pattern = normalizePattern(parts[0])
            except ValueError as e:
                problem(e.args[0])
            upstream = parts[1]
            if upstream not in self.upstreamNames:
                problem(
                    f"upstream {upstream!r} is not defined (no [upstream:{upstream}] section)"
                )
            action = None
            if len(parts) == 3:
                try:
                    action = _choice(parts[2], "passthrough", "terminate")
                except ValueError as e:
                    problem(e.args[0])
            if pattern in seen:
                problem(
                    f"duplicate route pattern {parts[0]!r} (first on line {seen[pattern]})"
                )
            seen.setdefault(pattern, line)
            if len(self.problems) == before:
                routes.append(RouteConfig(pattern, upstream, action, line))
        return routes

    def _listener(self, section: _Section) -> ListenerConfig | None:
        before = len(self.problems)
        settings = self._convert(section, ListenerConfig)
        items = section.items
        mode = settings.get("mode", "passthrough" if "mode" not in items else None)
        routes = self._routes(section)
        hasRoutes = bool(self._valueLines(section, "routes"))
        hasUpstream = "upstream" in items

        def problem(key: str | None, message: str) -> None:
            line = self._keyLine(section, key) if key else section.line
            self.problem(line, section.name, key, message)

        if mode == "tcp":
            if hasRoutes:
                problem(
                    "routes",
                    "mode = tcp reads no ClientHello, so it cannot route: use upstream",
                )
            elif not hasUpstream:
                problem("mode", "mode = tcp needs upstream")
            if settings.get("protocol") == "postgres":
                problem(
                    "protocol",
                    "mode = tcp relays without reading anything, so it cannot speak"
                    " the PostgreSQL preamble: use mode = passthrough or terminate",
                )
            if settings.get("protocol") == "mysql":
                problem(
                    "protocol",
                    "mode = tcp relays MySQL untouched (its TLS included); protocol"
                    " = mysql is for termination: use mode = terminate, or drop"
                    " protocol",
                )
        elif hasUpstream and hasRoutes:
            problem("routes", "use upstream or routes, not both")
        elif not hasUpstream and not hasRoutes:
            problem(None, "needs upstream or routes")
        upstream = settings.get("upstream")
        if upstream is not None and upstream not in self.upstreamNames:
            problem(
                "upstream",
                f"upstream {upstream!r} is not defined (no [upstream:{upstream}] section)",
            )

        for key, other in (
            ("certificate", "private_key"),
            ("private_key", "certificate"),
        ):
            if key in items and other not in items:
                problem(key, f"{key} needs {other}")
        hasPair = "certificate" in items or "private_key" in items
        if "certificates" in items and hasPair:
            problem(
                "certificates",
                "use certificate and private_key, or certificates, not both",
            )
        for name in settings.get("certificates", ()):
            if name not in self.certificateNames:
                problem(
                    "certificates",
                    f"certificate {name!r} is not defined (no [certificate:{name}] section)",
                )
        if not hasPair and "certificates" not in items:
            needs = "certificate and private_key, or certificates"
            if mode == "terminate" and (
                hasUpstream or any(r.action is None for r in routes)
            ):
                problem("mode", f"mode = terminate needs {needs}")
            for route in routes:
                if route.action == "terminate":
                    self.problem(
                        route.line,
                        section.name,
                        "routes",
                        f"route {route.pattern!r} terminates TLS, so the listener needs {needs}",
                    )
        verify = settings.get("verify_client", "off")
        if verify != "off" and "client_ca" not in items:
            problem("verify_client", f"verify_client = {verify} needs client_ca")
        if "client_crl" in items and verify == "off":
            problem(
                "client_crl",
                "client_crl checks client certificates: it needs verify_client"
                " = on or optional",
            )
        if settings.get("allow_plaintext") and settings.get("protocol", "tls") not in (
            "postgres",
            "mysql",
        ):
            problem(
                "allow_plaintext",
                "allow_plaintext only applies to protocol = postgres or mysql",
            )
        if settings.get("protocol") == "mysql" and mode in ("passthrough", "terminate"):
            self._mysqlPassthrough(section, routes, hasUpstream, mode)

        self._edgeChecks(section, settings, mode, routes, problem)
        if "ech_keys" in items:
            _checkECHKeys(settings, mode, routes, problem)
        self._quicChecks(section, settings, mode, routes, problem)

        if len(self.problems) != before:
            self._draft(ListenerConfig, section, routes=tuple(routes), **settings)
            return None
        return ListenerConfig(
            name=section.sub,
            routes=tuple(routes),
            location=self._location(section),
            **settings,
        )

    def _edgeChecks(
        self,
        section: _Section,
        settings: Mapping[str, Any],
        mode: str | None,
        routes: Sequence[RouteConfig],
        problem: Callable[[str | None, str], None],
    ) -> None:
        """
        The keys that guard a listener's edge: who may send a PROXY
        header, and which TLS versions may pass through.
        """
        items = section.items
        acceptProxy = settings.get("accept_proxy_protocol", False)
        if "proxy_protocol_from" in items and not acceptProxy:
            problem(
                "proxy_protocol_from",
                "proxy_protocol_from only applies with accept_proxy_protocol = on",
            )
        listen = settings.get("listen", ())
        overTCP = any(not endpoint.startswith("unix:") for endpoint in listen)
        if acceptProxy and not settings.get("proxy_protocol_from") and overTCP:
            self.warning(
                self._keyLine(section, "accept_proxy_protocol"),
                section.name,
                "accept_proxy_protocol",
                "on without proxy_protocol_from: any peer that can connect may"
                " send a PROXY header and choose its own client address, past"
                " allow/deny and the per-client limits; list your balancers in"
                " proxy_protocol_from",
            )
        if settings.get("passthrough_protocols") is not None:
            if mode == "tcp":
                problem(
                    "passthrough_protocols",
                    "mode = tcp reads no ClientHello, so it cannot check its"
                    " version: use mode = passthrough",
                )
            elif mode == "terminate" and all(
                route.action != "passthrough" for route in routes
            ):
                problem(
                    "passthrough_protocols",
                    "nothing on this listener passes through: terminated"
                    " connections follow protocols",
                )

    def _quicChecks(
        self,
        section: _Section,
        settings: Mapping[str, Any],
        mode: str | None,
        routes: Sequence[RouteConfig],
        problem: Callable[[str | None, str], None],
    ) -> None:
        """
        A UDP endpoint relays QUIC untouched: the gateway reads the Initial
        packets' ClientHello and cannot terminate QUIC, so everything on
        its listener must pass TLS through.
        """
        listen = parseList(section.items.get("listen", ""))
        udp = [d for d in listen if isUDPEndpoint(d)]
        if not udp:
            return
        if mode is not None and mode != "passthrough":
            problem(
                "mode",
                f"mode = {mode} on a listener with UDP endpoint {udp[0]!r}: QUIC"
                " is passed through only (use mode = passthrough, or move the"
                " UDP endpoint to a listener of its own)",
            )
        if settings.get("protocol", "tls") != "tls":
            problem(
                "protocol",
                f"UDP endpoint {udp[0]!r} carries QUIC: protocol must be tls",
            )
        for route in routes:
            if route.action == "terminate":
                self.problem(
                    route.line,
                    section.name,
                    "routes",
                    f"route {route.pattern!r} terminates TLS, but QUIC on UDP"
                    f" endpoint {udp[0]!r} is passed through only",
                )

    def _checkMySQLHealthChecks(
        self,
        sections: Sequence[_Section],
        listeners: Sequence[ListenerConfig],
        upstreams: Mapping[str, UpstreamConfig],
    ) -> None:
        """
        Report C{health_check = tls} on an upstream of a C{protocol = mysql}
        listener: a MySQL server speaks first and never answers a
        ClientHello, so every server would be marked down.
        """
        users: dict[str, str] = {}
        for listener in listeners:
            if listener.protocol != "mysql":
                continue
            names = [listener.upstream, *(route.upstream for route in listener.routes)]
            for name in names:
                if name is not None:
                    users.setdefault(name, listener.name)
        for section in sections:
            upstream = (
                upstreams.get(section.sub) if section.kind == "upstream" else None
            )
            if upstream is None or upstream.health_check != "tls":
                continue
            user = users.get(upstream.name)
            if user is not None:
                self.problem(
                    self._keyLine(section, "health_check"),
                    section.name,
                    "health_check",
                    f"health_check = tls cannot check a MySQL server (listener"
                    f" {user!r} has protocol = mysql): the server speaks first"
                    " and TLS starts inside its protocol; use tcp",
                )

    def _mysqlPassthrough(
        self,
        section: _Section,
        routes: Sequence[RouteConfig],
        hasUpstream: bool,
        mode: str,
    ) -> None:
        """
        Report what a C{protocol = mysql} listener would pass through: the
        gateway answers a MySQL client's greeting and C{SSLRequest} itself,
        so it can only terminate; relaying MySQL TLS untouched is what
        C{mode = tcp} does.
        """
        advice = (
            "protocol = mysql terminates TLS (the gateway answers the greeting and"
            " the SSLRequest itself); to relay MySQL TLS untouched use mode = tcp"
        )
        actions = [route.action or mode for route in routes]
        if (hasUpstream and mode == "passthrough") or (
            routes and "terminate" not in actions
        ):
            self.problem(
                self._keyLine(section, "protocol"), section.name, "protocol", advice
            )
            return
        for route, action in zip(routes, actions, strict=True):
            if action != "terminate":
                self.problem(
                    route.line,
                    section.name,
                    "routes",
                    f"route {route.pattern!r} passes TLS through: {advice}",
                )

    def _checkBindings(
        self, bindings: Sequence[tuple[_Section, str, Sequence[str]]]
    ) -> None:
        """
        Report two endpoints that would listen on the same address.
        """
        owners: dict[tuple[object, ...], tuple[str, str]] = {}
        for section, key, descriptions in bindings:
            for description in descriptions:
                try:
                    binding = _bindingOf(description)
                except ValueError:
                    continue  # reported by the key's own conversion
                if binding is None:
                    continue
                if binding in owners:
                    otherSection, other = owners[binding]
                    self.problem(
                        self._keyLine(section, key),
                        section.name,
                        key,
                        f"{description!r} listens on the same address as {other!r}"
                        f" in [{otherSection}]",
                    )
                else:
                    owners[binding] = (section.name, description)


def _endpointText(text: str, folder: str) -> str:
    return _absoluteUnixEndpoint(text.strip(), folder)


def _endpointTexts(text: str, folder: str) -> list[str]:
    return [_absoluteUnixEndpoint(item, folder) for item in parseList(text)]


def parseConfigText(text: str, path: str = "<string>") -> GatewayConfig:
    """
    Convert a configuration's text, as if it were the file at C{path}: the
    INI file's own checks, none of the files it names.  What C{check}, a
    start and a reload do is L{gateway.run.loading.load_config}.

    @param path: named in problems; relative paths in the text are relative
        to its folder.
    @raise ConfigError: listing every problem, with L{ConfigError.partial}
        set to what did convert.
    """
    loader = _Loader(
        path=path, folder=os.path.dirname(os.path.abspath(path)), text=text
    )
    try:
        return loader.load()
    except ConfigError as e:
        e.partial = loader.partial
        e.drafts = frozenset(loader.drafts)
        raise


def readConfigFile(path: str | os.PathLike[str]) -> tuple[str, str]:
    """
    The text of the INI file at C{path}, and its name for messages.

    @raise ConfigError: the file is missing, unreadable or not UTF-8.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig") as f:
            return f.read(), name
    except OSError as e:
        problem = f"cannot read the configuration: {e.strerror or e}"
        raise ConfigError([Problem(name, None, None, None, problem)]) from None
    except UnicodeDecodeError as e:
        problem = f"is not UTF-8 text ({e.reason} at byte {e.start})"
        raise ConfigError([Problem(name, None, None, None, problem)]) from None


def parseConfig(path: str | os.PathLike[str]) -> GatewayConfig:
    """
    Convert the INI file at C{path} (L{parseConfigText}).

    @raise ConfigError: listing every problem, the file's own included
        (missing, unreadable, not UTF-8).
    """
    text, name = readConfigFile(path)
    return parseConfigText(text, name)


def _checkECHKeys(
    settings: Mapping[str, Any],
    mode: str | None,
    routes: Sequence[RouteConfig],
    problem: Callable[[str | None, str], None],
) -> None:
    """
    C{ech_keys} is split mode: the inner ClientHello goes on to a backend
    that terminates it.  Terminating it here (shared mode) would need ECH
    in pyOpenSSL, which has none (docs/ech.rst).
    """
    if mode != "passthrough" or settings.get("protocol", "tls") != "tls":
        problem(
            "ech_keys",
            "ech_keys needs mode = passthrough and protocol = tls: the gateway"
            " decrypts the ClientHello and passes the inner one on (split mode)",
        )
    elif any(route.action == "terminate" for route in routes):
        problem(
            "ech_keys",
            "a route terminates TLS: with ech_keys every route must pass"
            " through (the gateway cannot terminate an encrypted ClientHello)",
        )
