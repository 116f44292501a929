"""
Every provider of the connection core's zope interfaces provides them
whole: the stage a connection is handed to (L{IStage}), what a
termination stage drives (L{ITerminatedSession}), what a TLS layer
reports to (L{ITLSEvents}), the relays (L{IRelay}), the dialers
(L{IUpstreamDialer}), the TLS record layers (L{IRecordLayer}), and the
protocol strategies with each of the small interfaces they declare
(L{gateway.connection.strategy}, L{gateway.connection.hooks}).

The interfaces declare methods only, so an instance made without its
constructor (which needs a running connection) is enough for
C{verifyObject} to check every method and its signature, and that the
class declares the interface.
"""

from __future__ import annotations

import pytest
from zope.interface import Interface
from zope.interface.verify import verifyObject

from gateway.connection.challenge import ChallengeStage
from gateway.connection.dialers import (
    AdoptingDialer,
    IUpstreamDialer,
    SpliceDialer,
    TwistedDialer,
)
from gateway.connection.health import _Probe
from gateway.connection.hooks import IServesAtAccept, IServesPlaintext, ITerminates
from gateway.connection.passthrough import PassthroughStage
from gateway.connection.preread import IStage
from gateway.connection.relay import CopyRelay, IRelay, PortableRelay
from gateway.connection.session import Session, UpstreamProtocol, _Discard
from gateway.connection.splicerelay import SpliceRelay
from gateway.connection.strategy import IPreamble, IProtocolStrategy, IUpstreamOpening
from gateway.connection.terminate import ITerminatedSession, TerminationStage
from gateway.connection.terminatedrelay import TerminatedRelay
from gateway.core.records import IRecordLayer
from gateway.fast.internals import DirectRecords
from gateway.protocols.mysql.connection import MySQLConnection, _TerminatedLogin
from gateway.protocols.mysql.leg import ServerLeg
from gateway.protocols.mysql.strategy import MySQLStrategy
from gateway.protocols.postgres import (
    PostgresOpening,
    PostgresPreamble,
    PostgresStrategy,
    StartupReader,
)
from gateway.protocols.tls import TCPStrategy, TLSStrategy
from gateway.tls.transport import ITLSEvents, PublicRecords

PROVIDERS: list[tuple[type[Interface], type]] = [
    (IStage, PassthroughStage),
    (IStage, TerminationStage),
    (IStage, MySQLConnection),
    (IStage, ChallengeStage),
    (ITerminatedSession, Session),
    (ITerminatedSession, StartupReader),
    (ITerminatedSession, _TerminatedLogin),
    (ITLSEvents, UpstreamProtocol),
    (ITLSEvents, TerminationStage),
    (ITLSEvents, ServerLeg),
    (ITLSEvents, _Probe),
    (ITLSEvents, ChallengeStage),
    (IRelay, PortableRelay),
    (IRelay, CopyRelay),
    (IRelay, TerminatedRelay),
    (IRelay, SpliceRelay),
    (IRelay, _Discard),
    (IUpstreamDialer, TwistedDialer),
    (IUpstreamDialer, AdoptingDialer),
    (IUpstreamDialer, SpliceDialer),
    (IRecordLayer, PublicRecords),
    (IRecordLayer, DirectRecords),
    (IProtocolStrategy, TLSStrategy),
    (IProtocolStrategy, TCPStrategy),
    (IProtocolStrategy, PostgresStrategy),
    (IProtocolStrategy, MySQLStrategy),
    (IServesAtAccept, TCPStrategy),
    (IServesAtAccept, MySQLStrategy),
    (ITerminates, PostgresStrategy),
    (IServesPlaintext, PostgresStrategy),
    (IPreamble, PostgresPreamble),
    (IUpstreamOpening, PostgresOpening),
]


@pytest.mark.parametrize(
    ("interface", "provider"),
    PROVIDERS,
    ids=[f"{i.__name__}-{p.__name__}" for i, p in PROVIDERS],
)
def test_providerProvidesTheInterface(
    interface: type[Interface], provider: type
) -> None:
    assert interface.implementedBy(provider)
    assert verifyObject(interface, provider.__new__(provider))
