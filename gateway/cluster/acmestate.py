"""
L{SharedState}: the ACME state directory of a fleet's replica, shared
through the cluster store.

The ACME manager (L{gateway.acme.manager}) works in a thread, on a
L{StateDirectory}: a lock per certificate, the issued key and chain, the
C{tls-alpn-01} challenge certificates.  For a fleet, the same operations
go to the store as well:

  - C{acme/locks/NAME}: the order lock, a key bound to the replica's lease
    (taken with a compare-and-swap transaction): one replica orders, and
    a replica that dies mid-order loses the lock when its lease expires;
  - C{acme/certs/NAME}: the issued key and full chain, as the local file
    holds them; every replica writes it to its own C{state_dir} before
    reading (L{refresh}) and serves it;
  - C{acme/challenges/DOMAIN}: the challenge certificate of an order in
    progress, bound to the lease, so that whichever replica the CA's
    validation connection reaches can answer it.

The local folder stays each replica's copy: a replica that starts while
the store is away serves what it had.  Calls to the store are made from
the manager's thread through the reactor (C{blockingCallFromThread}): the
thread waits, the reactor does not.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from gateway.acme.state import Locked, StateDirectory, writePrivate
from gateway.cluster.interface import ClusterError, ICluster

__all__ = ["CERTS", "CHALLENGES", "LOCKS", "SharedState"]

#: Key families below the prefix.
CERTS = "acme/certs/"
CHALLENGES = "acme/challenges/"
LOCKS = "acme/locks/"

#: How long an ordering replica waits for its own watch to show the
#: challenge it published, then how much longer for the others'.
PROPAGATION_WAIT = 2.0
PROPAGATION = 0.2

_log = Logger()


@attrs.frozen
class SharedState(StateDirectory):
    """
    A L{StateDirectory} whose locks, certificates and challenges are
    shared through C{cluster}.

    @ivar stored: the keys below the prefix as the fleet last saw them
        (L{gateway.run.fleet.Fleet.entries}): read, never written, from
        the manager's thread.
    """

    cluster: ICluster
    reactor: Any
    stored: Callable[[], Mapping[str, bytes]]

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return blockingCallFromThread(self.reactor, function, *args)

    def _logLater(self, message: str, **fields: Any) -> None:
        # Log observers belong to the reactor thread.
        self.reactor.callFromThread(_log.warn, message, **fields)

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = False) -> Iterator[None]:
        """
        The store's lock for a certificate (the local one for the
        account, which each replica keeps for itself).

        @raise Locked: another order holds it, or the store cannot be
            asked (then nothing is ordered: what is stored is served).
        """
        if name == "account":
            with super().lock(name, wait=wait):
                yield
            return
        key = LOCKS + name
        try:
            held = self._call(self.cluster.lock, key)
        except ClusterError as e:
            raise Locked(f"{key}: {e}") from None
        if not held:
            raise Locked(key)
        try:
            # What a previous holder stored, read now rather than from the
            # watch (which may lag by a few milliseconds): the manager
            # checks it next and orders nothing if it is fresh.
            _, found = self._call(self.cluster.range, CERTS + name)
            if found.get(""):
                self._keep(name, found[""])
            yield
        finally:
            with contextlib.suppress(ClusterError):
                self._call(self.cluster.unlock, key)

    def saveCertificate(self, name: str, keyPEM: bytes, chainPEM: bytes) -> str:
        path = super().saveCertificate(name, keyPEM, chainPEM)
        data = self.read(path) or b""
        try:
            self._call(self.cluster.put, CERTS + name, data)
        except ClusterError as e:
            self._logLater(
                "acme: certificate {name} not stored in the cluster ({error}):"
                " the other replicas order their own",
                name=name,
                error=str(e),
            )
        return path

    def publishChallenge(self, domain: str, keyAndCertificatePEM: bytes) -> None:
        """
        Publish the challenge locally and in the store, and return (so the
        CA is told to validate) only once this replica's own watch has seen
        it: the other replicas' watches see it as soon, give or take
        L{PROPAGATION}.
        """
        super().publishChallenge(domain, keyAndCertificatePEM)
        key = CHALLENGES + domain
        self._call(self.cluster.put, key, keyAndCertificatePEM, True)
        deadline = time.monotonic() + PROPAGATION_WAIT
        while (
            self.stored().get(key) != keyAndCertificatePEM
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        time.sleep(PROPAGATION)

    def withdrawChallenge(self, domain: str) -> None:
        super().withdrawChallenge(domain)
        with contextlib.suppress(ClusterError):
            self._call(self.cluster.delete, CHALLENGES + domain)

    def challenge(self, domain: str) -> bytes | None:
        """
        This replica's challenge for C{domain}, or another replica's.
        """
        return super().challenge(domain) or self.stored().get(CHALLENGES + domain)

    def refresh(self, name: str) -> None:
        """
        Write the certificate stored in the cluster to the local copy when
        they differ.
        """
        stored = self.stored().get(CERTS + name)
        if stored:
            self._keep(name, stored)

    def _keep(self, name: str, stored: bytes) -> None:
        if stored != self.read(self.certificatePath(name)):
            writePrivate(self.certificatePath(name), stored)
