"""
Tests for L{gateway.config.checks}: keys and sections judged together,
driven directly, without a file, through a L{Report} that records.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RouteConfig
from gateway.config.checks import (
    ListenerKeys,
    SectionReport,
    checkBindings,
    checkCertificate,
    checkListener,
)
from gateway.config.scan import _Section


@attrs.define
class RecordingReport:
    """
    A L{gateway.config.checks.Report} that keeps what it is told.

    @ivar lines: each key's line, as a scan would have found it.
    """

    lines: dict[str, int] = attrs.Factory(dict)
    problems: list[tuple[int | None, str | None, str | None, str]] = attrs.Factory(list)
    warnings: list[tuple[int | None, str | None, str | None, str]] = attrs.Factory(list)

    def problem(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        self.problems.append((line, section, key, message))

    def warning(
        self, line: int | None, section: str | None, key: str | None, message: str
    ) -> None:
        self.warnings.append((line, section, key, message))

    def keyLine(self, section: _Section, key: str) -> int | None:
        return self.lines.get(key, section.line)


def listenerSection(items: dict[str, str], line: int = 1) -> _Section:
    return _Section("listener:web", "listener", "web", items, line)


def keys(
    items: dict[str, str],
    mode: str | None = "passthrough",
    routes: tuple[RouteConfig, ...] = (),
    **settings: object,
) -> ListenerKeys:
    return ListenerKeys(
        section=listenerSection(items),
        settings={"mode": mode, **settings} if mode else settings,
        mode=mode,
        routes=routes,
        hasRoutes=bool(routes) or "routes" in items,
    )


def test_aProblemIsReportedAtItsKeysLine() -> None:
    report = RecordingReport(lines={"routes": 4, "listen": 2})
    route = RouteConfig("a.example", "app", None, 5)
    checkListener(
        report,
        keys({"listen": "tcp:1", "routes": "", "mode": "tcp"}, "tcp", (route,)),
        {"app"},
        set(),
    )
    assert report.problems == [
        (
            4,
            "listener:web",
            "routes",
            "mode = tcp reads no ClientHello, so it cannot route: use upstream",
        )
    ]


def test_aRouteProblemIsReportedAtTheRoutesOwnLine() -> None:
    report = RecordingReport(lines={"routes": 4})
    routes = (
        RouteConfig("a.example", "app", None, 5),
        RouteConfig("b.example", "app", "terminate", 6),
    )
    checkListener(report, keys({"routes": ""}, "passthrough", routes), {"app"}, set())
    [(line, _, key, message)] = report.problems
    assert (line, key) == (6, "routes")
    assert "route 'b.example' terminates TLS" in message


def test_aMissingKeyIsReportedAtTheSectionsHeader() -> None:
    report = RecordingReport(lines={"names": 3})
    section = _Section("certificate:c", "certificate", "c", {"names": "a.b"}, 7)
    checkCertificate(SectionReport(report, section), {}, hasAcme=False)
    assert [(line, key) for line, _, key, _ in report.problems] == [
        (7, "certificate"),
        (7, "private_key"),
        (3, "names"),
    ]


def test_aPROXYHeaderFromAnyoneIsAWarningNotAProblem() -> None:
    report = RecordingReport(lines={"accept_proxy_protocol": 3})
    checkListener(
        report,
        keys(
            {"upstream": "app", "accept_proxy_protocol": "on"},
            listen=("tcp:1",),
            accept_proxy_protocol=True,
            upstream="app",
        ),
        {"app"},
        set(),
    )
    assert report.problems == []
    [(line, _, key, _)] = report.warnings
    assert (line, key) == (3, "accept_proxy_protocol")


@given(
    mode=st.sampled_from(["passthrough", "terminate", "tcp"]),
    hasUpstream=st.booleans(),
    hasRoutes=st.booleans(),
)
def test_aListenerSendsToAnUpstreamOrByRoutes(
    mode: str, hasUpstream: bool, hasRoutes: bool
) -> None:
    """
    Outside C{mode = tcp}, a listener has C{upstream} or C{routes}, never
    both nor neither; with C{mode = tcp}, C{upstream} only.  Every
    problem is located in the listener's section.
    """
    items = {"certificate": "c.pem", "private_key": "k.pem"}
    if hasUpstream:
        items["upstream"] = "app"
    routes = (RouteConfig("a.example", "app", None, 9),) if hasRoutes else ()
    report = RecordingReport(lines={"upstream": 2, "routes": 3, "mode": 4})
    checkListener(report, keys(items, mode, routes), {"app"}, set())
    messages = [message for _, _, _, message in report.problems]
    if mode == "tcp":
        expected = hasRoutes or not hasUpstream
    else:
        expected = hasUpstream == hasRoutes
    assert bool(messages) == expected, messages
    assert {section for _, section, _, _ in report.problems} <= {"listener:web"}
    assert all(line is not None for line, _, _, _ in report.problems)


def test_twoEndpointsOnOneAddressAreReportedAtTheSecond() -> None:
    """
    C{tcp:8443} and C{tcp:8443:interface=0.0.0.0} bind the same address;
    port 0 is a fresh port each time and never clashes.
    """
    report = RecordingReport(lines={"listen": 2})
    first = listenerSection({}, 1)
    second = _Section("listener:other", "listener", "other", {}, 10)
    checkBindings(
        report,
        [
            (first, "listen", ["tcp:8443", "tcp:0"]),
            (second, "listen", ["tcp:8443:interface=0.0.0.0", "tcp:0"]),
        ],
    )
    assert report.problems == [
        (
            2,
            "listener:other",
            "listen",
            "'tcp:8443:interface=0.0.0.0' listens on the same address as"
            " 'tcp:8443' in [listener:web]",
        )
    ]
