"""
The INI file, read into an immutable model, with every problem at once.

L{parseConfig} turns the operator's file into a L{GatewayConfig} of frozen
attrs classes, or raises L{ConfigError} listing I{every} problem as
C{FILE:LINE: [section] key: message}, the way C{nginx -t} and compilers
do: an operator fixes a file in one edit, not one error per reload.

This module is the package's face: import from it.  Behind it, each
module does one thing, bottom up:

  - L{values}: value parsers, one INI value's text in, a value or an
    operator message out (durations, sizes, lists, networks, TLS
    versions, server addresses, etcd URLs...).
  - L{endpoints}: C{listen} and C{metrics} endpoint strings, checked
    with Twisted's own C{serverFromString} against a C{MemoryReactor};
    that import happens only when a file is loaded, so importing this
    package stays Twisted-free.
  - L{schema}: the frozen attrs model, each field with the parser of its
    key, and L{Problem}, L{ConfigWarning}, L{ConfigError}.
  - L{scan}: one walk over the text with configparser's own line rules,
    for the line of every section, key and continuation line, and every
    duplicate section or key.
  - L{checks}: keys judged together and sections against each other
    (modes, routes, certificates, the edge, ECH, QUIC, MySQL, two
    listeners on one address).
  - L{loader}: one conversion of one text, section by section and key by
    key, calling the checks, collecting every problem.

L{files} lists the files a configuration names (what a reload reads
again), and L{overlay} checks routes and upstreams a cluster stores.

This package knows nothing of certificates: L{gateway.run.loading} is
what loads a configuration the way C{check}, a start and a reload do,
this conversion first, then every file it names.
"""

from __future__ import annotations

from gateway.config.loader import parseConfig, parseConfigText, readConfigFile
from gateway.config.schema import (
    DEFAULT_RENEW_BEFORE,
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
)
from gateway.config.values import MAX_TICKET_LIFETIME, PASSTHROUGH_VERSIONS

__all__ = [
    "DEFAULT_RENEW_BEFORE",
    "MAX_TICKET_LIFETIME",
    "PASSTHROUGH_VERSIONS",
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
    "readConfigFile",
]
