"""
The C{twistd tlsgateway} plugin.

This file lives in Twisted's C{twisted.plugins} namespace package, which
must have no C{__init__.py}; it only names the service maker, so that
importing it while twistd scans its plugins costs nothing.
"""

from twisted.application.service import ServiceMaker

tlsgateway = ServiceMaker(
    "tlsgateway",
    "gateway.cli.tap",
    "TLS gateway: SNI passthrough and TLS termination",
    "tlsgateway",
)
