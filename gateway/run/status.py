"""
The status page: C{GET /status} (HTML) and C{GET /status.json} on the
C{[gateway] metrics} endpoint.

What an operator looks at first during an incident, HAProxy's stats page in
spirit: every listener with its addresses, mode and open connections; every
upstream server with its health and open connections; the last connections
that did not end C{ok}, with their status and reason; every served
certificate with the days it has left.

The HTML needs no JavaScript: it is a few tables, and it refreshes itself
with C{<meta http-equiv="refresh">}.  C{/status.json} is the same snapshot
as JSON, for scripts.

With C{workers > 1} the supervisor serves the page, and the connections are
in the workers: each worker writes its own snapshot to a file in the
supervisor's shared folder every second (L{writeSnapshot}), and the
supervisor adds them up (L{mergeSnapshots}): connection counts summed,
each server's health as "up on N of M workers", failures merged and
labelled with the worker that saw them, plus a table of the workers and the
age of their last report, so a stale number is visible as such.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.config import GatewayConfig
from gateway.rules.accesslog import ConnectionRecord
from gateway.run.traffic import RATE_WINDOW, Traffic, emptyFields
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
        if record.status in (None, "ok"):
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


# --- the page -------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p.meta { color: #666; margin: 0; }
table { border-collapse: collapse; min-width: 40em; }
th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.up { color: #11722b; font-weight: 600; }
.down { color: #b00020; font-weight: 600; }
.partial { color: #9a6700; font-weight: 600; }
.none { color: #666; font-style: italic; }
p.note { color: #666; margin: 0 0 .4em; font-size: .9em; }
td.health { min-width: 16em; }
td.when { white-space: nowrap; }
"""


def _cell(value: object, css: str | None = None) -> str:
    text = "-" if value is None or value == "" else str(value)
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{html.escape(text)}</td>"


