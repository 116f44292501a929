"""
The process model, end to end (issue 23): C{tlsgateway reload} signals
only a gateway; a daemonized C{twistd} writes C{access_log = -} to its log
file; a gateway that drops privileges checks its files at start and still
reloads after the drop; the last reload's time, result and reason on
C{/status}, C{/status.json} and C{/metrics}; C{SIGHUP} in an embedding
C{.tac}.

Every test drives real processes, started and stopped by PID.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from .backends import Backend, waitUntil
from .harness import (
    BIN,
    CertificateAuthority,
    Gateway,
    GatewayFailed,
    freePort,
    gatewayIni,
    httpsFetch,
    okBody,
    runCommand,
    writeLeaf,
)

pytestmark = pytest.mark.timeout(90)

RELOADED = "#info] reloaded"

StartGateway = Callable[..., Gateway]
StartBackend = Callable[..., Backend]

APP = "app.example.test"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        if f.read().split(") ", 1)[1].startswith("Z"):
            return False
    return True


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A C{sleep 60} that is no gateway, stopped by PID at teardown."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait(5)


def plainIni(port: int, upstreamPort: int, **gatewayKeys: str) -> str:
    """A one-listener passthrough gateway; C{gatewayKeys} added to C{[gateway]}."""
    gateway = {"access_log": "access.log", "access_log_format": "json"}
    gateway.update(gatewayKeys)
    lines = ["[gateway]", *(f"{k} = {v}" for k, v in gateway.items())]
    lines += [
        "",
        "[listener:web]",
        f"listen = tcp:{port}:interface=127.0.0.1",
        "upstream = app",
        "",
        "[upstream:app]",
        f"servers = 127.0.0.1:{upstreamPort}",
    ]
    return "\n".join(lines) + "\n"


def reloadCommand(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "reload", *arguments]


# -- tlsgateway reload --pid / --pidfile ------------------------------------------


def test_reloadRefusesAProcessThatIsNotAGateway(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """
    C{--pid} of a C{sleep}: refused with its command line, exit 1, and the
    sleep lives on.  A pid file holding its number: the same.
    """
    result = runCommand(reloadCommand("--pid", str(sleeper.pid)), tmp_path)
    assert result.returncode == 1, result
    assert f"process {sleeper.pid} is not a tlsgateway" in result.stderr, result
    assert "sleep 60" in result.stderr
    assert "sent SIGHUP" not in result.stdout
    pidfile = tmp_path / "gw.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    result = runCommand(reloadCommand("--pidfile", str(pidfile)), tmp_path)
    assert result.returncode == 1, result
    assert f"(from {pidfile}) is not a tlsgateway" in result.stderr, result
    time.sleep(0.5)  # a SIGHUP, had one been sent, would have ended it by now
    assert sleeper.poll() is None
    assert alive(sleeper.pid)


def test_reloadRefusesAStalePidfile(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    pidfile = tmp_path / "gw.pid"
    pidfile.write_text(f"{gone.pid}\n")
    result = runCommand(reloadCommand("--pidfile", str(pidfile)), tmp_path)
    assert result.returncode == 1, result
    assert f"no process {gone.pid} (from {pidfile}): the pid file is stale" in (
        result.stderr
    ), result


@pytest.mark.parametrize("command", ["twistd", "module", "script"])
def test_reloadSignalsARealGateway(
    gateway: StartGateway, tmp_path: Path, command: str
) -> None:
    """
    Each way of starting a gateway is recognised and reloaded: C{twistd
    tlsgateway} by its pid file, C{python -m gateway} and the
    C{tlsgateway} script by pid.
    """
    gw = gateway(plainIni(freePort(), freePort()), command=command)
    target = (
        ["--pidfile", str(gw.directory / "twistd.pid")]
        if command == "twistd"
        else ["--pid", str(gw.pid)]
    )
    result = runCommand(reloadCommand(*target), tmp_path)
    assert result.returncode == 0, result
    assert f"sent SIGHUP to {gw.pid}" in result.stdout
    waitUntil(lambda: RELOADED in gw.output(), 10, gw.explain)
    assert gw.running()


# -- the last reload on /status, /status.json and /metrics --------------------------


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


def reloadMetrics(port: int) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(fetch(port, "/metrics")):
        for sample in family.samples:
            if sample.name == "tlsgateway_reloads_total":
                values[sample.labels["result"]] = sample.value
            elif sample.name.startswith("tlsgateway_config_last_reload"):
                values["last_success"] = sample.value
    return values


@pytest.mark.parametrize("workers", [1, 2])
def test_theLastReloadIsOnTheStatusPageAndInTheMetrics(
    gateway: StartGateway, workers: int
) -> None:
    """
    A reload of a broken file is refused: C{/status.json} says so with the
    problem's file and line, C{/status} shows it, and C{/metrics} counts it
    while the last-success time stays the start's; the file fixed, the
    next reload applies and all three move on.
    """
    metricsPort = freePort()
    keys = {"metrics": f"tcp:{metricsPort}:interface=127.0.0.1"}
    if workers > 1:
        keys["workers"] = str(workers)
    good = plainIni(freePort(), freePort(), **keys)
    started = time.time()
    gw = gateway(good, command="module")
    if workers > 1:
        waitUntil(lambda: gw.output().count("ready") > workers, 20, gw.explain)
    status = json.loads(fetch(metricsPort, "/status.json"))["reload"]
    assert status["result"] is None
    metrics = reloadMetrics(metricsPort)
    assert metrics["applied"] == metrics["refused"] == 0
    assert started - 1 <= metrics["last_success"] <= time.time()

    broken = good.replace("upstream = app", "upstream = app\nmode = sideways")
    gw.configPath.write_text(broken)
    gw.sendSignal(signal.SIGHUP)
    waitUntil(lambda: "reload refused" in gw.output(), 10, gw.explain)
    status = json.loads(fetch(metricsPort, "/status.json"))["reload"]
    assert status["result"] == "refused", status
    line = broken.splitlines().index("mode = sideways") + 1
    assert f"{gw.configPath}:{line}: [listener:web] mode" in status["reason"], status
    refusedAt = datetime.fromisoformat(status["time"]).timestamp()
    assert started - 1 <= refusedAt <= time.time()
    page = fetch(metricsPort, "/status")
    assert 'last reload <span class="down">refused</span>' in page
    assert "[listener:web] mode" in page
    after = reloadMetrics(metricsPort)
    assert (after["applied"], after["refused"]) == (0, 1)
    assert after["last_success"] == metrics["last_success"]

    gw.configPath.write_text(good)
    gw.sendSignal(signal.SIGHUP)
    waitUntil(lambda: RELOADED in gw.output(), 20, gw.explain)
    status = json.loads(fetch(metricsPort, "/status.json"))["reload"]
    assert (status["result"], status["reason"]) == ("applied", None), status
    assert status["applied"] == 1
    assert status["refused"] == 1
    assert 'last reload <span class="up">applied</span>' in fetch(
        metricsPort, "/status"
    )
    final = reloadMetrics(metricsPort)
    assert (final["applied"], final["refused"]) == (1, 1)
    assert final["last_success"] >= refusedAt


# -- SIGHUP in an embedding application ---------------------------------------------

SITE_TAC = """\
from twisted.application.internet import TCPServer
from twisted.application.service import Application
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from gateway import GatewayService, installReloadOnSIGHUP, load_config

