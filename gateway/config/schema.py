"""
The model: the frozen attrs classes a configuration file becomes, and the
problems that keep one from becoming them.

Each field that an INI key sets carries C{ini} metadata, the parser of
L{gateway.config.values} (or L{gateway.config.endpoints}) that converts
its text, so the loader converts a section key by key from the class
itself; fields with C{lines} metadata (C{routes}, C{servers}) are read
line by line by their section.  Validators repeat the rules for objects
built in code, as an embedding application does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from attrs import validators as v

from gateway.config.endpoints import _endpoint, _endpoints
from gateway.config.values import (
    MAX_TICKET_LIFETIME,
    _accessLog,
    _account,
    _acmeNames,
    _alpnList,
    _choice,
    _clusterPrefix,
    _email,
    _etcdEndpoints,
    _groups,
    _integer,
    _ja4List,
    _leaseTTL,
    _memberName,
    _Network,
    _networks,
    _passthroughProtocols,
    _path,
    _paths,
    _positiveDuration,
    _positiveSize,
    _protocols,
    _sectionName,
    _sectionNames,
    _text,
    _ticketLifetime,
    _url,
    _workers,
)
from gateway.core.ratelimit import ConnectionRate, parseRate
from gateway.core.routing import normalizeName
from gateway.core.udpendpoints import isUDPEndpoint
from gateway.core.units import parseBool, parseDuration

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
