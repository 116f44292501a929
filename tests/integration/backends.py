"""
Test backends and test clients for the end-to-end tests.

A backend is a real listening socket on loopback, served by threads inside
the pytest process, so a test can look at exactly what reached the server
behind the gateway (how many connections were accepted, which SNI name, a
digest of every byte) without parsing logs.

TLS is driven through C{ssl.SSLObject} over memory BIOs instead of
C{ssl.SSLSocket} because the half-close tests need the TCP socket and the
TLS session to be separate: a half-close is a TCP FIN, and the test must see
(or send) it independently of TLS C{close_notify}.  Feeding a bare FIN to
OpenSSL 3 as EOF would poison the session for writing ("unexpected EOF"),
so L{TLSStream} notes a TCP EOF without telling OpenSSL; the session stays
writable, which is what a half-closed connection is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
import pytest
import trustme

#: Every blocking socket call in the backends and clients gives up after
#: this long, so a broken gateway fails a test instead of hanging it.
IO_TIMEOUT = 30.0

_PATTERN_BLOCK_SIZE = (
    1_000_003  # odd: a lost or repeated 64 KiB read changes the digest
)


def _patternBlock(seed: int) -> bytes:
    return random.Random(seed).randbytes(_PATTERN_BLOCK_SIZE)


def patternChunks(
    total: int, seed: int = 1, chunkSize: int = 256 * 1024
) -> Iterator[bytes]:
    """
    Deterministic pseudo-random bytes, C{total} of them, in chunks.

    A 1,000,003-byte random block repeated: cheap to produce at hundreds of
    MB/s, and since no read or write size divides the block, a dropped,
    repeated or reordered segment changes the SHA-256 of the stream.
    """
    block = memoryview(_patternBlock(seed) * 2)
    offset = 0
    sent = 0
    while sent < total:
        n = min(chunkSize, total - sent, _PATTERN_BLOCK_SIZE)
        yield bytes(block[offset : offset + n])
        offset = (offset + n) % _PATTERN_BLOCK_SIZE
        sent += n


def patternDigest(total: int, seed: int = 1) -> str:
    """The SHA-256 hex digest of C{patternChunks(total, seed)}."""
    digest = hashlib.sha256()
    for chunk in patternChunks(total, seed, chunkSize=_PATTERN_BLOCK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()


class Stream(Protocol):
    """What a backend or a test client needs from a connection, TLS or not."""

    sock: socket.socket
    rawSent: int
    rawReceived: int
    tcpEof: bool
    tlsEof: bool

    def send(self, data: bytes) -> None: ...
    def recv(self, size: int = 65536) -> bytes: ...
    def closeNotify(self) -> None: ...
    def shutdownWrite(self) -> None: ...
    def close(self) -> None: ...


class PlainStream:
    """A plain TCP connection with the same surface as L{TLSStream}."""

    tlsEof = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rawSent = 0
        self.rawReceived = 0
        self.tcpEof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.rawSent += len(data)

    def recv(self, size: int = 65536) -> bytes:
        if self.tcpEof:
            return b""
        data = self.sock.recv(size)
        self.rawReceived += len(data)
        if not data:
            self.tcpEof = True
        return data

    def closeNotify(self) -> None:
        """Nothing to do without TLS."""

    def shutdownWrite(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class TLSStream:
    """
    TLS over a socket through memory BIOs: the caller controls TCP and TLS.

    @ivar rawSent: bytes written to the TCP socket (TLS records, the
        ClientHello included): what the gateway's C{bytes_in} must count.
    @ivar rawReceived: bytes read from the TCP socket (C{bytes_out}).
    @ivar tcpEof: the peer's FIN arrived.  Not passed to OpenSSL (see the
        module docstring), so the session can still be written.
    @ivar tlsEof: the peer's C{close_notify} arrived.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        serverSide: bool = False,
        serverHostname: str | None = None,
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslObject = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=serverSide,
            server_hostname=serverHostname,
        )
        self.rawSent = 0
        self.rawReceived = 0
        self.tcpEof = False
        self.tlsEof = False

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)
            self.rawSent += len(data)

    def _fill(self) -> bool:
        """Read one TCP segment into OpenSSL; C{False} at TCP EOF."""
        if self.tcpEof:
            return False
        data = self.sock.recv(256 * 1024)
        self.rawReceived += len(data)
        if not data:
            self.tcpEof = True
            return False
        self._incoming.write(data)
        return True

    def takeClientHello(self) -> bytes:
        """
        Start a client handshake and return its first flight unsent.

        The caller sends these bytes as it likes (one at a time, say) and then
        calls L{handshake} to finish.  The bytes count as sent.
        """
        with contextlib.suppress(ssl.SSLWantReadError):
            self.sslObject.do_handshake()
        hello = self._outgoing.read()
        self.rawSent += len(hello)
        return hello

    def handshake(self) -> None:
        while True:
            try:
                self.sslObject.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionError(
                        "connection closed during the TLS handshake"
                    ) from None
            else:
                self._flush()
                return

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), 256 * 1024):
            self.sslObject.write(view[start : start + 256 * 1024])
            self._flush()

    def recv(self, size: int = 65536) -> bytes:
        """Application data; C{b""} after C{close_notify} or TCP EOF."""
        while True:
            if self.tlsEof:
                return b""
            try:
                data = self.sslObject.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return b""
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            self._flush()
            if not data:
                self.tlsEof = True
            return data

    def closeNotify(self) -> None:
        """Send C{close_notify}; the session can still read, as TLS 1.3 allows."""
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLError):
            self.sslObject.unwrap()
        self._flush()

    def shutdownWrite(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class Digest(Protocol):
    """What L{readUntilEof} needs of a C{hashlib} object."""

    def update(self, data: bytes, /) -> None: ...


def readUntilEof(stream: Stream, digest: Digest | None = None) -> int:
    """Read to EOF, feeding C{digest}; return the number of bytes read."""
    total = 0
    while data := stream.recv(256 * 1024):
        total += len(data)
        if digest is not None:
            digest.update(data)
    return total


def readUntilTcpEof(stream: Stream) -> bytes:
    """Read to TCP EOF (past a C{close_notify}); return the application data."""
    received = bytearray()
    while data := stream.recv():
        received += data
    while not stream.tcpEof:
        # After close_notify the TLS layer is done, but the FIN is what
        # half-close tests care about: wait for it on the raw socket.
        extra = stream.sock.recv(65536)
        stream.rawReceived += len(extra)
        if not extra:
            stream.tcpEof = True
    return bytes(received)


def echoRounds(stream: TLSStream, rounds: int) -> tuple[str, str]:
    """
    C{rounds} messages of many sizes (one byte to a quarter of a MiB, about
    record sizes), each echoed back whole before the next is sent, on one
    connection to an echo server: the digests of what was sent and what
    came back.
    """
    sent, received = hashlib.sha256(), hashlib.sha256()
    for round_ in range(rounds):
        size = (1, 6, 300, 4000, 16384, 16385, 70000, 250000)[round_ % 8] + round_
        request = os.urandom(size)
        sent.update(request)
        stream.send(request)
        got = 0
        while got < size:
            chunk = stream.recv(size - got)
            assert chunk, f"closed after {got} of {size} bytes in round {round_}"
            received.update(chunk)
            got += len(chunk)
    return sent.hexdigest(), received.hexdigest()


def closeCleanly(stream: TLSStream) -> bytes:
    """
    C{close_notify} and FIN, then read to the peer's FIN (counting every
    byte on the wire) and close: the application data that came after
    ours (none, from an echo server that had answered everything).
    """
    stream.closeNotify()
    stream.shutdownWrite()
    rest = readUntilTcpEof(stream)
    stream.close()
    return rest


@attrs.define
class ConnectionRecord:
    """What one backend connection saw; complete once C{done} is set."""

    sni: str | None = None
    received: int = 0
    receivedDigest: str | None = None
    sent: int = 0
    sentDigest: str | None = None
    tcpEofSeen: bool = False
    tlsEofSeen: bool = False
    error: str | None = None
    done: threading.Event = attrs.Factory(threading.Event)


def loopbackListener(backlog: int) -> tuple[socket.socket, str]:
    """
    A listening socket on 127.0.0.1 whose C{accept} wakes every 0.1 s (so
    its loop can stop, L{accepting}), and its C{host:port}.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    listener.settimeout(0.1)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def accepting(
    listener: socket.socket, stopping: threading.Event
) -> Iterator[socket.socket]:
    """
    Each connection C{listener} accepts, until C{stopping} is set or the
    listener is closed.
    """
    while not stopping.is_set():
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        yield sock


MODES = ("name", "echo", "sink-hash", "source")


class Backend:
    """
    A threaded test server on 127.0.0.1 (or C{host}, another loopback
    address; on C{port} to restart one where it was).

    Modes:
      - C{name}: read an HTTP request (or whatever arrives), answer
        C{200 OK} with the backend's name as body, close.
      - C{echo}: send back every byte until EOF, then close.
      - C{sink-hash}: read until TCP EOF, then send C{"<sha256hex> <count>\\n"}
        and close.  It answers only after the FIN: that is the half-close test.
      - C{source}: send C{sourceBytes} of L{patternChunks}, optionally
        C{close_notify}, then C{shutdown(SHUT_WR)}; keep reading until EOF
        and record the digest of what was read.

    @ivar accepted: connections accepted so far (TCP accepts, before TLS).
    @ivar records: one L{ConnectionRecord} per accepted connection.
    """

    def __init__(
        self,
        name: str,
        mode: str = "name",
        *,
        certificate: trustme.LeafCert | None = None,
        sourceBytes: int = 0,
        sourceSeed: int = 1,
        sourceCloseNotify: bool = True,
        sendBufferSize: int | None = None,
        ioTimeout: float = IO_TIMEOUT,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown backend mode {mode!r}")
        self.name = name
        self.mode = mode
        self.sourceBytes = sourceBytes
        self.sourceSeed = sourceSeed
        self.sourceCloseNotify = sourceCloseNotify
        self.ioTimeout = ioTimeout
        self._sendBufferSize = sendBufferSize
        self._context: ssl.SSLContext | None = None
        self._sniByObject: dict[int, str | None] = {}
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            certificate.configure_cert(context)
            context.sni_callback = self._recordSni
            self._context = context
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._accepted = 0
        self.records: list[ConnectionRecord] = []
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.host = host
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._acceptThread = threading.Thread(
            target=self._acceptLoop, name=f"backend-{name}-accept", daemon=True
        )
        self._acceptThread.start()

    @property
    def tls(self) -> bool:
        return self._context is not None

    @property
    def address(self) -> str:
        """C{host:port}, as the gateway's access log and C{servers} write it."""
        return f"{self.host}:{self.port}"

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _recordSni(
        self, sslObject: object, serverName: str | None, context: object
    ) -> None:
        with self._lock:
            self._sniByObject[id(sslObject)] = serverName

    def waitForRecords(
        self, count: int, timeout: float = 10.0
    ) -> list[ConnectionRecord]:
        """Wait until C{count} connections have finished; return their records."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                records = list(self.records)
            if len(records) >= count and all(r.done.is_set() for r in records[:count]):
                return records[:count]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"backend {self.name}: {len(records)} connection(s) accepted,"
                    f" {sum(r.done.is_set() for r in records)} finished after"
                    f" {timeout}s; wanted {count} finished: {records!r}"
                )
            time.sleep(0.02)

    def _acceptLoop(self) -> None:
        for sock in accepting(self._listener, self._stopping):
            record = ConnectionRecord()
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                self._accepted += 1
                self.records.append(record)
                self._connections.append(sock)
                thread = threading.Thread(
                    target=self._serve,
                    args=(sock, record),
                    name=f"backend-{self.name}-conn{self._accepted}",
                    daemon=True,
                )
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, record: ConnectionRecord) -> None:
        try:
            sock.settimeout(self.ioTimeout)
            if self._sendBufferSize is not None:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, self._sendBufferSize
                )
            stream: Stream
            if self._context is not None:
                tlsStream = TLSStream(sock, self._context, serverSide=True)
                tlsStream.handshake()
                with self._lock:
                    record.sni = self._sniByObject.pop(id(tlsStream.sslObject), None)
                stream = tlsStream
            else:
                stream = PlainStream(sock)
            {
                "name": self._serveName,
                "echo": self._serveEcho,
                "sink-hash": self._serveSinkHash,
                "source": self._serveSource,
            }[self.mode](stream, record)
            record.tcpEofSeen = stream.tcpEof
            record.tlsEofSeen = stream.tlsEof
        except (OSError, ssl.SSLError, ValueError) as e:
            if not self._stopping.is_set():
                record.error = repr(e)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            record.done.set()

    def _lingeringClose(self, stream: Stream) -> None:
        """
        Close our side, then drain what the peer still sends, as NGINX does.

        Closing a socket with unread bytes (a client's own C{close_notify})
        sends a RST, which can destroy the response before the client read it.
        """
        stream.closeNotify()
        with contextlib.suppress(OSError):
            stream.shutdownWrite()
        deadline = time.monotonic() + 2.0
        stream.sock.settimeout(0.5)
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and stream.sock.recv(65536):
                pass

    def _serveName(self, stream: Stream, record: ConnectionRecord) -> None:
        request = bytearray()
        stream.sock.settimeout(0.5)  # "any bytes": stop at a short silence
        deadline = time.monotonic() + self.ioTimeout
        while b"\r\n\r\n" not in request and time.monotonic() < deadline:
            try:
                data = stream.recv()
            except TimeoutError:
                if request:
                    break
                continue
            if not data:
                break
            request += data
        stream.sock.settimeout(self.ioTimeout)
        record.received = len(request)
        record.receivedDigest = hashlib.sha256(request).hexdigest()
        body = self.name.encode()
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        stream.send(response)
        record.sent = len(response)
        self._lingeringClose(stream)

    def _serveEcho(self, stream: Stream, record: ConnectionRecord) -> None:
        digest = hashlib.sha256()
        while data := stream.recv():
            digest.update(data)
            record.received += len(data)
            stream.send(data)
            record.sent += len(data)
        record.receivedDigest = digest.hexdigest()
        record.sentDigest = record.receivedDigest
        stream.closeNotify()
        with contextlib.suppress(OSError):
            stream.shutdownWrite()

    def _serveSinkHash(self, stream: Stream, record: ConnectionRecord) -> None:
        digest = hashlib.sha256()
        record.received = readUntilEof(stream, digest)
        record.receivedDigest = digest.hexdigest()
        # Answer only after the FIN, so a gateway that does not pass the
        # client's half-close through fails the test (by timeout) here.
        readUntilTcpEof(stream)
        answer = f"{record.receivedDigest} {record.received}\n".encode()
        stream.send(answer)
        record.sent = len(answer)
        stream.closeNotify()
        with contextlib.suppress(OSError):
            stream.shutdownWrite()

    def _serveSource(self, stream: Stream, record: ConnectionRecord) -> None:
        digest = hashlib.sha256()
        for chunk in patternChunks(self.sourceBytes, self.sourceSeed):
            stream.send(chunk)
            digest.update(chunk)
            record.sent += len(chunk)
        record.sentDigest = digest.hexdigest()
        if self.sourceCloseNotify:
            stream.closeNotify()
        stream.shutdownWrite()  # half-close: keep reading what the client still sends
        received = hashlib.sha256()
        record.received = readUntilEof(stream, received)
        record.receivedDigest = received.hexdigest()

    def stop(self) -> None:
        """Stop accepting, cut every connection, join every thread (bounded)."""
        self._stopping.set()
        self._acceptThread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        leaked = [t.name for t in [self._acceptThread, *threads] if t.is_alive()]
        if leaked:
            raise RuntimeError(f"backend {self.name}: threads still running: {leaked}")

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.mode} {'tls' if self.tls else 'tcp'} {self.address}>"


def connect(
    port: int, *, receiveBuffer: int | None = None, noDelay: bool = False
) -> socket.socket:
    """A bounded-timeout TCP connection to 127.0.0.1:C{port}."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receiveBuffer is not None:
        # Before connect(), so the window is small from the first segment.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    if noDelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(IO_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def tlsConnect(
    port: int,
    context: ssl.SSLContext,
    serverName: str | None,
    *,
    handshake: bool = True,
    receiveBuffer: int | None = None,
    noDelay: bool = False,
) -> TLSStream:
    """
    A L{TLSStream} client to 127.0.0.1:C{port}, sending C{serverName} as SNI.

    @param handshake: complete the handshake before returning; C{False}
        leaves it to the caller (see L{TLSStream.takeClientHello}).
    """
    sock = connect(port, receiveBuffer=receiveBuffer, noDelay=noDelay)
    stream = TLSStream(sock, context, serverHostname=serverName)
    if handshake:
        try:
            stream.handshake()
        except BaseException:
            sock.close()
            raise
    return stream


def waitUntil(
    predicate: Callable[[], object], timeout: float, message: str | Callable[[], str]
) -> None:
    """Poll C{predicate} every 20 ms; fail with C{message} after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.02)


def refusedHandshake(port: int, context: ssl.SSLContext, serverName: str) -> None:
    """A TLS handshake to 127.0.0.1:C{port} the gateway must cut off (bounded)."""
    stream = tlsConnect(port, context, serverName, handshake=False)
    stream.sock.settimeout(10)
    try:
        with pytest.raises((ConnectionError, ssl.SSLError)):
            stream.handshake()
    finally:
        stream.close()


def expectClosed(sock: socket.socket, timeout: float) -> bytes:
    """Read until the peer closes (FIN or RST), waiting up to C{timeout}; what it sent."""
    sock.settimeout(timeout)
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def uploadPattern(stream: TLSStream, total: int, seed: int) -> tuple[str, str]:
    """
    Send C{total} pattern bytes (L{patternChunks}) to a C{sink-hash}
    backend, then close_notify and FIN, and read its answer to EOF; the
    stream is closed however that ends.

    @return: the backend's answer and the SHA-256 hex digest of what was sent.
    """
    digest = hashlib.sha256()
    try:
        for chunk in patternChunks(total, seed=seed):
            stream.send(chunk)
            digest.update(chunk)
        stream.closeNotify()
        stream.shutdownWrite()
        answer = readUntilTcpEof(stream).decode()
    finally:
        stream.close()
    return answer, digest.hexdigest()


def downloadAll(stream: TLSStream) -> tuple[int, str]:
    """
    Read a C{source} backend's bytes to its close_notify, then close_notify
    and FIN back and read to TCP EOF; the stream is closed however that ends.

    @return: how many bytes arrived and their SHA-256 hex digest.
    """
    digest = hashlib.sha256()
    try:
        received = readUntilEof(stream, digest)
        stream.closeNotify()
        stream.shutdownWrite()
        readUntilTcpEof(stream)
    finally:
        stream.close()
    return received, digest.hexdigest()
