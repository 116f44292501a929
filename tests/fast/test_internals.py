"""
The quarantine's fallbacks for what is not on the data path: each answer
without pyOpenSSL's binding or Twisted's internals (another release), and
the switch.  The data-path fast paths' fallbacks are tested beside their
users: tests/connection/test_relay.py, tests/tls/test_transport.py
(C{PublicAPITLSTransportTests}), and end to end tests/integration/test_portable.py.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trustme
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from gateway.fast import hub as fasthub
from gateway.fast import internals as fastpath
from tests.helpers import ROOT, fastPathOnly


@pytest.fixture
def noBinding(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A pyOpenSSL without the cffi binding C{OpenSSL._util}.
    """
    monkeypatch.setattr(fastpath, "_lib", None)
    monkeypatch.setattr(fastpath, "DIRECT_TLS", False)


def _handshaken(context: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    ca = trustme.CA()
    leaf = ca.issue_cert("fast.example.test")
    server = SSL.Context(SSL.TLS_SERVER_METHOD)
    leaf.configure_cert(server)
    ca.configure_trust(context)
    serverSide = SSL.Connection(server, None)
    serverSide.set_accept_state()
    clientSide = SSL.Connection(context, None)
    clientSide.set_connect_state()
    clientSide.set_tlsext_host_name(b"fast.example.test")
    for _ in range(10):
        for one, other in ((clientSide, serverSide), (serverSide, clientSide)):
            with contextlib.suppress(SSL.WantReadError):
                one.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(1 << 16))
    return clientSide, serverSide


def test_groupsWithTheBinding() -> None:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert fastpath.setGroups(context, ("x25519", "secp384r1"))
    assert not fastpath.setGroups(context, ("no-such-group",))


def test_groupsWithoutTheBindingTakeOneCurve(noBinding: None) -> None:
    """
    Without the binding a single curve still goes through the public
    C{set_tmp_ecdh}; a list cannot be set.
    """
    server = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert fastpath.setGroups(server, ("secp384r1",))
    assert not fastpath.setGroups(server, ("x25519", "secp384r1"))
    assert not fastpath.setGroups(server, ("x25519",))


def test_earlyDataWithAndWithoutTheBinding(monkeypatch: pytest.MonkeyPatch) -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert fastpath.refuseEarlyData(context)
    monkeypatch.setattr(fastpath, "_lib", None)
    assert not fastpath.refuseEarlyData(context)


def test_sessionReusedWithAndWithoutTheBinding(monkeypatch: pytest.MonkeyPatch) -> None:
    client, server = _handshaken(SSL.Context(SSL.TLS_CLIENT_METHOD))
    assert client.get_cipher_name() is not None
    assert fastpath.sessionReused(server) is False
    monkeypatch.setattr(fastpath, "_lib", None)
    assert fastpath.sessionReused(server) is False


def test_verifyErrorText(noBinding: None) -> None:
    assert fastpath.verifyErrorText(10) == "verification error 10"


def test_verifyErrorTextWithTheBinding() -> None:
    assert fastpath.verifyErrorText(10) == "certificate has expired"


def test_unsentBytesUnknownMeansYes() -> None:
    """
    A transport without Twisted's C{_tempDataLen} cannot be told empty, so
    the splice relay leaves it alone.
    """

    class Bare:
        dataBuffer = b""
        offset = 0

    assert fastpath.hasUnsentBytes(Bare())  # type: ignore[arg-type]


@pytest.fixture
def connections() -> Iterator[tuple[EPollReactor, tcp.Connection, tcp.Connection]]:
    """
    Two open Twisted TCP transports (not run by their reactor).
    """
    reactor = EPollReactor()
    with socket.create_server(("127.0.0.1", 0)) as server:
        near = socket.create_connection(server.getsockname())
        far, _ = server.accept()
    transports = []
    for sock in (near, far):
        sock.setblocking(False)
        transport = tcp.Connection(sock, Protocol(), reactor)
        transport.connected = True
        transports.append(transport)
    yield reactor, transports[0], transports[1]
    near.close()
    far.close()
    hub = fasthub.HUBS.pop(reactor, None)
    if hub is not None:
        hub.close()
    reactor._poller.close()


@fastPathOnly
def test_hubReadersForTwoTcpTransports(
    connections: tuple[EPollReactor, tcp.Connection, tcp.Connection],
) -> None:
    reactor, client, upstream = connections
    readers = fasthub.hubReaders(reactor, client, upstream)
    assert readers is not None
    assert [reader.transport for reader in readers] == [client, upstream]


