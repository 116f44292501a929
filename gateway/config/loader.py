"""
The loader: one conversion of one INI text, section by section and key
by key, collecting every problem instead of stopping at the first.

C{configparser} does the syntax (so the file is "standard configparser",
as the contract promises): C{;} and C{#} comments, also inline after
whitespace (a C{#} or C{;} inside a route pattern such as C{~^a#b} stays:
patterns have no spaces, and a pattern that needs one writes C{\\s} or
C{\\x20}), no interpolation (regexes contain C{$} and C{%}), indented
continuation lines for C{routes}, C{servers} and long lists.
L{gateway.config.scan} numbers its lines.  Each section is converted key
by key, from the C{ini} metadata on the model's fields
(L{gateway.config.schema}), so each problem names its key; the checks of
keys together and of sections together (L{gateway.config.checks}) come
after.
"""

from __future__ import annotations

import configparser
import contextlib
import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from gateway.config.checks import (
    ListenerKeys,
    SectionReport,
    checkAcmeNames,
    checkBindings,
    checkCertificate,
    checkClusterKeys,
    checkClusterWorkers,
    checkListener,
    checkMySQLHealthChecks,
    checkSomethingListens,
)
from gateway.config.endpoints import _endpointText, _endpointTexts
from gateway.config.scan import _COMMENTS, _Scan, _scan, _Section
from gateway.config.schema import (
    _MODELS,
    AcmeSettings,
    CertificateConfig,
    ClusterSettings,
    ConfigError,
    ConfigWarning,
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    Location,
    Problem,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
    _Parse,
)
from gateway.config.values import (
    _NAME,
    _choice,
    _Invalid,
    _messages,
    _serverAddress,
    _serverFlags,
)
from gateway.core.routing import normalizePattern

_SECTION_KINDS = ("listener", "upstream", "certificate")

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