application = Application("site and gateway")
service = GatewayService(load_config("gateway.ini"))
service.setServiceParent(application)
installReloadOnSIGHUP(service)

root = Resource()
root.putChild(b"hello", Data(b"site says hello", "text/plain"))
TCPServer({port}, Site(root), interface="127.0.0.1").setServiceParent(application)
"""


def test_sighupReloadsAGatewayEmbeddedNextToAWebSite(
    embedded: list[Gateway],
    backend: StartBackend,
    ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """
    A C{.tac} with a web site next to the gateway, under C{twistd -ny}:
    C{SIGHUP} reloads the gateway (a route moves to another backend), the
    process lives, and the web site still answers.
    """
    one = backend("one", names=[APP])
    two = backend("two", names=[APP])
    port, sitePort = freePort(), freePort()
    ini = gatewayIni(port, routes=[(APP, "app")], upstreams={"app": one.address})
    process = Gateway(ini, tmp_path / "tac")
    (process.directory / "app.tac").write_text(SITE_TAC.format(port=sitePort))
    process.command = [str(BIN / "twistd"), "-n", "-y", "app.tac"]
    embedded.append(process)
    process.start()
    context = ca.clientContext()
    assert okBody(httpsFetch(port, context, APP, APP)[0]) == "one"
    assert fetch(sitePort, "/hello") == "site says hello"

    process.configPath.write_text(
        gatewayIni(port, routes=[(APP, "app")], upstreams={"app": two.address})
    )
    process.sendSignal(signal.SIGHUP)
    waitUntil(lambda: RELOADED in process.output(), 10, process.explain)
    assert process.running(), process.explain()
    assert okBody(httpsFetch(port, context, APP, APP)[0]) == "two"
    assert fetch(sitePort, "/hello") == "site says hello"
    assert process.running()


@pytest.fixture
def embedded() -> Iterator[list[Gateway]]:
    """Processes a test started from an argv of its own, stopped by PID."""
    started: list[Gateway] = []
    yield started
    for process in started:
        process.stop()


# -- a daemon's access_log = - ---------------------------------------------------------


def readPid(pidfile: Path, timeout: float = 10.0) -> int:
    waitUntil(pidfile.exists, timeout, f"no {pidfile}")
    return int(pidfile.read_text().strip())


def stopByPidfile(pidfile: Path) -> None:
    """SIGTERM the daemon whose pid is in C{pidfile}, and wait for it to go."""
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    waitUntil(lambda: not alive(pid), 15, f"daemon {pid} still running")


@pytest.mark.parametrize("workers", [1, 2])
def test_aDaemonWritesTheAccessLogToTwistdsLogFile(
    backend: StartBackend, ca: CertificateAuthority, tmp_path: Path, workers: int
) -> None:
    """
    C{twistd --pidfile P -l L tlsgateway} without C{-n}, C{access_log}
    left at its default C{-}: the daemon's standard output is
    C{/dev/null}, and the access-log line goes to L.  With workers, their
    access-log lines and their own log lines go there too, through the
    supervisor.
    """
    app = backend("app", names=[APP])
    port = freePort()
    config = tmp_path / "gateway.ini"
    config.write_text(
        f"[gateway]\nworkers = {workers}\n\n"
        f"[listener:web]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"upstream = app\n\n[upstream:app]\nservers = {app.address}\n"
    )
    pidfile, logfile = tmp_path / "gw.pid", tmp_path / "gw.log"
    argv = [
        str(BIN / "twistd"),
        "--pidfile",
        str(pidfile),
        "-l",
        str(logfile),
        "tlsgateway",
        "--config",
        str(config),
    ]
    try:
        started = runCommand(argv, tmp_path)
        assert started.returncode == 0, started
        pid = readPid(pidfile)
        waitUntil(
            lambda: (
                logfile.read_text().count("tlsgateway ready")
                == (1 if workers == 1 else 1 + workers)
            ),
            20,
            logfile.read_text,
        )
        if workers > 1:
            assert "[worker 2 gateway.run.service.GatewayService#info]" in (
                logfile.read_text()
            )
        assert os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
        assert okBody(httpsFetch(port, ca.clientContext(), APP, APP)[0]) == "app"
        waitUntil(lambda: f"sni={APP}" in logfile.read_text(), 10, logfile.read_text)
        [line] = [x for x in logfile.read_text().splitlines() if f"sni={APP}" in x]
        assert "[tlsgateway.access#info] " in line
        assert "listener=web" in line
        assert "status=ok" in line
    finally:
        stopByPidfile(pidfile)


# -- dropping privileges -------------------------------------------------------------

asRoot = pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)"
)
NOBODY = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else 65534


@pytest.fixture
def sharedFolder() -> Iterator[Path]:
    """
    A folder the C{nobody} account can reach: pytest's own temporary
    folders are private to root.
    """
    folder = Path(tempfile.mkdtemp(prefix="tlsgateway-privileges-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def servedSerial(port: int, ca: CertificateAuthority) -> int:
    """The serial number of the certificate the gateway's handshake shows."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ca.clientContext().wrap_socket(raw, server_hostname=APP) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
    return x509.load_der_x509_certificate(der).serial_number


