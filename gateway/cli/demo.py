"""
C{tlsgateway demo}: SNI routing on loopback, with nothing to set up first.

The demo exists so that someone who has just installed the package can see
the gateway route by server name in one command, with real TLS clients, and
without certificates, DNS entries or backends of their own.  It therefore
brings everything along in one process and one reactor: a throwaway CA, two
small HTTPS backends holding certificates from it, and a L{GatewayService}
started from an ordinary INI file (written next to the CA, so the reader can
open the configuration that is actually running).  Ctrl-C stops it all and
removes every file it wrote.

Nothing here is used by the gateway itself; the gateway is started exactly
as C{tlsgateway run} would start it, so what the demo shows is the product,
not a special case of it.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger, globalLogBeginner

from gateway.cli.democerts import signCertificate

__all__ = ["runDemo"]

_log = Logger()

#: Names under a reserved top-level domain (RFC 2606): they can never
#: reach a real host, so a demo command pasted elsewhere does no harm.
DOMAIN = "demo.test"

#: How long the demo certificates are valid.  Short, because they are
#: thrown away with the process; a day also survives a laptop's clock being
#: a little off (L{signCertificate} backdates them by an hour for the
#: other end).
_VALIDITY = datetime.timedelta(days=1)

#: Headers of the backends' single answer.  C{Connection: close} because
#: each backend answers one request per connection and closes it, so that
#: every C{curl} makes exactly one line in the access log.
_RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
)

#: Bytes a backend reads before answering even without a complete request
#: header, so that a client sending garbage cannot make it buffer forever.
_MAX_REQUEST_HEAD = 64 * 1024


@attrs.frozen
class _Backend:
    """
    One demo backend, as the demo needs to describe and configure it.

    @ivar app: the upstream name in the INI file (C{app1}).
    @ivar name: its host name and the name its page greets with.
    @ivar extraNames: other names on its certificate, for the other routes
        that send connections to it: in passthrough the backend, not the
        gateway, presents the certificate, so it must cover every name a
        client may reach it by.
    """

    app: str
    name: str
    extraNames: tuple[str, ...] = ()


@attrs.frozen
class _Route:
    """
    One line of the demo's routing table, and how to show it off.

    @ivar example: a host to C{curl} that takes this route.
    @ivar why: why that host takes it, for the printed instructions.
    """

    pattern: str
    app: str
    example: str
    why: str


#: app1 also answers the C{default} route, which a client that sends no
#: SNI (curl to an IP address) takes, hence its IP address SAN; app2 also
#: answers the wildcard route, hence its wildcard SAN.
_BACKENDS = (
    _Backend("app1", f"app1.{DOMAIN}", ("127.0.0.1",)),
    _Backend("app2", f"app2.{DOMAIN}", (f"*.{DOMAIN}",)),
)

#: In file order, which is also the order of the printed examples.
_ROUTES = (
    _Route(f"app1.{DOMAIN}", "app1", f"app1.{DOMAIN}", "exact name"),
    _Route(f"app2.{DOMAIN}", "app2", f"app2.{DOMAIN}", "exact name"),
    _Route(f"*.{DOMAIN}", "app2", f"other.{DOMAIN}", "no exact route, so the wildcard"),
    _Route("default", "app1", "127.0.0.1", "no SNI (an IP address), so default"),
)


@attrs.frozen
class _Leaf:
    """
    A backend's private key and certificate, as pyOpenSSL objects.
    """

    key: crypto.PKey
    certificate: crypto.X509


def _makeCA() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """
    A self-signed CA that may sign server certificates and nothing else.

    C{path_length=0} and no key usage beyond signing certificates: the CA's
    key lives for seconds in memory, but a CA certificate a user may have
    copied somewhere should be as narrow as a CA can be.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgateway demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "tlsgateway demo CA (throwaway)"),
        ]
    )
    certificate = signCertificate(name, key, None, pathLength=0, validity=_VALIDITY)
    return key, certificate


