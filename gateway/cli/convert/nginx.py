"""
NGINX C{stream} configuration into a gateway INI file.

Pure: text in, L{gateway.cli.convert.draft.Draft} out.  Each C{server}
block of C{stream} becomes a C{[listener:NAME]}, each C{upstream} block an
C{[upstream:NAME]}, and a C{map $ssl_preread_server_name} used by
C{proxy_pass} becomes the listener's C{routes} (the gateway's patterns are
NGINX's C{map ... { hostnames; }} patterns, with the same precedence).
Directives of the C{stream} block are inherited by its servers unless a
server sets its own, as NGINX does.  Whatever has no equivalent is noted
with its line, never dropped silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import attrs

from gateway.cli.convert.draft import (
    AccessRule,
    Draft,
    Listener,
    accessLists,
    formatDuration,
    parseNetwork,
)
from gateway.cli.convert.nginxsyntax import TIME, Directive, parseNginx, seconds
from gateway.cli.convert.nginxtls import nginxDuration, terminationKeys

__all__ = ["convertNginx"]

_SIZE = re.compile(r"[0-9]+[kKmMgG]?")
_HOST_PORT = re.compile(
    r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s]+)):(?P<port>[0-9]+)"
)
_SNI = "$ssl_preread_server_name"
#: The server name once NGINX has terminated TLS (listen ... ssl).
_TERMINATED_SNI = "$ssl_server_name"
_CLIENT_KEYS = {"$binary_remote_addr", "$remote_addr"}

#: Directives that exist only for NGINX's own process model or buffers.
_NOT_NEEDED = {
    "events": "NGINX's event loop settings: the gateway runs on Twisted's reactor",
    "error_log": "the gateway logs to standard error (or twistd's --logfile)",
    "pid": "use tlsgateway run --pidfile FILE, or twistd's --pidfile",
    "user": "run the gateway as that user with twistd --uid/--gid",
    "worker_rlimit_nofile": "raise the open-file limit of the gateway's service instead",
    "load_module": "the gateway has no modules to load",
    "tcp_nodelay": "the gateway always sets TCP_NODELAY on relayed connections",
    "proxy_buffer_size": "the gateway's relay sizes its buffers itself",
    "resolver": "the gateway resolves server names with the system resolver",
    "variables_hash_max_size": "NGINX internals",
    "variables_hash_bucket_size": "NGINX internals",
    "map_hash_max_size": "NGINX internals",
    "map_hash_bucket_size": "NGINX internals",
}


@attrs.define
class _Map:
    """
    A C{map $ssl_preread_server_name $var} block (or C{$ssl_server_name},
    which NGINX knows once it terminated TLS), read.
    """

    line: int
    key: str
    hostnames: bool = False
    entries: list[tuple[str, str, int]] = attrs.Factory(list)


@attrs.define
class _Context:
    draft: Draft
    folder: str | None
    maps: dict[str, _Map] = attrs.Factory(dict)
    upstreams: dict[str, str] = attrs.Factory(dict)  # NGINX name -> section name
    zones: dict[str, str] = attrs.Factory(dict)  # limit_conn_zone name -> key

    def path(self, text: str) -> str:
        """Relative paths are relative to NGINX's configuration folder."""
        if self.folder is None or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(self.folder, text))


