"""
The QUIC flow table: which flow a datagram belongs to, and when a flow
is forgotten.

UDP has no connection, so the gateway keeps one: a L{Flow} is one QUIC
connection relayed through it.  A datagram is matched to a flow by the
client's address first (the common case, one dict lookup) and then by
connection ID, because an address can change under a live connection
(NAT rebinding, a client that moves to a new local port or network:
RFC 9000 section 9) while its packets keep carrying a connection ID the
gateway saw in the handshake's long headers:

  - the client's first Destination Connection ID and its Source
    Connection ID (its Initial packets);
  - every Source Connection ID the server sent in a long header: the
    Retry's (the client's next Initial carries it), the Initial and
    Handshake packets' (the client's short headers carry it).

A short header does not say how long its connection ID is: only the
server that chose it knows.  The table remembers the length of every
server-chosen ID, so an unknown short header is tried at each length in
use (in practice one or two).

Forgetting is done by deadlines in a few queues, one per timeout value,
each in the order flows were last scheduled: a pending flow has
C{preread_timeout} from its first Initial (not renewed by later ones), a
connecting flow C{connect_timeout} for the server's first answer, a
relaying flow C{quic_idle_timeout} after its last datagram either way.  A
sweep pops expired flows from the front of each queue: its cost is what
expires, not how many flows there are, and a datagram costs one move to
the end of its queue.

Pure: no Twisted, no clock of its own; the endpoint
(L{gateway.connection.datagram}) gives the times.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

import attrs

from gateway.rules.accesslog import ConnectionRecord
from gateway.wire.quic import QuicError, isLongHeader, parseLongHeader, shortHeaderDCID

#: A client's address as Twisted's C{datagramReceived} gives it.
Address = tuple[str, int]

#: Addresses remembered per flow: a migrating client may still send a few
#: late packets from its old one; more than this is a spoofer's doing.
MAX_ADDRESSES = 4

#: Connection IDs remembered per flow: what a handshake shows is a few.
MAX_CIDS = 8
#: Refusals sent per refused flow: one, then one per retransmitted Initial
#: while the flow is remembered, in case the first was lost.
MAX_REFUSALS = 3


class FlowState(enum.Enum):
    """
    Where a flow is: C{PENDING} gathers the ClientHello from the client's
    Initial packets; C{CONNECTING} waits for the chosen server's first
    datagram; C{RELAYING} relays both ways; C{REFUSED} keeps a refused
    client's retransmissions from being logged again until it expires.
    """

    PENDING = "pending"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    REFUSED = "refused"


@attrs.define(eq=False, slots=True)
class Flow:
    """
    One QUIC connection through the gateway.

    @ivar owner: the listener of the configuration generation that accepted
        it (opaque here): a reload leaves established flows on theirs.
    @ivar address: where datagrams for the client go: the address it last
        sent from.
    @ivar addresses: every address the table knows it by.
    @ivar cids: the connection IDs the table knows it by.
    @ivar version: the QUIC version of the client's first Initial.
    @ivar initialCIDs: that Initial's Destination and Source Connection
        IDs: what a refusal is encrypted with and sent to.
    @ivar refusals: the refusals sent to the client (at most
        L{MAX_REFUSALS}).
    @ivar reader: the Initial reader, while C{PENDING}.
    @ivar buffered: the client's datagrams before the server's first
        answer, in order: sent to the chosen server, and again to the next
        one if it does not answer.  At most C{bufferLimit} bytes.
    @ivar since: when its current deadline started.
    @ivar timeout: seconds from C{since} to its deadline.
    @ivar upstream: the protocol of its socket to its server, and
        C{port} that socket (opaque here).
    @ivar runtime: the upstream it was routed to (opaque here).
    @ivar server: the server chosen (opaque here).
    @ivar tried: the servers tried for it, failed ones included.
    """

    owner: Any
    record: ConnectionRecord
    address: Address
    version: int
    state: FlowState = FlowState.PENDING
    addresses: list[Address] = attrs.Factory(list)
    cids: set[bytes] = attrs.Factory(set)
    reader: Any = None
    buffered: list[bytes] = attrs.Factory(list)
    bufferedBytes: int = 0
    since: float = 0.0
    timeout: float = 0.0
    upstream: Any = None
    port: Any = None
    runtime: Any = None
    server: Any = None
    tried: frozenset[Any] = frozenset()
    packetsIn: int = 0
    packetsOut: int = 0
    initialCIDs: tuple[bytes, bytes] = (b"", b"")
    refusals: int = 0

    def buffer(self, datagram: bytes, limit: int) -> bool:
        """
        Keep a client datagram for the server, if it fits under C{limit}.

        @return: whether it was kept.
        """
        if self.bufferedBytes + len(datagram) > limit:
            return False
        self.buffered.append(datagram)
        self.bufferedBytes += len(datagram)
        return True

    def dropBuffer(self) -> None:
        self.buffered = []
        self.bufferedBytes = 0

    @property
    def expires(self) -> float:
        return self.since + self.timeout


class FlowTable:
    """
    The flows of one UDP endpoint, found by address and connection ID.

    @ivar _cidLengths: how many flows' server-chosen connection IDs have
        each length: the lengths an unknown short header is tried at.
    @ivar _queues: by timeout, the flows with that timeout in deadline
        order.
    """

    def __init__(self) -> None:
        self.byAddress: dict[Address, Flow] = {}
        self.byCID: dict[bytes, Flow] = {}
        self._serverCIDs: dict[Flow, set[int]] = {}
        self._cidLengths: Counter[int] = Counter()
        self._queues: dict[float, OrderedDict[Flow, None]] = {}
        self._flows: set[Flow] = set()

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows))

    def __contains__(self, flow: object) -> bool:
        return flow in self._flows

    def add(self, flow: Flow, now: float, timeout: float) -> None:
        """
        Start knowing C{flow} by its address, with a first deadline.
        """
        self._flows.add(flow)
        self.addAddress(flow, flow.address)
        self.schedule(flow, now, timeout)

    def find(self, address: Address, datagram: bytes) -> Flow | None:
        """
        The flow a client datagram belongs to: by address, else by the
        connection ID its header carries.  A flow found by connection ID
        from a new address is not rebound here: see L{rebind}.
        """
        flow = self.byAddress.get(address)
        if flow is not None or not datagram:
            return flow
        if isLongHeader(datagram):
            try:
                header = parseLongHeader(datagram)
            except QuicError:
                return None
            return self.byCID.get(header.dcid) if header.dcid else None
        for length in self._cidLengths:
            try:
                cid = shortHeaderDCID(datagram, length)
            except QuicError:
                continue
            flow = self.byCID.get(cid)
            if flow is not None:
                return flow
        return None

    def addAddress(self, flow: Flow, address: Address) -> None:
        """
        Know C{flow} by one more address (the oldest is forgotten past
        L{MAX_ADDRESSES}); an address another flow has stays that flow's.
        """
        if address in flow.addresses or self.byAddress.get(address, flow) is not flow:
            return
        flow.addresses.append(address)
        self.byAddress[address] = flow
        if len(flow.addresses) > MAX_ADDRESSES:
            old = flow.addresses.pop(0)
            if self.byAddress.get(old) is flow:
                del self.byAddress[old]

    def rebind(self, flow: Flow, address: Address) -> None:
        """
        The client of C{flow} now sends from C{address}: answer it there.
        """
        self.addAddress(flow, address)
        flow.address = address

    def addCID(self, flow: Flow, cid: bytes, server: bool = False) -> None:
        """
        Know C{flow} by a connection ID seen in a long header; one that
        another flow already has stays that flow's (first seen wins, so a
        spoofed Initial cannot take over a live flow's ID).

        @param server: chosen by the server: its length is one a short
            header from the client may carry.
        """
        if not cid or cid in flow.cids or len(flow.cids) >= MAX_CIDS:
            return
        if self.byCID.setdefault(cid, flow) is not flow:
            return
        flow.cids.add(cid)
        if server:
            lengths = self._serverCIDs.setdefault(flow, set())
            if len(cid) not in lengths:
                lengths.add(len(cid))
                self._cidLengths[len(cid)] += 1

    def serverHeaders(self, flow: Flow, datagram: bytes) -> None:
        """
        Learn the connection IDs a server's long-header packet chose.  Only
        the first packet of a datagram is read: the server's Initial (or
        Retry) comes first, and a Handshake coalesced after it carries the
        same Source Connection ID.
        """
        if not datagram or not isLongHeader(datagram):
            return
        try:
            header = parseLongHeader(datagram)
        except QuicError:
            return
        self.addCID(flow, header.scid, server=True)

    def schedule(self, flow: Flow, now: float, timeout: float) -> None:
        """
        Give C{flow} a new deadline, C{timeout} from C{now}.
        """
        self._unqueue(flow)
        flow.since, flow.timeout = now, timeout
        self._queues.setdefault(timeout, OrderedDict())[flow] = None

    def touch(self, flow: Flow, now: float) -> None:
        """
        A datagram of a relaying flow went through: its idle deadline
        starts again.  (Pending and connecting flows keep theirs.)
        """
        if flow.state is FlowState.RELAYING:
            queue = self._queues[flow.timeout]
            flow.since = now
            queue.move_to_end(flow)

    def expired(self, now: float) -> list[Flow]:
        """
        The flows whose deadline has passed, taken out of the queues (not
        out of the table: see L{remove}); the caller decides what each
        deadline means from the flow's state.
        """
        due: list[Flow] = []
        for timeout, queue in list(self._queues.items()):
            while queue:
                flow = next(iter(queue))
                if flow.since + timeout > now:
                    break
                queue.popitem(last=False)
                due.append(flow)
            if not queue:
                del self._queues[timeout]
        return due

    def remove(self, flow: Flow) -> None:
        """
        Forget C{flow}: its addresses, IDs and deadline.
        """
        self._flows.discard(flow)
        self._unqueue(flow)
        for address in flow.addresses:
            if self.byAddress.get(address) is flow:
                del self.byAddress[address]
        for cid in flow.cids:
            if self.byCID.get(cid) is flow:
                del self.byCID[cid]
        for length in self._serverCIDs.pop(flow, ()):
            self._cidLengths[length] -= 1
            if not self._cidLengths[length]:
                del self._cidLengths[length]

    def _unqueue(self, flow: Flow) -> None:
        queue = self._queues.get(flow.timeout)
        if queue is not None and queue.pop(flow, 0) is None and not queue:
            del self._queues[flow.timeout]
