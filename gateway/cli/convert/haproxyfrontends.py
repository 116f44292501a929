"""
HAProxy frontends (and C{listen} sections) into C{[listener:NAME]} sections.

Pure.  C{bind} lines become C{listen} endpoints (C{ssl crt} the
termination keys, C{accept-proxy} C{accept_proxy_protocol});
C{use_backend ... if} a server-name test becomes routes, in an order the
gateway's precedence keeps (a route HAProxy never reaches is dropped and
noted); C{default_backend} the C{default} route; C{tcp-request} rules on
C{src} C{allow}/C{deny}.  A frontend that reads no ClientHello (no
C{inspect-delay}, no server-name rule, no C{ssl}) is a plain TCP relay:
C{mode = tcp}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

import attrs

from gateway.cli.convert.draft import (
    AccessRule,
    Draft,
    Listener,
    accessLists,
    formatDuration,
    parseNetwork,
)
from gateway.cli.convert.haproxybackends import (
    Backend,
    arity,
    haproxyTime,
    readTimeouts,
)
from gateway.cli.convert.haproxylimits import Counters, isCounter, limitFor
from gateway.cli.convert.haproxyreasons import reasonFor
from gateway.cli.convert.haproxyrules import (
    Criterion,
    Unconvertible,
    isHelloCheck,
    parseCondition,
    parseCriterion,
    shadowedBy,
    sniPatterns,
)
from gateway.cli.convert.haproxysyntax import Line, Section

__all__ = [
    "ListFolder",
    "Proxies",
    "bindOption",
    "convertFrontend",
    "noFolders",
]

#: Lists a folder's file names, or returns None when it is not a folder.
ListFolder = Callable[[str], Sequence[str] | None]


_BIND_ARITY = {
    **arity(
        "ssl accept-proxy v4v6 v6only transparent defer-accept tfo no-tls-tickets"
        " no-sslv3 no-tlsv10 no-tlsv11 no-tlsv12 no-tlsv13 strict-sni"
        " prefer-client-ciphers allow-0rtt generate-certificates force-tlsv12"
        " force-tlsv13 quic-force-retry",
        0,
    ),
    **arity(
        "crt crt-list alpn ciphers ciphersuites ssl-min-ver ssl-max-ver ca-file"
        " verify crl-file curves ecdhe interface name process thread maxconn"
        " backlog mss npn tls-ticket-keys ca-sign-file id nice level mode user"
        " group uid gid namespace proto severity-output",
        1,
    ),
}


VERSIONS = ["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


@attrs.define
class Proxies:
    draft: Draft
    folder: str | None
    listFolder: ListFolder
    crtBase: str = ""
    caBase: str = ""
    bindDefaults: dict[str, str] = attrs.Factory(dict)
    backends: dict[str, Backend | None] = attrs.Factory(dict)

    def path(self, text: str, base: str = "") -> str:
        joined = os.path.join(base, text) if base and not os.path.isabs(text) else text
        if self.folder is None or os.path.isabs(joined):
            return joined
        return os.path.normpath(os.path.join(self.folder, joined))


def noFolders(path: str) -> Sequence[str] | None:
    return None


def _bindEndpoint(address: str) -> str | None:
    """The Twisted endpoint for an HAProxy C{bind} address, or None."""
    if address.startswith("ipv6@"):
        address = address[5:]
        if address.rpartition(":")[0] in ("", "*"):
            address = ":::" + address.rpartition(":")[2]  # every IPv6 address
    address = address.removeprefix("ipv4@")
    if address.startswith("unix@"):
        return "unix:" + address[5:]
    if address.startswith("/"):
        return "unix:" + address
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):  # noqa: S104 (HAProxy's "every address")
        return f"tcp:{port}"
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    if re.fullmatch(r"[0-9.]+", host) is None:
        return None
    return f"tcp:{port}:interface={host}"


def bindOption(
    keys: dict[str, str], word: str, args: Sequence[str], draft: Draft, line: Line
) -> None:
    """One C{ssl-default-bind-options} word into termination keys."""
    if word == "ssl-min-ver":
        return
    if word in VERSIONS and "ssl-min-ver" in args:
        keys["protocols"] = " ".join(
            v for v in VERSIONS[VERSIONS.index(word) :] if v in ("TLSv1.2", "TLSv1.3")
        )
    elif word == "no-tls-tickets":
        keys["session_tickets"] = "off"
    elif word in ("no-sslv3", "no-tlsv10", "no-tlsv11"):
        return  # the gateway never offers those
    else:
        draft.note(line.number, line.text, f"{word}: no equivalent")


@attrs.define
class _Frontend:
    """What a frontend's lines said, gathered before the listener is written."""

    terminate: bool = False
    preread: bool = False
    inspect: float | None = None
    crts: list[tuple[str, Line]] = attrs.Factory(list)
    tls: dict[str, str] = attrs.Factory(dict)
    #: (pattern, backend, line, whether HAProxy reads the name after
    #: terminating TLS: ssl_fc_sni, rather than from the ClientHello)
    routes: list[tuple[str, str, Line, bool]] = attrs.Factory(list)
    default: tuple[str, Line] | None = None
    rules: dict[str, list[AccessRule]] = attrs.Factory(
        lambda: {"connection": [], "content": []}
    )
    helloAccepted: bool = False
    counters: Counters = attrs.Factory(Counters)
    limits: dict[str, str] = attrs.Factory(dict)
    binds: list[tuple[Line, set[str]]] = attrs.Factory(list)