def convertNginx(text: str, source: str, folder: str | None = None) -> Draft:
    """
    Convert an NGINX configuration's C{stream} block.

    @param source: the file's name, as notes and comments will show it.
    @param folder: the folder relative paths in the file are relative to
        (NGINX's configuration prefix); they are written absolute, so the
        INI file works wherever it is saved.  L{None} keeps them as written.
    @raise gateway.cli.convert.draft.ConvertError: for text that is not an
        NGINX configuration at all.
    """
    directives = parseNginx(text)
    context = _Context(Draft(source, "nginx"), folder)
    draft = context.draft
    streams = [d for d in directives if d.name == "stream"]
    blocks = {d.name for d in directives if d.block is not None}
    if not streams and blocks & {"server", "upstream", "map"} and "http" not in blocks:
        # The contents of a stream block, as a file included from one
        # (stream { include /etc/nginx/stream.d/*.conf; }) holds them.
        _convertStream(context, directives)
        return draft
    for directive in directives:
        if directive.name == "stream":
            continue
        if directive.name == "worker_processes" and directive.args:
            draft.gateway["workers"] = directive.args[0]
        elif directive.name in ("http", "mail"):
            draft.note(
                directive.line,
                directive.text,
                f"an {directive.name} block: the gateway relays TLS and TCP streams only",
            )
        else:
            _unknown(draft, directive)
    if not streams:
        draft.note(None, "stream", "the file has no stream block: nothing to convert")
    for stream in streams:
        _convertStream(context, stream.block or ())
    return draft


def _unknown(draft: Draft, directive: Directive) -> None:
    reason = _NOT_NEEDED.get(directive.name)
    if directive.name == "include":
        reason = (
            "included files are not read: convert each one itself (a file of"
            " stream-block contents converts as that block), or paste it in"
        )
    draft.note(directive.line, directive.text, reason or "no equivalent in the gateway")


_SERVER_LEVEL = {
    "proxy_connect_timeout",
    "proxy_timeout",
    "preread_timeout",
    "preread_buffer_size",
    "proxy_protocol",
    "ssl_preread",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_alpn",
    "ssl_client_certificate",
    "ssl_verify_client",
    "ssl_crl",
    "ssl_session_tickets",
    "ssl_session_timeout",
    "ssl_session_cache",
    "ssl_ecdh_curve",
    "ssl_conf_command",
    "allow",
    "deny",
    "limit_conn",
    "proxy_next_upstream",
    "proxy_next_upstream_tries",
    "proxy_ssl",
    "proxy_ssl_verify",
    "proxy_ssl_trusted_certificate",
    "proxy_ssl_name",
    "access_log",
}


def _convertStream(context: _Context, block: Sequence[Directive]) -> None:
    draft = context.draft
    inherited: list[Directive] = []
    for directive in block:
        if directive.name == "map":
            _readMap(context, directive)
        elif directive.name == "upstream" and directive.args:
            _convertUpstream(context, directive)
        elif directive.name == "limit_conn_zone" and len(directive.args) >= 2:
            zone = directive.args[1].removeprefix("zone=").partition(":")[0]
            context.zones[zone] = directive.args[0]
        elif directive.name in _SERVER_LEVEL:
            inherited.append(directive)
        elif directive.name != "server":
            _unknown(draft, directive)
    for directive in block:
        if directive.name == "server" and directive.block is not None:
            own = {d.name for d in directive.block}
            allowDeny = {"allow", "deny"}
            effective = [
                d
                for d in inherited
                if d.name not in own and not (d.name in allowDeny and own & allowDeny)
            ]
            _convertServer(context, directive, [*effective, *directive.block])


def _readMap(context: _Context, directive: Directive) -> None:
    draft = context.draft
    if len(directive.args) != 2 or directive.block is None:
        _unknown(draft, directive)
        return
    key, variable = directive.args
    if key not in (_SNI, _TERMINATED_SNI):
        draft.note(
            directive.line,
            directive.text,
            f"a map of {key}: the gateway routes on the server name ({_SNI}) only",
        )
        return
    found = _Map(directive.line, key)
    for entry in directive.block:
        if entry.name == "hostnames" and not entry.args:
            found.hostnames = True
        elif len(entry.args) == 1 and entry.name not in ("include", "volatile"):
            found.entries.append((entry.name, entry.args[0], entry.line))
        else:
            _unknown(draft, entry)
    context.maps[variable] = found


