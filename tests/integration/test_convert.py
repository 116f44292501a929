"""
C{tlsgateway convert}, end to end: a real C{nginx.conf} and a real
C{haproxy.cfg}, each accepted by the real C{nginx -t} and C{haproxy -c},
each run by the real NGINX or HAProxy to see where it sends two (three)
server names; then converted, checked, and run by a real C{tlsgateway}
process (C{tlsgateway run}), which must send the same names to the same
backends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .backends import Backend
from .harness import (
    BIN,
    CertificateAuthority,
    Gateway,
    dnsNames,
    freePort,
    httpsFetch,
    okBody,
    requireTools,
    runCommand,
)

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
NAMES = ["a.example.test", "b.example.test", "x.other.test"]


@contextlib.contextmanager
def running(
    argv: Sequence[str], port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """
    A proxy process (NGINX or HAProxy in the foreground) until it accepts
    on C{port}; stopped by its PID at the end (SIGTERM, then SIGKILL).
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, log.read_text()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            assert time.monotonic() < deadline, (
                f"{argv[0]} does not listen:\n{log.read_text()}"
            )
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)


def routedTo(port: int, client: ssl.SSLContext, names: Sequence[str]) -> dict[str, str]:
    """
    The backend that answers each name through 127.0.0.1:C{port}.

    Health checks may not have passed at the first try, so each name gets
    a bounded number of attempts (at most 10 in 10 seconds).
    """
    answers: dict[str, str] = {}
    for name in names:
        deadline = time.monotonic() + 10
        for _ in range(10):
            try:
                response, peer, _ = httpsFetch(port, client, name, name)
                assert name in dnsNames(peer)
                answers[name] = okBody(response)
                break
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        else:
            raise AssertionError(f"{name}: no answer through port {port}")
    return answers


def convertAndCheck(kind: str, source: Path, expectNotes: Sequence[str]) -> str:
    """
    Run C{tlsgateway convert} and C{tlsgateway check} on its output; the
    INI text, which names C{expectNotes} on standard error and at its top.
    """
    output = source.parent / "converted.ini"
    converted = runCommand(
        [str(BIN / "tlsgateway"), "convert", kind, str(source), "-o", str(output)],
        cwd=source.parent,
    )
    assert converted.returncode == 0, converted.stderr
    for text in expectNotes:
        assert text in converted.stderr, converted.stderr
        assert text in output.read_text()
    checked = runCommand(
        [str(BIN / "tlsgateway"), "check", "--config", str(output)],
        cwd=source.parent,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith("configuration OK")
    return output.read_text()


def test_nginxStreamConfigurationRoutesTheSameThroughTheGateway(
    tmp_path: Path,
    ca: CertificateAuthority,
    backend: Callable[..., Backend],
    gateway: Callable[..., Gateway],
    client: ssl.SSLContext,
) -> None:
    """
    Passthrough by a map of C{$ssl_preread_server_name}, and termination
    routed by a map of C{$ssl_server_name}.
    """
    requireTools("nginx")
    if not os.path.exists(NGINX_STREAM_MODULE):
        pytest.skip("NGINX's stream module is not installed")
    a = backend("backend-a", names=("a.example.test",))
    b = backend("backend-b", names=("b.example.test", "x.other.test"))
    plainA = backend("plain-a", tls=False)
    plainB = backend("plain-b", tls=False)
    served = ca.issue(*NAMES)
    port, term = freePort(), freePort()
    folder = tmp_path / "nginx"
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""\
load_module {NGINX_STREAM_MODULE};
worker_processes 1;
pid {folder}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}

stream {{
    map $ssl_preread_server_name $backend {{
        hostnames;
        a.example.test   app_a;
        .example.test    app_b;
        default          app_b;
    }}
    upstream app_a {{ server 127.0.0.1:{a.port}; }}
    upstream app_b {{ server 127.0.0.1:{b.port} max_fails=2 fail_timeout=5s; least_conn; }}
    server {{
        listen 127.0.0.1:{port};
        ssl_preread on;
        proxy_pass $backend;
        proxy_connect_timeout 5s;
        proxy_timeout 1m;
    }}

    map $ssl_server_name $plain {{
        a.example.test   127.0.0.1:{plainA.port};
        default          127.0.0.1:{plainB.port};
    }}
    server {{
        listen 127.0.0.1:{term} ssl;
        ssl_certificate     {served.certificatePath};
        ssl_certificate_key {served.privateKeyPath};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass $plain;
    }}
}}
"""
    )
    base = ["nginx", "-p", str(folder), "-e", "stderr", "-c", str(conf)]
    tested = subprocess.run(
        [*base, "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert tested.returncode == 0, tested.stderr
    with running([*base, "-g", "daemon off;"], port, folder / "nginx.log"):
        byNginx = routedTo(port, client, NAMES), routedTo(term, client, NAMES)
    assert byNginx == (
        {
            "a.example.test": "backend-a",
            "b.example.test": "backend-b",
            "x.other.test": "backend-b",
        },
        {
            "a.example.test": "plain-a",
            "b.example.test": "plain-b",
            "x.other.test": "plain-b",
        },
    )
    ini = convertAndCheck(
        "nginx",
        conf,
        [
            f"nginx.conf:1: load_module {NGINX_STREAM_MODULE}: ",
            f"nginx.conf:3: pid {folder}/nginx.pid: ",
            "nginx.conf:5: events {...}: ",
        ],
    )
    process = gateway(ini, command="script")
    assert (routedTo(port, client, NAMES), routedTo(term, client, NAMES)) == byNginx
    assert process.running()


def test_haproxyConfigurationRoutesTheSameThroughTheGateway(
    tmp_path: Path,
    ca: CertificateAuthority,
    backend: Callable[..., Backend],
    gateway: Callable[..., Gateway],
    client: ssl.SSLContext,
) -> None:
    requireTools("haproxy")
    a = backend("backend-a", names=("a.example.test",))
    b = backend("backend-b", names=("b.example.test", "x.other.test"))
    plainA = backend("plain-a", tls=False)
    plainB = backend("plain-b", tls=False)
    folder = tmp_path / "haproxy"
    certificates = folder / "certs"
    certificates.mkdir(parents=True)
    for stem, names in (
        ("a", ("a.example.test",)),
        ("b", ("b.example.test", "x.other.test")),
    ):
        issued = ca.issue(*names)
        (certificates / f"{stem}.pem").write_bytes(
            issued.certificatePath.read_bytes() + issued.privateKeyPath.read_bytes()
        )
        (certificates / f"{stem}.pem").chmod(0o600)
    sni, term = freePort(), freePort()
    cfg = folder / "haproxy.cfg"
    cfg.write_text(
        f"""\
