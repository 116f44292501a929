"""
A throwaway MariaDB server for the C{mode = tcp} and C{protocol = mysql}
end-to-end tests: MySQL's protocol is the classic server-speaks-first
protocol (the server's greeting comes before any client byte).

Debian's C{mariadb-server} package provides C{mariadb-install-db} and
C{mariadbd}; the server runs on a loopback port with a data directory of its
own, no option files (C{--no-defaults}), and a root account without a
password, and is stopped by its PID with bounded waits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .harness import freePort

#: Most seconds a MariaDB command or start-up may take.
COMMAND_TIMEOUT = 60.0


class Unavailable(Exception):
    """MariaDB is not installed; the message says what to install."""


def _program(*names: str) -> str:
    for name in names:
        for folder in ("/usr/sbin", "/usr/bin"):
            path = Path(folder) / name
            if path.is_file():
                return str(path)
        found = shutil.which(name)
        if found:
            return found
    raise Unavailable(
        f"{names[0]} not found: apt-get install mariadb-server mariadb-client"
    )


class MariaDBServer:
    """
    One C{mariadbd} on 127.0.0.1, created in C{directory}.

    @ivar port: its TCP port, once started.
    """

    host = "127.0.0.1"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.installDb = _program("mariadb-install-db", "mysql_install_db")
        self.server = _program("mariadbd", "mysqld")
        self.client = _program("mariadb", "mysql")
        self.port = 0
        self.logPath = directory / "mariadb.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _userOptions(self) -> list[str]:
        # mariadbd refuses to run as root unless told to.  Temporary files
        # go in the server's own folder: in the shared /tmp, servers
        # bootstrapped at once can collide on the names of their temporary
        # tables.
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [*user, f"--tmpdir={self.directory}"]

    def start(
        self,
        timeout: float = COMMAND_TIMEOUT,
        *,
        tls: tuple[Path, Path, Path] | None = None,
        options: tuple[str, ...] = (),
    ) -> MariaDBServer:
        """
        Create the data directory and start the server; return once it
        greets a TCP client.

        @param tls: certificate chain, private key and CA files: the server
            then offers TLS (C{have_ssl}).
        @param options: more C{mariadbd} options.

        @raise AssertionError: it did not come up in time (it is stopped).
        """
        data = self.directory / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                self.installDb,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._userOptions(),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"mariadb-install-db exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        self.port = freePort()
        with self.logPath.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self.server,
                    "--no-defaults",
                    f"--datadir={data}",
                    *self._userOptions(),
                    f"--bind-address={self.host}",
                    f"--port={self.port}",
                    f"--socket={self.directory / 'mariadb.sock'}",
                    f"--pid-file={self.directory / 'mariadb.pid'}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=16M",
                    "--max-allowed-packet=64M",
                    *(
                        [
                            f"--ssl-cert={tls[0]}",
                            f"--ssl-key={tls[1]}",
                            f"--ssl-ca={tls[2]}",
                        ]
                        if tls is not None
                        else ["--skip-ssl"]
                    ),
                    *options,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._greets():
                return self
            time.sleep(0.1)
        explanation = self.explain()
        self.stop()
        raise AssertionError(f"MariaDB did not start\n{explanation}")

    def _greets(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=1) as sock,
        ):
            return len(sock.recv(1024)) > 4
        return False

    def adminQuery(self, sql: str) -> str:
        """
        Run C{sql} as root over the server's UNIX socket (not through any
        gateway); return its output.

        @raise AssertionError: the client failed.
        """
        result = subprocess.run(
            [
                self.client,
                "--no-defaults",
                f"--socket={self.directory / 'mariadb.sock'}",
                "--user=root",
                "--batch",
                "--skip-column-names",
                f"--execute={sql}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"{sql}: {result.stderr}")
        return result.stdout

    def addUser(self, user: str, password: str) -> None:
        """
        Create C{user}@'%' with C{mysql_native_password} and every
        privilege, and drop the anonymous users, which would match
        127.0.0.1 first.
        """
        # The test's own names, not input:
        sql = (
            "DELETE FROM mysql.global_priv WHERE User = ''; FLUSH PRIVILEGES;"  # noqa: S608
            f" CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';"
            f" GRANT ALL ON *.* TO '{user}'@'%'; FLUSH PRIVILEGES"
        )
        self.adminQuery(sql)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def kill(self) -> None:
        """SIGKILL now: the server dies in the middle of whatever it does."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def query(self, port: int, sql: str) -> subprocess.CompletedProcess[str]:
        """Run C{sql} with the C{mariadb} client against 127.0.0.1:C{port}."""
        return subprocess.run(
            [
                self.client,
                "--no-defaults",
                f"--host={self.host}",
                f"--port={port}",
                "--protocol=TCP",
                "--user=root",
                "--batch",
                "--skip-column-names",
                "--connect-timeout=10",
                f"--execute={sql}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL, each with a bounded wait."""
        process, self._process = self._process, None
        if process is None:
            return
        for number, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            os.kill(process.pid, number)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)

    def explain(self) -> str:
        try:
            log = self.logPath.read_text(errors="replace")
        except FileNotFoundError:
            log = ""
        tail = "\n".join(log.splitlines()[-20:])
        return f"MariaDB on {self.host}:{self.port}\n--- log tail ---\n{tail}"
