"""
The status page's snapshot: what C{GET /status} (HTML) and
C{GET /status.json} on the C{[gateway] metrics} endpoint show
(L{gateway.run.statuspage} renders and serves it).

What an operator looks at first during an incident, HAProxy's stats page in
spirit: every listener with its addresses, mode and open connections; every
upstream server with its health and open connections; the last connections
that did not end C{ok}, with their status and reason; every served
certificate with the days it has left.

C{/status.json} is the same snapshot as JSON, for scripts.

With C{workers > 1} the supervisor serves the page, and the connections are
in the workers: each worker writes its own snapshot to a file in the
supervisor's shared folder every second (L{writeSnapshot}), and the
supervisor adds them up (L{mergeSnapshots}): connection counts summed,
each server's health as "up on N of M workers", failures merged and
labelled with the worker that saw them, plus a table of the workers and the
age of their last report, so a stale number is visible as such.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.config import GatewayConfig
from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord
from gateway.run.traffic import Traffic, emptyFields
from gateway.tls.served import ServedCertificates

#: How many failed connections the page remembers (per process).
RECENT_FAILURES = 50

#: Seconds between the page's own refreshes.
REFRESH_SECONDS = 5

Snapshot = dict[str, Any]


class RecentFailures:
    """
    A ring of the last connections that did not end C{ok}: bounded, so a
    flood of refused connections costs a fixed amount of memory.

    The access log hands it every record, so it also counts them all, per
    listener and server (L{traffic}).
    """

    def __init__(self, size: int = RECENT_FAILURES) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self.traffic = Traffic()

    def add(self, record: ConnectionRecord) -> None:
        self.traffic.add(record)
        if record.status is None or record.status is Status.OK:
            return
        fields = record.fields()
        self._entries.append(
            {
                key: fields.get(key)
                for key in (
                    "time",
                    "listener",
                    "client",
                    "sni",
                    "action",
                    "upstream",
                    "status",
                    "reason",
                    "duration_ms",
                )
            }
        )

    def newestFirst(self) -> list[dict[str, Any]]:
        return list(reversed(self._entries))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _isoTime(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _certificates(served: ServedCertificates) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "name": c.name,
            "names": list(c.names),
            "not_after": c.notAfter.isoformat(timespec="seconds"),
            "days_left": int(c.secondsLeft(now) // 86400),
            "source": c.source,
            "path": c.path,
        }
        for c in served
    ]


def _listeners(
    config: GatewayConfig,
    active: Callable[[str], int],
    traffic: Callable[[str], dict[str, Any]],
) -> list[dict[str, Any]]:
    return [
        {
            "name": listener.name,
            "listen": list(listener.listen),
            "mode": listener.mode,
            "protocol": listener.protocol,
            "routes": len(listener.routes),
            "active": active(listener.name),
            **traffic(listener.name),
        }
        for listener in config.listeners
    ]


def _memberState(member: Any, usable: bool, now: float) -> dict[str, Any]:
    """
    A pool member's health for the page: C{state} in words with its
    cause, and since when it is down (C{down_since}, wall-clock ISO time,
    from the pool clock's C{now}).
    """
    since: float | None = None
    if not member.healthy:
        reason = "health check failing"
        if member.checkError:
            reason += f": {member.checkError}"
        since = member.downSince
    elif usable:
        return {"state": "up", "down_reason": None, "down_since": None}
    else:
        left = max(0.0, (member.failedUntil or now) - now)
        reason = f"failed connects (max_fails), retried in {left:.0f}s"
        if member.failedUntil is not None:
            since = member.failedUntil - member.server.fail_timeout
    return {
        "state": f"down: {reason}",
        "down_reason": reason,
        "down_since": None if since is None else _isoTime(time.time() - (now - since)),
    }


def localSnapshot(
    config: GatewayConfig,
    listenerActive: Mapping[str, int],
    pools: Mapping[str, Any],
    recent: RecentFailures,
    served: ServedCertificates,
    clock: Callable[[], float],
) -> Snapshot:
    """
    The status of one gateway process.

    @param listenerActive: open connections by listener name (every
        generation's: a connection accepted before a reload is still open).
    @param pools: the running L{gateway.connection.upstream.Pool}s by upstream name.
    @param clock: the pools' clock, to tell a server taken out by failed
        connects from one whose C{fail_timeout} is over.
    """
    now = clock()
    traffic = recent.traffic
    upstreams = []
    for name, upstream in config.upstreams.items():
        pool = pools.get(name)
        servers = []
        for member in () if pool is None else pool.members():
            assert pool is not None
            health = _memberState(member, pool.usable(member, now), now)
            servers.append(
                {
                    "server": member.key,
                    "backup": member.server.backup,
                    "up": health["state"] == "up",
                    **health,
                    "active": member.active,
                    **traffic.server(member.key),
                }
            )
        upstreams.append(
            {
                "name": name,
                "balance": upstream.balance,
                "health_check": upstream.health_check,
                "servers": servers,
            }
        )
    return {
        "gateway": {
            "pid": os.getpid(),
            "workers": 1,
            "config": config.path,
            "generated": _now(),
            "started": _isoTime(traffic.started),
        },
        "listeners": _listeners(
            config, lambda n: listenerActive.get(n, 0), traffic.listener
        ),
        "upstreams": upstreams,
        "recent_failures": recent.newestFirst(),
        "certificates": _certificates(served),
    }


# --- several workers -------------------------------------------------------------

_SUMMED = ("connections_total", "connections_per_s", "bytes_in", "bytes_out")


def _addTraffic(into: dict[str, Any], reported: Mapping[str, Any]) -> None:
    """
    Add one worker's totals and rates for a listener or server to
    C{into}: each worker counts its own connections, so they add up.
    """
    for key in _SUMMED:
        into[key] = into.get(key, 0) + reported.get(key, 0)
    into["connections_per_s"] = round(into["connections_per_s"], 1)


_PREFIX = "status-worker-"


def snapshotPath(folder: str, worker: int, pid: int) -> str:
    """
    Where worker C{worker} (process C{pid}) publishes its snapshot.  The
    pid is in the name because a worker being drained after a reload and
    its successor have the same number.
    """
    return os.path.join(folder, f"{_PREFIX}{worker}-{pid}.json")


def writeSnapshot(folder: str, worker: int, snapshot: Snapshot) -> None:
    """
    Publish a worker's snapshot for its supervisor: written aside, then
    renamed, so the supervisor never reads half a file.
    """
    path = snapshotPath(folder, worker, os.getpid())
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(snapshot, f)
    os.replace(temporary, path)


def readSnapshots(
    folder: str, workers: Iterable[tuple[int, int | None]]
) -> dict[int, Snapshot]:
    """
    The last snapshot of each of C{workers} (number, pid) that has written
    one.
    """
    found = {}
    for worker, pid in workers:
        if pid is None:
            continue
        try:
            with open(snapshotPath(folder, worker, pid), encoding="utf-8") as f:
                found[worker] = json.load(f)
        except (OSError, ValueError):
            continue
    return found


def _ownSnapshots(
    workers: Sequence[tuple[int, int | None]],
    snapshots: Mapping[int, Snapshot],
    retiring: Sequence[tuple[int, int | None, Snapshot | None]],
) -> tuple[dict[int, Snapshot], dict[int | None, Snapshot]]:
    """
    The snapshots written by the running processes themselves: by worker
    number for the current generation, by pid for the retiring ones; one
    left by a replaced worker (another pid) is not theirs.
    """
    current = {
        number: snapshot
        for number, snapshot in snapshots.items()
        if dict(workers).get(number) == snapshot.get("gateway", {}).get("pid")
    }
    old = {
        pid: snapshot
        for _, pid, snapshot in retiring
        if snapshot is not None and snapshot.get("gateway", {}).get("pid") == pid
    }
    return current, old


def _addListeners(
    snapshot: Snapshot,
    listenerActive: dict[str, int],
    listenerTraffic: dict[str, dict[str, Any]],
) -> None:
    for listener in snapshot.get("listeners", []):
        name = listener["name"]
        listenerActive[name] = listenerActive.get(name, 0) + listener["active"]
        _addTraffic(listenerTraffic.setdefault(name, emptyFields()), listener)


def _addCurrentServers(
    number: int, snapshot: Snapshot, servers: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """A current worker's servers: their counts, and its view of their health."""
    for upstream in snapshot.get("upstreams", []):
        for server in upstream["servers"]:
            key = (upstream["name"], server["server"])
            merged = servers.setdefault(
                key,
                {
                    "server": server["server"],
                    "backup": server.get("backup", False),
                    "active": 0,
                    "up_workers": 0,
                    **emptyFields(),
                },
            )
            merged["active"] += server["active"]
            _addTraffic(merged, server)
            merged["up_workers"] += 1 if server["up"] else 0
            merged.setdefault("states", {})[number] = server["state"]
            if server.get("down_since"):
                merged.setdefault("since", []).append(server["down_since"])


def _addRetiringServers(
    snapshot: Snapshot, servers: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """A retiring worker's servers: their counts only, on servers still known."""
    for upstream in snapshot.get("upstreams", []):
        for server in upstream["servers"]:
            known = servers.get((upstream["name"], server["server"]))
            if known is not None:
                known["active"] += server["active"]
                _addTraffic(known, server)


def _mergedServerRow(merged: dict[str, Any], reporting: int) -> dict[str, Any]:
    """One server's row: its health as "up on N of M workers" and why not."""
    up = merged["up_workers"]
    state = (
        "up"
        if up == reporting
        else "down"
        if up == 0
        else f"up on {up} of {reporting} workers"
    )
    details = sorted(set(merged.pop("states").values()) - {"up"})
    if details:
        state += f" ({'; '.join(details)})"
    since = sorted(merged.pop("since", []))
    return {
        **merged,
        "workers": reporting,
        "up": up > 0,
        "state": state,
        "down_reason": "; ".join(d.removeprefix("down: ") for d in details) or None,
        "down_since": since[0] if since else None,
    }


def _mergedUpstreams(
    config: GatewayConfig,
    servers: dict[tuple[str, str], dict[str, Any]],
    reporting: int,
) -> list[dict[str, Any]]:
    upstreams = []
    for name, upstream in config.upstreams.items():
        rows = [
            _mergedServerRow(merged, reporting)
            for (upstreamName, _), merged in servers.items()
            if upstreamName == name
        ]
        upstreams.append(
            {
                "name": name,
                "balance": upstream.balance,
                "health_check": upstream.health_check,
                "servers": rows,
            }
        )
    return upstreams


def _workerRows(
    workers: Sequence[tuple[int, int | None]],
    current: Mapping[int, Snapshot],
    retiring: Sequence[tuple[int, int | None, Snapshot | None]],
    old: Mapping[int | None, Snapshot],
    now: float,
) -> list[dict[str, Any]]:
    """The worker processes table: each one's last report and its age."""
    processes: list[tuple[int, int | None, Snapshot | None, bool]] = [
        (n, p, current.get(n), False) for n, p in workers
    ]
    processes += [(n, p, old.get(p), True) for n, p, _ in retiring]
    workerRows: list[dict[str, Any]] = []
    for workerNumber, workerPid, reported, retired in processes:
        generated = None if reported is None else reported["gateway"]["generated"]
        age = None
        active = None
        if reported is not None:
            age = round(now - datetime.fromisoformat(str(generated)).timestamp())
            active = sum(item["active"] for item in reported.get("listeners", []))
        workerRows.append(
            {
                "worker": workerNumber,
                "pid": workerPid,
                "reported": generated,
                "age_s": age,
                "active": active,
                "retiring": retired,
            }
        )
    return workerRows


def mergeSnapshots(
    config: GatewayConfig,
    workers: Sequence[tuple[int, int | None]],
    snapshots: Mapping[int, Snapshot],
    served: ServedCertificates,
    retiring: Sequence[tuple[int, int | None, Snapshot | None]] = (),
) -> Snapshot:
    """
    The supervisor's page: what its workers report, added up.

    Workers that a reload replaced serve their established connections
    until the last one ends.  Those connections are counted where they
    belong (their listener's and their server's C{active}, as one process
    counts the connections of its older generations), and the workers are
    listed, marked C{retiring}; their server health is not merged: it is
    the previous configuration's.

    @param workers: (number, pid) of every worker of the running
        generation, in order.
    @param snapshots: the last snapshot of each worker that wrote one; a
        snapshot from an older pid (a worker that was replaced) is left
        out.
    @param retiring: (number, pid, last snapshot or L{None}) of each worker
        of an older generation still running (two generations may each
        have a worker 1).
    """
    now = time.time()
    current, old = _ownSnapshots(workers, snapshots, retiring)
    listenerActive: dict[str, int] = {}
    listenerTraffic: dict[str, dict[str, Any]] = {}
    servers: dict[tuple[str, str], dict[str, Any]] = {}
    failures = []
    for number, snapshot in current.items():
        _addListeners(snapshot, listenerActive, listenerTraffic)
        _addCurrentServers(number, snapshot, servers)
        for failure in snapshot.get("recent_failures", []):
            failures.append({**failure, "worker": number})
    failures.sort(key=lambda f: f.get("time") or "", reverse=True)
    for snapshot in old.values():
        _addListeners(snapshot, listenerActive, listenerTraffic)
        _addRetiringServers(snapshot, servers)
    started = sorted(
        s["gateway"]["started"] for s in current.values() if "started" in s["gateway"]
    )
    return {
        "gateway": {
            "pid": os.getpid(),
            "workers": len(workers),
            "retiring_workers": len(retiring),
            "config": config.path,
            "generated": _now(),
            "started": started[0] if started else None,
        },
        "listeners": _listeners(
            config,
            lambda n: listenerActive.get(n, 0),
            lambda n: listenerTraffic.get(n, emptyFields()),
        ),
        "upstreams": _mergedUpstreams(config, servers, len(current)),
        "recent_failures": failures[:RECENT_FAILURES],
        "certificates": _certificates(served),
        "worker_processes": _workerRows(workers, current, retiring, old, now),
    }