def leafFor(ca: CertificateAuthority, folder: Path, readable: bool) -> int:
    """
    Write a leaf for L{APP} as C{site-cert.pem} and C{site-key.pem}, the key
    0600 root's own, or 0640 root:nogroup when C{readable} (by nobody,
    through its group); its serial number.
    """
    leaf = ca.ca.issue_cert(APP)
    written = writeLeaf(folder, "site", leaf, APP)
    written.certificatePath.chmod(0o644)
    if readable:
        os.chown(written.privateKeyPath, 0, grp.getgrnam("nogroup").gr_gid)
        written.privateKeyPath.chmod(0o640)
    pem = leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


def terminatingIni(folder: Path, port: int, metricsPort: int, **keys: str) -> str:
    gateway = {
        "access_log": str(folder / "access.log"),
        "metrics": f"tcp:{metricsPort}:interface=127.0.0.1",
        **keys,
    }
    lines = ["[gateway]", *(f"{k} = {v}" for k, v in gateway.items())]
    lines += [
        "",
        "[listener:web]",
        f"listen = tcp:{port}:interface=127.0.0.1",
        "mode = terminate",
        f"certificate = {folder / 'site-cert.pem'}",
        f"private_key = {folder / 'site-key.pem'}",
        "upstream = app",
        "",
        "[upstream:app]",
        "servers = 127.0.0.1:9",
    ]
    return "\n".join(lines) + "\n"


