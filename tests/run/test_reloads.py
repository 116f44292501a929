"""
L{gateway.run.reloads}: the last reload's time, result and reason, as the
status page and C{/metrics} show them, for one process and for a
supervisor.  The end-to-end side is C{tests/integration/test_process.py}.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.testing import MemoryReactorClock

from gateway.run.loading import load_config
from gateway.run.reloads import ReloadCollector, ReloadHistory
from gateway.run.service import GatewayService
from gateway.run.statuspage import renderHTML
from gateway.run.supervisor import Supervisor

INI = """\
[gateway]
access_log = off
metrics = tcp:0:interface=127.0.0.1

[listener:web]
listen = tcp:0:interface=127.0.0.1
upstream = app

[upstream:app]
servers = 127.0.0.1:9
"""


class Ticks:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def scraped(history: ReloadHistory) -> str:
    registry = CollectorRegistry()
    registry.register(ReloadCollector(history))
    return generate_latest(registry).decode()


def test_theStartIsTheFirstSuccessAndARefusalKeepsIt() -> None:
    clock = Ticks()
    history = ReloadHistory(clock)
    history.started()
    assert history.snapshot() == {
        "time": None,
        "result": None,
        "reason": None,
        "last_success": "2027-01-15T08:00:00+00:00",
        "applied": 0,
        "refused": 0,
    }
    clock.now += 60
    history.refused("gw.ini:3: [gateway] workers: 'x' is not a number")
    snapshot = history.snapshot()
    assert snapshot["result"] == "refused"
    assert snapshot["time"] == "2027-01-15T08:01:00+00:00"
    assert snapshot["reason"] == "gw.ini:3: [gateway] workers: 'x' is not a number"
    assert snapshot["last_success"] == "2027-01-15T08:00:00+00:00"
    clock.now += 60
    history.applied()
    snapshot = history.snapshot()
    assert (snapshot["result"], snapshot["reason"]) == ("applied", None)
    assert snapshot["last_success"] == "2027-01-15T08:02:00+00:00"
    assert (snapshot["applied"], snapshot["refused"]) == (1, 1)


def test_metricsCountBothResultsFromZero() -> None:
    clock = Ticks()
    history = ReloadHistory(clock)
    history.started()
    text = scraped(history)
    assert 'tlsgateway_reloads_total{result="applied"} 0.0' in text
    assert 'tlsgateway_reloads_total{result="refused"} 0.0' in text
    assert "tlsgateway_config_last_reload_success_timestamp_seconds 1.8e+09" in text
    clock.now += 5
    history.refused("no")
    history.refused("no")
    clock.now += 5
    history.applied()
    text = scraped(history)
    assert 'tlsgateway_reloads_total{result="applied"} 1.0' in text
    assert 'tlsgateway_reloads_total{result="refused"} 2.0' in text
    assert (
        "tlsgateway_config_last_reload_success_timestamp_seconds 1.80000001e+09" in text
    )


def test_thePageShowsARefusalWithItsReason() -> None:
    history = ReloadHistory(Ticks())
    history.started()
    snapshot = {
        "gateway": {"pid": 1, "workers": 1, "config": "gw.ini", "generated": "now"},
        "listeners": [],
        "upstreams": [],
        "recent_failures": [],
        "certificates": [],
        "reload": history.snapshot(),
    }
    page = renderHTML(snapshot).decode()
    assert "no reload since the start" in page
    history.refused("gw.ini:9: [listener:web] certificate: <missing> & gone")
    snapshot["reload"] = history.snapshot()
    page = renderHTML(snapshot).decode()
    assert 'last reload <span class="down">refused</span>' in page
    assert "gw.ini:9: [listener:web] certificate: &lt;missing&gt; &amp; gone" in page
    assert "reloads: 0 applied, 1 refused" in page


def test_theServiceRecordsARefusedThenAnAppliedReload(tmp_path: Path) -> None:
    path = tmp_path / "gateway.ini"
    path.write_text(INI)
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)
    service = GatewayService(load_config(path), reactor)
    service.startService()
    try:
        assert service.statusSnapshot()["reload"]["result"] is None
        path.write_text(INI.replace("servers = 127.0.0.1:9", "servers = x:y:z"))
        reactor.advance(10)
        assert not service.reload()
        reload = service.statusSnapshot()["reload"]
        assert reload["result"] == "refused"
        assert f"{path} has problems" in reload["reason"]
        assert "[upstream:app] servers" in reload["reason"]
        assert reload["time"] == "2027-01-15T08:00:10+00:00"
        assert reload["last_success"] == "2027-01-15T08:00:00+00:00"
        path.write_text(INI)
        reactor.advance(10)
        assert service.reload()
        reload = service.statusSnapshot()["reload"]
        assert (reload["result"], reload["reason"]) == ("applied", None)
        assert reload["last_success"] == "2027-01-15T08:00:20+00:00"
    finally:
        service.stopService()


def test_theSupervisorRecordsARefusedReload(tmp_path: Path) -> None:
    path = tmp_path / "gateway.ini"
    path.write_text(INI.replace("[gateway]", "[gateway]\nworkers = 2"))
    reactor = MemoryReactorClock()
    supervisor = Supervisor(load_config(path), reactor)
    try:
        supervisor.reloads.started()
        path.write_text("[gateway]\nworkers = many\n")
        supervisor.reload()
        reload = supervisor.reloads.snapshot()
        assert reload["result"] == "refused"
        assert "[gateway] workers" in reload["reason"]
    finally:
        shutil.rmtree(supervisor._metricsDir, ignore_errors=True)


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1e6)), max_size=30))
def test_anyHistoryCountsEachResultAndKeepsTheLastSuccess(
    events: list[tuple[bool, float]],
) -> None:
    clock = Ticks()
    history = ReloadHistory(clock)
    history.started()
    lastSuccess = clock.now
    for applied, later in events:
        clock.now += later
        if applied:
            history.applied()
            lastSuccess = clock.now
        else:
            history.refused("reason")
    assert history.counts == {
        "applied": sum(1 for a, _ in events if a),
        "refused": sum(1 for a, _ in events if not a),
    }
    assert history.lastSuccess == lastSuccess
    last = history.snapshot()
    if events:
        assert last["result"] == ("applied" if events[-1][0] else "refused")
        assert (last["reason"] is None) == events[-1][0]
    else:
        assert last["result"] is None
