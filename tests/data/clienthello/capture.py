"""
Capture the ClientHellos in this folder from real TLS clients.

Run from the repository root with the project's virtualenv:
C{.venv/bin/python tests/data/clienthello/capture.py}.  Each client connects
to a throwaway listener on 127.0.0.1 that reads one complete ClientHello,
saves exactly its records, and closes the connection (so every client fails
its handshake, which is expected).  Loopback only; every client runs with a
timeout and is killed by its own process handle if it outlives it.

The listener walks records with its own few lines rather than with
C{gateway.wire.clienthello}, so that the test data does not depend on the code it
tests.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 10.0

PYTHON_SSL = """
import socket, ssl, sys
port = int(sys.argv[1])
context = ssl.create_default_context()
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    try:
        context.wrap_socket(raw, server_hostname="python.example.com")
    except (OSError, ssl.SSLError):
        pass
"""

PYOPENSSL = """
import socket, sys
from OpenSSL import SSL
port = int(sys.argv[1])
context = SSL.Context(SSL.TLS_CLIENT_METHOD)
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    connection = SSL.Connection(context, raw)
    connection.set_tlsext_host_name(b"pq.example.com")
    connection.set_alpn_protos([b"h2", b"http/1.1"])
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except (OSError, SSL.Error):
        pass
"""


def readClientHello(connection: socket.socket) -> bytes:
    """
    Read records until the first handshake message is complete; return
    exactly those records.
    """
    data = b""
    offset = 0
    handshake = b""
    deadline = time.monotonic() + TIMEOUT
    while True:
        while len(data) >= offset + 5:
            end = offset + 5 + int.from_bytes(data[offset + 3 : offset + 5], "big")
            if data[offset] != 22 or len(data) < end:
                break
            handshake += data[offset + 5 : end]
            offset = end
            if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(
                handshake[1:4], "big"
            ):
                return data[:offset]
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = connection.recv(65536)
        if not chunk:
            raise RuntimeError(f"client closed after {len(data)} bytes")
        data += chunk


def capture(name: str, client: Callable[[int], list[str]]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            client(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            connection, _ = listener.accept()
            with connection:
                hello = readClientHello(connection)
            process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    (HERE / f"{name}.bin").write_bytes(hello)
    sys.stdout.write(f"{name}.bin: {len(hello)} bytes\n")


def main() -> None:
    capture(
        "openssl_s_client",
        lambda port: [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "example.com",
            "-alpn",
            "h2,http/1.1",
        ],
    )
    capture("python_ssl", lambda port: [sys.executable, "-c", PYTHON_SSL, str(port)])
    capture(
        "curl",
        lambda port: [
            "curl",
            "--silent",
            "--max-time",
            "10",
            "--resolve",
            f"curl.example.com:{port}:127.0.0.1",
            f"https://curl.example.com:{port}/",
        ],
    )
    capture("pyopenssl_pq", lambda port: [sys.executable, "-c", PYOPENSSL, str(port)])


if __name__ == "__main__":
    main()