def _convertUpstream(context: _Context, directive: Directive) -> None:
    draft = context.draft
    name = directive.args[0]
    upstream = draft.addUpstream(name, directive.line, f"upstream {name}")
    context.upstreams[name] = upstream.name
    for entry in directive.block or ():
        if entry.name == "server" and entry.args:
            line = _serverLine(draft, entry)
            if line is not None:
                upstream.servers.append(line)
        elif entry.name == "least_conn" and not entry.args:
            upstream.keys["balance"] = "least_conn"
        elif entry.name == "hash" and entry.args and entry.args[0] in _CLIENT_KEYS:
            upstream.keys["balance"] = "hash"
            if entry.args[1:] != ("consistent",):
                draft.note(
                    entry.line,
                    entry.text,
                    "converted to balance = hash, which is always consistent"
                    " hashing (as NGINX's 'consistent')",
                )
        elif entry.name == "random":
            upstream.keys["balance"] = "random"
            if entry.args != ("two", "least_conn"):
                draft.note(
                    entry.line,
                    entry.text,
                    "converted to balance = random, which is NGINX's"
                    " 'random two least_conn'",
                )
        elif entry.name == "zone":
            draft.note(entry.line, entry.text, "not needed: no shared memory zones")
        else:
            _unknown(draft, entry)


def _serverLine(draft: Draft, entry: Directive) -> str | None:
    """The gateway's C{servers} line for an NGINX upstream C{server}, or None."""
    address = entry.args[0]
    if not address.startswith("unix:") and _HOST_PORT.fullmatch(address) is None:
        draft.note(
            entry.line,
            entry.text,
            "no port: the gateway needs HOST:PORT (as NGINX stream)",
        )
        return None
    flags: list[str] = []
    for flag in entry.args[1:]:
        name, _, value = flag.partition("=")
        if name in ("weight", "max_fails") and value.isdigit():
            if name == "weight" and int(value) < 1:
                draft.note(entry.line, entry.text, "weight below 1")
                return None
            flags.append(flag)
        elif name == "fail_timeout":
            try:
                flags.append(f"fail_timeout={formatDuration(seconds(value))}")
            except ValueError:
                draft.note(entry.line, entry.text, f"{flag}: not a time")
        elif flag == "backup":
            flags.append("backup")
        elif flag == "down":
            draft.note(entry.line, entry.text, "marked down: left out")
            return None
        else:
            draft.note(entry.line, entry.text, f"{flag}: no equivalent, left out")
    return " ".join([address, *flags])


# -- server blocks ---------------------------------------------------------------


def _listenEndpoint(address: str) -> str | None:
    """The Twisted endpoint for an NGINX C{listen} address, or None."""
    if address.startswith("unix:"):
        return address
    if address.isdigit():
        return f"tcp:{address}"
    if address.startswith("*:") and address[2:].isdigit():
        return f"tcp:{address[2:]}"
    match = _HOST_PORT.fullmatch(address)
    if match is None:
        return None
    port = match["port"]
    if match["ip6"] is not None:
        interface = match["ip6"].replace(":", "\\:")
        return f"tcp6:{port}:interface={interface}"
    if not re.fullmatch(r"[0-9.]+", match["host"]):
        return None
    if match["host"] == "0.0.0.0":  # noqa: S104 (NGINX's every address, as "listen 443")
        return f"tcp:{port}"
    return f"tcp:{port}:interface={match['host']}"


_LISTEN_IGNORED = {"reuseport", "default_server", "so_keepalive", "deferred", "bind"}


