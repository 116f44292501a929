"""
Tests for L{gateway.connection.quicflows}: finding a datagram's flow by
address and connection ID, and the deadline queues.  Pure: no sockets,
times given by hand.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.connection.quicflows import (
    MAX_ADDRESSES,
    MAX_CIDS,
    Flow,
    FlowState,
    FlowTable,
)
from gateway.rules.accesslog import ConnectionRecord
from gateway.wire.quic import QUIC_V1

CLIENT = ("198.51.100.7", 40000)


def longHeader(dcid: bytes, scid: bytes = b"", first: int = 0xC0) -> bytes:
    """A v1 long header (an Initial by default), just enough to read."""
    return (
        bytes([first])
        + QUIC_V1.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + b"\x00\x01\x00"  # no token, a one-byte length, that byte
    )


def shortHeader(dcid: bytes) -> bytes:
    return b"\x41" + dcid + os.urandom(30)


def makeFlow(address: tuple[str, int] = CLIENT) -> Flow:
    record = ConnectionRecord(listener="q", client="-", accepted=0, started=0)
    return Flow(None, record, address, QUIC_V1)


def test_aFlowIsFoundByItsAddress() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    assert table.find(CLIENT, b"anything") is flow
    assert table.find(("198.51.100.7", 40001), b"anything") is None
    assert len(table) == 1


def test_aLongHeaderIsFoundByItsDestinationConnectionID() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    table.addCID(flow, b"original")
    other = ("203.0.113.1", 5000)
    assert table.find(other, longHeader(b"original")) is flow
    assert table.find(other, longHeader(b"unknown!")) is None


def test_aShortHeaderIsFoundByAServerChosenIDOfAKnownLength() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    # The client's IDs are not what its short headers carry.
    table.addCID(flow, b"clientid")
    assert table.find(("203.0.113.1", 1), shortHeader(b"clientid")) is None
    table.serverHeaders(flow, longHeader(b"clientid", b"server-chosen"))
    assert table.find(("203.0.113.1", 1), shortHeader(b"server-chosen")) is flow
    # Several lengths in use: each is tried.
    second = makeFlow(("198.51.100.8", 1))
    table.add(second, 0, 5)
    table.serverHeaders(second, longHeader(b"x", b"four"))
    assert table.find(("203.0.113.1", 1), shortHeader(b"four")) is second
    assert table.find(("203.0.113.1", 1), shortHeader(b"server-chosen")) is flow


def test_aConnectionIDStaysWithTheFlowThatHadItFirst() -> None:
    table = FlowTable()
    victim, spoofer = makeFlow(), makeFlow(("203.0.113.66", 1))
    table.add(victim, 0, 5)
    table.add(spoofer, 0, 5)
    table.addCID(victim, b"victimid")
    table.addCID(spoofer, b"victimid")
    assert table.byCID[b"victimid"] is victim
    assert spoofer.cids == set()


def test_emptyIDsAreNotKeysAndIDsAreBoundedPerFlow() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    table.addCID(flow, b"")
    for n in range(MAX_CIDS + 5):
        table.addCID(flow, n.to_bytes(8, "big"))
    assert b"" not in table.byCID
    assert len(flow.cids) == MAX_CIDS


def test_addressesAreBoundedPerFlow() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    for port in range(1, MAX_ADDRESSES + 3):
        table.rebind(flow, ("198.51.100.7", port))
    assert len(flow.addresses) == MAX_ADDRESSES
    assert flow.address == ("198.51.100.7", MAX_ADDRESSES + 2)
    assert table.find(CLIENT, b"x") is None
    assert len([f for f in table.byAddress.values() if f is flow]) == MAX_ADDRESSES


def test_anAddressOfAnotherFlowStaysItsOwn() -> None:
    table = FlowTable()
    first, second = makeFlow(), makeFlow(("198.51.100.8", 1))
    table.add(first, 0, 5)
    table.add(second, 0, 5)
    table.addAddress(second, CLIENT)
    assert table.find(CLIENT, b"x") is first


def test_aPendingDeadlineIsNotRenewedByDatagrams() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    table.touch(flow, 4)
    assert table.expired(4.9) == []
    assert table.expired(5) == [flow]
    # Taken out of the queues, still in the table until removed.
    assert table.expired(100) == []
    assert flow in table


def test_aRelayingFlowIsIdleFromItsLastDatagram() -> None:
    table = FlowTable()
    flow, other = makeFlow(), makeFlow(("198.51.100.8", 1))
    for f in (flow, other):
        table.add(f, 0, 5)
        f.state = FlowState.RELAYING
        table.schedule(f, 1, 30)
    table.touch(flow, 20)
    assert table.expired(31) == [other]
    assert table.expired(49.9) == []
    assert table.expired(50) == [flow]


def test_deadlinesOfSeveralTimeoutsExpireEachInTime() -> None:
    table = FlowTable()
    pending, relaying = makeFlow(), makeFlow(("198.51.100.8", 1))
    table.add(relaying, 0, 30)
    relaying.state = FlowState.RELAYING
    table.add(pending, 1, 5)
    assert table.expired(6) == [pending]
    assert table.expired(30) == [relaying]


def test_removeForgetsEverything() -> None:
    table = FlowTable()
    flow = makeFlow()
    table.add(flow, 0, 5)
    table.addCID(flow, b"original")
    table.serverHeaders(flow, longHeader(b"original", b"serverid"))
    table.rebind(flow, ("198.51.100.7", 2))
    table.remove(flow)
    assert (len(table), table.byAddress, table.byCID) == (0, {}, {})
    assert table.find(("1.1.1.1", 1), shortHeader(b"serverid")) is None
    assert table.expired(1000) == []


def test_bufferIsBounded() -> None:
    flow = makeFlow()
    assert flow.buffer(b"x" * 1200, 2000)
    assert not flow.buffer(b"x" * 1200, 2000)
    assert (len(flow.buffered), flow.bufferedBytes) == (1, 1200)
    flow.dropBuffer()
    assert (flow.buffered, flow.bufferedBytes) == ([], 0)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "cid", "server", "rebind", "remove", "expire"]),
            st.integers(0, 5),
            st.binary(max_size=20),
        ),
        max_size=60,
    )
)
def test_theIndexesOnlyEverPointAtFlowsInTheTable(
    operations: list[tuple[str, int, bytes]],
) -> None:
    """
    Whatever happens to flows, every address and ID in the indexes leads to
    a flow of the table, and a removed flow leaves nothing behind.
    """
    table = FlowTable()
    flows = [makeFlow(("198.51.100.1", n)) for n in range(6)]
    now = 0.0
    for operation, index, data in operations:
        flow = flows[index]
        now += 1
        if operation == "add" and flow not in table:
            table.add(flow, now, 3)
        elif flow not in table:
            continue
        elif operation == "cid":
            table.addCID(flow, data)
        elif operation == "server":
            table.serverHeaders(flow, longHeader(b"d", data))
        elif operation == "rebind":
            table.rebind(flow, ("203.0.113.1", len(data)))
        elif operation == "remove":
            table.remove(flow)
        else:
            for expired in table.expired(now):
                table.remove(expired)
        for found in (*table.byAddress.values(), *table.byCID.values()):
            assert found in table
    for flow in flows:
        table.remove(flow)
    assert (table.byAddress, table.byCID, len(table)) == ({}, {}, 0)
    assert table.find(("1.1.1.1", 1), shortHeader(b"x" * 20)) is None
