"""
Embed the gateway in a Twisted application of your own.

One process runs two services under one L{MultiService}: a gateway whose
configuration is built in code (no INI file), and the application's own
service, here a small HTTP health page that answers C{200 ok} while the
gateway is running (the kind of page a load balancer or a Kubernetes
liveness probe asks for).

Run it from a checkout (or with the package installed)::

    python docs/examples/embed.py --port 8443 --upstream 127.0.0.1:9443 \\
        --health-port 8080

C{SIGTERM} or Ctrl-C stops the reactor; the gateway then stops accepting,
lets established connections finish for up to C{drain_timeout} and the
process exits 0.  docs/embedding.rst walks through this file.
"""

from __future__ import annotations

import argparse
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway import GatewayService
from gateway.config import (
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    ServerConfig,
    UpstreamConfig,
)
from gateway.service import StartupError

log = Logger(namespace="embed")


def buildConfig(port: int, upstreamHost: str, upstreamPort: int) -> GatewayConfig:
    """
    One passthrough listener on loopback that sends every connection to
    one upstream server.

    The attrs classes are the same ones L{gateway.load_config} builds from
    an INI file, and every key left out has the INI file's default.  Unlike
    C{load_config}, building them in code checks each value against its
    validator but does not cross-check the whole (an upstream name that no
    listener defines, two listeners on one port): C{startService} is the
    first to notice.
    """
    return GatewayConfig(
        # Only named in messages here: there is no file.
        path="<embed.py>",
        gateway=GatewaySettings(access_log="-", drain_timeout=10.0),
        listeners=(
            ListenerConfig(
                name="web",
                listen=(f"tcp:{port}:interface=127.0.0.1",),
                mode="passthrough",
                upstream="backend",
            ),
        ),
        upstreams={
            "backend": UpstreamConfig(
                name="backend",
                servers=(ServerConfig(host=upstreamHost, port=upstreamPort),),
            ),
        },
    )


class Health(Resource):
    """
    C{GET /healthz}: C{200 ok} while the gateway service runs, C{503}
    once it is stopping.
    """

    isLeaf = True

    def __init__(self, gateway: GatewayService) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        if self._gateway.running:
            return b"ok\n"
        request.setResponseCode(503)
        return b"stopping\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="gateway port")
    parser.add_argument(
        "--upstream", required=True, help="the TLS backend, as HOST:PORT"
    )
    parser.add_argument(
        "--health-port", type=int, required=True, help="port of the /healthz page"
    )
    args = parser.parse_args(argv)
    upstreamHost, _, upstreamPort = args.upstream.rpartition(":")

    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )

    top = MultiService()
    gateway = GatewayService(
        buildConfig(args.port, upstreamHost, int(upstreamPort)), reactor
    )
    # The gateway first: MultiService starts its children in order, so a
    # gateway port that cannot be opened fails the start before the rest
    # of the application has started anything.
    gateway.setServiceParent(top)
    root = Resource()
    root.putChild(b"healthz", Health(gateway))
    StreamServerEndpointService(
        serverFromString(reactor, f"tcp:{args.health_port}:interface=127.0.0.1"),
        Site(root),
    ).setServiceParent(top)

    try:
        top.startService()
    except StartupError as e:
        log.critical("cannot start: {error}", error=str(e))
        return 1
    # Twisted's own SIGTERM/SIGINT handlers stop the reactor; stopping the
    # services from a "before shutdown" trigger makes the reactor wait for
    # the Deferred that stopService returns: the gateway's drain.
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    log.info("health page on http://127.0.0.1:{port}/healthz", port=args.health_port)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
