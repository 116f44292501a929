"""
C{tlsgateway check} and C{tlsgateway run} as an operator meets their
messages, end to end: one file with every kind of mistake gets every one
named, each on its own line; a listener whose address is taken is named,
with and without workers.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.run.mistakes import unmatched, writeMistakes

from .harness import commandFor, freePort, gatewayEnvironment, gatewayIni, runCommand


def test_checkNamesEveryMistakeOfOneFileOnALineOfItsOwn(tmp_path: Path) -> None:
    path, expected = writeMistakes(tmp_path)
    result = runCommand(commandFor("script", "check", str(path)), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    printed = result.stderr.splitlines()
    assert unmatched(printed, expected, str(path)) == [], result.stderr
    assert len(printed) == len(expected)


def takenPort() -> socket.socket:
    """A loopback port held open by this test, as by another program."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", freePort()))
    holder.listen()
    return holder


def test_runNamesTheListenerWhoseAddressIsTaken(tmp_path: Path) -> None:
    """
    C{tlsgateway run} with C{workers = 2} (the supervisor opens the
    sockets), C{twistd -n tlsgateway} with workers, and C{tlsgateway run}
    in one process: each exits 1 naming the listener, its C{listen} line
    and the endpoint, not an address alone.
    """
    with takenPort() as holder:
        port = holder.getsockname()[1]
        for kind, workers in (("script", "2"), ("twistd", "2"), ("script", "1")):
            ini = tmp_path / f"gw-{kind}-{workers}.ini"
            ini.write_text(
                gatewayIni(
                    port,
                    upstream="app",
                    upstreams={"app": "127.0.0.1:9"},
                    gatewayKeys={"workers": workers},
                )
            )
            line = (
                ini.read_text()
                .splitlines()
                .index(f"listen = tcp:{port}:interface=127.0.0.1")
            )
            process = subprocess.run(
                commandFor(kind, "run", str(ini)),
                cwd=tmp_path,
                env=gatewayEnvironment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            output = process.stdout + process.stderr
            assert process.returncode == 1, (kind, workers, output)
            assert (
                f"{ini}:{line + 1}: [listener:web] listen: cannot listen on"
                f" tcp:{port}:interface=127.0.0.1: Address already in use"
            ) in output, (kind, workers, output)
