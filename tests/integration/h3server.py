"""
A small HTTP/3 server for end-to-end tests: aioquic's asyncio API.

Every GET is answered C{200} with the body C{NAME PATH}, so a test knows
which backend a request reached.  It prints C{listening PORT} once ready
and runs until it is terminated.

    python tests/integration/h3server.py --name one --certificate c.pem \\
        --private-key k.pem --port 4433 [--retry]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent


class NamedServer(QuicConnectionProtocol):
    """
    Answers each request with the server's name and the request's path.
    """

    name = "backend"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is None:
            return
        for h3event in self._http.handle_event(event):
            if isinstance(h3event, HeadersReceived) and h3event.stream_ended:
                headers = dict(h3event.headers)
                path = headers.get(b":path", b"/").decode()
                body = f"{self.name} {path}\n".encode()
                self._http.send_headers(
                    h3event.stream_id,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                )
                self._http.send_data(h3event.stream_id, body, end_stream=True)
                self.transmit()


async def main(options: argparse.Namespace) -> None:
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536
    )
    configuration.load_cert_chain(options.certificate, options.private_key)
    NamedServer.name = options.name
    server = await serve(
        options.host,
        options.port,
        configuration=configuration,
        create_protocol=NamedServer,
        retry=options.retry,
    )
    transport = server._transport
    assert transport is not None
    port = transport.get_extra_info("sockname")[1]
    # Stop on SIGTERM even when started with it ignored (the disposition
    # is inherited), as test runners may be.
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    sys.stdout.write(f"listening {port}\n")
    sys.stdout.flush()
    await stopped.wait()
    server.close()


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--certificate", required=True)
    parser.add_argument("--private-key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--retry", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parseArguments(sys.argv[1:])))
