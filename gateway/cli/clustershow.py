"""
C{tlsgateway cluster}: what the cluster currently adds to a configuration.

It reads every key below the prefix once, and shows the members, the
stored routes and upstreams a replica with this file would apply, and the
ones it would refuse, with the loader's reasons: the same merge a replica
does (L{gateway.config.overlay}), without starting anything.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred

from gateway.cluster.etcd import EtcdCluster, TLSFiles
from gateway.cluster.interface import ClusterError
from gateway.config import ClusterSettings, GatewayConfig
from gateway.config.overlay import ROUTES, UPSTREAMS, overlay
from gateway.run.fleet import MEMBERS

__all__ = ["clusterReport", "showCluster"]


def clusterReport(config: GatewayConfig, entries: dict[str, bytes]) -> dict[str, Any]:
    """
    What the stored C{entries} (keys below the prefix) add to C{config}.
    """
    stored: dict[str, str] = {}
    refused = []
    members = []
    for key in sorted(entries):
        value = entries[key]
        if key.startswith(MEMBERS):
            try:
                members.append(json.loads(value))
            except ValueError:
                continue
        elif key.startswith((ROUTES, UPSTREAMS)):
            try:
                stored[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                refused.append({"key": key, "reason": "is not UTF-8 text"})
    result = overlay(config, stored)
    refused += [{"key": r.key, "reason": r.reason} for r in result.refused]
    return {
        "members": members,
        "applied": {key: stored[key] for key in result.applied},
        "refused": refused,
    }


def _text(settings: ClusterSettings, revision: int, report: dict[str, Any]) -> str:
    lines = [
        f"etcd {', '.join(settings.etcd)}, prefix {settings.prefix}"
        f" (revision {revision})",
        f"members ({len(report['members'])}):",
    ]
    for member in report["members"]:
        reload = (member.get("last_reload") or {}).get("result", "-")
        lines.append(
            f"  {member.get('name')}  pid {member.get('pid')} on {member.get('host')},"
            f" version {member.get('version')}, since {member.get('started')},"
            f" last reload {reload}"
        )
    lines.append(f"applied ({len(report['applied'])}):")
    for key, value in report["applied"].items():
        shown = " | ".join(line.strip() for line in value.splitlines() if line.strip())
        lines.append(f"  {settings.prefix}{key} = {shown}")
    lines.append(f"refused ({len(report['refused'])}):")
    for refusal in report["refused"]:
        lines.append(f"  {settings.prefix}{refusal['key']}: {refusal['reason']}")
    return "\n".join(lines)


def showCluster(config: GatewayConfig, asJSON: bool) -> int:
    """
    Print the report (text or JSON) on standard output.

    @return: 1 without C{[cluster]}; otherwise the process ends here, with
        status 0, or 1 when etcd does not answer.
    """
    from twisted.internet.task import react

    settings = config.cluster
    if settings is None:
        print(f"{config.path}: no [cluster] section", file=sys.stderr)  # noqa: T201
        return 1

    async def main(reactor: Any) -> None:
        cluster = EtcdCluster(
            reactor,
            settings.etcd,
            settings.prefix,
            settings.lease_ttl,
            TLSFiles(settings.etcd_ca, settings.etcd_cert, settings.etcd_key),
        )
        try:
            revision, entries = await cluster.range("")
        except ClusterError as e:
            print(f"etcd: {e}", file=sys.stderr)  # noqa: T201
            raise SystemExit(1) from None
        finally:
            stopped: Deferred[None] = cluster.stop()
            await stopped
        report = clusterReport(config, entries)
        if asJSON:
            print(json.dumps({"revision": revision, **report}, indent=2))  # noqa: T201
        else:
            print(_text(settings, revision, report))  # noqa: T201

    # react ends the process: with 0, or with the SystemExit's status.
    react(lambda reactor: ensureDeferred(main(reactor)))
    return 0