def test_noHubReadersWithoutTheFastPath(
    connections: tuple[EPollReactor, tcp.Connection, tcp.Connection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Without epoll, with the switch on, or without Twisted's internals, the
    reactor reads the relayed sockets itself.
    """
    monkeypatch.setattr(fasthub, "HUB_READER", False)
    reactor, client, upstream = connections
    assert fasthub.hubReaders(reactor, client, upstream) is None


@fastPathOnly
def test_theFastPathsAreOnByDefault() -> None:
    assert fastpath.DIRECT_TCP
    assert fastpath.DIRECT_TLS
    assert hasattr(select, "epoll") == fastpath.HUB_READER


def test_theSwitchTurnsEveryFastPathOff() -> None:
    """
    C{TLSGATEWAY_PORTABLE=1}, in a fresh interpreter (the switch is read
    at import): every fast path is off, and the splice relay with them.
    """
    code = (
        "from gateway.fast import internals as fastpath; from gateway.connection import spliceflow; "
        "print(fastpath.DIRECT_TCP, fastpath.DIRECT_TLS, fastpath.HUB_READER, "
        "spliceflow.splice)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"TLSGATEWAY_PORTABLE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["False", "False", "False", "None"]


# -- one worker woken per connection ----------------------------------------------


def _epollMasks(poller: select.epoll) -> dict[int, int]:
    """
    The event mask of each descriptor in C{poller}, as the kernel holds
    it (C{/proc/self/fdinfo}).
    """
    masks = {}
    with open(f"/proc/self/fdinfo/{poller.fileno()}") as info:
        for line in info:
            if line.startswith("tfd:"):
                fields = line.split()
                masks[int(fields[1])] = int(fields[3], 16)
    return masks


@pytest.fixture
def sharedPort() -> Iterator[tuple[EPollReactor, tcp.Port, socket.socket]]:
    """
    A listening socket adopted by an epoll reactor, as a worker adopts the
    one its supervisor hands down.
    """
    reactor = EPollReactor()
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    port = reactor.adoptStreamPort(
        listening.fileno(), socket.AF_INET, Factory.forProtocol(Protocol)
    )
    yield reactor, port, listening
    port.stopListening()
    listening.close()
    reactor._poller.close()


@fastPathOnly
@pytest.mark.skipif(not hasattr(select, "EPOLLEXCLUSIVE"), reason="no EPOLLEXCLUSIVE")
def test_aSharedListeningSocketWakesOneWorker(
    sharedPort: tuple[EPollReactor, tcp.Port, socket.socket],
) -> None:
    reactor, port, _listening = sharedPort
    fd = port.fileno()
    assert not _epollMasks(reactor._poller)[fd] & select.EPOLLEXCLUSIVE
    assert fastpath.acceptExclusively(reactor, port)
    mask = _epollMasks(reactor._poller)[fd]
    assert mask & select.EPOLLEXCLUSIVE
    assert mask & select.EPOLLIN
    # Twisted still knows it as a reader, and its stopReading still works.
    assert port in reactor.getReaders()
    port.stopReading()
    assert fd not in _epollMasks(reactor._poller)
    port.startReading()
    assert fd in _epollMasks(reactor._poller)


def test_aSharedListeningSocketAcceptsAfterTheChange(
    sharedPort: tuple[EPollReactor, tcp.Port, socket.socket],
) -> None:
    """
    Exclusive or not (the fallback leaves Twisted's registration alone),
    the reactor is told of a waiting connection.
    """
    reactor, port, listening = sharedPort
    fastpath.acceptExclusively(reactor, port)
    with socket.create_connection(listening.getsockname()):
        events = reactor._poller.poll(5)
    assert (port.fileno(), select.EPOLLIN) in events


def test_acceptExclusivelyFallsBackWithoutTheReactorsInternals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = type("P", (), {"fileno": lambda self: 3})()
    assert not fastpath.acceptExclusively(MemoryReactor(), port)
    monkeypatch.setattr(fastpath, "PORTABLE", True)
    assert not fastpath.acceptExclusively(EPollReactor(), port)


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
@pytest.mark.parametrize("portable", [False, True])
def test_acceptorGivesWhatAcceptGives(
    monkeypatch: pytest.MonkeyPatch, family: int, host: str, portable: bool
) -> None:
    """
    The hub's accept (C{_accept} and a socket made from its descriptor) and
    its fallback (C{socket.accept}, with the fast paths off) give the same:
    a socket of the listening socket's family, connected to the client,
    and the client's address.
    """
    monkeypatch.setattr(fastpath, "PORTABLE", portable)
    with socket.socket(family, socket.SOCK_STREAM) as listening:
        listening.bind((host, 0))
        listening.listen()
        accept = fastpath.acceptor(listening)
        assert (accept == listening.accept) is portable
        with socket.create_connection(listening.getsockname()[:2]) as client:
            accepted, address = accept()
            with accepted:
                assert isinstance(accepted, socket.socket)
                assert accepted.family == family
                assert address[:2] == client.getsockname()[:2]
                client.sendall(b"both ways")
                assert accepted.recv(100) == b"both ways"
