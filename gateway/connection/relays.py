"""
Which relay serves a connection: the one place that chooses.

Four providers of L{IRelay} move a connection's bytes:

  - L{SpliceRelay}: the kernel moves them between two TCP sockets
    (C{splice(2)}, through the splice hub); Linux, passthrough only;
  - L{TerminatedRelay}: a terminated client's records go between its
    socket and its TLS layer in the hub, the plaintext straight on to
    the upstream (TLS or not), without the protocols in between;
  - L{CopyRelay}: bytes pass through Python, the hub reads both TCP
    sockets in place of the reactor and gives them to their protocols
    (a passthrough that cannot be spliced);
  - L{PortableRelay}: Twisted's transports read and write; any reactor,
    any transport, and the only one with the fast paths off
    (L{gateway.fast.portable}).

L{chooseRelay} picks one from the listener's C{relay} setting, the
platform and the two transports; L{startRelay} starts it, and says which
and why in the debug log.  Nothing else decides.
"""

from __future__ import annotations

import enum
import functools
import socket
from collections.abc import Callable, Sequence

import attrs
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.logger import Logger

from gateway.connection import spliceflow
from gateway.connection.hubclient import HubClient
from gateway.connection.relay import CopyRelay, IRelay, PortableRelay, Reader
from gateway.connection.splicerelay import SpliceRelay
from gateway.connection.terminatedrelay import TerminatedRelay
from gateway.core import verbosity
from gateway.core.transports import RelayTransport
from gateway.fast.hub import HUBS, Hub, hubFor, hubReaders
from gateway.fast.internals import hasUnsentBytes, send
from gateway.fast.portable import PORTABLE
from gateway.rules.accesslog import ConnectionRecord
from gateway.rules.clientbytes import ClientBytes
from gateway.rules.lifecycle import ConnectionOwner
from gateway.tls.transport import TLSTransport

_log = Logger()


class Provider(enum.Enum):
    """
    The relays a connection can have.
    """

    SPLICE = "splice"
    TERMINATED = "terminated"
    COPY = "copy"
    PORTABLE = "portable"


@attrs.frozen
class RelayChoice:
    """
    What L{chooseRelay} decided for one connection.

    @ivar why: why not splice, for the debug log; empty for splice.
    @ivar readers: the hub's readers of the two sockets, for
        L{TerminatedRelay} and L{CopyRelay}.
    """

    provider: Provider
    why: str = ""
    readers: tuple[Reader, Reader] | None = None


def spliceUnavailable(
    setting: str, client: RelayTransport, upstream: RelayTransport | None
) -> str | None:
    """
    Why a connection cannot use the splice relay, or L{None} if it can.

    C{auto} and C{splice} ask the same question, since splice is used
    wherever it moves the bytes correctly; C{splice} only makes the log say
    that it was asked for.  It cannot when bytes must pass through Python:
    TLS done by the gateway (a L{TLSTransport} side), a side that is not an
    IP socket (C{unix:}: the portable relay is the tested path there), or a
    side holding bytes the gateway wrote through Twisted that are not sent
    yet, which spliced bytes would overtake.  (A PROXY protocol header is
    not such a case: the session puts it first among the pending bytes,
    which the splice relay sends before anything else.)

    @param setting: the listener's C{relay} key.
    @param upstream: L{None} for an upstream socket that is not connected
        yet and will be the relay's own (L{gateway.connection.directconnect}): a TCP
        socket to an IP address with nothing written to it, which splice
        always takes.
    """
    if setting == "portable":
        return "relay = portable"
    if PORTABLE:
        return f"relay = {setting}, but TLSGATEWAY_PORTABLE is set"
    if spliceflow.splice is None:
        return f"relay = {setting}, but this platform has no splice"
    for side, transport in (("client", client), ("upstream", upstream)):
        if transport is None:
            continue
        if isinstance(transport, HubClient):
            # Accepted in the hub for its listener's passthrough: an IP socket.
            if not transport.open:
                return f"relay = {setting}, but the {side} side is closing"
            continue
        if not isinstance(transport, tcp.Connection):
            kind = type(transport).__name__
            return f"relay = {setting}, but the {side} side is a {kind}"
        if transport.getHandle().family not in (socket.AF_INET, socket.AF_INET6):
            return f"relay = {setting}, but the {side} side is not an IP socket"
        if not transport.connected or transport.disconnecting:
            return f"relay = {setting}, but the {side} side is closing"
        if hasUnsentBytes(transport):
            return f"relay = {setting}, but the {side} side has unsent bytes"
    return None


def spliceHub(setting: str, reactor: object, client: RelayTransport) -> Hub | None:
    """
    The splice hub to connect a connection's upstream in
    (L{gateway.connection.directconnect}), when the connection will be spliced
    whatever its upstream: its C{relay} setting, the platform and its
    client side allow it.  L{None} otherwise: the upstream is connected
    by Twisted, and L{chooseRelay} chooses.

    Only a hub that exists: the first relay of a process makes it
    (L{startRelay}), where a hub that cannot be made (no descriptor left)
    leaves that connection to the reactor; made here, before the upstream
    socket, it could take the descriptor that socket needed.
    """
    if spliceUnavailable(setting, client, None) is not None:
        return None
    return HUBS.get(reactor)  # type: ignore[call-overload, no-any-return]


