"""
tlsgateway: a dual-mode TLS gateway (SNI passthrough and termination) on Twisted.

The public names are imported lazily, so that importing a pure module such
as L{gateway.wire.clienthello} does not pull in Twisted or OpenSSL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import ConfigError
    from gateway.run.loading import load_config
    from gateway.run.service import GatewayService
    from gateway.run.signals import installReloadOnSIGHUP

__all__ = ["ConfigError", "GatewayService", "installReloadOnSIGHUP", "load_config"]

_PUBLIC = {
    "ConfigError": "gateway.config",
    "load_config": "gateway.run.loading",
    "GatewayService": "gateway.run.service",
    "installReloadOnSIGHUP": "gateway.run.signals",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
