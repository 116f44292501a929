"""
QUIC passthrough at run time: a UDP endpoint, its flows, and one connected
UDP socket per flow to the chosen server.

A L{QuicEndpoint} is the C{DatagramProtocol} of one C{udp:} endpoint.  A
client datagram that belongs to a flow (L{gateway.connection.quicflows})
is relayed unchanged to its server; one that starts a flow is a QUIC
Initial, whose ClientHello the sans-IO reader (L{gateway.wire.quic})
gathers from as many Initial packets as it takes, before the flow is
routed by the same L{gateway.rules.decision.decide} as a TCP connection;
anything else is dropped without a reply (a reply to a spoofed source
would make the gateway an amplifier) and counted by reason.  The one
exception is the Initial of a version the gateway cannot read, at least
1,200 bytes long as every client Initial must be: it gets a Version
Negotiation packet listing v1 and v2, no larger than what it answers.

Each flow gets its own UDP socket, connected to its server, so the
server's datagrams arrive on a socket that already says which flow they
are for; an ICMP unreachable on it (C{connectionRefused}) or silence for
C{connect_timeout} is a failed connect, reported to the pool as for TCP,
and the client's datagrams so far are replayed to the next server.

A L{QuicListener} is one listener of one configuration generation.  The
endpoint serves new flows with the current one (a reload swaps it, as a
TCP port's factory is swapped) while each flow keeps the listener it was
accepted by: established flows finish on their configuration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.config import ListenerConfig
from gateway.connection.quicflows import (
    MAX_REFUSALS,
    Address,
    Flow,
    FlowState,
    FlowTable,
)
from gateway.connection.session import UpstreamRuntime
from gateway.connection.upstream import isAddress
from gateway.core.ratelimit import RateLimiter
from gateway.core.vocabulary import Action, Status
from gateway.rules.accesslog import AccessLog, ConnectionRecord
from gateway.rules.decision import ACCEPTED, Policy, Reject, Relay, decide
from gateway.wire.clienthello import NEED_MORE, ClientHello
from gateway.wire.quic import (
    MIN_INITIAL_DATAGRAM,
    QUIC_V1,
    QUIC_V2,
    InitialReader,
    InitialTooSmall,
    PacketType,
    QuicError,
    UnsupportedVersion,
    connectionRefused,
    isLongHeader,
    parseLongHeader,
    versionNegotiation,
)

#: The largest datagram read: QUIC's are at most the path MTU (1,500
#: bytes on Ethernet, more on loopback); Twisted's own default.
MAX_DATAGRAM = 8192

#: Seconds between sweeps of expired flows: how late a deadline may fire.
SWEEP_INTERVAL = 0.25

VERSION_NAMES = {QUIC_V1: "v1", QUIC_V2: "v2"}


def _formatAddress(address: Address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class QuicListener:
    """
    One listener's QUIC flows, of one configuration generation.

    @ivar active: the flows it accepted and has not logged yet (the drain
        waits for them).
    @ivar dropped: counts a dropped datagram, by listener and reason
        (C{tlsgateway_quic_dropped_datagrams_total}).
    """

    _log = Logger()

    def __init__(
        self,
        config: ListenerConfig,
        upstreams: Mapping[str, UpstreamRuntime],
        reactor: IReactorUDP,
        clock: IReactorTime,
        accessLog: AccessLog,
        idle: Callable[[], None] = lambda: None,
        dropped: Callable[[str, str], None] = lambda listener, reason: None,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.reactor = reactor
        self.clock = clock
        self.accessLog = accessLog
        self.dropped = dropped
        self._idle = idle
        self.policy = Policy.fromConfig(config)
        self.active: set[Flow] = set()
        self._perClient: Counter[str] = Counter()
        self._rate = (
            RateLimiter(config.max_connection_rate, clock.seconds)
            if config.max_connection_rate is not None
            else None
        )

    def admit(self, clientKey: str) -> Reject | None:
        """
        Refuse a new flow that C{quic_max_flows}, the address filters or
        the per-client limits exclude, before its Initial is decrypted.
        """
        limit = self.config.quic_max_flows
        if len(self.active) >= limit:
            return Reject(Status.LIMITED, f"quic_max_flows: {limit} flows already open")
        rate = self._rate
        verdict = decide(
            self.policy,
            ACCEPTED,
            clientKey,
            0,
            self._perClient.get(clientKey, 0),
            rate is None
            or not self.policy.permitted(clientKey)
            or rate.take(clientKey),
        )
        return verdict if isinstance(verdict, Reject) else None

    def started(self, flow: Flow, clientKey: str) -> None:
        self.active.add(flow)
        self._perClient[clientKey] += 1
        self.accessLog.accepted(self.config.name)

    def route(self, flow: Flow, hello: ClientHello) -> Relay | Reject:
        """
        The verdict on a complete ClientHello: as for TCP, with C{deny_ja4}.
        """
        record = flow.record
        record.hello = hello
        record.sni = hello.serverName
        record.alpn = hello.alpn
        fingerprint = record.ja4 if self.policy.denyJA4 else None
        verdict = decide(self.policy, hello, "", fingerprint=fingerprint)
        if isinstance(verdict, Relay) and verdict.action is not Action.PASSTHROUGH:
            # The configuration check refuses this; never terminate QUIC.
            return Reject(Status.NO_ROUTE, "QUIC is passed through only")
        if isinstance(verdict, Reject | Relay):
            return verdict
        return Reject(Status.NO_ROUTE, "ACME tls-alpn-01 is not answered over QUIC")

    def ended(self, flow: Flow, clientKey: str) -> None:
        """
        A flow is over: log it.
        """
        if flow not in self.active:
            return
        self.active.discard(flow)
        self._perClient[clientKey] -= 1
        if not self._perClient[clientKey]:
            del self._perClient[clientKey]
        self.write(flow.record)
        if not self.active:
            self._idle()

    def write(self, record: ConnectionRecord) -> None:
        try:
            self.accessLog.write(record)
        except OSError as e:
            self._log.error(
                "listener {listener}: cannot write the access log: {error}",
                listener=self.config.name,
                error=e,
            )


class UpstreamSocket(DatagramProtocol):
    """
    A flow's connected UDP socket to its server.
    """

    noisy = False

    def __init__(self, endpoint: QuicEndpoint, flow: Flow) -> None:
        self._endpoint = endpoint
        self._flow = flow

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self._endpoint.fromServer(self._flow, datagram)

    def connectionRefused(self) -> None:
        self._endpoint.serverRefused(self._flow)


class QuicEndpoint(DatagramProtocol):
    """
    One C{udp:} endpoint: finds each datagram's flow, starts flows from
    Initials, relays, and forgets flows at their deadlines.

    @ivar listener: the current generation's listener: new flows are its.
    @ivar accepting: off during a drain: established flows go on, no new
        flow starts.
    """

    noisy = False
    _log = Logger()

    def __init__(self, listener: QuicListener, clock: IReactorTime) -> None:
        self.listener = listener
        self.clock = clock
        self.table = FlowTable()
        self.accepting = True
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    # lifetime

    def startProtocol(self) -> None:
        if not self._sweep.running:
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def stopProtocol(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        for flow in self.table:
            self._end(flow, Status.SHUTDOWN, "the UDP endpoint closed")

    def shutdown(self) -> None:
        """
        The drain is over: end every flow (C{shutdown}).
        """
        for flow in self.table:
            self._end(flow, Status.SHUTDOWN, "drain_timeout: flow cut at shutdown")

    def sweep(self) -> None:
        """
        End the flows whose deadline passed, each as its state says.
        """
        now = self.clock.seconds()
        for flow in self.table.expired(now):
            state = flow.state
            owner: QuicListener = flow.owner
            if state is FlowState.PENDING:
                self._end(
                    flow,
                    Status.PREREAD_TIMEOUT,
                    f"no complete ClientHello in {owner.config.preread_timeout:g}s",
                )
            elif state is FlowState.CONNECTING:
                self._failover(
                    flow,
                    f"no answer from {flow.record.upstream} in"
                    f" {owner.config.connect_timeout:g}s",
                )
            elif state is FlowState.RELAYING:
                self._end(flow, Status.OK, None)
            else:
                self.table.remove(flow)

    # client side

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        address: Address = (addr[0], addr[1])
        flow = self.table.find(address, datagram)
        if flow is None:
            self._start(datagram, address)
            return
        if address != flow.address and not self._rebind(flow, address, datagram):
            return
        self._fromClient(flow, datagram)

    def _rebind(self, flow: Flow, address: Address, datagram: bytes) -> bool:
        """
        A datagram of C{flow} from another address: the client migrated or
        a NAT rebound it, and the server's datagrams go there from now on.
        Only a short header may do that: a client does not migrate before
        its handshake is confirmed (RFC 9000 section 9), so a long header
        from elsewhere is a replayed or spoofed Initial, dropped rather
        than allowed to steal the flow.
        """
        if address in flow.addresses:
            flow.address = address
            return True
        if isLongHeader(datagram):
            self._drop("address_changed")
            return False
        self.table.rebind(flow, address)
        return True

    def _drop(self, reason: str) -> None:
        self.listener.dropped(self.listener.config.name, reason)

    def _start(self, datagram: bytes, address: Address) -> None:
        """
        A datagram of no flow: an Initial starts one; anything else is
        dropped.
        """
        if not self.accepting:
            self._drop("shutdown")
            return
        if not datagram or not isLongHeader(datagram):
            self._drop(
                "unknown_flow" if datagram[:1] and datagram[0] & 0x40 else "not_quic"
            )
            return
        try:
            header = parseLongHeader(datagram)
        except UnsupportedVersion as e:
            if len(datagram) < MIN_INITIAL_DATAGRAM:
                self._drop(e.reason)
                return
            transport = self.transport
            assert transport is not None
            transport.write(versionNegotiation(e.dcid, e.scid), address)
            return
        except QuicError as e:
            self._drop(e.reason)
            return
        if header.packetType is not PacketType.INITIAL:
            self._drop("unknown_flow")
            return
        if len(datagram) < MIN_INITIAL_DATAGRAM:
            self._drop(InitialTooSmall.reason)
            return
        listener = self.listener
        config = listener.config
        reader = InitialReader(config.preread_buffer_size)
        try:
            result = reader.feed(datagram)
        except QuicError as e:
            self._drop(e.reason)
            return
        now = self.clock.seconds()
        record = ConnectionRecord(
            listener=config.name,
            client=_formatAddress(address),
            accepted=now,
            started=now,
            transport="udp",
        )
        flow = Flow(
            listener,
            record,
            address,
            header.version,
            reader=reader,
            initialCIDs=(header.dcid, header.scid),
        )
        flow.packetsIn, record.bytesIn = 1, len(datagram)
        flow.buffer(datagram, config.preread_buffer_size)
        refused = listener.admit(address[0])
        listener.started(flow, address[0])
        if refused is not None:
            if len(self.table) < config.quic_max_flows:
                self.table.add(flow, now, config.preread_timeout)
            self._refuse(flow, refused.status, refused.reason)
            return
        self.table.add(flow, now, config.preread_timeout)
        self.table.addCID(flow, header.dcid)
        self.table.addCID(flow, header.scid)
        if result is not NEED_MORE:
            self._route(flow, result)

    def _fromClient(self, flow: Flow, datagram: bytes) -> None:
        state = flow.state
        if state is FlowState.REFUSED:
            self._drop("refused")
            if len(datagram) >= MIN_INITIAL_DATAGRAM and isLongHeader(datagram):
                self._sayRefused(flow)  # the first answer may have been lost
            return
        flow.packetsIn += 1
        flow.record.bytesIn += len(datagram)
        owner: QuicListener = flow.owner
        if state is FlowState.RELAYING:
            self.table.touch(flow, self.clock.seconds())
            flow.port.write(datagram)
            return
        limit = owner.config.preread_buffer_size
        if state is FlowState.CONNECTING:
            flow.buffer(datagram, limit)  # replayed to the next server
            flow.port.write(datagram)
            return
        result: ClientHello | None = None
        if isLongHeader(datagram):
            try:
                initial = parseLongHeader(datagram).packetType is PacketType.INITIAL
                if initial:
                    fed = flow.reader.feed(datagram)
                    result = None if fed is NEED_MORE else fed
            except QuicError as e:
                if flow.reader.error is not None:  # final: the hello is bad
                    self._end(flow, Status.BAD_CLIENT_HELLO, f"{e.reason}: {e}")
                    return
                # About this datagram only (forged, corrupted): the flow
                # goes on without it.
                flow.packetsIn -= 1
                flow.record.bytesIn -= len(datagram)
                self._drop(e.reason)
                return
        # Anything else (0-RTT) is kept, in order, for the server.
        if not flow.buffer(datagram, limit):
            self._end(
                flow,
                Status.BAD_CLIENT_HELLO,
                f"more than preread_buffer_size ({limit} bytes) before a"
                " complete ClientHello",
            )
            return
        if result is not None:
            self._route(flow, result)

    def _route(self, flow: Flow, hello: ClientHello) -> None:
        owner: QuicListener = flow.owner
        flow.reader = None
        verdict = owner.route(flow, hello)
        if isinstance(verdict, Reject):
            if verdict.action is not None:
                flow.record.action = verdict.action
            self._refuse(flow, verdict.status, verdict.reason)
            return
        flow.record.action = Action.PASSTHROUGH
        flow.runtime = owner.upstreams[verdict.upstream]
        self._connect(flow)

    def _refuse(self, flow: Flow, status: Status, reason: str) -> None:
        """
        Log a refused flow now, and keep it in the table (if it is) until
        its pre-read deadline, so the client's retransmitted Initials are
        dropped rather than logged again.
        """
        flow.record.fail(status, reason)
        flow.state = FlowState.REFUSED
        flow.reader = None
        flow.dropBuffer()
        self._sayRefused(flow)
        self._finish(flow)

    def _sayRefused(self, flow: Flow) -> None:
        """
        Close the client's connection attempt as a refused TCP connection
        is closed: a server Initial with C{CONNECTION_CLOSE}
        (C{CONNECTION_REFUSED}), so that the client gives up at once
        rather than when its handshake times out.  Only while no server
        has answered it (its Initial keys are the client's then), and at
        most L{MAX_REFUSALS} times.  The first one is counted in the
        flow's line (C{bytes_out}, C{packets_out}); those answering
        retransmissions come after the line and are not.
        """
        transport = self.transport
        if transport is None or flow.packetsOut or flow.refusals >= MAX_REFUSALS:
            return
        dcid, scid = flow.initialCIDs
        datagram = connectionRefused(dcid, scid, flow.version)
        flow.refusals += 1
        flow.record.bytesOut += len(datagram)
        transport.write(datagram, flow.address)

    # server side

    def _connect(self, flow: Flow) -> None:
        """
        Pick a server for C{flow} and send it the client's datagrams so
        far; a server that cannot be reached from here counts as failed.
        """
        owner: QuicListener = flow.owner
        runtime: UpstreamRuntime = flow.runtime
        chooser = runtime.chooser
        while len(flow.tried) < runtime.tries:
            server = chooser.pick(flow.address[0], flow.tried)
            if server is None:
                break
            flow.tried = flow.tried | {server}
            host, port = server.host, server.port
            if host is None or port is None or not isAddress(host):
                # A unix: server, or a name no resolution has replaced.
                chooser.connectFailed(server)
                continue
            socket = UpstreamSocket(self, flow)
            try:
                listening: Any = owner.reactor.listenUDP(
                    0,
                    socket,
                    "::" if ":" in host else "0.0.0.0",  # noqa: S104 - an ephemeral client port
                    MAX_DATAGRAM,
                )
            except Exception as e:  # noqa: BLE001 - CannotListenError: EMFILE...
                # A local shortage (descriptors, ports), not the server's fault.
                chooser.released(server)
                self._end(
                    flow,
                    Status.UPSTREAM_UNAVAILABLE,
                    f"local resource error: cannot open a UDP socket: {e}",
                )
                return
            try:
                listening.connect(host, port)
            except Exception as e:  # noqa: BLE001 - logged; the next server is tried
                listening.stopListening()
                self._log.warn(
                    "listener {listener}: cannot reach {server} over UDP: {error}",
                    listener=owner.config.name,
                    server=server.address,
                    error=e,
                )
                chooser.connectFailed(server)
                continue
            flow.upstream, flow.server, flow.port = socket, server, listening
            flow.record.upstream = server.address
            flow.state = FlowState.CONNECTING
            self.table.schedule(
                flow, self.clock.seconds(), owner.config.connect_timeout
            )
            for datagram in flow.buffered:
                listening.write(datagram)
            return
        self._end(
            flow,
            Status.UPSTREAM_UNAVAILABLE,
            f"upstream {runtime.name}: no server answered over UDP"
            f" ({len(flow.tried)} tried)",
        )

    def fromServer(self, flow: Flow, datagram: bytes) -> None:
        if flow not in self.table or flow.state not in (
            FlowState.CONNECTING,
            FlowState.RELAYING,
        ):
            return
        now = self.clock.seconds()
        if flow.state is FlowState.CONNECTING:
            flow.runtime.chooser.connectSucceeded(flow.server)
            flow.state = FlowState.RELAYING
            flow.dropBuffer()
            owner: QuicListener = flow.owner
            self.table.schedule(flow, now, owner.config.quic_idle_timeout)
        else:
            self.table.touch(flow, now)
        if datagram[:1] and datagram[0] & 0x80:
            self.table.serverHeaders(flow, datagram)
        flow.packetsOut += 1
        flow.record.bytesOut += len(datagram)
        transport = self.transport
        if transport is not None:
            transport.write(datagram, flow.address)

    def serverRefused(self, flow: Flow) -> None:
        """
        ICMP unreachable on a flow's socket: while connecting, the server
        failed; later, the flow goes on (the server may be restarting,
        and the client decides when its connection is dead).
        """
        if flow in self.table and flow.state is FlowState.CONNECTING:
            self._failover(flow, f"{flow.record.upstream} refused (ICMP unreachable)")

    def _failover(self, flow: Flow, reason: str) -> None:
        owner: QuicListener = flow.owner
        self._log.info(
            "listener {listener}: {reason}", listener=owner.config.name, reason=reason
        )
        flow.runtime.chooser.connectFailed(flow.server)
        self._closeSocket(flow)
        flow.server = None
        self._connect(flow)

    # the end

    def _closeSocket(self, flow: Flow) -> None:
        port = getattr(flow, "port", None)
        flow.upstream = flow.port = None
        if port is not None:
            port.stopListening()

    def _end(self, flow: Flow, status: Status, reason: str | None) -> None:
        """
        Forget C{flow} and log it (once) with C{status}.
        """
        self.table.remove(flow)
        self._closeSocket(flow)
        if flow.server is not None:
            flow.runtime.chooser.released(flow.server)
            flow.server = None
        if status is not Status.OK:
            flow.record.fail(status, reason)
        if flow.state is not FlowState.REFUSED:
            if status is Status.UPSTREAM_UNAVAILABLE:
                self._sayRefused(flow)
            flow.state = FlowState.REFUSED
            self._finish(flow)

    def _finish(self, flow: Flow) -> None:
        owner: QuicListener = flow.owner
        record = flow.record
        record.ended = self.clock.seconds()
        record.extra.update(
            {
                "packets_in": flow.packetsIn,
                "packets_out": flow.packetsOut + flow.refusals,
                "quic_version": VERSION_NAMES.get(flow.version),
            }
        )
        owner.ended(flow, flow.addresses[0][0] if flow.addresses else flow.address[0])