def _convertServer(context: _Context, server: Directive, body: list[Directive]) -> None:
    draft = context.draft
    for directive in [d for d in body if not d.args and d.block is None]:
        draft.note(directive.line, directive.text, "has no value: left out")
        body = [d for d in body if d is not directive]
    listens = [d for d in body if d.name == "listen" and d.args]
    first = listens[0].args[0] if listens else str(server.line)
    listener = draft.addListener(
        f"stream-{first.rpartition(':')[2]}", server.line, "server"
    )
    terminate, acceptProxy = _listens(draft, listener, listens)
    byName: dict[str, list[Directive]] = {}
    for directive in body:
        byName.setdefault(directive.name, []).append(directive)
    preread = any(d.args[:1] == ("on",) for d in byName.get("ssl_preread", ()))
    mode = "terminate" if terminate else "passthrough" if preread else "tcp"
    listener.keys["mode"] = mode
    if acceptProxy:
        listener.keys["accept_proxy_protocol"] = "on"
    upstreams = _destination(context, listener, byName.get("proxy_pass", []), mode)
    handled = _serverKeys(context, listener, byName, upstreams)
    if terminate:
        handled |= terminationKeys(draft, context.path, listener, byName)
    for directive in body:
        if directive.name in handled or directive.name in (
            "listen",
            "ssl_preread",
            "proxy_pass",
        ):
            continue
        if directive.name.startswith("ssl_") and not terminate:
            draft.note(
                directive.line,
                directive.text,
                "a setting of servers that terminate TLS (listen ... ssl):"
                " not needed here",
            )
            continue
        _unknown(draft, directive)


def _listens(
    draft: Draft, listener: Listener, listens: list[Directive]
) -> tuple[bool, bool]:
    """
    The listener's endpoints from C{listen} lines.

    @return: whether it terminates TLS (C{ssl}) and expects a PROXY header
        (C{proxy_protocol}).  NGINX sets both per address, the gateway per
        listener: an address without the flag beside one with it is named.
    """
    flags: list[tuple[Directive, set[str]]] = []
    for listen in listens:
        endpoint = _listenEndpoint(listen.args[0])
        if endpoint is None or "udp" in listen.args:
            draft.note(
                listen.line,
                listen.text,
                "UDP is not relayed" if endpoint else "needs an IP address or a port",
            )
            continue
        found = set()
        for flag in listen.args[1:]:
            if flag in ("ssl", "proxy_protocol"):
                found.add(flag)
            else:
                reason = "not needed" if flag.split("=")[0] in _LISTEN_IGNORED else ""
                draft.note(
                    listen.line, listen.text, f"{flag}: {reason or 'no equivalent'}"
                )
        flags.append((listen, found))
        listener.listen.append((endpoint, listen.line))
    used = set().union(*(found for _, found in flags)) if flags else set()
    for listen, found in flags:
        for flag in sorted(used - found):
            draft.note(
                listen.line,
                listen.text,
                f"without {flag} beside addresses with it: the gateway sets it for"
                " every address of a listener; give this address a server block"
                " of its own",
            )
    return "ssl" in used, "proxy_protocol" in used


def _destination(
    context: _Context, listener: Listener, proxyPass: list[Directive], mode: str
) -> list[str]:
    """
    Set the listener's C{upstream} or C{routes} from C{proxy_pass}.

    @return: the upstream section names it may send connections to.
    """
    draft = context.draft
    if not proxyPass:
        draft.note(listener.line, "server", "no proxy_pass")
        return []
    directive = proxyPass[-1]
    target = directive.args[0] if directive.args else ""
    if target in context.maps:
        found = context.maps[target]
        known = {_SNI: "passthrough", _TERMINATED_SNI: "terminate"}[found.key]
        if mode != known:
            why = {
                "tcp": "ssl_preread is off",
                "terminate": "TLS is terminated before the preread phase",
                "passthrough": "it does not terminate TLS",
            }[mode]
            draft.note(
                directive.line,
                directive.text,
                f"NGINX never knows {found.key} in this server ({why}): only"
                " the map's default applies",
            )
            default = [value for key, value, _ in found.entries if key == "default"]
            listener.upstream = (
                _upstreamFor(context, default[-1], directive.line) if default else None
            )
            return [listener.upstream] if listener.upstream else []
        for key, value, line in found.entries:
            pattern = _pattern(draft, key, value, line, found.hostnames)
            upstream = _upstreamFor(context, value, line)
            if pattern is not None and upstream is not None:
                listener.routes.append((pattern, upstream, line))
        return [upstream for _, upstream, _ in listener.routes]
    listener.upstream = _upstreamFor(context, target, directive.line)
    return [listener.upstream] if listener.upstream else []


