"""
The one count of a connection's client bytes.
"""

from hypothesis import given
from hypothesis import strategies as st

from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes


def _record() -> ConnectionRecord:
    return ConnectionRecord("l", "127.0.0.1:9", 0.0, 0.0)


@given(
    received=st.lists(st.integers(min_value=0, max_value=2**20), max_size=20),
    sent=st.lists(st.integers(min_value=0, max_value=2**20), max_size=20),
)
def test_countsGoIntoTheRecord(received: list[int], sent: list[int]) -> None:
    record = _record()
    counted = ClientBytes(record)
    for count in received:
        counted.received(count)
    for count in sent:
        counted.sent(count)
    assert (record.bytesIn, record.bytesOut) == (sum(received), sum(sent))


def test_writesAreCountedHereOnlyOnTheClientsSocket() -> None:
    """
    A writer to the client's socket is handed the count; a writer to a
    layer over it (TLS) is not, since the layer counts what it writes.
    """
    counted = ClientBytes(_record())
    socket, layer = object(), object()
    assert counted.forWritesTo(socket) is None  # not connected yet
    counted.socket = socket
    assert counted.forWritesTo(socket) is counted
    assert counted.forWritesTo(layer) is None
