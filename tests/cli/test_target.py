"""
L{gateway.cli.target}: which command lines C{tlsgateway reload} may signal.
The end-to-end side (a real C{sleep} refused, a real gateway reloaded) is
in C{tests/integration/test_process.py}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.target import commandLine, isGatewayCommand, refusal

PYTHON = "/usr/bin/python3.13"


@pytest.mark.parametrize(
    "argv",
    [
        [PYTHON, "/usr/local/bin/tlsgateway", "run", "--config", "gw.ini"],
        ["/usr/local/bin/tlsgateway", "run", "-c", "gw.ini"],
        [PYTHON, "-m", "gateway", "run", "--config", "gw.ini"],
        [PYTHON, "-u", "-X", "dev", "-m", "gateway", "worker", "--config", "g"],
        [PYTHON, "/venv/bin/twistd", "-n", "tlsgateway", "--config", "gw.ini"],
        [
            PYTHON,
            "/venv/bin/twistd",
            "--pidfile",
            "/run/gw.pid",
            "--uid",
            "nobody",
            "tlsgateway",
            "-c",
            "gw.ini",
        ],
    ],
)
def test_gatewayCommandLinesAreRecognised(argv: list[str]) -> None:
    assert isGatewayCommand(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["sleep", "60"],
        [],
        [PYTHON],
        [PYTHON, "-m", "http.server"],
        [PYTHON, "/venv/bin/twistd", "-ny", "app.tac"],
        [PYTHON, "/venv/bin/twistd", "web", "--path", "."],
        ["nginx: master process /usr/sbin/nginx"],
        [PYTHON, "/srv/tlsgateway-backup.py"],
        ["/bin/sh", "-c", "tlsgateway run -c gw.ini"],
    ],
)
def test_otherCommandLinesAreNot(argv: list[str]) -> None:
    assert not isGatewayCommand(argv)


@given(st.lists(st.text()))
def test_anyCommandLineGetsAnAnswer(argv: list[str]) -> None:
    assert isGatewayCommand(argv) in (True, False)


def test_aLiveProcessThatIsNotAGatewayIsRefusedByName() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        # Until the child has exec'd, /proc shows the forking interpreter.
        deadline = time.monotonic() + 10
        while "sleep" not in " ".join(commandLine(sleeper.pid) or ()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        message = refusal(sleeper.pid, "gw.pid")
        assert message is not None
        assert f"process {sleeper.pid} (from gw.pid) is not a tlsgateway" in message
        assert "sleep 30" in message
    finally:
        sleeper.kill()
        sleeper.wait()


def test_aProcessThatIsGoneIsAStalePidfile() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert commandLine(gone.pid) is None
    assert refusal(gone.pid, "gw.pid") == (
        f"no process {gone.pid} (from gw.pid): the pid file is stale; nothing signalled"
    )


def test_theTestRunnerItselfIsNotAGateway() -> None:
    argv = commandLine(os.getpid())
    assert argv is not None
    assert argv
    assert refusal(os.getpid()) is not None
