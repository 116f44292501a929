"""
Routes and upstreams from a shared store, merged into a configuration.

A fleet of gateways (L{gateway.cluster}) keeps tenants in etcd, as keys
under its prefix:

  - C{routes/LISTENER/PATTERN} = C{UPSTREAM [passthrough|terminate]}: one
    more line of that listener's C{routes};
  - C{upstreams/NAME} = the body of an C{[upstream:NAME]} section.

Each value is checked by the very code that reads the INI file (the
loader's own section and route conversion), one key at a time: a bad key
is refused alone, with the loader's message, and the rest apply.  The
file stays in charge: a file route wins over a stored route for the same
pattern, and a stored upstream may not take a file upstream's name.

Pure, like the loader: no I/O but a check that a named CA file exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from gateway.config.loader import _Loader
from gateway.config.scan import _scan, _Section
from gateway.config.schema import (
    GatewayConfig,
    ListenerConfig,
    Problem,
    RouteConfig,
    UpstreamConfig,
)
from gateway.config.values import _NAME
from gateway.core.routing import DEFAULT

__all__ = ["ROUTES", "UPSTREAMS", "Overlaid", "Refusal", "overlay"]

#: Key families under the prefix that this module reads.
ROUTES = "routes/"
UPSTREAMS = "upstreams/"


@attrs.frozen
class Refusal:
    """
    A stored key that was not applied.

    @ivar key: the key below the prefix (C{routes/web/a.example.com}).
    @ivar reason: the loader's message, for the log and the status page.
    """

    key: str
    reason: str


@attrs.frozen
class Overlaid:
    """
    A configuration with the stored routes and upstreams that passed.

    @ivar applied: the keys below the prefix that are in C{config}.
    """

    config: GatewayConfig
    applied: tuple[str, ...]
    refused: tuple[Refusal, ...]


def _message(problems: list[Problem], shift: int = 0) -> str:
    """
    The loader's problems as one line each, with lines counted inside the
    stored value (C{shift} is the header line the check put before it).
    """
    out = []
    for problem in problems:
        line = None if problem.line is None else problem.line - shift
        out.append(str(attrs.evolve(problem, line=line or None)))
    return "; ".join(out)


def _upstream(key: str, name: str, body: str, folder: str) -> UpstreamConfig | Refusal:
    """
    Read C{body} as the section C{[upstream:NAME]} of an INI file in
    C{folder}, with the loader's own conversion.
    """
    if not _NAME.fullmatch(name):
        return Refusal(
            key,
            f"{name!r} is not an upstream name: use letters, digits, '_', '-' and '.'",
        )
    text = f"[upstream:{name}]\n{body}\n"
    loader = _Loader(path=key, folder=folder, text=text)
    loader.scan = _scan(text)
    sections = loader._read()
    if loader.problems:
        return Refusal(key, _message(loader.problems, 1))
    if len(sections) != 1:
        return Refusal(key, "holds the body of one section: no [section] headers")
    upstream = loader._upstream(sections[0])
    if upstream is None:
        return Refusal(key, _message(loader.problems, 1))
    if upstream.tls_ca is not None and not os.access(upstream.tls_ca, os.R_OK):
        return Refusal(key, f"tls_ca: cannot read {upstream.tls_ca}")
    return upstream


def _route(
    key: str,
    listener: ListenerConfig,
    pattern: str,
    value: str,
    upstreamNames: set[str],
    folder: str,
) -> RouteConfig | Refusal:
    """
    Read C{PATTERN VALUE} as one line of the listener's C{routes}, with the
    loader's own route conversion, then what the listener asks of routes.
    """
    if not pattern or any(c.isspace() for c in pattern):
        return Refusal(key, f"{pattern!r} is not a route pattern")
    loader = _Loader(path=key, folder=folder, text="")
    loader.scan = _scan("")
    loader.upstreamNames = upstreamNames
    section = _Section(
        f"listener:{listener.name}",
        "listener",
        listener.name,
        {"routes": f"{pattern} {value.strip()}"},
        None,
    )
    routes = loader._routes(section)
    if loader.problems or len(routes) != 1:
        return Refusal(key, _message(loader.problems))
    route = routes[0]
    action = route.action or listener.mode
    if listener.mode == "tcp":
        return Refusal(key, "the listener has mode = tcp: it reads no server name")
    if action == "terminate" and not (listener.certificate or listener.certificates):
        return Refusal(
            key,
            "terminates TLS, but the listener has no certificate and private_key"
            " or certificates",
        )
    if listener.protocol == "mysql" and action != "terminate":
        return Refusal(key, "a protocol = mysql listener only terminates")
    if any(r.pattern == route.pattern for r in listener.routes) or (
        listener.upstream is not None and route.pattern == DEFAULT
    ):
        return Refusal(key, f"the file routes {route.pattern!r} on this listener")
    return attrs.evolve(route, line=None)


def overlay(config: GatewayConfig, entries: Mapping[str, str]) -> Overlaid:
    """
    Merge stored routes and upstreams into C{config}, each key checked
    alone.

    @param entries: values by key below the prefix; keys outside
        C{routes/} and C{upstreams/} are not this module's and are skipped.
    @return: the merged configuration (C{config} itself when nothing
        applies), what was applied and what was refused.
    """
    folder = os.path.dirname(config.path)
    refused: list[Refusal] = []
    applied: list[str] = []
    upstreams: dict[str, UpstreamConfig] = {}
    for key in sorted(entries):
        if not key.startswith(UPSTREAMS):
            continue
        name = key[len(UPSTREAMS) :]
        if name in config.upstreams:
            refused.append(
                Refusal(key, f"[upstream:{name}] is in the file: the file wins")
            )
            continue
        result = _upstream(key, name, entries[key], folder)
        if isinstance(result, Refusal):
            refused.append(result)
        else:
            upstreams[name] = result
            applied.append(key)
    names = set(config.upstreams) | set(upstreams)
    listeners = {listener.name: listener for listener in config.listeners}
    added: dict[str, list[RouteConfig]] = {}
    for key in sorted(entries):
        if not key.startswith(ROUTES):
            continue
        listenerName, slash, pattern = key[len(ROUTES) :].partition("/")
        listener = listeners.get(listenerName)
        if not slash or listener is None:
            refused.append(
                Refusal(key, f"no [listener:{listenerName}] in the configuration")
            )
            continue
        route = _route(key, listener, pattern, entries[key], names, folder)
        if isinstance(route, Refusal):
            refused.append(route)
            continue
        mine = added.setdefault(listenerName, [])
        if any(r.pattern == route.pattern for r in mine):
            refused.append(Refusal(key, f"another key routes {route.pattern!r}"))
            continue
        mine.append(route)
        applied.append(key)
    if not applied:
        return Overlaid(config, (), tuple(refused))
    merged = []
    for listener in config.listeners:
        extra = added.get(listener.name)
        if extra:
            routes = list(listener.routes)
            if listener.upstream is not None:
                # The file's single upstream becomes the catch-all beside
                # the stored names.
                routes.append(RouteConfig(DEFAULT, listener.upstream))
            listener = attrs.evolve(listener, routes=(*routes, *extra), upstream=None)
        merged.append(listener)
    config = attrs.evolve(
        config,
        listeners=tuple(merged),
        upstreams={**config.upstreams, **upstreams},
    )
    return Overlaid(config, tuple(applied), tuple(refused))
