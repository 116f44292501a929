"""
The protocol strategies: one table, every provider complete.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface.verify import verifyObject

from gateway.config import ListenerConfig
from gateway.protocols.strategy import IPreamble, IProtocolStrategy, IUpstreamOpening
from gateway.protocols.table import STRATEGIES, strategyFor


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_everyStrategyProvidesTheInterface(name: str) -> None:
    strategy = STRATEGIES[name]
    assert verifyObject(IProtocolStrategy, strategy)
    assert strategy.name == name
    preamble = strategy.preamble()
    if preamble is not None:
        assert verifyObject(IPreamble, preamble)
    opening = strategy.opening(True)
    if opening is not None:
        assert verifyObject(IUpstreamOpening, opening())


def test_theTableIsKeyedByProtocolOrModeTCP() -> None:
    def listener(**keys: object) -> ListenerConfig:
        return ListenerConfig(name="l", listen=("tcp:1",), upstream="u", **keys)  # type: ignore[arg-type]

    assert strategyFor(listener()).name == "tls"
    assert strategyFor(listener(protocol="postgres")).name == "postgres"
    assert strategyFor(listener(protocol="mysql", mode="terminate")).name == "mysql"
    assert strategyFor(listener(mode="tcp")).name == "tcp"


def test_onlyTLSAndPostgresReadAHello() -> None:
    reads = {name for name, s in STRATEGIES.items() if s.readsHello}
    assert reads == {"tls", "postgres"}
    assert [n for n, s in STRATEGIES.items() if s.speaksTLSFirst] == ["tls"]


def test_thePostgresOpeningRefusesInjectedBytes() -> None:
    """
    CVE-2021-23222: an C{S} followed by anything in the same read.
    """
    opening = STRATEGIES["postgres"].opening(True)
    assert opening is not None
    assert STRATEGIES["postgres"].opening(False) is None
    assert opening().feed(b"S") is True
    assert opening().feed(b"") is None
    assert "injected" in opening().feed(b"Sxx")
    assert "refused the SSLRequest (N)" in opening().feed(b"N")


def test_listenerStatesAreSharedByNameAndStrategy() -> None:
    """
    The service keeps one state per listener name and strategy across
    reloads: PostgreSQL's cancel keys; a protocol change starts afresh.
    """
    from gateway.protocols.postgres import CancelRegistry
    from gateway.protocols.strategy import ListenerStates

    states = ListenerStates()
    postgres = states.stateFor("db", STRATEGIES["postgres"])
    assert isinstance(postgres, CancelRegistry)
    assert states.stateFor("db", STRATEGIES["postgres"]) is postgres
    assert states.stateFor("other", STRATEGIES["postgres"]) is not postgres
    assert states.stateFor("db", STRATEGIES["tls"]) is None


PG_CONFIG = """\
[listener:db]
listen = tcp:5432:interface=127.0.0.1
protocol = postgres
upstream = up
[listener:web]
listen = tcp:8443:interface=127.0.0.1
upstream = up
[upstream:up]
servers = 127.0.0.1:9000
"""


def test_generationsShareTheListenersStateAcrossReloads(tmp_path: Any) -> None:
    """
    Two generations (a start and a reload) built with the service's
    L{ListenerStates} give the factories of one listener name the same
    cancel keys; a factory built alone gets its own.
    """
    from twisted.internet.testing import MemoryReactorClock

    from gateway.connection.listener import ListenerFactory
    from gateway.protocols.postgres import CancelRegistry
    from gateway.protocols.strategy import ListenerStates
    from gateway.rules.accesslog import AccessLog
    from gateway.run.loading import load_config_text
    from gateway.run.service import Generation

    config = load_config_text(PG_CONFIG, "/etc/tlsgateway/gateway.ini")
    log = AccessLog(str(tmp_path / "access.log"))
    states = ListenerStates()
    reactor = MemoryReactorClock()
    first = Generation(config, reactor, log, lambda: None, states)
    second = Generation(config, reactor, log, lambda: None, states)
    shared = first.factories["db"].strategyState
    assert isinstance(shared, CancelRegistry)
    assert second.factories["db"].strategyState is shared
    assert first.factories["web"].strategyState is None
    alone = ListenerFactory(
        config.listeners[0], {}, reactor, reactor, log, strategyState=None
    )
    assert alone.strategyState is None
    fresh = ListenerFactory(config.listeners[0], {}, reactor, reactor, log)
    assert isinstance(fresh.strategyState, CancelRegistry)
    assert fresh.strategyState is not shared