def _issue(
    caKey: ec.EllipticCurvePrivateKey,
    caCertificate: x509.Certificate,
    names: Sequence[str],
) -> _Leaf:
    """
    An ECDSA P-256 server certificate for C{names}, signed by the CA.

    ECDSA because it is what a new deployment would choose and keys are
    generated in microseconds, so the demo starts at once.  The extensions
    are those strict clients (OpenSSL 3, curl, browsers) insist on: SANs,
    not a CA, server authentication only.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = signCertificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
        key,
        (caCertificate.subject, caKey),
        names=names,
        purpose=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=_VALIDITY,
    )
    return _Leaf(
        crypto.PKey.from_cryptography_key(key),
        crypto.X509.from_cryptography(certificate),
    )


class _HelloProtocol(Protocol):
    """
    Answers the first HTTP request of a connection with its own name.

    It reads no more of the request than the end of its header: any method
    and path get the same page, which is all the demo needs to show where
    a connection went.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._head = b""
        self._answered = False

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._head += data
        if b"\r\n\r\n" not in self._head and len(self._head) < _MAX_REQUEST_HEAD:
            return
        self._answered = True
        body = f"hello from {self._name}\n".encode()
        assert self.transport is not None
        self.transport.write(
            _RESPONSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        self.transport.loseConnection()


class _HelloFactory(Factory):
    noisy = False

    def __init__(self, name: str) -> None:
        self._name = name

    def buildProtocol(self, addr: object) -> _HelloProtocol:
        return _HelloProtocol(self._name)


def _configText(port: int, backendPorts: dict[str, int]) -> str:
    """
    The demo's INI file: the shape of C{etc/sni-routing.ini}, on loopback.
    """
    width = max(len(route.pattern) for route in _ROUTES) + 2
    routes = "\n".join(f"    {r.pattern:<{width}}{r.app}" for r in _ROUTES)
    upstreams = "\n".join(
        f"[upstream:{app}]\nservers = 127.0.0.1:{backendPort}\n"
        for app, backendPort in backendPorts.items()
    )
    return (
        textwrap.dedent(
            f"""\
            # Written by `tlsgateway demo`; removed when the demo stops.
            # The same shape as etc/sni-routing.ini, on loopback.

            [gateway]
            access_log = -
            access_log_format = text
            # Ctrl-C should stop the demo at once, not wait for a stuck client.
            drain_timeout = 1s

            [listener:demo]
            listen = tcp:{port}:interface=127.0.0.1
            mode = passthrough
            # Exact names first, then the longest wildcard, then default
            # (no SNI, or a name that nothing else matches).
            routes =
            """
        )
        + routes
        + "\n\n"
        + upstreams
    )


def _curl(host: str, port: int, caPath: Path) -> str:
    """
    The command that reaches the gateway as C{host} would, without DNS.

    C{--resolve} makes curl connect to loopback while it still sends
    C{host} as SNI and checks the certificate against it.  For an IP
    address no C{--resolve} is needed, and curl sends no SNI at all.
    """
    url = f"https://{host}:{port}/"
    if host == "127.0.0.1":
        return f"curl --cacert {caPath} {url}"
    return f"curl --resolve {host}:{port}:127.0.0.1 --cacert {caPath} {url}"


def _instructions(
    port: int, directory: Path, backendPorts: dict[str, int], configPath: Path
) -> str:
    """
    What the demo tells its user: what runs where, and what to type.
    """
    caPath = directory / "ca.pem"
    lines = [
        "",
        "tlsgateway demo: SNI routing (passthrough) on loopback",
        f"  gateway        127.0.0.1:{port}, routes by the name in the ClientHello",
    ]
    lines += [
        f"  backend {b.app}   127.0.0.1:{backendPorts[b.app]}, HTTPS, certificate"
        f" for {', '.join((b.name, *b.extraNames))}"
        for b in _BACKENDS
    ]
    lines += [
        f"  CA             {caPath} (throwaway: trust it only with --cacert)",
        f"  configuration  {configPath}",
        "",
        "Try it from another terminal; each answer names the backend that sent it:",
        "",
    ]
    for route in _ROUTES:
        lines.append(f"  # {route.why}: {route.pattern} -> upstream {route.app}")
        lines.append(f"  {_curl(route.example, port, caPath)}")
    lines += [
        "",
        "The access log (one line per connection) follows here; Twisted's log",
        "goes to standard error.  Ctrl-C stops it all.",
        "",
    ]
    return "\n".join(lines)


def _say(text: str) -> None:
    """
    Talk to the person who typed C{tlsgateway demo}.

    Standard output, flushed at once: it is the demo's user interface (and
    a test reads it through a pipe), not a log.
    """
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def runDemo(port: int = 8443, reactor: Any = None) -> int:
    """
    Run the demo until Ctrl-C or SIGTERM.

    @param port: the gateway's port on 127.0.0.1; the backends take
        ephemeral ports, so this is the only one that can be in use.
    @param reactor: the reactor to run; the global one by default,
        imported here rather than at module import so that importing this
        module installs no reactor.
    @return: the exit status: 0 after a stop, 1 if the demo could not start
        (the port is in use, say), with the reason on standard error.
    """
    if not 1 <= port <= 65535:
        sys.stderr.write(
            f"tlsgateway demo: --port {port} is not a TCP port (1-65535)\n"
        )
        return 1
    if reactor is None:
        from gateway.fast import hubreactor

        hubreactor.install()  # as tlsgateway run does
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    directory = Path(tempfile.mkdtemp(prefix="tlsgateway-demo-"))
    try:
        return _run(reactor, port, directory)
    except KeyboardInterrupt:
        # Ctrl-C before the reactor took over the signal: a stop all the same.
        return 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _say(f"tlsgateway demo stopped; {directory} removed")


def _startBackends(
    reactor: Any, directory: Path
) -> tuple[dict[str, int], list[IListeningPort]]:
    """
    Make the CA (its certificate goes to C{directory/ca.pem}, for curl) and
    start one HTTPS backend per L{_BACKENDS} entry on an ephemeral port.

    @return: each backend's port by upstream name, and the listening ports
        to stop at the end.
    """
    caKey, caCertificate = _makeCA()
    (directory / "ca.pem").write_bytes(
        caCertificate.public_bytes(serialization.Encoding.PEM)
    )
    ports: dict[str, int] = {}
    listening: list[IListeningPort] = []
    for backend in _BACKENDS:
        leaf = _issue(caKey, caCertificate, (backend.name, *backend.extraNames))
        options = CertificateOptions(
            privateKey=leaf.key,
            certificate=leaf.certificate,
            # Twisted 26.10 answers every ALPN offer through its own select
            # callback; with no protocols of ours it "selects" the empty
            # string, which OpenSSL answers with an internal_error alert, so
            # a client that offers ALPN (curl does) could not connect.
            # HTTP/1.1 is also the truth: it is all these backends speak.
            acceptableProtocols=[b"http/1.1"],
        )
        listeningPort = reactor.listenSSL(
            0, _HelloFactory(backend.name), options, interface="127.0.0.1"
        )
        listening.append(listeningPort)
        ports[backend.app] = listeningPort.getHost().port
        _log.info(
            "demo backend {name} on 127.0.0.1:{port}",
            name=backend.name,
            port=ports[backend.app],
        )
    return ports, listening


def _run(reactor: Any, port: int, directory: Path) -> int:
    """
    Build everything in C{directory}, serve until stopped, stop everything.
    """
    from gateway.config import ConfigError
    from gateway.run.generation import StartupError
    from gateway.run.loading import load_config
    from gateway.run.logs import consoleObserver
    from gateway.run.service import GatewayService

    # info, as a gateway logs by default: no line per connection (the
    # access log on standard output has one for each).
    globalLogBeginner.beginLoggingTo(
        [consoleObserver("info")], redirectStandardIO=False
    )
    backendPorts, listening = _startBackends(reactor, directory)

    def stopBackends() -> Deferred[Any]:
        return DeferredList([maybeDeferred(p.stopListening) for p in listening])

    configPath = directory / "gateway.ini"
    configPath.write_text(_configText(port, backendPorts), encoding="utf-8")
    try:
        config = load_config(str(configPath))
    except ConfigError as e:
        # The demo wrote this file itself: a problem here is a bug in the
        # demo (or a gateway that rejects what it documents), not the user's.
        sys.stderr.write(f"tlsgateway demo: the demo configuration is invalid:\n{e}\n")
        stopBackends()
        return 1

    service = GatewayService(config, reactor)
    try:
        service.startService()
    except StartupError as e:
        other = port + 1 if port < 65535 else 8443
        sys.stderr.write(
            f"tlsgateway demo: cannot start the gateway on 127.0.0.1:{port}:\n"
            f"  {e}\n"
            f"Is another program (or another demo) using port {port}?  "
            f"Pick another one: tlsgateway demo --port {other}\n"
        )
        stopBackends()
        return 1

    def stopAll() -> Deferred[Any]:
        _log.info("demo stopping")
        return DeferredList([service.stopService(), stopBackends()])

    reactor.addSystemEventTrigger("before", "shutdown", stopAll)
    # Printed once the reactor runs, so that its signal handlers are in
    # place by the time a user (or a test) acts on what it says.
    reactor.callWhenRunning(
        _say, _instructions(port, directory, backendPorts, configPath)
    )
    reactor.run()
    return 0
