"""
L{ICluster}: what a fleet of gateways needs of a shared store.

One provider today, etcd (L{gateway.cluster.etcd}); the interface is the
seam for another (Consul, a SQL table) without touching its callers.  Its
words are the store's, not the gateway's: keys and values, a lease that
ends with the process, a followed prefix, a lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

__all__ = ["ClusterError", "ICluster", "IFollowing", "Unreachable"]


class ClusterError(Exception):
    """
    The store refused or could not be asked.

    @cvar reason: stable slug for logs and the status page.
    """

    reason = "error"


class Unreachable(ClusterError):
    """
    No endpoint of the store answered (refused, timed out, closed).
    """

    reason = "unreachable"


class IFollowing(Interface):
    """
    A prefix being followed: stop it to stop the calls.
    """

    def stop() -> None:
        """
        No more calls; the watch is closed.
        """


class ICluster(Interface):
    """
    A shared key-value store with leases, watches and locks, used from the
    reactor thread only: every call returns at once, with a L{Deferred}
    where the store answers.

    Keys are text below the store's prefix (the provider adds it); values
    are bytes.
    """

    reachable = Attribute(
        "L{True} while the store answers; L{False} from the first failed"
        " call until one succeeds again."
    )

    def start() -> None:
        """
        Take a lease (its time to live is the provider's) and keep it alive
        until L{stop}; retry with backoff while the store is unreachable,
        and write the leased keys again under a new lease if it lapsed.
        """

    def stop() -> Deferred[None]:
        """
        Stop every following and retry, and give the lease back, so that
        the leased keys go at once rather than at its expiry.  Fires when
        done, or when the store did not answer in time.
        """

    def onReachability(callback: Callable[[bool, str], None]) -> None:
        """
        Call C{callback(reachable, reason)} each time reachability changes
        (once per change, not once per retry).
        """

    def follow(
        prefix: str, changed: Callable[[Mapping[str, bytes]], None]
    ) -> IFollowing:
        """
        Read every key below C{prefix}, call C{changed} with them (keys
        without C{prefix}), then again with the whole new state after each
        change.  A dropped watch resumes from the last revision seen, so no
        change is lost; while the store is unreachable, C{changed} is not
        called and the last state stands.
        """

    def range(prefix: str) -> Deferred[tuple[int, dict[str, bytes]]]:
        """
        Every key below C{prefix} (without it), read now (a linearizable
        read: what any write acknowledged before it left), and the
        revision read at.
        """

    def put(key: str, value: bytes, leased: bool = False) -> Deferred[None]:
        """
        Write C{key}.  A leased key goes with this process's lease, and is
        written again if the lease had to be taken anew.

        @raise ClusterError: (in the L{Deferred}) the write did not happen.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Remove C{key} (and forget it as a leased key).
        """

    def lock(key: str) -> Deferred[bool]:
        """
        Take the lock C{key}, bound to this process's lease: L{True} if
        this call took it, L{False} if it is held (by another process, or
        by this one: not reentrant, so that two orders in one process
        exclude each other too).  A holder that dies loses it when its
        lease expires.
        """

    def unlock(key: str) -> Deferred[None]:
        """
        Give back a lock this process holds.
        """