#: Keywords of a listen section that its backend half converts.
_BACKEND_KEYWORDS = {
    "server",
    "default-server",
    "balance",
    "hash-type",
    "retries",
    "tcp-check",
    "mode",
    "timeout",
}


def convertFrontend(context: Proxies, section: Section, inherited: list[Line]) -> None:
    draft = context.draft
    listener = draft.addListener(
        section.name, section.number, f"{section.kind} {section.name}"
    )
    state = _Frontend(tls=dict(context.bindDefaults))
    acls: dict[str, list[Criterion]] = {}
    for line in section.lines:
        if line.words[0] == "acl" and len(line.words) >= 3:
            try:
                acls.setdefault(line.words[1], []).append(
                    parseCriterion(line.words[2:])
                )
            except Unconvertible as e:
                draft.note(line.number, line.text, str(e))
        elif line.words[0] == "stick-table":
            try:
                state.counters.readTable(line.words[1:])
            except ValueError:
                draft.note(line.number, line.text, "not an HAProxy time")
    for line in [*inherited, *section.lines]:
        if line.words[0] == "maxconn" and line.words[1:2] and line.words[1].isdigit():
            listener.keys["max_connections"] = line.words[1]
    for line in section.lines:
        keyword, args = line.words[0], line.words[1:]
        if keyword == "bind" and args:
            _bind(context, listener, line, state)
        elif keyword == "use_backend" and args:
            _useBackend(draft, line, acls, state)
        elif keyword == "default_backend" and args:
            state.default = (args[0], line)
        elif keyword == "tcp-request" and args:
            _tcpRequest(draft, line, acls, state)
        elif (
            (keyword == "maxconn" and args and args[0].isdigit())
            or keyword in ("acl", "timeout", "mode", "stick-table")
            or (
                section.kind == "listen"
                and (
                    keyword in _BACKEND_KEYWORDS
                    or line.words[:2]
                    in (("option", "ssl-hello-chk"), ("option", "tcp-check"))
                )
            )
        ):
            continue
        else:
            draft.note(
                line.number,
                line.text,
                reasonFor(line.words),
            )
    if (
        state.default is None
        and section.kind == "listen"
        and section.name in context.backends
    ):
        state.default = (section.name, Line(("server",), section.number))
    _mixedBinds(draft, state)
    mode = "terminate" if state.terminate else "passthrough" if state.preread else "tcp"
    listener.keys["mode"] = mode
    used = _routes(context, listener, state, mode)
    _listenerKeys(context, listener, section, inherited, state, used, mode)


def _mixedBinds(draft: Draft, state: _Frontend) -> None:
    """HAProxy sets C{ssl} and C{accept-proxy} per bind, the gateway per listener."""
    used = set().union(*(found for _, found in state.binds)) if state.binds else set()
    for line, found in state.binds:
        for option in sorted(used - found):
            draft.note(
                line.number,
                line.text,
                f"without {option} beside binds with it: the gateway sets it for"
                " every address of a listener; give this bind a frontend of its own",
            )


def _bind(context: Proxies, listener: Listener, line: Line, state: _Frontend) -> None:
    draft = context.draft
    for address in line.words[1].split(","):
        endpoint = _bindEndpoint(address)
        if endpoint is None:
            draft.note(
                line.number, line.text, f"{address}: needs an IP address and one port"
            )
        else:
            listener.listen.append((endpoint, line.number))
    options = line.words[2:]
    state.binds.append((line, {o for o in options if o in ("ssl", "accept-proxy")}))
    i = 0
    while i < len(options):
        word = options[i]
        arity = _BIND_ARITY.get(word)
        if arity is None:
            draft.note(
                line.number, line.text, f"{word}: unknown keyword, the rest left out"
            )
            return
        value = options[i + 1] if arity and i + 1 < len(options) else ""
        i += 1 + arity
        _bindKeyword(context, listener, line, state, word, value)


