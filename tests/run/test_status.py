"""
Tests for L{gateway.run.status} and L{gateway.tls.served}: the snapshot, how
workers' snapshots add up, the page, and the served-certificates registry.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock

from gateway.connection.upstream import Pool
from gateway.rules.accesslog import ConnectionRecord
from gateway.run.loading import load_config_text
from gateway.run.status import (
    RecentFailures,
    localSnapshot,
    mergeSnapshots,
    readSnapshots,
    renderHTML,
    writeSnapshot,
)
from gateway.tls.served import ExpiryCollector, ServedCertificate, ServedCertificates

CONFIG = """\
[listener:web]
listen = tcp:8443
upstream = app

[upstream:app]
servers =
    127.0.0.1:9000
    127.0.0.1:9001
"""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def record(status: str | None, sni: str = "a.test") -> ConnectionRecord:
    entry = ConnectionRecord(
        listener="web", client="127.0.0.1:1", accepted=time.time(), started=0.0
    )
    entry.sni = sni
    if status is not None:
        entry.fail(status, f"because {sni}")
    return entry


def served(*names: str) -> ServedCertificates:
    registry = ServedCertificates()
    registry.replace(
        "files",
        [
            ServedCertificate(
                name, (f"{name}.test",), now() + datetime.timedelta(days=10 * (i + 1))
            )
            for i, name in enumerate(names)
        ],
    )
    return registry


def test_recentFailuresKeepsOnlyTheLastNotOk() -> None:
    recent = RecentFailures(size=3)
    recent.add(record(None))
    for index in range(5):
        recent.add(record("no_route", f"n{index}.test"))
    assert [f["sni"] for f in recent.newestFirst()] == ["n4.test", "n3.test", "n2.test"]
    assert recent.newestFirst()[0]["reason"] == "because n4.test"


def test_localSnapshotReadsPoolsAndCounts() -> None:
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    clock = Clock()
    pool = Pool(config.upstreams["app"], clock)
    first, second = pool.members()
    first.active = 2
    second.healthy = False
    recent = RecentFailures()
    recent.add(record("denied"))
    snapshot = localSnapshot(
        config, {"web": 2}, {"app": pool}, recent, served("api"), clock.seconds
    )
    assert snapshot["listeners"] == [
        {
            "name": "web",
            "listen": ["tcp:8443"],
            "mode": "passthrough",
            "protocol": "tls",
            "routes": 0,
            "active": 2,
        }
    ]
    [upstream] = snapshot["upstreams"]
    assert [(s["server"], s["up"], s["active"]) for s in upstream["servers"]] == [
        ("127.0.0.1:9000", True, 2),
        ("127.0.0.1:9001", False, 0),
    ]
    assert upstream["servers"][1]["state"] == "down: health check failing"
    assert [f["status"] for f in snapshot["recent_failures"]] == ["denied"]
    [certificate] = snapshot["certificates"]
    assert (certificate["name"], certificate["days_left"]) == ("api", 9)
    json.dumps(snapshot)  # what /status.json serves


def worker(pid: int, active: int, up: bool, failures: list[str]) -> dict[str, object]:
    """A worker's snapshot: C{active} connections on web and on app's server."""
    return {
        "gateway": {
            "pid": pid,
            "generated": datetime.datetime.now(datetime.UTC).isoformat(),
        },
        "listeners": [{"name": "web", "active": active}],
        "upstreams": [
            {
                "name": "app",
                "servers": [
                    {
                        "server": "127.0.0.1:9000",
                        "up": up,
                        "state": "up" if up else "down: health check failing",
                        "active": active,
                    }
                ],
            }
        ],
        "recent_failures": [{"time": t, "status": "no_route"} for t in failures],
    }


def test_workersSnapshotsAddUpAndStaleOnesAreLeftOut(tmp_path: Path) -> None:
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    snapshots = {
        1: worker(101, 2, True, ["2026-01-01T00:00:01"]),
        2: worker(102, 3, False, ["2026-01-01T00:00:02"]),
    }
    merged = mergeSnapshots(config, [(1, 101), (2, 102)], snapshots, served())
    assert merged["listeners"][0]["active"] == 5
    [server] = merged["upstreams"][0]["servers"]
    assert (server["active"], server["up_workers"], server["workers"]) == (5, 1, 2)
    assert server["state"] == "up on 1 of 2 workers (down: health check failing)"
    assert [(f["worker"], f["time"]) for f in merged["recent_failures"]] == [
        (2, "2026-01-01T00:00:02"),
        (1, "2026-01-01T00:00:01"),
    ]
    assert [w["worker"] for w in merged["worker_processes"]] == [1, 2]
    # Worker 2 was replaced (a new pid): its predecessor's snapshot does not count.
    replaced = mergeSnapshots(config, [(1, 101), (2, 202)], snapshots, served())
    assert replaced["listeners"][0]["active"] == 2
    assert replaced["worker_processes"][1]["reported"] is None
    # Through files, as workers and the supervisor exchange them.
    writeSnapshot(str(tmp_path), 1, snapshots[1])  # written under this pid
    import os

    assert readSnapshots(str(tmp_path), [(1, os.getpid()), (2, 102)]) == {
        1: snapshots[1]
    }


def test_retiringWorkersConnectionsCountButNotTheirHealth() -> None:
    """
    Workers a reload replaced still finish their connections: those count
    on the listener and the server (as one process counts its older
    generations'), the workers are listed as retiring with their own
    count, and their view of the server's health (the previous
    configuration's) is not merged.  Two old generations may each have a
    worker 1; a snapshot from another pid is not theirs.
    """
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    current = {1: worker(201, 1, True, []), 2: worker(202, 0, True, [])}
    retiring = [
        (1, 101, worker(101, 2, False, ["2026-01-01T00:00:01"])),
        (1, 51, worker(51, 1, False, [])),
        (2, 102, worker(999, 7, False, [])),  # not its own snapshot
        (2, 52, None),  # none written yet
    ]
    merged = mergeSnapshots(config, [(1, 201), (2, 202)], current, served(), retiring)
    assert merged["listeners"][0]["active"] == 1 + 2 + 1
    [server] = merged["upstreams"][0]["servers"]
    assert (server["active"], server["state"], server["workers"]) == (4, "up", 2)
    assert merged["recent_failures"] == []
    assert (merged["gateway"]["workers"], merged["gateway"]["retiring_workers"]) == (
        2,
        4,
    )
    rows = [
        (w["worker"], w["pid"], w["active"], w["retiring"])
        for w in merged["worker_processes"]
    ]
    assert rows == [
        (1, 201, 1, False),
        (2, 202, 0, False),
        (1, 101, 2, True),
        (1, 51, 1, True),
        (2, 102, None, True),
        (2, 52, None, True),
    ]
    page = renderHTML(merged).decode()
    assert page.count("retiring: finishing its connections") == 4
    assert page.count("<td>serving</td>") == 2
    json.dumps(merged)


def test_pageEscapesWhatClientsSentAndRefreshesItself() -> None:
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    recent = RecentFailures()
    recent.add(record("no_route", "<script>alert(1)</script>"))
    page = renderHTML(
        localSnapshot(config, {}, {}, recent, served("api"), time.time)
    ).decode()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "api.test" in page


def test_registryReplacesOneSourceAndTheGaugeCountsDown() -> None:
    registry = served("late", "soon")
    registry.replace(
        "acme",
        [
            ServedCertificate(
                "issued", ("i.test",), now() + datetime.timedelta(days=1), source="acme"
            )
        ],
    )
    assert [c.name for c in registry] == ["issued", "late", "soon"]  # soonest first
    registry.replace("files", [])
    assert [c.name for c in registry] == ["issued"]
    metrics = CollectorRegistry()
    metrics.register(ExpiryCollector(registry))
    value = metrics.get_sample_value(
        "tlsgateway_certificate_expiry_seconds", {"certificate": "issued"}
    )
    assert value is not None
    assert 86400 - 60 < value <= 86400
    assert b"tlsgateway_certificate_expiry_seconds" in generate_latest(metrics)
