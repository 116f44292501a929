"""
Value parsers: the text of one INI value in, a value out, or a
C{ValueError} whose message an operator reads at that key.

Each parser knows one kind of value (a duration with a floor, a list of
networks, a TLS version list, a server address, an etcd URL...); none of
them knows sections, line numbers or other keys: L{gateway.config.loader}
locates what they raise, and L{gateway.config.checks} judges keys
together.  A parser that finds several bad items of one list raises
L{_Invalid}, so that each is reported, not only the first.

Endpoint strings, the one kind of value Twisted has to read, are in
L{gateway.config.endpoints}.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from gateway.core.routing import normalizeName
from gateway.core.units import parseDuration, parseList, parseSize

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
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


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


def _named(text: str, what: str) -> str:
    """
    A name of letters, digits, C{_}, C{-} and C{.}: what section names and
    cluster member names share, so that each can be a key or a file name.
    """
    name = _text(text)
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a {what} name: use letters, digits, '_', '-' and '.'"
        )
    return name


def _sectionName(text: str) -> str:
    return _named(text, "section")


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


def _serverFlags(flags: Sequence[str], messages: list[str]) -> dict[str, Any]:
    """
    The NGINX-style flags after a server's address (C{weight=N},
    C{max_fails=N}, C{fail_timeout=DURATION}, C{backup}), as
    L{gateway.config.schema.ServerConfig} arguments.

    @param messages: where each bad flag is described, so that one run
        names every bad part of the line, the address's included.
    """
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
    return options


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
    return _named(text, "member")


def _leaseTTL(text: str) -> float:
    seconds = parseDuration(text)
    if seconds < 2:
        raise ValueError(
            f"{text.strip()!r} is too short: etcd keeps a lease 2 seconds or more"
        )
    return seconds