@attrs.define
class _Built:
    """
    What the sections of one text converted to, as the loader goes.

    @ivar bindings: each C{listen} or C{metrics} key with its endpoint
        strings, for finding two on one address.
    """

    settings: GatewaySettings = attrs.Factory(GatewaySettings)
    acme: AcmeSettings | None = None
    cluster: ClusterSettings | None = None
    listeners: list[ListenerConfig] = attrs.Factory(list)
    upstreams: dict[str, UpstreamConfig] = attrs.Factory(dict)
    certificates: dict[str, CertificateConfig] = attrs.Factory(dict)
    bindings: list[tuple[_Section, str, Sequence[str]]] = attrs.Factory(list)


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
        built = _Built()
        for section in sections:
            self._loadSection(section, built)
        self._checkShadowed(sections)
        checkClusterWorkers(self, built.settings, built.cluster)
        checkBindings(self, built.bindings)
        checkMySQLHealthChecks(self, sections, built.listeners, built.upstreams)
        checkAcmeNames(self, built.certificates.values())
        checkSomethingListens(self, sections)
        config = GatewayConfig(
            path=os.path.abspath(self.path),
            gateway=built.settings,
            listeners=tuple(built.listeners),
            upstreams=built.upstreams,
            certificates=built.certificates,
            warnings=tuple(self.warnings),
            acme=built.acme,
            cluster=built.cluster,
        )
        if self.problems:
            # What did convert, so that its files are checked too and
            # reported with these problems: one edit fixes them all.
            self.partial = self._withDrafts(config)
            raise ConfigError(self.problems)
        return config

    def _loadSection(self, section: _Section, built: _Built) -> None:
        """
        Convert one section into C{built}, by its kind.
        """
        if section.kind == "gateway":
            self._gateway(section, built)
        elif section.kind == "acme":
            before = len(self.problems)
            kwargs = self._convert(section, AcmeSettings)
            if len(self.problems) == before:
                built.acme = AcmeSettings(location=self._location(section), **kwargs)
        elif section.kind == "cluster":
            built.cluster = self._cluster(section)
        elif section.kind == "listener":
            listener = self._listener(section)
            if listener is not None:
                built.listeners.append(listener)
            if "listen" in section.items:
                listen = _endpointTexts(section.items["listen"], self.folder)
                built.bindings.append((section, "listen", listen))
        elif section.kind == "upstream":
            upstream = self._upstream(section)
            if upstream is not None:
                built.upstreams[upstream.name] = upstream
        else:
            certificate = self._certificate(section)
            if certificate is not None:
                built.certificates[certificate.name] = certificate

    def _gateway(self, section: _Section, built: _Built) -> None:
        """
        C{[gateway]}: the keys that converted, even beside problems: the
        access log is checked with them (L{gateway.run.loading}).
        """
        kwargs = self._convert(section, GatewaySettings)
        with contextlib.suppress(TypeError, ValueError):
            built.settings = GatewaySettings(location=self._location(section), **kwargs)
        metrics = section.items.get("metrics")
        if metrics is not None:
            built.bindings.append(
                (section, "metrics", [_endpointText(metrics, self.folder)])
            )

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
            elif key == "routes" and model is ListenerConfig:
                self._routes(section, [(number, text) for number, text in lines])
            else:
                self._convertShadowed(model, name, key, line, lines)

    def _convertShadowed(
        self,
        model: type[Any],
        name: str,
        key: str,
        line: int,
        lines: Sequence[tuple[int, str]],
    ) -> None:
        """
        Convert the replaced value of a key of one line (or a list), and
        report its problems at the line of that replaced key.
        """
        field = attrs.fields_dict(model).get(key)
        parse: _Parse | None = None if field is None else field.metadata.get("ini")
        if field is None or parse is None:
            return  # an unknown key is reported at its last line
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
        checkClusterKeys(SectionReport(self, section), kwargs)
        if len(self.problems) != before:
            return None
        return ClusterSettings(location=self._location(section), **kwargs)

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

    def keyLine(self, section: _Section, key: str) -> int | None:
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
        return [(self.keyLine(section, key), text) for text in expected]

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
            line = self.keyLine(section, field.name)
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
        self._checkUnknownKeys(section, known)
        return kwargs

    def _checkUnknownKeys(self, section: _Section, known: set[str]) -> None:
        """
        Report each key the section's model does not have, with the key
        meant: a close spelling, or what an NGINX directive is called here.
        """
        for key in section.items:
            if key not in known:
                guess = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {guess[0]}?)" if guess else ""
                nginx = _NGINX_NAMES.get(key)
                if nginx is not None:
                    hint = f": this is NGINX's name; here {nginx}"
                self.problem(
                    self.keyLine(section, key), section.name, key, f"unknown key{hint}"
                )

    def _certificate(self, section: _Section) -> CertificateConfig | None:
        before = len(self.problems)
        kwargs = self._convert(section, CertificateConfig)
        checkCertificate(SectionReport(self, section), kwargs, self.hasAcme)
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
                self.keyLine(section, "servers"), section.name, "servers", message
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
        options = _serverFlags(flags, messages)
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
        """
        C{[listener:NAME]}: its keys one by one, its routes line by line,
        then its keys together (L{checkListener}).
        """
        before = len(self.problems)
        settings = self._convert(section, ListenerConfig)
        mode = settings.get(
            "mode", "passthrough" if "mode" not in section.items else None
        )
        routes = self._routes(section)
        keys = ListenerKeys(
            section=section,
            settings=settings,
            mode=mode,
            routes=routes,
            hasRoutes=bool(self._valueLines(section, "routes")),
        )
        checkListener(self, keys, self.upstreamNames, self.certificateNames)
        if len(self.problems) != before:
            self._draft(ListenerConfig, section, routes=tuple(routes), **settings)
            return None
        return ListenerConfig(
            name=section.sub,
            routes=tuple(routes),
            location=self._location(section),
            **settings,
        )


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
