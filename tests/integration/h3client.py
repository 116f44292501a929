"""
A small HTTP/3 client for end-to-end tests: aioquic's asyncio API.

Prints each response body (one line per request) and exits 0 when every
request got a 200, 1 otherwise.

    python tests/integration/h3client.py --port 8443 --server-name a.example \\
        --ca ca.pem [--requests 2] [--migrate] [--extra-alpn 80] [--flows 300]

--migrate moves the client to a new local UDP port (a new socket, the
same connection and connection ID: what NAT rebinding looks like) before
every request after the first.  --extra-alpn adds that many made-up ALPN
protocols after h3, which makes the ClientHello span several Initial
packets.  --flows opens that many connections at once, one GET each, and
prints C{ok N failed M}.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
import time
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


class H3Client(QuicConnectionProtocol):
    """
    GET requests over one QUIC connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._bodies: dict[int, bytearray] = {}
        self._status: dict[int, int] = {}

    def http_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._status[event.stream_id] = int(dict(event.headers)[b":status"])
        elif isinstance(event, DataReceived):
            self._bodies.setdefault(event.stream_id, bytearray()).extend(event.data)
        else:
            return
        if event.stream_ended:
            waiter = self._waiting.pop(event.stream_id, None)
            if waiter is not None and not waiter.done():
                body = bytes(self._bodies.pop(event.stream_id, b""))
                waiter.set_result((self._status.get(event.stream_id, 0), body))

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3event in self._http.handle_event(event):
            self.http_event_received(h3event)

    async def get(self, authority: str, path: str) -> tuple[int, bytes]:
        streamId = self._quic.get_next_available_stream_id()
        self._http.send_headers(
            streamId,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        waiter: asyncio.Future[tuple[int, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[streamId] = waiter
        self.transmit()
        return await waiter

    async def rebind(self) -> None:
        """
        Send from a new local port from now on: a new socket under the
        same connection.
        """
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0, 0, 0))
        old = self._transport
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self, sock=sock
        )
        if old is not None:
            old.abort()


def configurationFor(options: argparse.Namespace) -> QuicConfiguration:
    alpn = list(H3_ALPN) + [
        f"x-padding-protocol-{i:04d}" for i in range(options.extra_alpn)
    ]
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=alpn,
        server_name=options.server_name,
        idle_timeout=options.timeout,
    )
    configuration.load_verify_locations(options.ca)
    if options.insecure:
        configuration.verify_mode = ssl.CERT_NONE
    return configuration


async def session(options: argparse.Namespace) -> list[str]:
    """
    One connection, C{--requests} GETs in turn; the bodies.
    """
    bodies = []
    async with connect(
        options.host,
        options.port,
        configuration=configurationFor(options),
        create_protocol=H3Client,
    ) as protocol:
        client = cast(H3Client, protocol)
        for number in range(options.requests):
            if number and options.migrate:
                await client.rebind()
            status, body = await asyncio.wait_for(
                client.get(options.server_name, f"{options.path}{number}"),
                options.timeout,
            )
            if status != 200:
                raise RuntimeError(f"status {status}")
            bodies.append(body.decode().strip())
            if not options.flows:
                sys.stdout.write(bodies[-1] + "\n")
                sys.stdout.flush()
            if options.interval:
                await asyncio.sleep(options.interval)
    return bodies


async def main(options: argparse.Namespace) -> int:
    if options.flows:
        deadline = time.monotonic() + options.timeout
        results = await asyncio.gather(
            *(
                asyncio.wait_for(session(options), options.timeout)
                for _ in range(options.flows)
            ),
            return_exceptions=True,
        )
        ok = sum(1 for r in results if isinstance(r, list))
        failed = [r for r in results if not isinstance(r, list)]
        sys.stdout.write(f"ok {ok} failed {len(failed)}\n")
        for error in failed[:3]:
            sys.stderr.write(f"error {error!r}\n")
        return 0 if not failed and time.monotonic() < deadline + 1 else 1
    try:
        await asyncio.wait_for(session(options), options.timeout)
    except Exception as e:  # noqa: BLE001 - reported, exit 1
        sys.stderr.write(f"error {e!r}\n")
        return 1
    return 0


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--path", default="/r")
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--migrate", action="store_true")
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--extra-alpn", type=int, default=0)
    parser.add_argument("--flows", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--insecure", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parseArguments(sys.argv[1:]))))
