"""
ACME certificates at run time: load, order, renew, hand over.

One L{AcmeManager} per running configuration with C{[certificate:NAME]
acme = on} sections.  For each such certificate it keeps the one being
served (L{AcmeManager.current}), and a timer for its next check:

  - At start, a certificate already in the state directory (for the same
    names) is loaded at once and served: a restart orders nothing.
  - A check runs in a thread of its own (the ACME library blocks on
    HTTPS, and the files are read and written there too): a certificate in the state
    directory that is not due for renewal is taken as it is (another
    worker may have just written it); otherwise the worker that gets the
    certificate's lock file orders one, while the others come back every
    few seconds and take the result from the state directory.  One order,
    however many workers.
  - A new certificate is handed to the C{changed} callback, which puts it
    into the listeners' TLS contexts: new handshakes get it, established
    connections keep theirs.  One line is logged per issuance or renewal.
  - A failed order is logged with the ACME server's problem document and
    retried with exponential backoff.

Until a certificate is first issued, L{AcmeManager.current} is L{None} and
handshakes for its names fail as pending (L{gateway.tls.server}).
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.acme.issuer import AcmeFailure, Issuer, newKeyPEM
from gateway.acme.state import Locked, StateDirectory
from gateway.config import AcmeSettings, CertificateConfig, GatewayConfig
from gateway.connection.timers import cancel
from gateway.tls.certificates import LoadedCertificate, loadCertificate
from gateway.tls.errors import TLSConfigError
from gateway.tls.server import AcmeCertificates

__all__ = ["AcmeManager", "ChallengeResponder", "renewalTime", "retryDelay"]

#: How often a worker that did not get a certificate's lock looks for the
#: result of the worker that did.
POLL_INTERVAL = 2.0

#: The first retry after a failed order, doubled after each further
#: failure up to L{MAX_BACKOFF}.
FIRST_BACKOFF = 10.0
MAX_BACKOFF = 3600.0

#: The longest a timer is set for: a clock that jumped is noticed by then.
MAX_SLEEP = 86400.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def retryDelay(failures: int) -> float:
    """
    How long to wait after the C{failures}-th failed order in a row:
    L{FIRST_BACKOFF}, doubled each time, at most L{MAX_BACKOFF} (an ACME
    server's rate limits count failed validations: hammering makes them
    last longer).
    """
    return float(min(FIRST_BACKOFF * 2 ** min(failures - 1, 32), MAX_BACKOFF))


def renewalTime(
    certificate: LoadedCertificate, renewBefore: float
) -> datetime.datetime:
    """
    When C{certificate} is due: C{renew_before} ahead of its notAfter; or,
    when C{renew_before} is longer than the certificate's whole lifetime
    (it would be due the moment it is issued), after two thirds of it.
    """
    lifetime = certificate.notAfter - certificate.notBefore
    due = certificate.notAfter - datetime.timedelta(seconds=renewBefore)
    if due <= certificate.notBefore:
        due = certificate.notBefore + lifetime * 2 / 3
    return due


@attrs.define
class _Managed:
    """
    One ACME certificate: its configuration and run-time state.
    """

    config: CertificateConfig
    current: LoadedCertificate | None = None
    timer: IDelayedCall | None = None
    failures: int = 0
    busy: bool = False


@attrs.frozen
class _Result:
    """
    What a check in the thread found or did.

    @ivar kind: C{fresh} (the state directory has a certificate that is
        not due), C{issued} (this worker ordered one), C{locked} (another
        worker is ordering).
    """

    kind: str
    certificate: LoadedCertificate | None


class ChallengeResponder:
    """
    What every listener asks when a ClientHello offers only ALPN
    C{acme-tls/1}: is the name one of ours, and what is its challenge
    certificate?  The challenge comes from the state directory, so a
    validation connection is answered by whichever worker it reaches.
    """

    def __init__(self, state: StateDirectory, domains: Iterable[str]) -> None:
        self._state = state
        self._domains = frozenset(domains)

    def manages(self, serverName: str | None) -> bool:
        return (
            serverName is not None
            and serverName.lower().removesuffix(".") in self._domains
        )

    def contextFor(self, serverName: str) -> SSL.Context | None:
        """
        A context serving the challenge certificate for C{serverName} with
        ALPN C{acme-tls/1}, or L{None} when no validation is in progress.
        """
        from cryptography.hazmat.primitives.serialization import (
            load_pem_private_key,
        )
        from cryptography.x509 import load_pem_x509_certificate

        pem = self._state.challenge(serverName.lower().removesuffix("."))
        if pem is None:
            return None
        try:
            key = load_pem_private_key(pem, password=None)
            certificate = load_pem_x509_certificate(pem)
            context = SSL.Context(SSL.TLS_SERVER_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.use_certificate(certificate)
            context.use_privatekey(key)  # type: ignore[arg-type]
            context.set_alpn_select_callback(_selectAcmeTLS)
        except (ValueError, TypeError, SSL.Error):
            return None
        return context


def _selectAcmeTLS(connection: SSL.Connection, offered: list[bytes]) -> Any:
    if b"acme-tls/1" in offered:
        return b"acme-tls/1"
    return SSL.NO_OVERLAPPING_PROTOCOLS


def storedCertificate(
    state: StateDirectory, config: CertificateConfig
) -> LoadedCertificate | None:
    """
    The certificate of C{config} in the state directory, if there is one
    for exactly its names (after C{names} changed, there is not).

    @raise TLSConfigError: the file is there but cannot be used.
    """
    path = state.certificatePath(config.name)
    if not os.path.exists(path):
        return None
    loaded = loadCertificate(path, path)
    if set(loaded.names) != set(config.names):
        return None
    return loaded


def storedAcmeCertificates(config: GatewayConfig) -> AcmeCertificates | None:
    """
    The ACME certificates as a process that orders none sees them (the
    supervisor of workers, which serves the status page and the expiry
    gauge): those its workers stored in the shared state directory.
    """
    if config.acme is None:
        return None
    state = StateDirectory(config.acme.state_dir)

    def stored(name: str) -> LoadedCertificate | None:
        certificate = config.certificates.get(name)
        if certificate is None or not certificate.acme:
            return None
        try:
            return storedCertificate(state, certificate)
        except TLSConfigError:
            return None

    return stored


class AcmeManager:
    """
    @ivar state: the state directory.
    @ivar challenges: the C{tls-alpn-01} answers for every listener.
    """

    _log = Logger()

    def __init__(
        self,
        settings: AcmeSettings,
        certificates: Iterable[CertificateConfig],
        reactor: Any,
        changed: Callable[[str, LoadedCertificate], None],
        state: StateDirectory | None = None,
    ) -> None:
        """
        @param state: where certificates, locks and challenges are kept:
            C{[acme] state_dir} by default; a fleet's shared state
            (L{gateway.cluster.acmestate}) with C{[cluster]}.
        """
        self.settings = settings
        self.state = state or StateDirectory(settings.state_dir)
        self._managed = {c.name: _Managed(c) for c in certificates if c.acme}
        self.challenges = ChallengeResponder(
            self.state, (n for m in self._managed.values() for n in m.config.names)
        )
        self._reactor = reactor
        # Built on the reactor thread (the service builds it there).
        self._reactorThread = threading.get_ident()
        self._changed = changed
        self._issuer = Issuer(settings, self.state)
        self._running = False

    def __bool__(self) -> bool:
        return bool(self._managed)

    # -- life ----------------------------------------------------------------

    def load(self) -> None:
        """
        Create the state directory and load the certificates it already
        holds, before the first listener serves: a restart is served at
        once, without a new order.

        @raise OSError: the state directory cannot be created.
        """
        self.state.prepare()
        for managed in self._managed.values():
            managed.current = self._fromDisk(managed.config)

    def start(self) -> None:
        self._running = True
        for name in self._managed:
            self._schedule(name, 0.0)

    def stop(self) -> None:
        """
        Stop the timers.  A check running in a thread finishes there (its
        certificate is saved), and its result is ignored here.
        """
        self._running = False
        for managed in self._managed.values():
            cancel(managed.timer)
            managed.timer = None

    def refresh(self, name: str) -> None:
        """
        Check C{[certificate:NAME]} now: another replica of a fleet stored
        a new certificate for it.
        """
        if self._running and name in self._managed:
            self._schedule(name, 0.0)

    def current(self, name: str) -> LoadedCertificate | None:
        """
        The certificate of C{[certificate:NAME]} being served, or L{None}
        while it is pending.
        """
        managed = self._managed.get(name)
        return None if managed is None else managed.current

    # -- checks ------------------------------------------------------------------

    def _schedule(self, name: str, delay: float) -> None:
        managed = self._managed[name]
        cancel(managed.timer)
        managed.timer = self._reactor.callLater(
            min(max(delay, 0.0), MAX_SLEEP), self._check, name
        )

    def _check(self, name: str) -> None:
        managed = self._managed[name]
        managed.timer = None
        if not self._running or managed.busy:
            return
        managed.busy = True
        d = self._inThread(self._work, managed.config)
        d.addCallbacks(self._worked, self._failed, (name,), {}, (name,))
        d.addBoth(self._idle, name)

    def _inThread(
        self, work: Callable[[CertificateConfig], _Result], config: CertificateConfig
    ) -> Deferred[_Result]:
        """
        Run C{work(config)} in a daemon thread of its own, its result
        delivered on the reactor thread.

        Not the reactor's thread pool (C{deferToThread}): the reactor joins
        that pool when it stops, so a stop during an order would wait for
        the order (HTTPS, validations: up to a minute and a half).  A
        daemon thread ends with the process; what it was writing is
        replaced by one rename, and its lock is an C{flock} that the
        process's end releases.
        """
        d: Deferred[_Result] = Deferred()

        def run() -> None:
            try:
                result = work(config)
            except BaseException:  # noqa: BLE001 - delivered as a Failure
                failure = Failure()
                self._reactor.callFromThread(d.errback, failure)
            else:
                self._reactor.callFromThread(d.callback, result)

        threading.Thread(target=run, name=f"acme-{config.name}", daemon=True).start()
        return d

    def _idle(self, result: object, name: str) -> None:
        self._managed[name].busy = False

    def _fromDisk(self, config: CertificateConfig) -> LoadedCertificate | None:
        """
        The certificate in the state directory, if it is one for exactly
        the configured names (after C{names} changed, it is not).
        """
        try:
            self.state.refresh(config.name)
            return storedCertificate(self.state, config)
        except TLSConfigError as e:
            warn = self._log.warn
            if threading.get_ident() != self._reactorThread:
                # Log observers belong to the reactor thread.
                warn = partial(self._reactor.callFromThread, warn)
            warn(
                "acme: certificate {name}: {path} cannot be used ({error}): ordering"
                " a new one",
                name=config.name,
                path=self.state.certificatePath(config.name),
                error=str(e),
            )
            return None

    def _due(self, certificate: LoadedCertificate) -> bool:
        return renewalTime(certificate, self.settings.renew_before) <= _now()

    def _work(self, config: CertificateConfig) -> _Result:
        """
        In a thread: find a certificate that is not due, or order one.
        """
        loaded = self._fromDisk(config)
        if loaded is not None and not self._due(loaded):
            return _Result("fresh", loaded)
        try:
            with self.state.lock(config.name):
                loaded = self._fromDisk(config)
                if loaded is not None and not self._due(loaded):
                    return _Result("fresh", loaded)
                keyPEM = newKeyPEM()
                chain = self._issuer.issue(
                    config.names,
                    keyPEM,
                    self.state.publishChallenge,
                    self.state.withdrawChallenge,
                )
                path = self.state.saveCertificate(config.name, keyPEM, chain)
                try:
                    return _Result("issued", loadCertificate(path, path))
                except TLSConfigError as e:
                    raise AcmeFailure(
                        "the issued certificate cannot be used", str(e)
                    ) from e
        except Locked:
            return _Result("locked", loaded)

    def _worked(self, result: _Result, name: str) -> None:
        if not self._running:
            return
        managed = self._managed[name]
        certificate = result.certificate
        if result.kind == "locked":
            # Another worker orders; meanwhile serve what is on disk if it
            # is newer than ours (a certificate due for renewal still works).
            if certificate is not None and certificate.notAfter > _now():
                self._serve(managed, certificate)
            self._schedule(name, POLL_INTERVAL)
            return
        assert certificate is not None
        renewal = managed.current is not None
        self._serve(managed, certificate)
        managed.failures = 0
        if result.kind == "issued":
            serial = format(certificate.leaf.serial_number, "x")
            self._log.info(
                "acme: {what} certificate {name} for {names} (serial {serial},"
                " valid until {notAfter})",
                what="renewed" if renewal else "issued",
                name=name,
                names=", ".join(managed.config.names),
                serial=serial,
                notAfter=certificate.notAfter.isoformat(),
            )
        due = renewalTime(certificate, self.settings.renew_before)
        self._schedule(name, (due - _now()).total_seconds())

    def _serve(self, managed: _Managed, certificate: LoadedCertificate) -> None:
        current = managed.current
        if current is not None and current.leaf == certificate.leaf:
            return
        if current is not None and certificate.notAfter < current.notAfter:
            return
        managed.current = certificate
        self._changed(managed.config.name, certificate)

    def _failed(self, failure: Failure, name: str) -> None:
        if not self._running:
            return
        managed = self._managed[name]
        managed.failures += 1
        delay = retryDelay(managed.failures)
        error = failure.value
        if isinstance(error, AcmeFailure):
            self._log.error(
                "acme: certificate {name} for {names}: {message}; problem document:"
                " {problem}; retrying in {delay:g}s",
                name=name,
                names=", ".join(managed.config.names),
                message=error.message,
                problem=error.problem,
                delay=delay,
            )
        else:
            self._log.failure(
                "acme: certificate {name}: unexpected error; retrying in {delay:g}s",
                failure,
                name=name,
                delay=delay,
            )
        self._schedule(name, delay)
