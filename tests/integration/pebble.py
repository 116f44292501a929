"""
A real ACME server for end-to-end tests: Let's Encrypt's C{pebble} (Debian
package C{pebble}), with C{pebble-challtestsrv} as its DNS server.

Everything stays on loopback: the DNS server answers every A query with
127.0.0.1 (and no AAAA, so pebble never tries ::1), and pebble's
C{tls-alpn-01} validations go to C{tlsPort}, the gateway listener under
test.  pebble's own HTTPS certificate comes from a throwaway trustme CA,
which the gateway gets as C{[acme] ca_bundle}.

Missing binaries fail the test: a skipped ACME test would hide a missing
dependency (C{.ci/run} installs C{pebble}).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import trustme

from .harness import freePort


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is not installed: the ACME tests need Debian's pebble package"
        " (apt-get install pebble)"
    )
    return path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


class ChallengeDNS:
    """
    C{pebble-challtestsrv} answering DNS only: every name is 127.0.0.1.
    """

    def __init__(self, directory: Path) -> None:
        self.port = freePort()
        self.logPath = directory / "challtestsrv.log"
        with self.logPath.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _binary("pebble-challtestsrv"),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{self.port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{freePort()}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while "Starting challenge servers" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def output(self) -> str:
        return self.logPath.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)


class Pebble:
    """
    One pebble process validating C{tls-alpn-01} on 127.0.0.1:C{tlsPort}.

    @ivar directory: the ACME directory URL, for C{[acme] directory}.
    @ivar caBundle: the CA of pebble's HTTPS, for C{[acme] ca_bundle}.
    """

    def __init__(
        self,
        folder: Path,
        dns: ChallengeDNS,
        tlsPort: int,
        *,
        validity: int | None = None,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        authority = trustme.CA()
        leaf = authority.issue_cert("localhost", "127.0.0.1")
        certificate = folder / "pebble-cert.pem"
        key = folder / "pebble-key.pem"
        self.caBundle = folder / "pebble-https-ca.pem"
        certificate.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        authority.cert_pem.write_to_path(str(self.caBundle))
        self.port = freePort()
        self.managementPort = freePort()
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.managementPort}",
            "certificate": str(certificate),
            "privateKey": str(key),
            "httpPort": freePort(),
            "tlsPort": tlsPort,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            settings["certificateValidityPeriod"] = validity
        config = folder / "pebble-config.json"
        config.write_text(json.dumps({"pebble": settings}))
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.logPath = folder / "pebble.log"
        environment = dict(os.environ)
        # No random sleeps before validations, no rejected nonces (the
        # client library retries them, but that only slows the tests), and
        # a fresh authorization for every order, so each test validates.
        environment.update(
            PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0"
        )
        with self.logPath.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    _binary("pebble"),
                    "-strict",
                    "-config",
                    str(config),
                    "-dnsserver",
                    f"127.0.0.1:{dns.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                cwd=folder,
            )
        self._https = ssl.create_default_context(cafile=str(self.caBundle))
        deadline = time.monotonic() + 15
        while True:
            assert self.process.poll() is None, self.output()
            try:
                self._get(self.directory)
                break
            except OSError:
                assert time.monotonic() < deadline, self.output()
                time.sleep(0.1)

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._https, timeout=5) as response:  # noqa: S310 - https on loopback
            return bytes(response.read())

    def root(self) -> bytes:
        """
        pebble's issuing root, PEM, from its management interface: what a
        client verifies issued certificates against.
        """
        return self._get(f"https://127.0.0.1:{self.managementPort}/roots/0")

    def rootContext(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.root().decode())
        return context

    def output(self) -> str:
        return self.logPath.read_text(errors="replace")

    def issued(self) -> int:
        """
        How many certificates pebble has issued.
        """
        return self.output().count("Issued certificate serial")

    def stop(self) -> None:
        _stop(self.process)