def _pattern(
    draft: Draft, key: str, value: str, line: int, hostnames: bool
) -> str | None:
    text = f"{key} {value}"
    if key == "default" or key.startswith("~"):
        return key
    if key.startswith(("*.", ".")):
        if hostnames:
            return key
        draft.note(
            line,
            text,
            "a wildcard in a map without 'hostnames' is compared as a plain"
            " string, which no server name equals: left out",
        )
        return None
    if key.endswith(".*"):
        draft.note(line, text, "the gateway has no trailing wildcards: write a ~regex")
        return None
    return key.lstrip("\\")


def _upstreamFor(context: _Context, target: str, line: int) -> str | None:
    """The section name for a C{proxy_pass} or map value, made if needed."""
    draft = context.draft
    if target in context.upstreams:
        return context.upstreams[target]
    if "$" in target or not target:
        draft.note(line, target or "''", "a variable destination cannot be converted")
        return None
    if not target.startswith("unix:") and _HOST_PORT.fullmatch(target) is None:
        draft.note(line, target, "no upstream block of this name, and not HOST:PORT")
        return None
    for name, upstream in draft.upstreams.items():
        if upstream.servers == [target] and upstream.origin == target:
            return name
    upstream = draft.addUpstream(target.rpartition(":")[0] or target, line, target)
    upstream.servers.append(target)
    return upstream.name


_TIMEOUTS = {
    "proxy_connect_timeout": "connect_timeout",
    "proxy_timeout": "idle_timeout",
    "preread_timeout": "preread_timeout",
}


def _serverKeys(
    context: _Context,
    listener: Listener,
    byName: dict[str, list[Directive]],
    upstreams: list[str],
) -> set[str]:
    """Timeouts, PROXY protocol, access rules, limits; the names handled."""
    draft = context.draft
    handled = set(_TIMEOUTS)
    for name, key in _TIMEOUTS.items():
        for directive in byName.get(name, ()):
            value = nginxDuration(draft, directive)
            if value is not None and value != "0s":
                listener.keys[key] = value
    for directive in byName.get("preread_buffer_size", ()):
        if directive.args and _SIZE.fullmatch(directive.args[0]):
            listener.keys["preread_buffer_size"] = directive.args[0].lower()
            handled.add("preread_buffer_size")
    for directive in byName.get("proxy_protocol", ()):
        handled.add("proxy_protocol")
        if directive.args[:1] == ("on",):
            listener.keys["proxy_protocol"] = "v1"
    rules = _accessRules(
        draft, [d for d in byName.get("allow", []) + byName.get("deny", [])]
    )
    if rules:
        handled |= {"allow", "deny"}
        allow, deny = accessLists(rules, draft.notes)
        if allow:
            listener.keys["allow"] = ", ".join(allow)
        if deny:
            listener.keys["deny"] = ", ".join(deny)
    for directive in byName.get("limit_conn", ()):
        handled.add("limit_conn")
        zoneKey = context.zones.get(directive.args[0]) if directive.args else None
        if (
            zoneKey in _CLIENT_KEYS
            and len(directive.args) == 2
            and directive.args[1].isdigit()
        ):
            listener.keys["max_connections_per_client"] = directive.args[1]
        else:
            draft.note(
                directive.line,
                directive.text,
                f"a limit per {zoneKey or 'unknown zone'}: the gateway limits"
                " concurrent connections per client address"
                " (max_connections_per_client) or per listener (max_connections)",
            )
    handled |= _upstreamKeys(context, byName, upstreams)
    if "access_log" in byName:
        handled.add("access_log")
        _accessLog(context, byName["access_log"])
    return handled


