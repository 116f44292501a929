"""
Tests for L{gateway.run.logs}: levels, Twisted's chatter, worker labels.
"""

from __future__ import annotations

import io

from twisted.logger import LogLevel, formatEvent

from gateway.core import verbosity
from gateway.fast.twistedtext import isChatter
from gateway.run import logs
from gateway.run.logs import consoleObserver, twistdObserver


def event(
    text: str, level: LogLevel = LogLevel.info, **more: object
) -> dict[str, object]:
    return {
        "log_format": text,
        "log_level": level,
        "log_namespace": "gateway.x",
        "log_time": 0.0,
        **more,
    }


def legacy(text: str) -> dict[str, object]:
    """An event as C{twisted.python.log.msg} publishes it."""
    return {
        "message": (text,),
        "log_format": "{log_text}",
        "log_text": text,
        "log_level": LogLevel.info,
        "log_namespace": "log_legacy",
        "log_system": "-",
        "log_time": 0.0,
        "isError": 0,
    }


def test_chatterIsTwistedsPortAndFactoryLines() -> None:
    assert isChatter(legacy("ListenerFactory starting on 8443"))
    assert isChatter(legacy("(TCP Port 8443 Closed)"))
    assert isChatter(legacy("_HelloFactory (TLS) starting on 45595"))
    assert isChatter(event("Starting factory {factory!r}"))
    assert not isChatter(event("listener web listening on tcp:443"))
    assert not isChatter(legacy("Received SIGTERM, shutting down."))


def test_levelsFilterAndChatterIsDebug() -> None:
    out = io.StringIO()
    observer = consoleObserver("info", output=out)
    observer(event("kept"))
    observer(event("per connection", LogLevel.debug))
    observer(legacy("Site starting on 9100"))
    observer(event("a warning", LogLevel.warn))
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == [
        "kept",
        "a warning",
    ]
    out = io.StringIO()
    consoleObserver("warn", output=out)(event("info line"))
    assert out.getvalue() == ""
    out = io.StringIO()
    debug = consoleObserver("debug", output=out)
    debug(legacy("Site starting on 9100"))
    assert "Site starting on 9100" in out.getvalue()


def test_workerLinesNameTheWorker() -> None:
    out = io.StringIO()
    consoleObserver("info", worker=2, output=out)(event("listener web listening"))
    assert "[worker 2 gateway.x#info] listener web listening" in out.getvalue()
    assert formatEvent(event("x")) == "x"


def test_twistdObserverFollowsTwistdsOptions(tmp_path: object) -> None:
    assert twistdObserver({"syslog": True, "nodaemon": True}, "info") is None
    assert twistdObserver({"logger": "x.y", "nodaemon": True}, "info") is None
    assert twistdObserver({"logfile": "-", "nodaemon": False}, "info") is None
    assert twistdObserver({"nodaemon": True, "logfile": None}, "info") is not None


def test_debugSwitchFollowsTheProcessLevel() -> None:
    """
    L{gateway.core.verbosity.DEBUG} starts on (an embedding application filters
    events itself) and follows the level the gateway's process sets.
    """
    assert verbosity.DEBUG is True
    try:
        logs.setLevel("info")
        assert verbosity.DEBUG is False
        logs.setLevel("warn")
        assert verbosity.DEBUG is False
        logs.setLevel("debug")
        assert verbosity.DEBUG is True
    finally:
        verbosity.DEBUG = True


def test_logLinesEmitEachWholeLineAsAnAccessEvent() -> None:
    """
    A daemon's C{access_log = -}: each line written becomes one event, a
    line split across writes included; a filter at C{warn} still passes
    them (they are the access log, not chatter).
    """
    from twisted.logger import LogPublisher

    from gateway.run.logs import ACCESS_NAMESPACE, LogLines

    output = io.StringIO()
    publisher = LogPublisher(consoleObserver("warn", output=output))
    lines = LogLines()
    lines._log.observer = publisher
    lines.write("listener=web status=ok\nlistener=w")
    lines.write("eb status=no_route\n")
    lines.flush()
    written = output.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in written] == [
        "listener=web status=ok",
        "listener=web status=no_route",
    ]
    assert all(f"[{ACCESS_NAMESPACE}#info]" in line for line in written)


def test_relayPassesAWorkersLinesOnWithTheirLabelAndLevel() -> None:
    """
    A daemon supervisor's workers: their log lines keep their worker label
    and level, their access-log lines become access events, and a line
    split across reads is passed on whole.
    """
    from twisted.logger import LogPublisher

    from gateway.run.logs import Relay

    output = io.StringIO()
    publisher = LogPublisher(consoleObserver("info", output=output))
    relay = Relay()
    relay._log.observer = publisher
    relay._access._log.observer = publisher
    relay.received(2, b"2026-12-01T10:00:00+0000 [worker 2 gateway.x#warn] disk ")
    relay.received(2, b"full\n2026-12-01T10:00:00+0000 [worker 1 gateway.y#debug] x\n")
    relay.received(1, b"listener=web status=ok\n")
    relay.received(2, b"not a log line\n")
    written = [line.split(" ", 1)[1] for line in output.getvalue().splitlines()]
    assert written == [
        "[worker 2 gateway.x#warn] disk full",
        "[tlsgateway.access#info] listener=web status=ok",
        "[gateway.run.supervisor#info] not a log line",
    ]
