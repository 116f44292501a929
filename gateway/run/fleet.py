"""
L{Fleet}: one gateway as a member of a fleet that shares a store
(C{[cluster]}, L{gateway.cluster}).

What it does for the gateway it serves beside:

  - follows every key below the prefix; when the stored routes or
    upstreams change, the gateway reloads (L{GatewayService.reload}: the
    same generation swap as C{SIGHUP}, established connections untouched)
    with the stored keys merged into the file
    (L{gateway.config.overlay.overlay}), each key checked alone;
  - keeps C{members/NAME} alive with the process's lease: its listeners,
    version, start time and last reload result;
  - when the store is unreachable, says so once (log and status page),
    keeps serving what it had (fail static), and catches up when the
    store answers again: the provider's watch resumes from the last
    revision it saw.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.cluster.acmestate import CERTS, SharedState
from gateway.cluster.etcd import EtcdCluster, TLSFiles
from gateway.cluster.interface import ICluster, IFollowing
from gateway.config import ClusterSettings, GatewayConfig
from gateway.config.overlay import ROUTES, UPSTREAMS, Refusal, overlay
from gateway.run.loading import Loaded
from gateway.run.service import GatewayService
from gateway.tls.upstream import UpstreamTLS

__all__ = ["MEMBERS", "Fleet", "memberName"]

#: Key family of the members, below the prefix.
MEMBERS = "members/"

#: How long stored changes are gathered before one reload: a tenant's
#: upstream and route written one after the other apply together.
GATHER = 0.05


def memberName(settings: ClusterSettings) -> str:
    """
    C{[cluster] name}, or the host's name and the process id.
    """
    return settings.name or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlsgateway")
    except PackageNotFoundError:
        return "unknown"


def _withUpstreamTLS(
    config: GatewayConfig, entries: dict[str, str], loaded: Loaded
) -> tuple[Loaded, tuple[str, ...], list[Refusal]]:
    """
    Merge C{entries} into C{loaded}, with the re-encryption policy of each
    stored upstream that has C{tls = on}: one whose files do not load is
    refused like any bad key (and the routes that name it with it).
    """
    refused: list[Refusal] = []
    while True:
        result = overlay(config, entries)
        policies: dict[str, UpstreamTLS] = {}
        failed: list[Refusal] = []
        for key in result.applied:
            if not key.startswith(UPSTREAMS):
                continue
            upstream = result.config.upstreams[key[len(UPSTREAMS) :]]
            if not upstream.tls:
                continue
            policy, problems, _ = UpstreamTLS.fromConfig(upstream)
            if problems or policy is None:
                reason = "; ".join(p.message for p in problems) or "tls does not load"
                failed.append(Refusal(key, reason))
            else:
                policies[upstream.name] = policy
        if not failed:
            break
        for refusal in failed:
            entries = {k: v for k, v in entries.items() if k != refusal.key}
        refused += failed
    if not result.applied:
        return loaded, (), refused + list(result.refused)
    contexts = attrs.evolve(
        loaded.contexts, upstreams={**loaded.contexts.upstreams, **policies}
    )
    merged = Loaded(result.config, contexts)
    return merged, result.applied, refused + list(result.refused)


class Fleet(Service):
    """
    The fleet membership of one L{GatewayService}.

    @ivar member: this member's name.
    @ivar members: the live members' own records, by name.
    @ivar entries: every key below the prefix, as last seen.
    @ivar applied: the stored keys the running configuration has.
    @ivar refused: the stored keys it does not, with why.
    @ivar _stored: the stored routes and upstreams, as text, that the
        next reload merges.
    """

    _log = Logger()

    def __init__(
        self,
        gateway: GatewayService,
        settings: ClusterSettings,
        reactor: Any,
        cluster: ICluster | None = None,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.member = memberName(settings)
        self._reactor = reactor
        self.cluster: ICluster = cluster or EtcdCluster(
            reactor,
            settings.etcd,
            settings.prefix,
            settings.lease_ttl,
            TLSFiles(settings.etcd_ca, settings.etcd_cert, settings.etcd_key),
        )
        self.members: dict[str, dict[str, Any]] = {}
        self.entries: Mapping[str, bytes] = {}
        gateway.acmeState = lambda acme: SharedState(
            acme.state_dir, self.cluster, reactor, lambda: self.entries
        )
        self.applied: tuple[str, ...] = ()
        self.refused: tuple[Refusal, ...] = ()
        self.lastReload: dict[str, Any] | None = None
        self.unreachable: dict[str, str] | None = None
        self._started = _now()
        self._stored: dict[str, str] | None = None
        self._notText: list[Refusal] = []
        self._logged: set[Refusal] = set()
        self._pending: IDelayedCall | None = None
        self._following: IFollowing | None = None

    # the service

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.gateway.merge = self.merge
        self.gateway.clusterStatus = self.status
        self.cluster.onReachability(self._reachability)
        self.cluster.start()
        self._putMember()
        self._following = self.cluster.follow("", self._changed)
        self._log.info(
            "cluster member {name}: following {prefix} on {etcd}",
            name=self.member,
            prefix=self.settings.prefix,
            etcd=", ".join(self.settings.etcd),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._following is not None:
            self._following.stop()
        self.gateway.merge = None
        return self.cluster.stop()

    # stored changes

    def _changed(self, entries: Mapping[str, bytes]) -> None:
        before, self.entries = self.entries, dict(entries)
        acme = self.gateway.acme
        for key, value in entries.items():
            if key.startswith(CERTS) and before.get(key) != value and acme:
                # Another replica stored a certificate: serve it now.
                acme.refresh(key[len(CERTS) :])
        members: dict[str, dict[str, Any]] = {}
        stored: dict[str, str] = {}
        notText: list[Refusal] = []
        for key, value in entries.items():
            if key.startswith(MEMBERS):
                try:
                    record = json.loads(value)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    members[key[len(MEMBERS) :]] = record
            elif key.startswith((ROUTES, UPSTREAMS)):
                try:
                    stored[key] = value.decode("utf-8")
                except UnicodeDecodeError:
                    notText.append(Refusal(key, "is not UTF-8 text"))
        self.members = members
        if stored == self._stored and notText == self._notText:
            return
        self._stored, self._notText = stored, notText
        if self._pending is None:
            self._pending = self._reactor.callLater(GATHER, self._apply)

    def _apply(self) -> None:
        self._pending = None
        if not self.gateway.running:
            return
        if not self.gateway.reload():
            self._reloaded(None, "refused")

    def merge(self, loaded: Loaded) -> Loaded:
        """
        The hook every reload calls (L{GatewayService.merge}): the file as
        read, with the stored keys that pass.
        """
        merged, applied, refused = _withUpstreamTLS(
            loaded.config, dict(self._stored or {}), loaded
        )
        refused = [*self._notText, *refused]
        for refusal in refused:
            if refusal not in self._logged:
                self._log.warn(
                    "cluster key {key} refused: {reason}",
                    key=self.settings.prefix + refusal.key,
                    reason=refusal.reason,
                )
        self._logged = set(refused)
        self._reactor.callLater(
            0, self._reloaded, merged.config, None, applied, tuple(refused)
        )
        return merged

    def _reloaded(
        self,
        config: GatewayConfig | None,
        result: str | None,
        applied: tuple[str, ...] = (),
        refused: tuple[Refusal, ...] = (),
    ) -> None:
        """
        A reload ended: when it is serving, what it merged is what the
        status shows; either way the member key says how it went.
        """
        if result is None:
            result = "applied" if self.gateway.config is config else "refused"
        if result == "applied":
            self.applied, self.refused = applied, refused
            self._log.info(
                "cluster: {applied} stored key(s) applied, {refused} refused",
                applied=len(self.applied),
                refused=len(self.refused),
            )
        self.lastReload = {
            "time": _now(),
            "result": result,
            "stored_keys": len(self.applied),
            "refused_keys": len(self.refused),
        }
        self._putMember()

    # membership and reachability

    def memberRecord(self) -> dict[str, Any]:
        """
        What C{members/NAME} holds for this process.
        """
        config = self.gateway.config
        return {
            "name": self.member,
            "version": _version(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self._started,
            "listeners": {
                listener.name: list(listener.listen) for listener in config.listeners
            },
            "last_reload": self.lastReload,
        }

    def _putMember(self) -> None:
        value = json.dumps(self.memberRecord(), sort_keys=True).encode("utf-8")
        d = self.cluster.put(MEMBERS + self.member, value, leased=True)
        d.addErrback(lambda _: None)  # written again under the next lease

    def _reachability(self, reachable: bool, reason: str) -> None:
        if reachable:
            self.unreachable = None
            self._log.info(
                "cluster: etcd answers again: catching up with {prefix}",
                prefix=self.settings.prefix,
            )
            return
        self.unreachable = {"since": _now(), "reason": reason}
        self._log.warn(
            "cluster: etcd unreachable ({reason}): serving the last state,"
            " retrying with backoff",
            reason=reason,
        )

    def status(self) -> dict[str, Any]:
        """
        The C{cluster} part of C{/status.json}.
        """
        return {
            "name": self.member,
            "etcd": list(self.settings.etcd),
            "prefix": self.settings.prefix,
            "reachable": self.unreachable is None,
            "unreachable": self.unreachable,
            "members": [self.members[name] for name in sorted(self.members)],
            "applied": list(self.applied),
            "refused": [
                {"key": refusal.key, "reason": refusal.reason}
                for refusal in self.refused
            ],
        }
