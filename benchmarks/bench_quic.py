"""
HTTP/3 requests through the gateway's QUIC passthrough, against the same
requests straight to the backend: added latency, and the gateway's CPU
per 1,000 datagrams relayed.

Not a pytest-benchmark file: it runs real processes (an aioquic HTTP/3
backend, a C{tlsgateway run}) on loopback, so run it as a script from the
checkout's root:

    .venv/bin/python benchmarks/bench_quic.py [--requests 2000] [--connections 4]

Each of C{--connections} aioquic client connections sends C{--requests}
GETs in turn (a request waits for the previous answer, so the figure is
latency, not throughput), to the backend directly, then through the
gateway, C{--rounds} times.  Bounded: C{--limit} seconds per run at most.  The gateway's CPU
time is read from C{/proc} before and after the run through it; the
datagrams it relayed are the C{packets_in} and C{packets_out} of its
access log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import trustme
from aioquic.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.h3client import H3Client  # noqa: E402
from tests.integration.h3client import (  # noqa: E402
    configurationFor as clientConfiguration,
)

#: Requests per connection not counted: the handshake's and the first ones.
WARM_UP = 20


def freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def oneConnection(
    options: argparse.Namespace, port: int, deadline: float
) -> list[float]:
    """
    One connection's request latencies, in seconds.
    """
    settings = argparse.Namespace(
        extra_alpn=0,
        server_name="bench.example",
        timeout=options.limit,
        ca=options.ca,
        insecure=False,
    )
    latencies = []
    async with connect(
        "127.0.0.1",
        port,
        configuration=clientConfiguration(settings),
        create_protocol=H3Client,
    ) as protocol:
        client = cast(H3Client, protocol)
        for number in range(WARM_UP + options.requests):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            status, _ = await client.get("bench.example", f"/{number}")
            if number >= WARM_UP:
                latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"status {status}")
    return latencies


async def run(options: argparse.Namespace, port: int) -> list[float]:
    deadline = time.monotonic() + options.limit
    results = await asyncio.gather(
        *(oneConnection(options, port, deadline) for _ in range(options.connections))
    )
    return [latency for result in results for latency in result]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--limit", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-quic-"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf = ca.issue_cert("bench.example")
    (folder / "cert.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    options.ca = str(folder / "ca.pem")
    backendPort, gatewayPort = freePort(), freePort()
    (folder / "gateway.ini").write_text(
        "[gateway]\naccess_log = access.log\naccess_log_format = json\n"
        "drain_timeout = 5s\n\n"
        f"[listener:quic]\nlisten = udp:{gatewayPort}:interface=127.0.0.1\n"
        "upstream = backend\nquic_idle_timeout = 1s\n\n"
        f"[upstream:backend]\nservers = 127.0.0.1:{backendPort}\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    backend = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "integration" / "h3server.py"),
            *("--name", "bench", "--port", str(backendPort)),
            *("--certificate", str(folder / "cert.pem")),
            *("--private-key", str(folder / "key.pem")),
        ],
        stdout=subprocess.PIPE,
        env=environment,
    )
    with (folder / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", "gateway.ini"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        assert backend.stdout is not None
        backend.stdout.readline()
        started = time.monotonic()
        while b"tlsgateway ready" not in (folder / "gateway.log").read_bytes():
            if time.monotonic() - started > 30 or gateway.poll() is not None:
                raise RuntimeError(f"the gateway did not start: see {folder}")
            time.sleep(0.05)
        # Rounds in turn, so that whatever else the machine does weighs on
        # both alike.
        direct: list[float] = []
        through: list[float] = []
        cpu = 0.0
        for _ in range(options.rounds):
            direct += asyncio.run(run(options, backendPort))
            before = cpuSeconds(gateway.pid)
            through += asyncio.run(run(options, gatewayPort))
            cpu += cpuSeconds(gateway.pid) - before
        time.sleep(2)  # every flow idle, forgotten and logged
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        backend.send_signal(signal.SIGTERM)
        backend.wait(10)
    entries = [
        json.loads(line)
        for line in (folder / "access.log").read_text().splitlines()
        if line.strip()
    ]
    datagrams = sum(e["packets_in"] + e["packets_out"] for e in entries)
    report = {
        "requests": [len(direct), len(through)],
        "direct_p50_ms": round(statistics.median(direct) * 1000, 3),
        "direct_p99_ms": round(percentile(direct, 0.99) * 1000, 3),
        "gateway_p50_ms": round(statistics.median(through) * 1000, 3),
        "gateway_p99_ms": round(percentile(through, 0.99) * 1000, 3),
        "datagrams": datagrams,
        "gateway_cpu_s": round(cpu, 3),
        "cpu_ms_per_1000_datagrams": round(cpu * 1000 / max(datagrams, 1) * 1000, 2),
    }
    report["added_p50_ms"] = round(
        report["gateway_p50_ms"] - report["direct_p50_ms"], 3
    )
    report["added_p99_ms"] = round(
        report["gateway_p99_ms"] - report["direct_p99_ms"], 3
    )
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
