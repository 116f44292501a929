"""
The access log: one line per connection, written when the connection ends.

A connection's facts are gathered in a L{ConnectionRecord} as it moves along
the data path (accept, pre-read, route, relay) and formatted once, at the end,
because only then are the byte counts, the duration and the final status
known.  The field names are the public contract (C{CONTRACT.md}): operators
parse these lines, so they are snake_case and never renamed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Protocol, TypedDict, cast

import attrs

from gateway.core.vocabulary import Action, Status
from gateway.wire.clienthello import ClientHello
from gateway.wire.ja4 import ja4


class ExtraFields(TypedDict, total=False):
    """
    The access-log fields beyond the contract's first ones, each written
    only by the connections it applies to, after them, in the order they
    were set (C{CONTRACT.md}).

    @ivar tls_version: the handshake's facts, for a terminated connection
        (L{gateway.tls.handshake.describe}), as are C{cipher},
        C{tls_group}, C{alpn_selected} and C{client_cert}.
    @ivar db_user: the login of a PostgreSQL or MySQL client, as is
        C{db_name}.
    @ivar closed_by: which side or error ended a relayed connection
        (C{client_reset}, C{upstream_tls_error}, ...), when it was not a
        clean close.
    @ivar packets_in: a QUIC flow's datagrams from the client, as
        C{packets_out} counts those to it; C{quic_version} its version.
    @ivar worker_pid: the worker that served the connection, with several.
    """

    tls_version: str | None
    cipher: str | None
    tls_group: str | None
    alpn_selected: str | None
    client_cert: str | None
    db_user: str | None
    db_name: str | None
    closed_by: str
    packets_in: int
    packets_out: int
    quic_version: str | None
    worker_pid: int


@attrs.define(slots=True, eq=False)
class ConnectionRecord:
    """
    What the gateway learnt about one client connection.

    Mutable on purpose: each stage of the data path fills in what it knows,
    and the hot relay loop adds to C{bytesIn}/C{bytesOut} in place.

    @ivar accepted: wall-clock time of accept, for the C{time} field.
    @ivar started: the reactor clock at accept, for C{duration_ms}; a
        monotonic-ish clock that tests can drive.
    @ivar transport: C{tcp} for a stream connection, C{udp} for a QUIC
        flow (L{gateway.connection.datagram}).
    @ivar status: the first cause of the end that was recorded; later
        causes (a reset that follows an idle timeout, say) do not overwrite
        it, because the first one is what the operator needs to know.
    """

    listener: str
    client: str
    accepted: float
    started: float
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    _ja4: str | None = None
    #: The parsed ClientHello, once pre-read: its JA4 fingerprint is
    #: computed from it when first read.
    hello: ClientHello | None = None
    action: Action | None = None
    upstream: str | None = None
    status: Status | None = None
    reason: str | None = None
    bytesIn: int = 0
    bytesOut: int = 0
    ended: float | None = None
    #: Encrypted Client Hello: C{offered}, C{decrypted} or C{rejected}, and
    #: the outer hello's name (L{None} without ECH).
    ech: str | None = None
    outerSni: str | None = None
    transport: str = "tcp"
    extra: ExtraFields = attrs.field(factory=lambda: ExtraFields())

    @property
    def ja4(self) -> str | None:
        """
        The client's JA4 fingerprint, computed only when something reads
        it (the access log, C{deny_ja4}, the status page): with
        C{access_log = off} and no C{deny_ja4}, no connection pays for it.
        """
        if self._ja4 is None and self.hello is not None:
            self._ja4 = ja4(self.hello)
        return self._ja4

    @ja4.setter
    def ja4(self, value: str | None) -> None:
        self._ja4 = value

    def fail(self, status: Status, reason: str | None = None) -> None:
        """
        Record why the connection ends, unless a cause is already known.
        """
        if self.status is None:
            self.status = status
            self.reason = reason

    def fields(self) -> dict[str, Any]:
        """
        The contract's access-log fields, in the contract's order.
        """
        duration = 0.0 if self.ended is None else self.ended - self.started
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.accepted, UTC).isoformat(
                timespec="milliseconds"
            ),
            "listener": self.listener,
            "client": self.client,
            "transport": self.transport,
            "sni": self.sni,
            "alpn": list(self.alpn),
            "ja4": self.ja4,
            "action": self.action,
            "upstream": self.upstream,
            "status": self.status or "ok",
            "bytes_in": self.bytesIn,
            "bytes_out": self.bytesOut,
            "duration_ms": round(duration * 1000),
            "ech": self.ech,
            "outer_sni": self.outerSni,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


def formatJSON(record: ConnectionRecord) -> str:
    """
    One JSON object, no newlines inside: C{jq} and log shippers read it as is.
    """
    return json.dumps(record.fields(), separators=(",", ":"))


def _textValue(value: object) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = str(value)
    if not text or any(c.isspace() or c in '"\\' for c in text):
        return json.dumps(text)
    return text


def formatText(record: ConnectionRecord) -> str:
    """
    C{key=value} pairs separated by spaces, C{-} for an absent value.

    Key/value rather than NGINX's positional fields so that a field added
    later (termination adds several) does not shift the ones a parser already
    reads; values with spaces or quotes are JSON-quoted so a line always
    splits unambiguously.
    """
    return " ".join(f"{k}={_textValue(v)}" for k, v in record.fields().items())


FORMATS: dict[str, Callable[[ConnectionRecord], str]] = {
    "text": formatText,
    "json": formatJSON,
}


class ConnectionMetrics(Protocol):
    """
    What the access log feeds, connection by connection (L{gateway.run.metrics}).
    """

    def accepted(self, listener: str) -> None: ...

    def ended(self, record: ConnectionRecord) -> None: ...

    def handshake(self, seconds: float) -> None: ...


class RecentConnections(Protocol):
    """
    What keeps the last connections for the status page
    (L{gateway.run.status.RecentFailures}).
    """

    def add(self, record: ConnectionRecord) -> None: ...


@attrs.define
class LogDestination:
    """
    Where access-log lines go: an open file (or standard output), or
    nowhere (C{off}).

    @ivar owned: the file was opened here, so it is closed here too
        (standard output is not).
    """

    destination: str
    file: IO[str] | None
    owned: bool = False

    @classmethod
    def open(
        cls, destination: str, standardOutput: IO[str] | None = None
    ) -> LogDestination:
        """
        @param standardOutput: what C{-} means, when not the process's
            standard output (a daemon's is gone: its log takes the lines).
        @raise OSError: the file cannot be opened for appending (its folder
            does not exist, permission, a directory by that name).
        """
        if destination == "off":
            return cls(destination, None)
        if destination == "-":
            # sys.__stdout__, not sys.stdout: twistd may have redirected
            # sys.stdout into its own log, which would prefix every line.
            return cls(destination, standardOutput or sys.__stdout__)
        return cls(destination, open(destination, "a", encoding="utf-8"), owned=True)

    def close(self) -> None:
        if self.file is not None and self.owned:
            self.file.close()
        self.file = None
        self.owned = False


class AccessLog:
    """
    Where every connection ends: written to a file, standard output, or
    nowhere, and counted in the metrics.

    Lines are flushed as they are written: an access log that lags behind by
    a buffer is useless to an operator tailing it during an incident, and the
    cost is one C{write} per connection, not per chunk relayed.

    @ivar _recent: also given every record, for the status page.
    @ivar _standardOutput: what C{-} means, when not standard output.
    @ivar _extra: fields added to every line (C{worker_pid} with several
        workers, so an operator can tell which process served what): some
        of L{ExtraFields}.
    """

    def __init__(
        self,
        destination: str,
        format: str = "text",
        *,
        metrics: ConnectionMetrics | None = None,
        extra: dict[str, Any] | None = None,
        recent: RecentConnections | None = None,
        standardOutput: IO[str] | None = None,
    ) -> None:
        self._destination = destination
        self._standardOutput = standardOutput
        self._recent = recent
        self._format = FORMATS[format]
        self._file: IO[str] | None = None
        self._current: LogDestination | None = None
        self._metrics = metrics
        self._extra = cast(ExtraFields, dict(extra or {}))
        self.reopen()

    @property
    def destination(self) -> str:
        return self._destination

    def prepare(self, destination: str) -> LogDestination | None:
        """
        Open what a reload's C{access_log} names, beside the running one,
        so that a reload that cannot open it is refused before anything
        changes (see L{use}).

        @return: the new destination, or L{None} if it is the one in use.
        @raise OSError: it cannot be opened.
        """
        if destination == self._destination:
            return None
        return LogDestination.open(destination, self._standardOutput)

    def use(self, prepared: LogDestination | None, format: str) -> None:
        """
        A reload is serving: write to what L{prepare} opened (if anything
        changed) in C{format} from now on, and close the old destination.
        """
        self._format = FORMATS[format]
        if prepared is not None:
            self.close()
            self._destination = prepared.destination
            self._current = prepared
            self._file = prepared.file

    def configure(self, destination: str, format: str) -> None:
        """
        C{access_log} or C{access_log_format} changed.

        @raise OSError: the new destination cannot be opened; the old one
            stays in use.
        """
        self.use(self.prepare(destination), format)

    def accepted(self, listener: str) -> None:
        if self._metrics is not None:
            self._metrics.accepted(listener)

    def handshake(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.handshake(seconds)

    def reopen(self) -> None:
        """
        Close and open the destination again, so that logrotate can move it.

        @raise OSError: it cannot be opened again (then nothing is written
            until it can be).
        """
        self.close()
        self._current = LogDestination.open(self._destination, self._standardOutput)
        self._file = self._current.file

    def write(self, record: ConnectionRecord) -> None:
        if self._metrics is not None:
            self._metrics.ended(record)
        if self._recent is not None:
            self._recent.add(record)
        if self._file is None:
            return
        if self._extra:
            record.extra.update(self._extra)
        self._file.write(self._format(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        self._current = None
        self._file = None
