"""
The C{cluster} part of the status page: the store, the live members, the
stored keys refused.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = ["clusterHTML"]


# The status page's cell and table, as its rows look (not imported:
# gateway.run.statuspage imports this module).
def _cell(value: object, css: str | None = None) -> str:
    text = "-" if value is None or value == "" else str(value)
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{html.escape(text)}</td>"


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="none">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def clusterHTML(cluster: Mapping[str, Any]) -> list[str]:
    """
    The page's cluster section, from C{/status.json}'s C{cluster}.
    """
    unreachable = cluster.get("unreachable")
    if unreachable:
        state = (
            f'<span class="down">etcd unreachable since {html.escape(unreachable["since"])}'
            f" ({html.escape(unreachable['reason'])}): serving the last state,"
            " retrying</span>"
        )
    else:
        state = '<span class="up">etcd reachable</span>'
    parts = [
        "<h2>Cluster</h2>",
        f'<p class="meta">member {html.escape(cluster["name"])} &middot;'
        f" {html.escape(', '.join(cluster['etcd']))} &middot; prefix"
        f" {html.escape(cluster['prefix'])} &middot; {state} &middot;"
        f" {len(cluster['applied'])} stored key(s) applied</p>",
    ]
    rows = []
    for member in cluster["members"]:
        reload = member.get("last_reload") or {}
        listeners = member.get("listeners") or {}
        rows.append(
            "<tr>"
            + _cell(member.get("name"))
            + _cell(member.get("host"))
            + _cell(member.get("pid"), "num")
            + _cell(member.get("version"))
            + _cell(member.get("started"), "when")
            + _cell(
                "; ".join(f"{n}={'|'.join(e)}" for n, e in sorted(listeners.items()))
            )
            + _cell(
                reload.get("result"),
                "up" if reload.get("result") == "applied" else None,
            )
            + "</tr>"
        )
    parts.append(
        _table(
            ["member", "host", "pid", "version", "started", "listeners", "last reload"],
            rows,
            "no live members known",
        )
    )
    parts.append("<h3>Stored keys refused</h3>")
    rows = [
        "<tr>"
        + _cell(cluster["prefix"] + refusal["key"])
        + _cell(refusal["reason"], "down")
        + "</tr>"
        for refusal in cluster["refused"]
    ]
    parts.append(_table(["key", "reason"], rows, "none"))
    return parts
