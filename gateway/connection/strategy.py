"""
What a client protocol (C{tls}, C{postgres}, C{tcp}, C{mysql}) provides to
the generic connection core: its client-side preamble and its upstream
opening.

The core (L{gateway.connection.preread}, L{gateway.connection.listener},
L{gateway.connection.session}) knows no protocol: each listener is given
its strategy, a provider of L{IProtocolStrategy} chosen once from the table
in L{gateway.protocols.table} by whoever builds it (the service).  The
interfaces live here, below their providers, so the core never imports a
protocol.  What a strategy serves beyond its preamble and opening, it says
by providing the small interfaces of L{gateway.connection.hooks}.

Nothing here imports the rest of the core: every module of the core may
import this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from OpenSSL import SSL

    from gateway.rules.accesslog import ExtraFields


class PreambleError(Exception):
    """
    A client's preamble is refused (C{bad_client_hello}).

    @ivar reason: for the access log.
    @ivar answer: what to write to the client first (a protocol error
        message it can print), or C{b""}.
    """

    def __init__(self, reason: str, answer: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


class IPreamble(Interface):
    """
    One connection's reader of what a client sends before its ClientHello
    (the PostgreSQL C{SSLRequest}), sans-IO.
    """

    def feed(data: bytes, answer: Callable[[bytes], None]) -> object:
        """
        Take the client's next bytes; write what the preamble asks for
        through C{answer}.

        @return: L{None} while incomplete; the bytes that follow once TLS
            starts (for the ClientHello reader); or any other object: the
            client starts without TLS, and that object goes to
            L{gateway.connection.hooks.IServesPlaintext.openPlaintext}.
        @raise PreambleError: a refused preamble.
        """

    def describeEnd() -> str:
        """
        Why a client that closed during the preamble is refused.
        """

    def describeTimeout(timeout: float) -> str:
        """
        Why a client whose preamble is not complete after C{timeout}
        seconds is refused.
        """


class IUpstreamOpening(Interface):
    """
    One upstream connection's exchange before TLS flows on it (a
    PostgreSQL C{SSLRequest} and the server's answer), sans-IO.
    """

    request = Attribute("bytes: written first on the raw connection")

    def feed(data: bytes) -> object:
        """
        Take what the server sent.

        @return: L{None} while the answer is incomplete; C{True} once the
            connection is ready for TLS; or a string: why this server is
            unusable for the connection (the session tries the next).
        """

    def describeTimeout(timeout: float) -> str:
        """
        Why a server that did not answer within C{timeout} is unusable.
        """


UpstreamOpener = Callable[[], IUpstreamOpening]
"""What makes the L{IUpstreamOpening} of one upstream connection."""


class ServerTLSPolicy(TypingProtocol):
    """
    What termination needs from L{gateway.tls.server}: a context per server
    name, and the facts of a finished handshake for the access log.
    """

    def contextFor(self, serverName: str | None) -> SSL.Context: ...

    def describe(self, connection: SSL.Connection) -> ExtraFields: ...


class IProtocolStrategy(Interface):
    """
    A C{protocol}/C{mode} setting: how its clients start, and how their
    upstream connections open.  What it serves beyond that, it says by
    providing L{gateway.connection.hooks.ITerminates},
    L{gateway.connection.hooks.IServesPlaintext} or
    L{gateway.connection.hooks.IServesAtAccept}.
    """

    name = Attribute("str: the table key (the protocol, or tcp for mode = tcp)")
    readsHello = Attribute(
        "bool: a ClientHello is pre-read and decided on; a strategy without"
        " one provides IServesAtAccept"
    )
    speaksTLSFirst = Attribute(
        "bool: the client's first bytes are TLS, so a refusal sends an alert"
    )

    def preamble() -> IPreamble | None:
        """
        A reader for one connection's preamble, or L{None} for none.
        """

    def misdirected(buffered: bytes) -> str | None:
        """
        A hint for an operator when a client sent something else than TLS
        (another protocol that has a strategy), or L{None}.
        """

    def opening(encrypted: bool) -> UpstreamOpener | None:
        """
        What makes the L{IUpstreamOpening} of each upstream connection
        that carries TLS (C{encrypted}: the client's, or the gateway's
        own) or not, or L{None} for no opening.
        """

    def listenerState() -> object:
        """
        A fresh state this protocol keeps for one listener name (the
        PostgreSQL cancel keys), or L{None} for none.  The service keeps
        it across reloads (L{ListenerStates}): the factory of each
        generation serving that name is given the same one, as
        L{gateway.connection.hooks.ListenerContext.strategyState}.
        """


class ReadsNothing:
    """
    The L{IProtocolStrategy} answers of a protocol that reads nothing
    before it serves a connection (served at accept: C{mode = tcp},
    MySQL, whose client waits for the server's greeting): no ClientHello,
    no preamble, no hint for a misdirected client, no opening upstream,
    no state per listener.  A strategy inherits them and gives its C{name}
    and its C{openAtAccept}.
    """

    readsHello = False
    speaksTLSFirst = False

    def preamble(self) -> None:
        return None

    def misdirected(self, buffered: bytes) -> str | None:
        return None

    def opening(self, encrypted: bool) -> None:
        return None

    def listenerState(self) -> None:
        return None


class ListenerStates:
    """
    The L{IProtocolStrategy.listenerState} of each listener name, kept by
    the service across reloads so that connections of every generation
    share it (a PostgreSQL cancel arrives on whichever factory is current
    for a session any generation accepted).  Keyed by name and strategy: a
    listener whose protocol changes on a reload starts afresh.
    """

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], object] = {}

    def stateFor(self, name: str, strategy: IProtocolStrategy) -> object:
        """
        The state of listener C{name} served by C{strategy}, made on first use.
        """
        key = (name, strategy.name)
        if key not in self._states:
            self._states[key] = strategy.listenerState()
        return self._states[key]