def uidsOf(pid: int) -> list[int]:
    """Real, effective, saved and file-system uid of C{pid}."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


#: How each way of starting drops to nobody.
DROPS = {
    "twistd": ({}, ["--uid", "nobody", "--gid", "nogroup"]),
    "twistd-user": ({"user": "nobody"}, []),
    "run": ({"user": "nobody"}, []),
    "run-workers": ({"user": "nobody", "group": "nogroup", "workers": "2"}, []),
}


def privilegedGateway(
    embedded: list[Gateway], folder: Path, how: str, ini: str
) -> Gateway:
    _, twistdOptions = DROPS[how]
    process = Gateway(ini, folder / f"gw-{len(embedded)}")
    configPath = str(process.configPath)
    if how.startswith("twistd"):
        process.command = [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            *twistdOptions,
            "tlsgateway",
            "--config",
            configPath,
        ]
    else:
        process.command = [sys.executable, "-m", "gateway", "run", "-c", configPath]
    embedded.append(process)
    return process


@asRoot
@pytest.mark.parametrize("how", sorted(DROPS))
def test_aKeyTheAccountCannotReadIsRefusedAtStart(
    embedded: list[Gateway],
    ca: CertificateAuthority,
    sharedFolder: Path,
    how: str,
) -> None:
    """
    A 0600 key of root's, and a gateway that will serve as nobody: it
    refuses to start (exit 1), naming the key and the key's line, rather
    than failing every reload after the drop.
    """
    leafFor(ca, sharedFolder, readable=False)
    keys, _ = DROPS[how]
    ini = terminatingIni(sharedFolder, freePort(), freePort(), **keys)
    process = privilegedGateway(embedded, sharedFolder, how, ini)
    with pytest.raises(GatewayFailed, match="exited with 1"):
        process.start()
    line = ini.splitlines().index(f"private_key = {sharedFolder / 'site-key.pem'}") + 1
    expected = (
        f"{process.configPath}:{line}: [listener:web] private_key:"
        f" {sharedFolder / 'site-key.pem'} is not readable by user nobody"
    )
    assert expected in process.output(), process.output()
    assert "Permission denied" in process.output()
    assert f"{sharedFolder / 'site-cert.pem'} is not" not in process.output()


@asRoot
@pytest.mark.parametrize("how", sorted(DROPS))
def test_afterTheDropAReloadReadsTheRenewedCertificate(
    embedded: list[Gateway],
    ca: CertificateAuthority,
    sharedFolder: Path,
    how: str,
) -> None:
    """
    The key readable by nobody's group: the gateway starts, serves as
    nobody (its workers, with C{workers}: the supervisor keeps root to
    bind what a reload adds), and a renewal followed by C{SIGHUP} is
    applied: the next handshake shows the new certificate.
    """
    first = leafFor(ca, sharedFolder, readable=True)
    port, metricsPort = freePort(), freePort()
    keys, _ = DROPS[how]
    ini = terminatingIni(sharedFolder, port, metricsPort, **keys)
    process = privilegedGateway(embedded, sharedFolder, how, ini)
    process.start()
    workers = int(keys.get("workers", "1"))
    if workers > 1:
        waitUntil(lambda: len(workerPids(metricsPort)) == workers, 20, process.explain)
        assert uidsOf(process.pid) == [0, 0, 0, 0]
        servers = workerPids(metricsPort)
    else:
        servers = [process.pid]
    for pid in servers:
        assert uidsOf(pid) == [NOBODY] * 4, process.explain()
    assert servedSerial(port, ca) == first

    second = leafFor(ca, sharedFolder, readable=True)
    process.sendSignal(signal.SIGHUP)
    waitUntil(lambda: RELOADED in process.output(), 20, process.explain)
    status = json.loads(fetch(metricsPort, "/status.json"))["reload"]
    assert status["result"] == "applied", (status, process.explain())
    # With workers, an old worker may accept a connection or two until the
    # SIGQUIT that retires it has closed its copy of the listener.
    waitUntil(lambda: servedSerial(port, ca) == second, 10, process.explain)
    if workers > 1:
        waitUntil(lambda: set(workerPids(metricsPort)) - set(servers), 20, str)
        for pid in workerPids(metricsPort):
            assert uidsOf(pid) == [NOBODY] * 4


def workerPids(metricsPort: int) -> list[int]:
    status = json.loads(fetch(metricsPort, "/status.json"))
    return [
        w["pid"]
        for w in status.get("worker_processes", [])
        if w["reported"] and not w["retiring"]
    ]
