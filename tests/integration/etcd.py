"""
A throwaway single-node etcd for tests: Debian's C{etcd-server} on
loopback, its own data directory, free ports.

C{stop} and C{start} again keep the data directory and the ports, so a
test can take etcd away under a running fleet and bring the same store
back.  C{etcdctl} (Debian's C{etcd-client}) runs against it with
L{Etcd.ctl}.  A missing binary fails the test: a skipped cluster test
would hide a missing dependency (C{.ci/run} installs both packages).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import trustme

from .harness import freePort


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is not installed: the cluster tests need Debian's {package}"
        f" package (apt-get install {package})"
    )
    return path


class Etcd:
    """
    One etcd process, started by L{start}, stopped by L{stop} (by its pid).
    """

    def __init__(self, directory: Path, tls: trustme.CA | None = None) -> None:
        """
        @param tls: serve HTTPS with a certificate from this CA, and
            require client certificates from it (C{--client-cert-auth}).
        """
        self.directory = directory
        self.clientPort = freePort()
        self.peerPort = freePort()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.clientPort}"
        if tls is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.caPath = directory / "ca.pem"
            tls.cert_pem.write_to_path(str(self.caPath))
            server = tls.issue_cert("127.0.0.1", "localhost")
            self.serverCert = directory / "server.pem"
            self.serverKey = directory / "server.key"
            server.cert_chain_pems[0].write_to_path(str(self.serverCert))
            server.private_key_pem.write_to_path(str(self.serverKey))
            client = tls.issue_cert("tlsgateway")
            self.clientCert = directory / "client.pem"
            self.clientKey = directory / "client.key"
            client.cert_chain_pems[0].write_to_path(str(self.clientCert))
            client.private_key_pem.write_to_path(str(self.clientKey))
        self.process: subprocess.Popen[bytes] | None = None
        self.logPath = directory / "etcd.log"

    def start(self, timeout: float = 20.0) -> Etcd:
        peer = f"http://127.0.0.1:{self.peerPort}"
        command = [
            _binary("etcd", "etcd-server"),
            "--name=default",
            f"--data-dir={self.directory / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
        ]
        if self.tls is not None:
            command += [
                f"--cert-file={self.serverCert}",
                f"--key-file={self.serverKey}",
                f"--trusted-ca-file={self.caPath}",
                "--client-cert-auth",
            ]
        with self.logPath.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.logPath.read_text()[-3000:]
            if self._healthy():
                return self
            time.sleep(0.1)
        raise AssertionError("etcd did not start:\n" + self.logPath.read_text()[-3000:])

    def _healthy(self) -> bool:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.caPath))
            context.load_cert_chain(str(self.clientCert), str(self.clientKey))
        try:
            with urllib.request.urlopen(  # noqa: S310
                self.url + "/health", timeout=1, context=context
            ) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def ctl(self, *args: str, check: bool = True) -> str:
        """
        Run C{etcdctl} (API v3) against this etcd; its standard output.
        """
        tls = []
        if self.tls is not None:
            tls = [
                f"--cacert={self.caPath}",
                f"--cert={self.clientCert}",
                f"--key={self.clientKey}",
            ]
        result = subprocess.run(
            [_binary("etcdctl", "etcd-client"), f"--endpoints={self.url}", *tls, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            timeout=20,
            check=False,
        )
        if check:
            assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()


@contextlib.contextmanager
def runningEtcd(directory: Path) -> Iterator[Etcd]:
    """
    A running etcd in C{directory}, stopped on leaving.
    """
    directory.mkdir(parents=True, exist_ok=True)
    server = Etcd(directory)
    try:
        yield server.start()
    finally:
        server.stop()