def _accessRules(draft: Draft, directives: list[Directive]) -> list[AccessRule]:
    rules = []
    for directive in sorted(directives, key=lambda d: d.line):
        allow = directive.name == "allow"
        if directive.args == ("all",):
            rules.append(AccessRule(allow, None, directive.line, directive.text))
            continue
        try:
            network, widened = parseNetwork(directive.args[0])
        except (ValueError, IndexError):
            draft.note(directive.line, directive.text, "not an address or CIDR")
            continue
        if widened:
            draft.note(
                directive.line,
                directive.text,
                f"written as {network}: NGINX ignores the host bits, the gateway"
                " refuses them",
            )
        rules.append(AccessRule(allow, (network,), directive.line, directive.text))
    return rules


def _upstreamKeys(
    context: _Context, byName: dict[str, list[Directive]], upstreams: list[str]
) -> set[str]:
    """
    What NGINX sets per server but the gateway per upstream: retries, TLS
    to the upstream, health checks (NGINX Plus).
    """
    draft = context.draft
    keys: dict[str, str] = {}
    handled: set[str] = set()
    for directive in byName.get("proxy_next_upstream", ()):
        handled.add(directive.name)
        if directive.args[:1] == ("off",):
            keys["next_upstream_tries"] = "1"
    for directive in byName.get("proxy_next_upstream_tries", ()):
        if (
            directive.args
            and directive.args[0].isdigit()
            and int(directive.args[0]) > 0
        ):
            keys["next_upstream_tries"] = directive.args[0]
            handled.add(directive.name)
    ssl = any(d.args[:1] == ("on",) for d in byName.get("proxy_ssl", ()))
    if ssl:
        keys["tls"] = "on"
        verify = any(d.args[:1] == ("on",) for d in byName.get("proxy_ssl_verify", ()))
        keys["tls_verify"] = "on" if verify else "off"
        if not verify:
            draft.note(
                byName["proxy_ssl"][0].line,
                "proxy_ssl on",
                "converted with tls_verify = off, as NGINX does not verify"
                " without proxy_ssl_verify on: turn it on",
            )
        for directive in byName.get("proxy_ssl_trusted_certificate", ()):
            keys["tls_ca"] = context.path(directive.args[0])
        for directive in byName.get("proxy_ssl_name", ()):
            keys["tls_server_name"] = directive.args[0]
        handled |= {
            "proxy_ssl",
            "proxy_ssl_verify",
            "proxy_ssl_trusted_certificate",
            "proxy_ssl_name",
        }
    for directive in byName.get("health_check", ()):
        handled.add("health_check")
        keys["health_check"] = "tcp"
        for option in directive.args:
            name, _, value = option.partition("=")
            if name == "interval" and TIME.fullmatch(value):
                keys["health_interval"] = formatDuration(seconds(value))
            elif name in ("passes", "fails") and value.isdigit():
                keys["health_rise" if name == "passes" else "health_fall"] = value
            else:
                draft.note(directive.line, directive.text, f"{option}: no equivalent")
    for name in upstreams:
        upstream = draft.upstreams[name]
        for key, value in keys.items():
            if upstream.keys.get(key, value) != value:
                draft.note(
                    upstream.line,
                    upstream.origin,
                    f"servers set {key} differently; kept {upstream.keys[key]}",
                )
            else:
                upstream.keys[key] = value
    return handled


def _accessLog(context: _Context, directives: list[Directive]) -> None:
    draft = context.draft
    directive = directives[-1]
    if directive.args[:1] == ("off",):
        draft.gateway.setdefault("access_log", "off")
        return
    path = context.path(directive.args[0])
    if draft.gateway.setdefault("access_log", path) != path:
        draft.note(directive.line, directive.text, "the gateway has one access log")
    if len(directive.args) > 1:
        draft.note(
            directive.line,
            directive.text,
            "log formats are not converted: the gateway writes its own fields"
            " (access_log_format = text or json)",
        )