def _bindKeyword(
    context: Proxies,
    listener: Listener,
    line: Line,
    state: _Frontend,
    word: str,
    value: str,
) -> None:
    draft, tls = context.draft, state.tls
    if word == "ssl":
        state.terminate = True
    elif word == "crt":
        state.crts.append((value, line))
    elif word == "accept-proxy":
        listener.keys["accept_proxy_protocol"] = "on"
    elif word == "alpn":
        tls["alpn"] = ", ".join(value.split(","))
    elif word in ("ciphers", "ciphersuites"):
        tls[word] = value
    elif word == "curves":
        tls["groups"] = value
    elif word == "ssl-min-ver" and value in VERSIONS:
        bindOption(tls, value, ["ssl-min-ver"], draft, line)
    elif word == "ca-file":
        tls["client_ca"] = context.path(value, context.caBase)
    elif word == "crl-file":
        tls["client_crl"] = context.path(value, context.caBase)
    elif word == "verify" and value in ("none", "optional", "required"):
        tls["verify_client"] = {
            "none": "off",
            "optional": "optional",
            "required": "on",
        }[value]
    elif word == "no-tls-tickets":
        tls["session_tickets"] = "off"
    elif word == "prefer-client-ciphers":
        tls["prefer_server_ciphers"] = "off"
    elif word in ("v4v6", "no-sslv3", "no-tlsv10", "no-tlsv11"):
        return  # what the gateway does anyway
    elif word == "ssl-max-ver" and value == "TLSv1.3":
        return
    else:
        draft.note(line.number, line.text, f"{word}: no equivalent")


def _useBackend(
    draft: Draft, line: Line, acls: dict[str, list[Criterion]], state: _Frontend
) -> None:
    name, condition = line.words[1], line.words[2:]
    if "%[" in name:
        draft.note(
            line.number, line.text, "a backend chosen by expression cannot be converted"
        )
        return
    if not condition:
        if state.default is None:
            state.default = (name, line)
        return
    try:
        groups = parseCondition(condition, acls)
        patterns: list[tuple[str, bool]] = []
        for group in groups:
            terms = [term for term in group if not isHelloCheck(term)]
            if len(terms) != 1 or terms[0].negated:
                raise Unconvertible(
                    "only one positive server-name test per alternative converts"
                )
            for criterion in terms[0].criteria:
                after = criterion.fetch == "ssl_fc_sni"
                patterns += [(p, after) for p in sniPatterns(criterion)]
    except Unconvertible as e:
        draft.note(line.number, line.text, str(e))
        return
    state.preread = True
    state.routes += [(pattern, name, line, after) for pattern, after in patterns]


def _tcpRequest(
    draft: Draft, line: Line, acls: dict[str, list[Criterion]], state: _Frontend
) -> None:
    args = line.words[1:]
    if args[0] == "inspect-delay" and len(args) == 2:
        try:
            state.inspect = haproxyTime(args[1])
        except ValueError:
            draft.note(line.number, line.text, "not an HAProxy time")
        state.preread = True
        return
    if args[0] == "connection" and args[1:] in (
        ("track-sc0", "src"),
        ("track-sc1", "src"),
        ("track-sc2", "src"),
    ):
        state.counters.tracked.add(int(args[1][-1]))
        return
    if (
        len(args) < 2
        or args[0] not in ("connection", "content")
        or args[1]
        not in (
            "accept",
            "reject",
        )
    ):
        draft.note(line.number, line.text, "no equivalent in the gateway")
        return
    layer, accept, condition = args[0], args[1] == "accept", args[2:]
    if layer == "content" and state.helloAccepted:
        draft.note(
            line.number,
            line.text,
            "never reached for a TLS client: an earlier rule accepts every ClientHello",
        )
        return
    if not condition:
        state.rules[layer].append(AccessRule(accept, None, line.number, line.text))
        return
    try:
        groups = parseCondition(condition, acls)
        if len(groups) != 1 or len(groups[0]) != 1:
            raise Unconvertible("only a single src or req_ssl_hello_type test converts")
        term = groups[0][0]
        if all(
            c.fetch in ("req_ssl_hello_type", "req.ssl_hello_type")
            for c in term.criteria
        ):
            if isHelloCheck(term) and accept and layer == "content":
                state.helloAccepted = state.preread = True
                return
            if term.negated and not accept:
                state.preread = True
                return  # the gateway refuses what is not a ClientHello
            raise Unconvertible("this ClientHello test has no equivalent")
        if all(isCounter(c) for c in term.criteria):
            if accept or term.negated or len(term.criteria) != 1:
                raise Unconvertible("only 'reject if { COUNTER gt N }' converts")
            key, value = limitFor(term.criteria[0], state.counters)
            state.limits[key] = value
            return
        networks = _networks(draft, line, term.criteria)
    except Unconvertible as e:
        draft.note(line.number, line.text, str(e))
        return
    if not term.negated:
        state.rules[layer].append(AccessRule(accept, networks, line.number, line.text))
    elif not accept:
        state.rules[layer].append(AccessRule(True, networks, line.number, line.text))
        state.rules[layer].append(AccessRule(False, None, line.number, line.text))
    else:
        draft.note(line.number, line.text, "'accept if !src' has no equivalent")


