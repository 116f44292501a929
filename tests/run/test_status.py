"""
Tests for L{gateway.run.status}, L{gateway.run.statuspage} and L{gateway.tls.served}: the snapshot, how
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
from gateway.core.vocabulary import Status
from gateway.rules.accesslog import ConnectionRecord
from gateway.run.loading import load_config_text
from gateway.run.status import (
    RecentFailures,
    localSnapshot,
    mergeSnapshots,
    readSnapshots,
    writeSnapshot,
)
from gateway.run.statuspage import renderHTML
from gateway.run.traffic import Traffic
from gateway.tls.served import ExpiryCollector, ServedCertificate, ServedCertificates

CONFIG = """\
[listener:web]
listen = tcp:8443
upstream = app

[upstream:app]
servers =
    127.0.0.1:9000
    127.0.0.1:9001 backup
"""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def record(status: str | None, sni: str = "a.test") -> ConnectionRecord:
    entry = ConnectionRecord(
        listener="web", client="127.0.0.1:1", accepted=time.time(), started=0.0
    )
    entry.sni = sni
    if status is not None:
        entry.fail(Status(status), f"because {sni}")
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
    clock.advance(1000)
    second.healthy = False
    second.checkError = "Connection was refused by other side"
    second.downSince = clock.seconds() - 90
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
            "connections_total": 1,
            "connections_per_s": 0.0,
            "bytes_in": 0,
            "bytes_out": 0,
        }
    ]
    [upstream] = snapshot["upstreams"]
    assert [
        (s["server"], s["backup"], s["up"], s["active"]) for s in upstream["servers"]
    ] == [
        ("127.0.0.1:9000", False, True, 2),
        ("127.0.0.1:9001", True, False, 0),
    ]
    down = upstream["servers"][1]
    assert down["state"] == (
        "down: health check failing: Connection was refused by other side"
    )
    assert down["down_reason"] == (
        "health check failing: Connection was refused by other side"
    )
    since = datetime.datetime.fromisoformat(down["down_since"])
    assert abs((now() - since).total_seconds() - 90) < 5
    assert upstream["servers"][0]["down_since"] is None
    assert [f["status"] for f in snapshot["recent_failures"]] == ["denied"]
    [certificate] = snapshot["certificates"]
    assert (certificate["name"], certificate["days_left"]) == ("api", 9)
    json.dumps(snapshot)  # what /status.json serves


def worker(pid: int, active: int, up: bool, failures: list[str]) -> dict[str, object]:
    """
    A worker's snapshot: C{active} connections on web and on app's server,
    and as many ended, of 100 bytes each way, at one a second.
    """
    traffic = {
        "connections_total": active,
        "connections_per_s": 1.0,
        "bytes_in": 100 * active,
        "bytes_out": 100 * active,
    }
    return {
        "gateway": {
            "pid": pid,
            "generated": datetime.datetime.now(datetime.UTC).isoformat(),
            "started": f"2026-01-01T00:00:{pid % 60:02d}+00:00",
        },
        "listeners": [{"name": "web", "active": active, **traffic}],
        "upstreams": [
            {
                "name": "app",
                "servers": [
                    {
                        "server": "127.0.0.1:9000",
                        "backup": False,
                        "up": up,
                        "state": "up" if up else "down: health check failing: refused",
                        "down_since": None
                        if up
                        else f"2026-01-01T00:01:{pid % 60:02d}",
                        "active": active,
                        **traffic,
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
    assert server["state"] == (
        "up on 1 of 2 workers (down: health check failing: refused)"
    )
    assert server["down_reason"] == "health check failing: refused"
    assert server["down_since"] == "2026-01-01T00:01:42"
    # Each worker counts its own connections: totals and rates add up.
    assert (server["connections_total"], server["bytes_in"]) == (5, 500)
    listener = merged["listeners"][0]
    assert (listener["connections_total"], listener["connections_per_s"]) == (5, 2.0)
    assert merged["gateway"]["started"] == "2026-01-01T00:00:41+00:00"
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
    assert merged["listeners"][0]["connections_total"] == 1 + 2 + 1
    [server] = merged["upstreams"][0]["servers"]
    assert (server["active"], server["state"], server["workers"]) == (4, "up", 2)
    assert (server["down_reason"], server["down_since"]) == (None, None)
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
    # No failures yet: since the new workers started, not the gateway.
    assert "none since the current workers started (at 2026-01-01 00:00:21 UTC)" in page
    assert "none since the gateway started" not in page
    json.dumps(merged)


def test_trafficCountsEndedConnectionsAndTheirRate() -> None:
    """
    Totals and bytes per listener and server, and connections per second
    over the last ten whole seconds; a connection no server took counts on
    its listener only.
    """
    clock = Clock()
    clock.advance(100)
    traffic = Traffic(clock.seconds)
    for second in range(20):
        entry = record(None)
        entry.upstream = "127.0.0.1:9000"
        entry.bytesIn, entry.bytesOut = 10, 1000
        for _ in range(3 if second >= 10 else 1):
            traffic.add(entry)
        clock.advance(1)
    unavailable = record("upstream_unavailable")
    unavailable.upstream = "127.0.0.1:9001"
    traffic.add(unavailable)
    assert traffic.listener("web") == {
        "connections_total": 41,
        "connections_per_s": 3.0,
        "bytes_in": 400,
        "bytes_out": 40000,
    }
    assert traffic.server("127.0.0.1:9000")["connections_total"] == 40
    assert traffic.server("127.0.0.1:9001")["connections_total"] == 0
    clock.advance(5)
    assert traffic.listener("web")["connections_per_s"] == 1.6  # 15 + 1 in 10s
    clock.advance(60)
    assert traffic.listener("web")["connections_per_s"] == 0.0
    assert traffic.listener("other") == {
        "connections_total": 0,
        "connections_per_s": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
    }


def test_pageMarksBackupsAndShowsWhyAndSinceATotalsAndRates() -> None:
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    clock = Clock()
    clock.advance(1000)
    pool = Pool(config.upstreams["app"], clock)
    _, backup = pool.members()
    backup.healthy = False
    backup.checkError = "TLS: certificate verify failed"
    backup.downSince = clock.seconds() - 30
    recent = RecentFailures()
    entry = record(None)
    entry.bytesIn, entry.bytesOut = 2_500, 3_400_000
    recent.add(entry)
    snapshot = localSnapshot(config, {}, {"app": pool}, recent, served(), clock.seconds)
    page = renderHTML(snapshot).decode()
    assert '<td class="partial">backup</td>' in page
    assert "down: health check failing: TLS: certificate verify failed" in page
    assert snapshot["upstreams"][0]["servers"][1]["down_since"][:16] in (
        page.replace(" ", "T")
    )
    assert "connections ended (per second over the last 10s)" in page
    assert ">2.5 kB<" in page
    assert ">3.4 MB<" in page
    assert "none since the gateway started (at " in page


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


PINNED = Path(__file__).parent / "pinned"


def pinnedSnapshot() -> dict[str, object]:
    """
    Two current workers (one seeing the server down, with failures) and
    two retiring ones, merged; the fields that read the clock or the pid
    are then set to fixed values, so the same input always renders the
    same bytes.
    """
    config = load_config_text(CONFIG, "gw.ini", checkFiles=False)
    current = {
        1: worker(101, 2, True, ["2026-01-01T00:00:01.050+00:00"]),
        2: worker(102, 3, False, ["2026-01-01T00:00:02.010+00:00"]),
    }
    retiring = [(1, 51, worker(51, 1, False, [])), (2, 52, None)]
    merged = mergeSnapshots(config, [(1, 101), (2, 102)], current, served(), retiring)
    merged["gateway"].update(
        pid=4242, config="gw.ini", generated="2026-01-01T00:02:00+00:00"
    )
    merged["certificates"] = [
        {
            "name": "api",
            "names": ["api.test", "www.api.test"],
            "not_after": "2026-01-11T00:00:00+00:00",
            "days_left": 10,
            "source": "files",
        }
    ]
    for row in merged["worker_processes"]:
        if row["reported"] is not None:
            row.update(reported="2026-01-01T00:01:59+00:00", age_s=1)
    merged["reload"] = {
        "last_success": "2026-01-01T00:00:30+00:00",
        "applied": 1,
        "refused": 1,
        "result": "refused",
        "time": "2026-01-01T00:01:00+00:00",
        "reason": "gw.ini:3: [listener:web] upstream: no such upstream <x>",
    }
    return merged


def test_pageAndJSONAreByteIdenticalForAFixedSnapshot() -> None:
    """
    The merged snapshot and its page, pinned byte for byte: a change to how
    workers add up or how the page is laid out shows here as a diff, so a
    refactoring that keeps both identical is seen to do so.
    """
    snapshot = pinnedSnapshot()
    page = renderHTML(snapshot).decode("utf-8")
    assert page == (PINNED / "status.html").read_text(encoding="utf-8")
    document = json.dumps(snapshot, indent=2) + "\n"  # as /status.json serves it
    assert document == (PINNED / "status.json").read_text(encoding="utf-8")
