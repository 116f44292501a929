"""
The status page itself: the snapshot of L{gateway.run.status} as HTML
(C{GET /status}) and as JSON (C{GET /status.json}).

The HTML needs no JavaScript: a few tables, one function per table, and it
refreshes itself with C{<meta http-equiv="refresh">}.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.run.status import RECENT_FAILURES, REFRESH_SECONDS, Snapshot
from gateway.run.traffic import RATE_WINDOW

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
