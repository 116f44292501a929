"""
The protocol strategies: one table, every provider complete for each
interface it declares, and no hook a provider cannot serve.
"""

from __future__ import annotations

from typing import Any

import pytest
from zope.interface import Interface, providedBy
from zope.interface.verify import verifyObject

from gateway.config import ListenerConfig
from gateway.connection.hooks import IServesAtAccept, IServesPlaintext, ITerminates
from gateway.connection.strategy import (
    IPreamble,
    IProtocolStrategy,
    IUpstreamOpening,
    ListenerStates,
)
from gateway.protocols.table import STRATEGIES, strategyFor

DECLARED: dict[str, set[type[Interface]]] = {
    "tls": {IProtocolStrategy},
    "tcp": {IProtocolStrategy, IServesAtAccept},
    "postgres": {IProtocolStrategy, ITerminates, IServesPlaintext},
    "mysql": {IProtocolStrategy, IServesAtAccept},
}
"""What each strategy serves: a hook it could not serve is not there."""


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_everyStrategyProvidesWhatItDeclares(name: str) -> None:
    strategy = STRATEGIES[name]
    assert set(providedBy(strategy)) == DECLARED[name]
    for interface in DECLARED[name]:
        assert verifyObject(interface, strategy)
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


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_aStrategyThatReadsNoHelloServesAtAccept(name: str) -> None:
    """
    A connection that reads no ClientHello is served at accept: its
    strategy must say how, and one that reads a hello has no such hook.
    """
    strategy = STRATEGIES[name]
    assert IServesAtAccept.providedBy(strategy) is not strategy.readsHello


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_onlyAStrategyWithAPreambleServesPlaintext(name: str) -> None:
    strategy = STRATEGIES[name]
    hasPreamble = strategy.readsHello and strategy.preamble() is not None
    assert IServesPlaintext.providedBy(strategy) is hasPreamble


def test_thePostgresOpeningRefusesInjectedBytes() -> None:
    """
    CVE-2021-23222: an C{S} followed by anything in the same read.
    """
    opening = STRATEGIES["postgres"].opening(True)
    assert opening is not None
    assert STRATEGIES["postgres"].opening(False) is None
    assert opening().feed(b"S") is True
    assert opening().feed(b"") is None
    injected, refused = opening().feed(b"Sxx"), opening().feed(b"N")
    assert isinstance(injected, str)
    assert "injected" in injected
    assert isinstance(refused, str)
    assert "refused the SSLRequest (N)" in refused


def test_listenerStatesAreSharedByNameAndStrategy() -> None:
    """
    The service keeps one state per listener name and strategy across
    reloads: PostgreSQL's cancel keys; a protocol change starts afresh.
    """
    from gateway.protocols.postgres import CancelRegistry

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
    from gateway.rules.accesslog import AccessLog
    from gateway.run.generation import Generation
    from gateway.run.loading import load_config_text

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
    postgres = strategyFor(config.listeners[0])
    alone = ListenerFactory(
        config.listeners[0], {}, reactor, reactor, log, postgres, strategyState=None
    )
    assert alone.strategyState is None
    fresh = ListenerFactory(config.listeners[0], {}, reactor, reactor, log, postgres)
    assert isinstance(fresh.strategyState, CancelRegistry)
    assert fresh.strategyState is not shared