def _networks(
    draft: Draft, line: Line, criteria: Sequence[Criterion]
) -> tuple[str, ...]:
    networks: list[str] = []
    for criterion in criteria:
        if criterion.fetch != "src" or (
            criterion.method != "str" and criterion.method != "ip"
        ):
            raise Unconvertible(f"{criterion.fetch}: only src converts to allow/deny")
        for value in criterion.values:
            try:
                network, widened = parseNetwork(value)
            except ValueError:
                raise Unconvertible(f"{value!r} is not an address or network") from None
            if widened:
                draft.note(line.number, line.text, f"{value} written as {network}")
            networks.append(network)
    if not networks:
        raise Unconvertible("src without addresses")
    return tuple(networks)


def _routes(
    context: Proxies, listener: Listener, state: _Frontend, mode: str
) -> list[str]:
    """Set the listener's routes or upstream; the upstream names it uses."""
    draft = context.draft
    kept: list[tuple[str, str, Line]] = []
    for pattern, backend, line, afterTermination in state.routes:
        upstream = _upstreamOf(context, backend, line)
        if upstream is None:
            continue
        if mode == "tcp":
            draft.note(
                line.number,
                line.text,
                "needs tcp-request inspect-delay to see a server name",
            )
            continue
        if afterTermination != (mode == "terminate"):
            fetch, why = (
                ("ssl_fc_sni", "no ssl bind")
                if afterTermination
                else ("req_ssl_sni", "it reads the decrypted bytes")
            )
            draft.note(
                line.number,
                line.text,
                f"HAProxy never knows {fetch} in this frontend ({why}): the rule"
                " never matches",
            )
            continue
        if not _shadowed(draft, kept, pattern, upstream, line):
            kept.append((pattern, upstream, line))
    default = None
    if state.default is not None:
        default = _upstreamOf(context, *state.default)
    if kept:
        listener.routes = [(pattern, name, line.number) for pattern, name, line in kept]
        if default is not None and state.default is not None:
            listener.routes.append(("default", default, state.default[1].number))
    else:
        listener.upstream = default
    return [name for _, name, _ in kept] + ([default] if default else [])


def _shadowed(
    draft: Draft,
    kept: list[tuple[str, str, Line]],
    pattern: str,
    upstream: str,
    line: Line,
) -> bool:
    """
    Whether HAProxy never reaches this route because an earlier one to
    another backend matches all of its names first (noted); a route it
    reaches for some names only is kept and noted.
    """
    for earlier, other, earlierLine in kept:
        if other == upstream:
            continue
        relation = shadowedBy(earlier, pattern)
        text = f"{line.text} ({pattern})"
        if relation == "never":
            draft.note(
                line.number,
                text,
                f"never reached in HAProxy: line {earlierLine.number} matches"
                " these names first",
            )
            return True
        if relation == "some":
            draft.note(
                line.number,
                text,
                f"HAProxy tries line {earlierLine.number} ({earlier}) first for"
                " some of these names; the gateway prefers the more specific"
                " pattern",
            )
    return False


def _upstreamOf(context: Proxies, backend: str, line: Line) -> str | None:
    found = context.backends.get(backend)
    if found is None:
        context.draft.note(
            line.number,
            line.text,
            f"backend {backend!r} was not converted (missing, mode http, or no servers)",
        )
        return None
    return found.upstream


