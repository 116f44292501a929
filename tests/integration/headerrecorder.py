"""
PROXY headers at both ends of a gateway: the header a balancer in front
of it sends (L{proxyHeader}), and an upstream behind it that reads the
header the gateway sends before anything else, then serves one HTTP
request over TLS or plaintext (L{HeaderRecorder}): the header's addresses
are checked by a test, the rest by the client.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from gateway.wire.proxyprotocol import (
    NEED_MORE,
    Command,
    ProxyAddress,
    ProxyHeader,
    encode,
)
from gateway.wire.proxyreader import ProxyHeaderReader

from .backends import (
    IO_TIMEOUT,
    PlainStream,
    Stream,
    TLSStream,
    accepting,
    loopbackListener,
)
from .harness import ServerCertificate


def proxyHeader(version: int, host: str, port: int) -> bytes:
    """
    A balancer's PROXY header (v1 or v2) naming the client C{host:port},
    connected to 192.0.2.1:443.
    """
    return encode(
        ProxyHeader(
            version,
            Command.PROXY,
            ProxyAddress(host, port),
            ProxyAddress("192.0.2.1", 443),
        )
    )


class HeaderRecorder:
    """
    An upstream that expects a PROXY header, read one byte at a time so
    that not a byte of what follows is taken from the socket, then serves
    one HTTP request over TLS (for passthrough) or plaintext (for
    termination) and answers with its name.

    @ivar headers: the header of each connection, in the order they came.
    """

    def __init__(self, name: str, certificate: ServerCertificate | None) -> None:
        self.name = name
        self.headers: list[ProxyHeader] = []
        self.errors: list[str] = []
        self._context: ssl.SSLContext | None = None
        if certificate is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            certificate.leaf.configure_cert(self._context)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener, self.address = loopbackListener(32)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._acceptLoop, daemon=True)
        self._thread.start()

    def _acceptLoop(self) -> None:
        for sock in accepting(self._listener, self._stopping):
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(IO_TIMEOUT)
        try:
            header, rest = readHeader(sock)
            assert rest == b"", rest
            with self._lock:
                self.headers.append(header)
            stream: Stream = PlainStream(sock)
            if self._context is not None:
                stream = TLSStream(sock, self._context, serverSide=True)
                stream.handshake()
            request = b""
            while b"\r\n\r\n" not in request:
                try:
                    data = stream.recv()
                except ConnectionResetError:
                    data = b""  # with a session ticket it never read
                if not data:
                    return  # a held connection, closed by its client
                request += data
            body = self.name.encode()
            stream.send(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            stream.closeNotify()
            stream.shutdownWrite()
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        except (OSError, ssl.SSLError, ValueError, AssertionError) as e:
            if not self._stopping.is_set():
                with self._lock:
                    self.errors.append(repr(e))
        finally:
            sock.close()

    def sources(self) -> list[str]:
        """The client of each header so far, as C{host:port}."""
        with self._lock:
            assert not self.errors, self.errors
            return [str(h.source) for h in self.headers]

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


def readHeader(sock: socket.socket) -> tuple[ProxyHeader, bytes]:
    """A PROXY header read one byte at a time, and what came with its last byte."""
    reader = ProxyHeaderReader()
    while byte := sock.recv(1):
        result = reader.feed(byte)
        if result is not NEED_MORE:
            return result
    raise ConnectionError("closed within the PROXY header")