def chooseRelay(
    setting: str, reactor: object, client: RelayTransport, upstream: RelayTransport
) -> RelayChoice:
    """
    Choose the relay of a connection whose upstream is connected: splice
    where it moves the bytes correctly (L{spliceUnavailable}) and a hub
    exists or can be made; else, where the hub can read both sockets, the
    terminated relay for a client whose TLS the gateway ends and the copy
    relay for any other; else the portable relay.

    @param setting: the listener's C{relay} key.
    @param reactor: the reactor (an L{IReactorFDSet} for the hub).
    """
    why = spliceUnavailable(setting, client, upstream)
    if why is None:
        try:
            hubFor(reactor)  # type: ignore[arg-type]
        except OSError as e:
            # No descriptor for the hub's epoll set (EMFILE): this
            # connection is relayed all the same, by the reactor.
            why = f"relay = {setting}, but no splice hub: {e.strerror}"
    if why is None:
        return RelayChoice(Provider.SPLICE)
    readers = hubReaders(reactor, client, upstream)
    if readers is None:
        return RelayChoice(Provider.PORTABLE, why)
    if isinstance(client, TLSTransport):
        return RelayChoice(Provider.TERMINATED, why, readers)
    return RelayChoice(Provider.COPY, why, readers)


def startRelay(
    setting: str,
    reactor: object,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: RelayTransport,
    record: ConnectionRecord,
    owner: ConnectionOwner,
    idleTimeout: float,
    done: Callable[[], None],
    pending: Sequence[bytes],
    *,
    clientBytes: ClientBytes | None,
    upstreamWatched: bool = False,
) -> IRelay:
    """
    Start relaying a connection whose upstream is ready, with the relay
    L{chooseRelay} chooses.

    @param pending: client bytes read before the relay, to go upstream first.
    @param clientBytes: what counts the bytes written to C{client}: see
        L{PortableRelay}.
    @param upstreamWatched: something reads the upstream's bytes on their
        way through its protocol (L{gateway.connection.session.Session.upstreamWatcher}),
        so the terminated relay leaves that side to it.
    """
    choice = chooseRelay(setting, reactor, client, upstream)
    if choice.provider is Provider.SPLICE:
        return startSpliceRelay(
            setting,
            reactor,
            clock,
            client,
            upstream,
            record,
            owner,
            idleTimeout,
            done,
            pending,
        )
    if choice.provider is Provider.TERMINATED:
        return _startTerminatedRelay(
            choice,
            clock,
            client,
            upstream,
            record,
            owner,
            idleTimeout,
            done,
            pending,
            upstreamWatched,
        )
    if verbosity.DEBUG:
        where = f"{record.client} -> {record.upstream}"
        _log.debug("relay {where}: portable ({why})", where=where, why=choice.why)
    if pending:
        send(upstream, pending[0] if len(pending) == 1 else b"".join(pending))
    make: Callable[..., PortableRelay] = (
        PortableRelay
        if choice.readers is None
        else functools.partial(CopyRelay, readers=choice.readers)
    )
    relay = make(
        client,
        upstream,
        record,
        clock,
        idleTimeout,
        done,
        owner=owner,
        clientBytes=clientBytes,
    )
    relay.start()
    return relay


def _startTerminatedRelay(
    choice: RelayChoice,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: RelayTransport,
    record: ConnectionRecord,
    owner: ConnectionOwner,
    idleTimeout: float,
    done: Callable[[], None],
    pending: Sequence[bytes],
    upstreamWatched: bool,
) -> TerminatedRelay:
    """
    The terminated relay (L{chooseRelay} chose it), said in the debug log
    with what takes the hub's short way: the client's records always, the
    upstream's side unless it is watched.
    """
    assert isinstance(client, TLSTransport)
    assert choice.readers is not None
    if verbosity.DEBUG:
        kind = "TLS" if isinstance(upstream, TLSTransport) else "plain"
        side = (
            f"upstream {kind}, read by its protocol: its bytes are watched"
            if upstreamWatched
            else f"upstream {kind} in the hub"
        )
        _log.debug(
            "relay {where}: terminated (client TLS records in the hub; {side}; {why})",
            where=f"{record.client} -> {record.upstream}",
            side=side,
            why=choice.why,
        )
    if pending:
        send(upstream, pending[0] if len(pending) == 1 else b"".join(pending))
    relay = TerminatedRelay(
        client,
        upstream,
        record,
        clock,
        idleTimeout,
        done,
        owner=owner,
        readers=choice.readers,
        upstreamWatched=upstreamWatched,
    )
    relay.start()
    return relay


def startSpliceRelay(
    setting: str,
    reactor: object,
    clock: IReactorTime,
    client: RelayTransport,
    upstream: object,
    record: ConnectionRecord,
    owner: ConnectionOwner,
    idleTimeout: float,
    done: Callable[[], None],
    pending: Sequence[bytes],
) -> SpliceRelay:
    """
    The splice relay between C{client} and C{upstream}, said in the debug
    log: a Twisted TCP transport (L{chooseRelay} chose splice), or a socket
    that L{gateway.connection.directconnect} connected, which the relay then
    owns (the client side must still be spliceable: L{spliceUnavailable}
    with no upstream, which L{spliceHub} asked).
    """
    if verbosity.DEBUG:
        _log.debug(
            "relay {where}: splice (relay = {setting})",
            where=f"{record.client} -> {record.upstream}",
            setting=setting,
        )
    return SpliceRelay(
        client.detach() if isinstance(client, HubClient) else client,  # type: ignore[arg-type]
        upstream,  # type: ignore[arg-type]
        record,
        clock,
        idleTimeout,
        done,
        owner=owner,
        reactor=IReactorFDSet(reactor),
        head=b"".join(pending),
    )
