"""
End-to-end: C{tlsgateway demo} as a new user meets it.

The demo is started as a real process, and the C{curl} commands it prints
are run exactly as printed, so the test fails whenever a user copying them
would see something other than the backend the routing table promises.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import REPO_ROOT, freePort, gatewayEnvironment

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None, reason="the demo's instructions use curl"
)

#: Bounds: the demo starts in about a second; these allow a loaded CI box.
START_TIMEOUT = 20.0
CURL_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0

#: The last line of the printed instructions.
LAST_LINE = "Ctrl-C stops it all"

#: Which backend must answer each host of the demo's routing table: the
#: exact routes, and the default route for a client that sends no SNI.
#: Any other name under demo.test must take the wildcard route to app2.
EXPECTED_BACKEND = {
    "app1.demo.test": "app1.demo.test",
    "app2.demo.test": "app2.demo.test",
    "127.0.0.1": "app1.demo.test",
}
WILDCARD_BACKEND = "app2.demo.test"

_URL = re.compile(r"https://(?P<host>[^:/\s]+):(?P<port>\d+)/")


def _defaultSigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Demo:
    """
    A running C{python -m gateway demo}, its output read as it comes.

    Standard output is read by a thread into a queue, so that waiting for a
    line is bounded; standard error (Twisted's log) goes to a file, for the
    failure messages.
    """

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.stderrPath = directory / "demo.stderr"
        env = gatewayEnvironment()
        # The demo's temporary directory is made under TMPDIR: keep it in
        # this test's own folder, so nothing leaks even if the demo fails.
        env["TMPDIR"] = str(directory)
        with self.stderrPath.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                # A shell starts background jobs with SIGINT ignored, and an
                # ignored SIGINT stays ignored in children (Twisted then
                # leaves it alone): give the demo the Ctrl-C of a terminal,
                # whoever runs the tests.
                preexec_fn=_defaultSigint,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def waitFor(self, predicate: str, timeout: float) -> None:
        """
        Read output lines until one contains C{predicate}; fail on EOF or
        at the deadline.
        """
        deadline = time.monotonic() + timeout
        while not any(predicate in line for line in self.lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{predicate!r} not printed within {timeout}s\n{self}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.process.wait(STOP_TIMEOUT)
                pytest.fail(f"the demo ended before printing {predicate!r}\n{self}")
            self.lines.append(line)

    def curlCommands(self) -> list[str]:
        return [line.strip() for line in self.lines if line.strip().startswith("curl ")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def __str__(self) -> str:
        stderr = self.stderrPath.read_text(errors="replace")
        return (
            f"--- demo stdout:\n{chr(10).join(self.lines)}\n"
            f"--- demo stderr (last 40 lines):\n" + "\n".join(stderr.splitlines()[-40:])
        )


DemoStarter = Callable[[int], Demo]


@pytest.fixture
def startDemo(tmp_path: Path) -> Iterator[DemoStarter]:
    """
    A starter: C{startDemo(port)}; each demo still running at teardown is
    killed by its PID.
    """
    started: list[Demo] = []

    def start(port: int) -> Demo:
        demo = Demo(port, tmp_path)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.stop()


def expectedBackend(host: str) -> str:
    if host in EXPECTED_BACKEND:
        return EXPECTED_BACKEND[host]
    assert host.endswith(".demo.test"), f"{host} is not a demo name"
    return WILDCARD_BACKEND


def test_printedCurlCommandsReachTheRoutedBackends(
    startDemo: DemoStarter, tmp_path: Path
) -> None:
    port = freePort()
    demo = startDemo(port)
    demo.waitFor(LAST_LINE, START_TIMEOUT)

    commands = demo.curlCommands()
    hosts = []
    for command in commands:
        match = _URL.search(command)
        assert match is not None, f"no https URL in {command!r}"
        assert int(match["port"]) == port, command
        hosts.append(match["host"])
    assert {"app1.demo.test", "app2.demo.test"} <= set(hosts), commands
    assert set(hosts) - set(EXPECTED_BACKEND), f"no wildcard example in {commands}"

    for command, host in zip(commands, hosts, strict=True):
        result = subprocess.run(
            shlex.split(command),
            capture_output=True,
            text=True,
            timeout=CURL_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}\n{demo}"
        assert result.stdout == f"hello from {expectedBackend(host)}\n", command

    # One access-log line per connection, on standard output, naming the
    # server name the gateway routed by.
    for host in hosts:
        sni = "-" if host == "127.0.0.1" else host
        demo.waitFor(f"sni={sni} ", CURL_TIMEOUT)
    accessLines = [line for line in demo.lines if line.startswith("time=")]
    assert len(accessLines) == len(hosts), accessLines
    assert all(" status=ok " in line for line in accessLines), accessLines

    caPaths = set()
    for command in commands:
        argv = shlex.split(command)
        caPaths.add(argv[argv.index("--cacert") + 1])
    assert len(caPaths) == 1, caPaths
    directory = Path(caPaths.pop()).parent
    assert directory.is_dir()
    assert directory.parent == tmp_path, "the demo ignored TMPDIR"

    os.kill(demo.process.pid, signal.SIGINT)
    assert demo.process.wait(STOP_TIMEOUT) == 0, str(demo)
    assert not directory.exists(), f"{directory} left behind\n{demo}"
    # The gateway's own log is at info: nothing per connection (the access
    # log has that), none of Twisted's port start/stop chatter.
    log = demo.stderrPath.read_text(errors="replace")
    for noise in ("#debug", "relay 127.0.0.1", "starting on", "Port "):
        assert noise not in log, (noise, log)


def test_portInUseIsExplained(startDemo: DemoStarter, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = startDemo(port)
        assert demo.process.wait(START_TIMEOUT) == 1, str(demo)
    stderr = demo.stderrPath.read_text()
    assert f"127.0.0.1:{port}" in stderr, stderr
    assert "--port" in stderr, stderr
    assert list(tmp_path.glob("tlsgateway-demo-*")) == [], "temporary files left"