def _listenerKeys(
    context: Proxies,
    listener: Listener,
    section: Section,
    inherited: list[Line],
    state: _Frontend,
    used: list[str],
    mode: str,
) -> None:
    """Timeouts, PROXY protocol, access rules and TLS of one listener."""
    draft = context.draft
    backends = [
        b for b in context.backends.values() if b is not None and b.upstream in used
    ]
    own = [line for line in section.lines if line.words[0] == "timeout"]
    timeouts = readTimeouts(inherited, draft, own=False)
    timeouts.update(readTimeouts(own, draft, own=section.kind == "frontend"))
    versions = {b.proxyProtocol for b in backends}
    if backends:
        first = (
            next(b for b in backends if b.upstream == used[-1]) if used else backends[0]
        )
        if len(versions) > 1:
            draft.note(
                listener.line,
                listener.origin,
                "its backends differ in send-proxy ("
                + ", ".join(
                    f"{b.upstream}: {b.proxyProtocol or 'none'}" for b in backends
                )
                + "); the gateway sends one kind per listener:"
                f" {first.proxyProtocol or 'none'}, as its default backend",
            )
        if first.proxyProtocol:
            listener.keys["proxy_protocol"] = first.proxyProtocol

        if any(_backendTimeouts(b) != _backendTimeouts(first) for b in backends):
            draft.note(
                listener.line,
                listener.origin,
                "its backends differ in timeouts; the gateway keeps them per"
                " listener: its default backend's",
            )
        timeouts = {**timeouts, **_backendTimeouts(first)}
    if "connect" in timeouts and timeouts["connect"] > 0:
        listener.keys["connect_timeout"] = formatDuration(timeouts["connect"])
    idle = timeouts.get("tunnel") or max(
        timeouts.get("client", 0), timeouts.get("server", 0)
    )
    if idle > 0:
        listener.keys["idle_timeout"] = formatDuration(idle)
    if state.inspect and mode != "tcp":
        listener.keys["preread_timeout"] = formatDuration(state.inspect)
    _accessKeys(draft, listener, state)
    listener.keys.update(state.limits)
    if mode == "terminate":
        listener.keys.update(state.tls)
        _certificates(context, listener, state)


def _backendTimeouts(backend: Backend) -> dict[str, float]:
    """A backend's timeouts, without the client's (a frontend's own)."""
    return {k: v for k, v in backend.timeouts.items() if k != "client"}


def _accessKeys(draft: Draft, listener: Listener, state: _Frontend) -> None:
    rules = state.rules["connection"]
    if rules and state.rules["content"]:
        for rule in state.rules["content"]:
            draft.note(
                rule.line,
                rule.text,
                "the gateway has one allow/deny list: merge these content rules"
                " into the connection rules",
            )
    rules = rules or state.rules["content"]
    if not rules:
        return
    allow, deny = accessLists(rules, draft.notes)
    if allow:
        listener.keys["allow"] = ", ".join(allow)
    if deny:
        listener.keys["deny"] = ", ".join(deny)


_EXTRA_FILES = (".key", ".ocsp", ".issuer", ".sctl")


def _certificates(context: Proxies, listener: Listener, state: _Frontend) -> None:
    """
    C{crt FILE} and C{crt FOLDER} into the listener's certificates: every
    file of a folder is one (HAProxy's order, by name), with its key in
    C{FILE.key} when that exists, otherwise in the file itself.
    """
    draft = context.draft
    pairs: list[tuple[str, str, Line]] = []
    for crt, line in state.crts:
        path = context.path(crt, context.crtBase)
        entries = context.listFolder(path)
        if entries is None:
            pairs.append((path, _keyFor(context, path), line))
            continue
        files = sorted(
            e for e in entries if not e.endswith(_EXTRA_FILES) and not e.startswith(".")
        )
        if not files:
            draft.note(line.number, line.text, f"{path} holds no certificate")
        for name in files:
            full = os.path.join(path, name)
            pairs.append((full, _keyFor(context, full), line))
    if len(pairs) == 1:
        listener.keys["certificate"], listener.keys["private_key"] = pairs[0][:2]
    elif pairs:
        names = [
            draft.addCertificate(
                os.path.basename(certificate).rpartition(".")[0] or certificate,
                certificate,
                key,
                line.number,
            )
            for certificate, key, line in pairs
        ]
        listener.keys["certificates"] = ", ".join(names)


def _keyFor(context: Proxies, certificate: str) -> str:
    folder, name = os.path.split(certificate)
    entries = context.listFolder(folder or ".")
    if entries is not None and f"{name}.key" in entries:
        return f"{certificate}.key"
    return certificate
