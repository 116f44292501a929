"""
Tests for L{gateway.config.overlay}: stored routes and upstreams checked
one key at a time by the loader's own code, the file in charge.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import GatewayConfig, RouteConfig, parseConfigText
from gateway.config.overlay import Refusal, overlay

FILE = """\
[listener:web]
listen = tcp:8443
routes =
    www.example.com app
    ~^static\\. app

[listener:single]
listen = tcp:8444
upstream = app

[listener:raw]
listen = tcp:8445
mode = tcp
upstream = app

[upstream:app]
servers = 127.0.0.1:9000
"""


def base() -> GatewayConfig:
    return parseConfigText(FILE, "/etc/gw/gw.ini")


def listener(config: GatewayConfig, name: str) -> tuple[RouteConfig, ...]:
    return next(item for item in config.listeners if item.name == name).routes


def test_nothingStoredIsTheFileItself() -> None:
    config = base()
    result = overlay(config, {})
    assert result.config is config
    assert result.applied == ()
    assert result.refused == ()


def test_storedRouteToStoredUpstream() -> None:
    result = overlay(
        base(),
        {
            "upstreams/tenant-a": "servers =\n  127.0.0.1:9100\n  127.0.0.1:9101\n"
            "balance = least_conn",
            "routes/web/A.Example.Com": "tenant-a",
        },
    )
    assert result.refused == ()
    assert result.applied == ("upstreams/tenant-a", "routes/web/A.Example.Com")
    upstream = result.config.upstreams["tenant-a"]
    assert [s.address for s in upstream.servers] == [
        "127.0.0.1:9100",
        "127.0.0.1:9101",
    ]
    assert upstream.balance == "least_conn"
    assert listener(result.config, "web")[-1] == RouteConfig(
        "a.example.com", "tenant-a"
    )
    assert listener(result.config, "web")[:2] == listener(base(), "web")


def test_aSingleUpstreamBecomesTheDefaultRoute() -> None:
    result = overlay(base(), {"routes/single/a.example.com": "app passthrough"})
    (single,) = [item for item in result.config.listeners if item.name == "single"]
    assert single.upstream is None
    assert single.routes == (
        RouteConfig("default", "app"),
        RouteConfig("a.example.com", "app", "passthrough"),
    )


def test_eachBadKeyIsRefusedAloneTheRestApplies() -> None:
    result = overlay(
        base(),
        {
            "routes/web/good.example.com": "app",
            "routes/web/bad.example.com": "nowhere",
            "routes/web/www.example.com": "app",
            "routes/web/x*.example.com": "app",
            "routes/web/t.example.com": "app terminate",
            "routes/raw/a.example.com": "app",
            "routes/ghost/a.example.com": "app",
            "routes/single/default": "app",
            "upstreams/app": "servers = 127.0.0.1:1",
            "upstreams/broken": "servers = 127.0.0.1:1 weight=0\nbalance = fastest",
            "upstreams/headers": "servers = 127.0.0.1:1\n[listener:x]\nlisten = 1",
            "members/edge-1": "{}",
        },
    )
    assert result.applied == ("routes/web/good.example.com",)
    assert result.refused == (
        Refusal("upstreams/app", "[upstream:app] is in the file: the file wins"),
        Refusal(
            "upstreams/broken",
            "upstreams/broken:2: [upstream:broken] balance: 'fastest' is not one of"
            " round_robin, least_conn, random, hash; upstreams/broken:1:"
            " [upstream:broken] servers: weight=0: 0 is too small: use 1 or more",
        ),
        Refusal(
            "upstreams/headers", "holds the body of one section: no [section] headers"
        ),
        Refusal(
            "routes/ghost/a.example.com", "no [listener:ghost] in the configuration"
        ),
        Refusal(
            "routes/raw/a.example.com",
            "the listener has mode = tcp: it reads no server name",
        ),
        Refusal("routes/single/default", "the file routes 'default' on this listener"),
        Refusal(
            "routes/web/bad.example.com",
            "routes/web/bad.example.com: [listener:web] routes: upstream 'nowhere'"
            " is not defined (no [upstream:nowhere] section)",
        ),
        Refusal(
            "routes/web/t.example.com",
            "terminates TLS, but the listener has no certificate and private_key"
            " or certificates",
        ),
        Refusal(
            "routes/web/www.example.com",
            "the file routes 'www.example.com' on this listener",
        ),
        Refusal(
            "routes/web/x*.example.com",
            "routes/web/x*.example.com: [listener:web] routes: 'x*.example.com':"
            " '*' is only allowed as the whole first label, as in '*.example.com'",
        ),
    )


def test_twoKeysForOnePatternTheFirstWins() -> None:
    result = overlay(
        base(),
        {"routes/web/A.example.com": "app", "routes/web/a.example.com": "app"},
    )
    assert result.applied == ("routes/web/A.example.com",)
    assert result.refused == (
        Refusal("routes/web/a.example.com", "another key routes 'a.example.com'"),
    )


keys = st.one_of(
    st.text(max_size=30),
    st.builds(lambda s: "routes/web/" + s, st.text(max_size=20)),
    st.builds(lambda s: "upstreams/" + s, st.text(max_size=20)),
)


@given(st.dictionaries(keys, st.text(max_size=60), max_size=6))
def test_anythingStoredLeavesTheFileRoutesFirst(entries: dict[str, str]) -> None:
    config = base()
    result = overlay(config, entries)
    assert listener(result.config, "web")[:2] == listener(config, "web")
    assert set(result.applied).isdisjoint(r.key for r in result.refused)
    for name, upstream in config.upstreams.items():
        assert result.config.upstreams[name] == upstream
    with contextlib.suppress(StopIteration):
        raw = next(i for i in result.config.listeners if i.name == "raw")
        assert raw.routes == ()