global
    maxconn 256

defaults
    mode tcp
    option tcplog
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend sni_in
    bind 127.0.0.1:{sni}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    acl is_a req_ssl_sni -i a.example.test
    use_backend be_a if is_a
    use_backend be_b if {{ req_ssl_sni -m end .example.test }}
    default_backend be_b

frontend term_in
    bind 127.0.0.1:{term} ssl crt {certificates}/
    use_backend plain_a if {{ ssl_fc_sni -i a.example.test }}
    default_backend plain_b

backend be_a
    server a1 127.0.0.1:{a.port} check inter 2s rise 2 fall 3

backend be_b
    balance roundrobin
    server b1 127.0.0.1:{b.port} check inter 2s rise 2 fall 3

backend plain_a
    server pa 127.0.0.1:{plainA.port}

backend plain_b
    server pb 127.0.0.1:{plainB.port}
"""
    )
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with running(["haproxy", "-db", "-f", str(cfg)], term, folder / "haproxy.log"):
        byHaproxy = routedTo(sni, client, NAMES), routedTo(term, client, NAMES)
    assert byHaproxy == (
        {
            "a.example.test": "backend-a",
            "b.example.test": "backend-b",
            "x.other.test": "backend-b",
        },
        {
            "a.example.test": "plain-a",
            "b.example.test": "plain-b",
            "x.other.test": "plain-b",
        },
    )
    ini = convertAndCheck(
        "haproxy",
        cfg,
        ["haproxy.cfg:2: maxconn 256: ", "haproxy.cfg:6: option tcplog: "],
    )
    assert "health_interval = 2s" in ini
    assert "certificates = a, b" in ini
    process = gateway(ini, command="script")
    assert (routedTo(sni, client, NAMES), routedTo(term, client, NAMES)) == byHaproxy
    assert process.running()


def plainGet(port: int, source: str) -> str:
    """Connect from C{source} to 127.0.0.1:C{port} over plain TCP; read to EOF."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as sock:
        data = bytearray()
        while chunk := sock.recv(4096):
            data += chunk
    return data.decode().strip()


def test_haproxySendProxyV2ReachesTheBackendThroughTheGateway(
    tmp_path: Path, gateway: Callable[..., Gateway]
) -> None:
    """
    A plain TCP frontend (no ClientHello read: C{mode = tcp}) whose server
    has C{send-proxy-v2}: the backend, an NGINX that reads the header, sees
    the client's own address through HAProxy and through the gateway alike.
    """
    requireTools("haproxy", "nginx")
    if not os.path.exists(NGINX_STREAM_MODULE):
        pytest.skip("NGINX's stream module is not installed")
    folder = tmp_path / "proxied"
    folder.mkdir()
    peer, front = freePort(), freePort()
    peerConf = folder / "peer.conf"
    peerConf.write_text(
        f"""\
load_module {NGINX_STREAM_MODULE};
pid {folder}/peer.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{peer} proxy_protocol;
        return "$proxy_protocol_addr\\n";
    }}
}}
"""
    )
    cfg = folder / "haproxy.cfg"
    cfg.write_text(
        f"""\
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend plain_in
    bind 127.0.0.1:{front}
    default_backend addresses

backend addresses
    server peer 127.0.0.1:{peer} send-proxy-v2
"""
    )
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    peerArgv = [
        "nginx",
        "-p",
        str(folder),
        "-e",
        "stderr",
        "-c",
        str(peerConf),
        "-g",
        "daemon off;",
    ]
    with running(peerArgv, peer, folder / "peer.log"):
        with running(["haproxy", "-db", "-f", str(cfg)], front, folder / "haproxy.log"):
            assert plainGet(front, "127.0.0.2") == "127.0.0.2"
        ini = convertAndCheck("haproxy", cfg, [])
        assert "mode = tcp" in ini
        assert "proxy_protocol = v2" in ini
        gateway(ini, command="script")
        assert plainGet(front, "127.0.0.3") == "127.0.0.3"