def _table(headers: Sequence[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f'<p class="none">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _stateClass(server: Mapping[str, Any]) -> str:
    if server["state"].startswith("up on"):
        return "partial"
    return "up" if server["state"].startswith("up") else "down"


def _reloadLines(reload: Mapping[str, Any] | None) -> list[str]:
    """
    The last reload, under the page's heading: a refused one in red with
    its reason, since the running configuration is then older than the
    file on disk.
    """
    if reload is None:
        return []
    since = f"configuration applied {html.escape(str(reload['last_success']))}"
    counts = f"reloads: {reload['applied']} applied, {reload['refused']} refused"
    if reload["result"] is None:
        return [f'<p class="meta">{since} &middot; no reload since the start</p>']
    css = "up" if reload["result"] == "applied" else "down"
    lines = [
        f'<p class="meta">{since} &middot; last reload'
        f' <span class="{css}">{html.escape(reload["result"])}</span>'
        f" at {html.escape(str(reload['time']))} &middot; {counts}</p>"
    ]
    if reload["reason"]:
        lines.append(f'<pre class="down">{html.escape(reload["reason"])}</pre>')
    return lines


_TRAFFIC_HEADERS = ("total", "per s", "bytes in", "bytes out")

_TRAFFIC_NOTE = (
    f"total and per s: connections ended (per second over the last {RATE_WINDOW}s);"
    " bytes from and to the clients; counted as each connection ends"
)


def _size(count: int) -> str:
    """Bytes for a reader: C{512 B}, C{1.5 kB}, C{3.2 MB} (powers of 1000)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _trafficCells(item: Mapping[str, Any]) -> str:
    return (
        _cell(item.get("connections_total", 0), "num")
        + _cell(item.get("connections_per_s", 0), "num")
        + _cell(_size(item.get("bytes_in", 0)), "num")
        + _cell(_size(item.get("bytes_out", 0)), "num")
    )


def _since(iso: str | None) -> str | None:
    """2026-12-01T23:10:11+00:00 -> 2026-12-01 23:10:11 (UTC, as the log)."""
    return None if iso is None else iso[:19].replace("T", " ")


def _noFailures(gateway: Mapping[str, Any]) -> str:
    """
    What an empty failures table says: since when it has been counting.
    With workers, that is since the running workers started, which after
    a reload is the reload, not the gateway's start.
    """
    started = _since(gateway.get("started"))
    at = f" (at {started} UTC)" if started else ""
    if gateway["workers"] > 1:
        return (
            f"none since the current workers started{at}: the workers a reload"
            " replaced took theirs with them"
        )
    return f"none since the gateway started{at}"


def _headLines(snapshot: Snapshot) -> list[str]:
    """The page's head, heading and meta lines, up to the first table."""
    gateway = snapshot["gateway"]
    workers = gateway["workers"]
    scope = (
        "one process"
        if workers == 1
        else f"{workers} workers, added up (each server's health as seen by each worker)"
    )
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<title>tlsgateway status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>tlsgateway status</h1>",
        f'<p class="meta">{html.escape(gateway["config"])} &middot;'
        f" pid {gateway['pid']} &middot; {html.escape(scope)} &middot;"
        f" {html.escape(gateway['generated'])} &middot; refreshes every"
        f' {REFRESH_SECONDS}s &middot; <a href="/status.json">JSON</a>'
        ' &middot; <a href="/metrics">metrics</a></p>',
        *_reloadLines(snapshot.get("reload")),
    ]


def _listenersTable(snapshot: Snapshot) -> str:
    rows = [
        "<tr>"
        + _cell(listener["name"])
        + _cell(", ".join(listener["listen"]))
        + _cell(listener["mode"])
        + _cell(listener["protocol"])
        + _cell(listener["routes"] or "upstream", "num")
        + _cell(listener["active"], "num")
        + _trafficCells(listener)
        + "</tr>"
        for listener in snapshot["listeners"]
    ]
    return _table(
        [
            "listener",
            "listen",
            "mode",
            "protocol",
            "routes",
            "active connections",
            *_TRAFFIC_HEADERS,
        ],
        rows,
        "no listeners",
    )


def _serversTable(snapshot: Snapshot) -> str:
    rows = []
    for upstream in snapshot["upstreams"]:
        for server in upstream["servers"]:
            rows.append(
                "<tr>"
                + _cell(upstream["name"])
                + _cell(server["server"])
                + (
                    _cell("backup", "partial")
                    if server.get("backup")
                    else _cell("primary")
                )
                + _cell(server["state"], f"{_stateClass(server)} health")
                + _cell(_since(server.get("down_since")), "when")
                + _cell(server["active"], "num")
                + _trafficCells(server)
                + _cell(upstream["balance"])
                + _cell(upstream["health_check"])
                + "</tr>"
            )
    return _table(
        [
            "upstream",
            "server",
            "role",
            "health",
            "down since",
            "active connections",
            *_TRAFFIC_HEADERS,
            "balance",
            "health_check",
        ],
        rows,
        "no upstream servers",
    )


def _failuresLines(snapshot: Snapshot) -> list[str]:
    """The recent failures: a heading that says how many, then the table."""
    gateway = snapshot["gateway"]
    failures = snapshot["recent_failures"]
    heading = (
        f"<h2>Recent connections that did not end ok (last {len(failures)},"
        f" newest first; at most {RECENT_FAILURES}"
        f"{' per worker' if gateway['workers'] > 1 else ''})</h2>"
    )
    withWorker = any("worker" in f for f in failures)
    headers = ["time", "listener", "client", "sni", "status", "reason", "upstream"]
    # (times are UTC, as in the access log)
    if withWorker:
        headers.append("worker")
    rows = []
    for failure in failures:
        cells = []
        for key in headers:
            value = failure.get(key)
            if key == "time" and isinstance(value, str):
                # 2026-12-01T23:10:11.050+00:00 -> 2026-12-01 23:10:11 (UTC)
                cells.append(_cell(value[:19].replace("T", " "), "when"))
            else:
                cells.append(_cell(value, "down" if key == "status" else None))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return [heading, _table(headers, rows, _noFailures(gateway))]


def _certificatesTable(snapshot: Snapshot) -> str:
    rows = []
    for certificate in snapshot["certificates"]:
        days = certificate["days_left"]
        css = "down" if days < 0 else "partial" if days < 14 else "up"
        rows.append(
            "<tr>"
            + _cell(certificate["name"])
            + _cell(", ".join(certificate["names"]))
            + _cell(certificate["not_after"])
            + _cell(days, f"num {css}")
            + _cell(certificate["source"])
            + "</tr>"
        )
    return _table(
        ["certificate", "names", "not after", "days left", "source"],
        rows,
        "no certificates served (nothing terminates TLS)",
    )


def _workersTable(processes: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        "<tr>"
        + _cell(w["worker"], "num")
        + _cell(w["pid"], "num")
        + (
            _cell("retiring: finishing its connections", "partial")
            if w.get("retiring")
            else _cell("serving")
        )
        + _cell(w.get("active"), "num")
        + _cell(w["reported"] or "not yet", None if w["reported"] else "down")
        + _cell(w["age_s"], "num")
        + "</tr>"
        for w in processes
    ]
    return _table(
        ["worker", "pid", "state", "connections", "last report", "seconds ago"],
        rows,
        "no workers",
    )


def renderHTML(snapshot: Snapshot) -> bytes:
    """
    The snapshot as a page that reads without JavaScript: one section per
    table, each built by a function of its own.
    """
    parts = [
        *_headLines(snapshot),
        "<h2>Listeners</h2>",
        f'<p class="note">{html.escape(_TRAFFIC_NOTE)}</p>',
        _listenersTable(snapshot),
        "<h2>Upstream servers</h2>",
        _serversTable(snapshot),
        *_failuresLines(snapshot),
        "<h2>Certificates</h2>",
        _certificatesTable(snapshot),
    ]
    if "worker_processes" in snapshot:
        parts.append("<h2>Worker processes</h2>")
        parts.append(_workersTable(snapshot["worker_processes"]))
    if "cluster" in snapshot:
        from gateway.run.clusterstatus import clusterHTML

        parts += clusterHTML(snapshot["cluster"])
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")


class StatusResource(Resource):
    """
    C{/status} and C{/status.json}: the same snapshot, two ways.
    """

    isLeaf = True

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._snapshot = snapshot

    def render_GET(self, request: Request) -> bytes:
        snapshot = self._snapshot()
        request.setHeader(b"cache-control", b"no-store")
        if request.path.endswith(b".json"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(snapshot, indent=2).encode("utf-8") + b"\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return renderHTML(snapshot)
