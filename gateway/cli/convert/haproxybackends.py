"""
HAProxy backends into C{[upstream:NAME]} sections.

Pure.  C{server} lines become C{servers} lines (C{weight}, C{backup});
C{check inter rise fall}, which HAProxy sets per server, become the
upstream's C{health_*} keys (the gateway checks an upstream's servers
alike, and says so when HAProxy's servers differ); C{send-proxy} and the
backend's timeouts are handed back for the listeners, where the gateway
keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from gateway.cli.convert.draft import Draft, formatDuration
from gateway.cli.convert.haproxysyntax import Line, Section

__all__ = [
    "FRONTEND_KEYWORDS",
    "Backend",
    "arity",
    "convertBackend",
    "haproxyTime",
    "readTimeouts",
]

_TIME = re.compile(r"([0-9]+)(us|ms|s|m|h|d)?")


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


_BALANCE = {
    "roundrobin": "round_robin",
    "static-rr": "round_robin",
    "leastconn": "least_conn",
    "source": "hash",
    "random": "random",
}


#: Server keywords and how many arguments each takes.
def arity(words: str, count: int) -> dict[str, int]:
    return dict.fromkeys(words.split(), count)


_SERVER_ARITY = {
    **arity(
        "check check-ssl no-check backup disabled enabled ssl no-ssl send-proxy"
        " send-proxy-v2 send-proxy-v2-ssl send-proxy-v2-ssl-cn agent-check tfo"
        " no-send-proxy no-backup no-tfo",
        0,
    ),
    **arity(
        "inter fastinter downinter rise fall weight maxconn minconn maxqueue verify"
        " ca-file crt sni check-sni slowstart resolvers resolve-prefer init-addr"
        " on-marked-down on-marked-up on-error error-limit observe id cookie port"
        " addr agent-port agent-inter alpn check-alpn ssl-min-ver ssl-max-ver"
        " ciphers ciphersuites proto pool-max-conn pool-purge-delay track redir"
        " namespace source max-reuse crl-file",
        1,
    ),
}


def haproxyTime(text: str) -> float:
    """
    An HAProxy time in seconds (C{5s}, C{1m}; a bare number is milliseconds).

    @raise ValueError: for anything else.
    """
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an HAProxy time")
    return int(match[1]) * _UNITS[match[2] or "ms"]


@attrs.define
class Backend:
    """A converted backend: its upstream and what moves to its listeners."""

    upstream: str
    proxyProtocol: str
    timeouts: dict[str, float]


#: Keywords a backend half leaves to the frontend half (or to defaults).
FRONTEND_KEYWORDS = {
    "mode",
    "timeout",
    "bind",
    "acl",
    "use_backend",
    "tcp-request",
    "default_backend",
    "maxconn",
}


def readTimeouts(lines: Sequence[Line], draft: Draft, own: bool) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in lines:
        if line.words[0] != "timeout" or len(line.words) < 3:
            continue
        kind = line.words[1]
        try:
            found[kind] = haproxyTime(line.words[2])
        except ValueError:
            draft.note(line.number, line.text, "not an HAProxy time")
            continue
        if own and kind not in ("connect", "client", "server", "tunnel"):
            draft.note(line.number, line.text, "no equivalent in the gateway")
    return found


def convertBackend(
    draft: Draft, section: Section, inherited: list[Line]
) -> Backend | None:
    """
    An HAProxy C{backend} (or the servers of a C{listen}) into an
    C{[upstream:NAME]}.

    @return: what its listeners need to know, or L{None} when no server
        could be converted (the draft then drops the upstream, noting it).
    """
    upstream = draft.addUpstream(
        section.name, section.number, f"{section.kind} {section.name}"
    )
    defaultServer: list[str] = []
    health: dict[str, str] = {}
    proxy: dict[str, int] = {}
    balance, helloCheck = None, False
    checks: list[str] = []  # per server: "", "tcp" or "tls" (check-ssl)
    for line in [*inherited, *section.lines]:
        ownLine = line in section.lines
        keyword, args = line.words[0], line.words[1:]
        if keyword == "default-server":
            defaultServer += args
        elif keyword == "balance" and args:
            balance = _BALANCE.get(args[0])
            if balance is None and ownLine:
                draft.note(line.number, line.text, "no equivalent: round_robin is used")
        elif line.words[:2] == ("option", "ssl-hello-chk"):
            helloCheck = True
        elif keyword == "server" and len(args) >= 2:
            server = _server(draft, line, [*defaultServer, *args[2:]], args[1], health)
            if server is not None:
                text, version, check = server
                upstream.servers.append(text)
                proxy[version] = proxy.get(version, 0) + 1
                checks.append(check)
        elif not ownLine or keyword in FRONTEND_KEYWORDS:
            continue
        elif line.words[:2] == ("option", "tcp-check"):
            continue  # a connect check, as health_check = tcp
        elif section.kind == "backend" or keyword in (
            "retries",
            "hash-type",
            "tcp-check",
        ):
            draft.note(line.number, line.text, _backendReason(keyword))
    if balance is not None:
        upstream.keys["balance"] = balance
    if any(checks):
        tls = helloCheck or "tls" in checks
        upstream.keys["health_check"] = "tls" if tls else "tcp"
        upstream.keys.update(health)
        upstream.keys.setdefault("health_interval", "2s")  # HAProxy's inter
        if not all(checks):
            draft.note(
                section.number,
                f"{section.kind} {section.name}",
                "only some servers have check: the gateway checks every server"
                " of an upstream",
            )
    chosen = max(proxy, key=lambda v: proxy[v]) if proxy else ""
    if len(proxy) > 1:
        draft.note(
            section.number,
            f"{section.kind} {section.name}",
            f"servers differ in send-proxy: the listeners send {chosen or 'none'}",
        )
    own = [line for line in section.lines if line.words[0] == "timeout"]
    found = readTimeouts(inherited, draft, own=False)
    found.update(readTimeouts(own, draft, own=section.kind in ("backend", "listen")))
    if not upstream.servers:
        return None
    return Backend(upstream.name, chosen, found)


def _backendReason(keyword: str) -> str:
    reasons = {
        "retries": "the gateway tries other servers instead: next_upstream_tries",
        "hash-type": "balance = hash is always consistent hashing",
        "tcp-check": "health checks connect (tcp) or complete a TLS handshake"
        " (tls), nothing else",
    }
    return reasons.get(keyword, "no equivalent in the gateway")


def _server(
    draft: Draft, line: Line, params: list[str], address: str, health: dict[str, str]
) -> tuple[str, str, str] | None:
    """
    The C{servers} line for an HAProxy C{server}, the PROXY protocol
    version it wants and its check (C{""} for none, C{tcp}, C{tls}), or
    None when it is left out; its C{inter}, C{rise} and C{fall} go into
    C{health}.
    """
    endpoint = _serverAddress(address)
    if endpoint is None:
        draft.note(
            line.number, line.text, f"{address}: needs HOST:PORT or a socket path"
        )
        return None
    flags: list[str] = []
    proxy = check = ""
    values: dict[str, str] = {}
    i = 0
    while i < len(params):
        word = params[i]
        arity = _SERVER_ARITY.get(word)
        if arity is None:
            draft.note(
                line.number, line.text, f"{word}: unknown keyword, the rest left out"
            )
            break
        value = params[i + 1] if arity and i + 1 < len(params) else ""
        i += 1 + arity
        if word in ("check", "check-ssl"):
            check = "tls" if word == "check-ssl" or check == "tls" else "tcp"
        elif word in ("inter", "rise", "fall"):
            values[word] = value
        elif word.startswith("send-proxy"):
            proxy = "v1" if word == "send-proxy" else "v2"
        elif word == "backup":
            flags.append("backup")
        elif word == "weight" and value.isdigit():
            if int(value) == 0:
                draft.note(line.number, line.text, "weight 0: never chosen, left out")
                return None
            flags.append(f"weight={value}")
        elif word == "disabled":
            draft.note(line.number, line.text, "disabled: left out")
            return None
        elif word == "no-check":
            check = ""
        elif word in ("enabled", "no-backup", "no-send-proxy"):
            continue
        else:
            draft.note(line.number, line.text, f"{word}: no equivalent, left out")
    _healthKeys(draft, line, values, health)
    return " ".join([endpoint, *flags]), proxy, check


def _healthKeys(
    draft: Draft, line: Line, values: dict[str, str], health: dict[str, str]
) -> None:
    for word, key in (
        ("inter", "health_interval"),
        ("rise", "health_rise"),
        ("fall", "health_fall"),
    ):
        if word not in values:
            continue
        value = values[word]
        if word == "inter":
            try:
                value = formatDuration(haproxyTime(value))
            except ValueError:
                draft.note(
                    line.number, line.text, f"inter {value}: not an HAProxy time"
                )
                continue
        elif not value.isdigit() or int(value) < 1:
            draft.note(line.number, line.text, f"{word} {value}: not a count")
            continue
        if health.setdefault(key, value) != value:
            draft.note(
                line.number,
                line.text,
                f"{word} differs between servers; the gateway checks an upstream's"
                f" servers alike: {key} = {health[key]}",
            )


def _serverAddress(address: str) -> str | None:
    for prefix in ("ipv4@", "ipv6@", "unix@"):
        if address.startswith(prefix):
            if prefix == "unix@":
                return "unix:" + address[len(prefix) :]
            address = address[len(prefix) :]
    if address.startswith("/"):
        return "unix:" + address
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        return None
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
