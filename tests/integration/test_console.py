"""
The operator's console, end to end: the status page in a real browser,
the certificate expiry gauge, the gateway's own log at each level, C{check}
warnings, error messages that say what to do, and the command line.

Every test drives real processes (C{twistd -n tlsgateway}, C{python -m
gateway}, headless Chromium, C{psql}) on loopback.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from .backends import waitUntil
from .conftest import BackendStarter, GatewayStarter
from .harness import (
    BIN,
    REPO_ROOT,
    CertificateAuthority,
    Gateway,
    freePort,
    gatewayEnvironment,
    gatewayIni,
    httpsFetch,
    requireTools,
    runCommand,
)

CHROMIUM = "chromium"


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        body: bytes = r.read()
    return body


def statusJSON(port: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(fetch(port, "/status.json"))
    return result


def meteredIni(port: int, upstreamPort: int, metricsPort: int, **keys: str) -> str:
    """
    A gateway relaying C{port} to 127.0.0.1:C{upstreamPort}, with C{/metrics}
    and C{/status} on C{metricsPort} and C{keys} in C{[gateway]}.
    """
    return gatewayIni(
        port,
        upstream="app",
        upstreams={"app": f"127.0.0.1:{upstreamPort}"},
        gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1", **keys},
    )


def expirySeconds(port: int) -> dict[str, float]:
    text = fetch(port, "/metrics").decode()
    return {
        sample.labels["certificate"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tlsgateway_certificate_expiry_seconds"
        for sample in family.samples
    }


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """
    Headless Chromium on C{url}, with nothing of its own on the network
    (no QUIC, no background or component traffic), in a throwaway profile.
    """
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def postgresClient(port: int) -> subprocess.CompletedProcess[str]:
    """C{psql} as an operator's application would connect, bounded."""
    return subprocess.run(
        [
            "psql",
            f"host=127.0.0.1 port={port} dbname=app user=app sslmode=require"
            " connect_timeout=5",
            "-c",
            "select 1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, "PGPASSWORD": "unused"},
    )


def closedWithoutAnswer(port: int, client: ssl.SSLContext, name: str) -> bool:
    """A TLS client asking for C{name} gets no handshake (no route for it)."""
    try:
        httpsFetch(port, client, name, name)
    except OSError:  # the handshake fails: SSLError, a reset, an EOF
        return True
    return False


def notAfter(path: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


# -- the status page -------------------------------------------------------------


def test_statusPageInABrowserShowsListenersServersFailuresAndCertificates(
    gateway: GatewayStarter,
    backend: BackendStarter,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """
    One twistd gateway, a passthrough and a terminating listener: after an
    C{ok} connection, a C{no_route} one and a PostgreSQL client on the TLS
    listener, Chromium renders C{/status} with all of it (no JavaScript
    involved: C{--dump-dom} of a page without scripts), C{/status.json}
    says the same, the expiry gauge counts down to the certificate's
    notAfter, and the info-level log has no line per connection or scrape.
    """
    requireTools(CHROMIUM, "psql")
    tlsApp = backend("app.test")
    plain = backend("plain", tls=False)
    cert = ca.issue("web.test")
    metricsPort, passPort, termPort = freePort(), freePort(), freePort()
    ini = gatewayIni(
        passPort,
        listener="pt",
        routes=[("app.test", "tlsapp")],
        upstreams={
            "tlsapp": f"127.0.0.1:{tlsApp.port}",
            "plain": f"127.0.0.1:{plain.port}",
        },
        gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
    )
    ini += (
        f"\n[listener:web]\nlisten = tcp:{termPort}:interface=127.0.0.1\n"
        f"mode = terminate\nupstream = plain\ncertificate = {cert.certificatePath}\n"
        f"private_key = {cert.privateKeyPath}\n"
    )
    gw = gateway(ini)

    response, _, _ = httpsFetch(passPort, client, "app.test", "app.test")
    assert b"app.test" in response
    assert closedWithoutAnswer(passPort, client, "other.test")
    assert postgresClient(passPort).returncode != 0
    gw.waitForEntries(3)
    fetch(metricsPort, "/metrics")
    fetch(metricsPort, "/metrics")

    raw = fetch(metricsPort, "/status").decode()
    assert '<meta http-equiv="refresh" content="5">' in raw
    assert "<script" not in raw
    dom = chromium(
        f"http://127.0.0.1:{metricsPort}/status", tmp_path / "profile", "--dump-dom"
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "<title>tlsgateway status</title>" in page
    assert f"tcp:{passPort}:interface=127.0.0.1" in page
    assert f"tcp:{termPort}:interface=127.0.0.1" in page
    assert ">terminate<" in page
    assert ">passthrough<" in page
    assert f"127.0.0.1:{tlsApp.port}" in page
    assert "no_route" in page
    assert "no route for server name 'other.test'" in page
    assert "looks like PostgreSQL: set protocol = postgres" in page
    assert "listener:web" in page
    assert "web.test" in page

    shot = tmp_path / "status.png"
    rendered = chromium(
        f"http://127.0.0.1:{metricsPort}/status",
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        "--hide-scrollbars",
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one

    status = statusJSON(metricsPort)
    listeners = {entry["name"]: entry for entry in status["listeners"]}
    assert listeners["pt"]["listen"] == [f"tcp:{passPort}:interface=127.0.0.1"]
    assert (listeners["pt"]["mode"], listeners["web"]["mode"]) == (
        "passthrough",
        "terminate",
    )
    assert listeners["pt"]["active"] == 0
    servers = {
        (u["name"], s["server"]): s for u in status["upstreams"] for s in u["servers"]
    }
    assert servers[("tlsapp", f"127.0.0.1:{tlsApp.port}")]["up"] is True
    assert servers[("tlsapp", f"127.0.0.1:{tlsApp.port}")]["active"] == 0
    failures = status["recent_failures"]
    assert [f["status"] for f in failures] == ["bad_client_hello", "no_route"]
    assert "looks like PostgreSQL" in failures[0]["reason"]
    [certificate] = status["certificates"]
    expires = notAfter(cert.certificatePath)
    assert certificate["name"] == "listener:web"
    assert certificate["names"] == ["web.test"]
    left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert certificate["days_left"] == int(left // 86400)

    gauge = expirySeconds(metricsPort)
    assert set(gauge) == {"listener:web"}
    assert abs(gauge["listener:web"] - left) < 120

    log = gw.output()
    assert "tlsgateway ready" in log
    for noise in ("starting on", "Port ", "GET /metrics", "relay 127.0.0.1", "#debug"):
        assert noise not in log, (noise, log)
    assert f"127.0.0.1:{passPort}" not in log.replace(f"tcp:{passPort}", "")


def test_activeConnectionsShowWhileOpen(
    gateway: GatewayStarter, backend: BackendStarter, ca: CertificateAuthority
) -> None:
    """
    An established connection counts on its listener and its server until
    it ends.
    """
    app = backend("app.test", mode="echo")
    metricsPort, port = freePort(), freePort()
    gateway(
        gatewayIni(
            port,
            upstream="app",
            upstreams={"app": f"127.0.0.1:{app.port}"},
            gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
        )
    )
    context = ca.clientContext()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="app.test") as tls,
    ):
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        status = statusJSON(metricsPort)
        assert status["listeners"][0]["active"] == 1
        assert status["upstreams"][0]["servers"][0]["active"] == 1
    waitUntil(
        lambda: statusJSON(metricsPort)["listeners"][0]["active"] == 0,
        10,
        "the connection still counts after it ended",
    )


def test_statusPageMarksBackupsSaysWhyAServerIsDownAndCountsTraffic(
    gateway: GatewayStarter,
    backend: BackendStarter,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """
    A primary server, a backup and a dead server under TCP health checks:
    Chromium renders the backup marked, the dead one down with its check's
    error and since when, and each listener's and server's connections
    (total, per second) and bytes after ten real connections;
    C{/status.json} says the same.
    """
    requireTools(CHROMIUM)
    app = backend("app.test", mode="echo")
    spare = backend("spare.test", mode="echo")
    metricsPort, port, dead = freePort(), freePort(), freePort()
    ini = gatewayIni(
        port,
        upstream="app",
        upstreams={
            "app": [
                f"127.0.0.1:{app.port}",
                f"127.0.0.1:{dead}",
                f"127.0.0.1:{spare.port} backup",
            ]
        },
        gatewayKeys={"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"},
    )
    ini += "health_check = tcp\nhealth_interval = 1s\n"
    gateway(ini)
    context = ca.clientContext()
    for _ in range(10):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="app.test") as tls,
        ):
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"

    def counted() -> bool:
        # (A rate counts whole seconds: the one the connections ended in
        # must be over.)
        [listener] = statusJSON(metricsPort)["listeners"]
        return bool(
            listener["connections_total"] == 10 and listener["connections_per_s"] > 0
        )

    waitUntil(counted, 10, lambda: json.dumps(statusJSON(metricsPort), indent=1))
    status = statusJSON(metricsPort)
    [listener] = status["listeners"]
    assert listener["connections_per_s"] > 0, listener
    assert listener["bytes_in"] > 10 * 4, listener
    assert listener["bytes_out"] > 10 * 4, listener
    servers = {s["server"]: s for s in status["upstreams"][0]["servers"]}
    primary = servers[f"127.0.0.1:{app.port}"]
    down = servers[f"127.0.0.1:{dead}"]
    backup = servers[f"127.0.0.1:{spare.port}"]
    assert (primary["backup"], backup["backup"], down["backup"]) == (
        False,
        True,
        False,
    )
    assert primary["connections_total"] == 10, primary
    assert primary["bytes_out"] == listener["bytes_out"], primary
    assert backup["connections_total"] == 0, backup
    assert down["up"] is False, down
    assert down["state"].startswith("down: health check failing: "), down
    assert "refused" in down["down_reason"].lower(), down
    since = datetime.datetime.fromisoformat(down["down_since"])
    assert abs((datetime.datetime.now(datetime.UTC) - since).total_seconds()) < 60

    dom = chromium(
        f"http://127.0.0.1:{metricsPort}/status", tmp_path / "profile", "--dump-dom"
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert '<td class="partial">backup</td>' in page
    assert down["state"] in page
    assert down["down_since"][:19].replace("T", " ") in page
    assert "connections ended (per second over the last 10s)" in page
    assert '<td class="num">10</td>' in page
    assert "none since the gateway started (at " in page


def test_workersStatusAddsUpEveryWorkerAndLabelsIt(
    gateway: GatewayStarter,
    backend: BackendStarter,
    ca: CertificateAuthority,
    client: ssl.SSLContext,
) -> None:
    """
    C{workers = 2}: the supervisor's page lists both workers with fresh
    reports, each failure with the worker that saw it, and each server's
    health as seen by both; the gauge is on the supervisor's C{/metrics};
    every line a worker logs names it.
    """
    app = backend("app.test")
    cert = ca.issue("web.test")
    metricsPort, port, termPort = freePort(), freePort(), freePort()
    ini = gatewayIni(
        port,
        routes=[("app.test", "app")],
        upstreams={"app": f"127.0.0.1:{app.port}"},
        gatewayKeys={
            "metrics": f"tcp:{metricsPort}:interface=127.0.0.1",
            "workers": "2",
        },
    )
    ini += (
        f"\n[listener:tls]\nlisten = tcp:{termPort}:interface=127.0.0.1\n"
        f"mode = terminate\nupstream = app\ncertificate = {cert.certificatePath}\n"
        f"private_key = {cert.privateKeyPath}\n"
    )
    gw = gateway(ini, command="module")
    waitUntil(
        lambda: gw.output().count("tlsgateway ready") >= 3, 20, lambda: gw.explain()
    )
    for _ in range(6):
        assert closedWithoutAnswer(port, client, "nowhere.test")
    entries = gw.waitForEntries(6)
    seenBy = {entry["worker_pid"] for entry in entries}

    def reported() -> bool:
        status = statusJSON(metricsPort)
        return len(status["recent_failures"]) == 6 and all(
            w["reported"] for w in status["worker_processes"]
        )

    waitUntil(reported, 10, lambda: json.dumps(statusJSON(metricsPort), indent=1))
    status = statusJSON(metricsPort)
    assert status["gateway"]["workers"] == 2
    workers = {w["worker"]: w["pid"] for w in status["worker_processes"]}
    assert sorted(workers) == [1, 2]
    assert {f["worker"] for f in status["recent_failures"]} == {
        number for number, pid in workers.items() if pid in seenBy
    }
    assert {f["status"] for f in status["recent_failures"]} == {"no_route"}
    [server] = status["upstreams"][0]["servers"]
    assert (server["state"], server["workers"]) == ("up", 2)
    page = fetch(metricsPort, "/status").decode()
    assert "2 workers, added up" in page
    assert "Worker processes" in page
    assert set(expirySeconds(metricsPort)) == {"listener:tls"}

    workerLines = [
        line for line in gw.output().splitlines() if "listening on tcp:" in line
    ]
    assert len(workerLines) == 4, gw.output()  # two listeners in each worker
    assert sorted(re.findall(r"\[worker (\d) ", "\n".join(workerLines))) == [
        "1",
        "1",
        "2",
        "2",
    ]


def test_workersStatusShowsRetiringWorkersUntilTheirLastConnection(
    gateway: GatewayStarter, backend: BackendStarter, client: ssl.SSLContext
) -> None:
    """
    C{workers = 2} and a reload (C{SIGHUP}) while a connection is open: the
    old workers finish it, and the page keeps counting it (on its listener,
    as one process does) and lists them as retiring, each with its own
    count, until the last connection ends and they exit.
    """
    echo = backend("echo.test", "echo")
    metricsPort, port = freePort(), freePort()
    ini = meteredIni(port, echo.port, metricsPort, workers="2")
    gw = gateway(ini, command="module")
    waitUntil(
        lambda: gw.output().count("tlsgateway ready") >= 3, 20, lambda: gw.explain()
    )
    # One connection held on each worker: a worker with nothing to finish
    # may exit before the page is read, and the page is about both.
    held: list[ssl.SSLSocket] = []

    def busyWorkers() -> set[int]:
        workers = statusJSON(metricsPort)["worker_processes"]
        return {w["worker"] for w in workers if (w["active"] or 0) > 0}

    try:
        for _ in range(40):
            conn = client.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10),
                server_hostname="echo.test",
            )
            held.append(conn)
            conn.sendall(b"before")
            assert conn.recv(100) == b"before"
            waitUntil(
                lambda: (
                    sum(
                        w["active"] or 0
                        for w in statusJSON(metricsPort)["worker_processes"]
                    )
                    == len(held)
                ),
                10,
                lambda: json.dumps(statusJSON(metricsPort), indent=1),
            )
            if busyWorkers() == {1, 2}:
                break
        assert busyWorkers() == {1, 2}, "the kernel gave every connection to one worker"
        gw.sendSignal(signal.SIGHUP)
        gw.waitForOutput("reloaded: generation 2", 20)

        def retiringWithTheConnections() -> bool:
            status = statusJSON(metricsPort)
            old = [w for w in status["worker_processes"] if w["retiring"]]
            return (
                status["gateway"]["retiring_workers"] == 2
                and len(old) == 2
                and all((w["active"] or 0) > 0 for w in old)
                and sum(w["active"] or 0 for w in old) == len(held)
            )

        waitUntil(
            retiringWithTheConnections,
            10,
            lambda: json.dumps(statusJSON(metricsPort), indent=1),
        )
        status = statusJSON(metricsPort)
        assert status["gateway"]["workers"] == 2
        assert status["listeners"][0]["active"] == len(held)
        serving = [w for w in status["worker_processes"] if not w["retiring"]]
        assert [w["worker"] for w in serving] == [1, 2]
        page = fetch(metricsPort, "/status").decode()
        assert page.count("retiring: finishing its connections") == 2
        # The new workers saw no failure: said of them, not of the gateway.
        assert "none since the current workers started" in page, page
        assert "none since the gateway started" not in page
        for conn in held:
            conn.sendall(b"after")
            assert conn.recv(100) == b"after"
    finally:
        for conn in held:
            conn.close()

    def retired() -> bool:
        status = statusJSON(metricsPort)
        return bool(
            status["gateway"]["retiring_workers"] == 0
            and status["listeners"][0]["active"] == 0
        )

    waitUntil(retired, 15, lambda: json.dumps(statusJSON(metricsPort), indent=1))
    assert "retiring" not in fetch(metricsPort, "/status").decode()


# -- the gateway's own log ---------------------------------------------------------


def test_debugLevelAndPidfileWithTlsgatewayRun(
    backend: BackendStarter, client: ssl.SSLContext, tmp_path: Path
) -> None:
    """
    C{log_level = debug} shows what info hides (the relay chosen for each
    connection, each scrape); C{tlsgateway run --pidfile} writes the pid
    that C{tlsgateway reload --pidfile} signals, and removes the file at
    exit.
    """
    app = backend("app.test")
    metricsPort, port = freePort(), freePort()
    ini = meteredIni(port, app.port, metricsPort, log_level="debug")
    pidfile = tmp_path / "gw.pid"
    gw = Gateway(ini, tmp_path / "gw", command="module")
    gw.command += ["--pidfile", str(pidfile)]
    try:
        gw.start()
        assert pidfile.read_text().strip() == str(gw.pid)
        httpsFetch(port, client, "app.test", "app.test")
        fetch(metricsPort, "/metrics")
        gw.waitForOutput("relay 127.0.0.1:")
        gw.waitForOutput("GET /metrics 200")
        reload = runCommand(
            [sys.executable, "-m", "gateway", "reload", "--pidfile", str(pidfile)],
            tmp_path,
        )
        assert reload.returncode == 0, reload.stderr
        gw.waitForOutput("reloaded")
        gw.sendSignal(signal.SIGTERM)
        assert gw.waitForExit() == 0
        assert not pidfile.exists()
    finally:
        gw.stop()


# -- tlsgateway check ---------------------------------------------------------------


def test_checkPrintsEachWarningAtItsKeyAndStillSaysOK(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert = ca.issue("web.test")  # the leaf alone: trustme's root is not trusted
    ini = tmp_path / "gw.ini"
    ini.write_text(
        "[listener:web]\n"  # 1
        "listen = tcp:8443\n"  # 2
        "mode = terminate\n"  # 3
        "upstream = app\n"  # 4
        f"certificate = {cert.certificatePath}\n"  # 5
        f"private_key = {cert.privateKeyPath}\n"  # 6
        "ciphers = HIGH:!aNULL:!MD5\n"  # 7
        "alpn = h2, http/1.1\n"  # 8
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n"
    )
    result = runCommand(
        [sys.executable, "-m", "gateway", "check", "--config", str(ini)], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "configuration OK\n"
    where = re.compile(
        rf"{re.escape(str(ini))}:(\d+): \[listener:web\] (\w+): warning: "
    )
    found = {}
    for line in result.stderr.splitlines():
        match = where.match(line)
        assert match, line
        found[match[2]] = (int(match[1]), line)
    assert {key: line for key, (line, _) in found.items()} == {
        "certificate": 5,
        "ciphers": 7,
        "alpn": 8,
    }
    # Both streams in one pipe, as a terminal shows them: OK comes last.
    merged = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(ini)],
        cwd=tmp_path,
        env=gatewayEnvironment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    assert merged.stdout.splitlines()[-1] == "configuration OK"
    assert len(merged.stdout.splitlines()) == 4
    assert "fullchain.pem" in found["certificate"][1]
    assert "'HIGH:!aNULL:!MD5' allows CBC or SHA-1" in found["ciphers"][1]
    assert "HTTP/1.1" in found["alpn"][1]


def test_errorsSayWhatToWrite(tmp_path: Path) -> None:
    ini = tmp_path / "gw.ini"
    ini.write_text(
        "[listener:web]\n"
        "listen = 0.0.0.0:443\n"
        "proxy_pass = app\n"
        "ssl_preread = on\n"
        "upstream = app\n"
        "\n"
        "[listener:other]\n"
        "listen = 443\n"
        "upstream = app\n"
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080, 127.0.0.1:8081\n"
    )
    result = runCommand(
        [sys.executable, "-m", "gateway", "check", "--config", str(ini)], tmp_path
    )
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert (
        f"{ini}:2: [listener:web] listen: '0.0.0.0:443' is not a Twisted server endpoint string: write tcp:443:interface=0.0.0.0"
        in problems
    )
    assert (
        f"{ini}:8: [listener:other] listen: '443' is not a Twisted server endpoint string: write tcp:443"
        in problems
    )
    assert any(
        p.startswith(
            f"{ini}:3: [listener:web] proxy_pass: unknown key: this is NGINX's name"
        )
        and "upstream = NAME" in p
        for p in problems
    )
    assert any(
        p.startswith(f"{ini}:4: [listener:web] ssl_preread: ")
        and "passthrough is the default" in p
        for p in problems
    )
    assert any(
        p.startswith(f"{ini}:12: [upstream:app] servers: ")
        and "one server per line" in p
        for p in problems
    )


# -- the command line -----------------------------------------------------------------


def test_versionAndHelp(tmp_path: Path) -> None:
    version = runCommand([sys.executable, "-m", "gateway", "--version"], tmp_path)
    assert version.returncode == 0
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    assert version.stdout == f"tlsgateway {setup['metadata']['version']}\n"
    usage = runCommand([sys.executable, "-m", "gateway", "--help"], tmp_path)
    assert usage.returncode == 0
    assert "SUPPRESS" not in usage.stdout
    assert "worker" not in usage.stdout
    assert "run" in usage.stdout
    assert "check" in usage.stdout
    run = runCommand([sys.executable, "-m", "gateway", "run", "--help"], tmp_path)
    assert "--pidfile" in run.stdout


def test_twistdWithoutConfigSaysSoInOneLine(tmp_path: Path) -> None:
    result = runCommand([str(BIN / "twistd"), "-n", "tlsgateway"], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "tlsgateway: --config FILE is required, as in:"
        " twistd -n tlsgateway --config /etc/tlsgateway/gateway.ini"
    ]


def test_twistdStartFailureIsOneLineAndExitsOne(
    backend: BackendStarter, tmp_path: Path
) -> None:
    app = backend("app.test")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ini = gatewayIni(
            port, upstream="app", upstreams={"app": f"127.0.0.1:{app.port}"}
        )
        (tmp_path / "gw.ini").write_text(ini)
        started = time.monotonic()
        result = runCommand(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile",
                "gw.pid",
                "tlsgateway",
                "--config",
                "gw.ini",
            ],
            tmp_path,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert time.monotonic() - started < 30
    assert "Traceback" not in output
    failures = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(failures) == 1, output
    assert f"[listener:web] listen: cannot listen on tcp:{port}:" in failures[0]
    assert "critical" in failures[0]
    assert not (tmp_path / "gw.pid").exists()
