"""
The gateway configuration a converter builds, and the INI text it becomes.

Pure: no Twisted, no I/O.  Both converters (L{gateway.cli.convert.nginx}
and L{gateway.cli.convert.haproxy}) fill one L{Draft} while they walk the
source file, noting every directive they cannot carry over; L{Draft.render}
then checks what they built as a whole (routes that name an upstream that
did not survive, listeners left with nothing to send connections to, two
listeners on one address) and writes the INI text, the notes first, as
comments.  Checking here, once, is what lets every converter stay a
straight walk over its source: a problem found late is a note, never an
INI file that C{tlsgateway check} refuses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs

from gateway.core.routing import normalizePattern

__all__ = [
    "AccessRule",
    "ConvertError",
    "Draft",
    "Listener",
    "Note",
    "Upstream",
    "accessLists",
    "formatDuration",
    "sectionName",
]


class ConvertError(Exception):
    """
    The source file cannot be read as a configuration of its kind at all.

    @cvar reason: stable slug for callers that sort failures.
    @ivar line: where the reader gave up (1-based), if anywhere in particular.
    """

    reason = "syntax"

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def where(self, source: str) -> str:
        """C{SOURCE:LINE: message}, as C{tlsgateway check} prints problems."""
        place = f"{source}:{self.line}" if self.line else source
        return f"{place}: {self.message}"


@attrs.frozen
class Note:
    """
    One thing of the source file that the INI file does not do.

    @ivar line: the directive's line in the source file, or L{None} for
        something about the file as a whole.
    @ivar directive: the directive as written (shortened), so the operator
        can find it without counting lines.
    @ivar reason: why it was not converted, and what to do instead.
    """

    line: int | None
    directive: str
    reason: str

    def format(self, source: str) -> str:
        place = f"{source}:{self.line}" if self.line is not None else source
        return f"{place}: {self.directive}: {self.reason}"


@attrs.define
class Upstream:
    """One C{[upstream:NAME]} being built: server lines and other keys."""

    name: str
    line: int | None
    origin: str
    servers: list[str] = attrs.Factory(list)
    keys: dict[str, str] = attrs.Factory(dict)


@attrs.define
class Listener:
    """
    One C{[listener:NAME]} being built.

    @ivar routes: C{(pattern, upstream, line)} in the order they were
        found; duplicates and unknown upstreams are dropped by
        L{Draft.render} with a note.
    """

    name: str
    line: int | None
    origin: str
    listen: list[tuple[str, int | None]] = attrs.Factory(list)
    keys: dict[str, str] = attrs.Factory(dict)
    upstream: str | None = None
    routes: list[tuple[str, str, int | None]] = attrs.Factory(list)


@attrs.frozen
class AccessRule:
    """
    One ordered allow/deny rule as NGINX and HAProxy evaluate them: the
    first rule that matches the client decides.

    @ivar networks: CIDR strings, or L{None} for every address.
    """

    allow: bool
    networks: tuple[str, ...] | None
    line: int | None
    text: str


_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


def sectionName(wanted: str) -> str:
    """
    A section name the gateway accepts (letters, digits, C{_}, C{-}, C{.})
    that still reads like C{wanted}.
    """
    cleaned = _NAME_CHARACTERS.sub("_", wanted).strip("_") or "unnamed"
    return cleaned


def formatDuration(seconds: float) -> str:
    """
    The gateway's spelling of C{seconds}: whole seconds as C{Ns}, anything
    finer as whole milliseconds (rounded up, so that a timeout is never
    shorter than the source's).
    """
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if whole and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    milliseconds = int(-(-seconds * 1000 // 1))
    return f"{milliseconds}ms"


def parseNetwork(text: str) -> tuple[str, bool]:
    """
    A CIDR for an address or network as NGINX and HAProxy write them
    (C{10.0.0.1}, C{10.0.0.0/8}, C{10.0.0.0/255.0.0.0}).

    @return: the network, and whether host bits had to be cleared (both
        sources widen C{10.0.0.1/8} silently; the gateway refuses it).
    @raise ValueError: for anything else.
    """
    try:
        exact = ipaddress.ip_network(text, strict=True)
    except ValueError:
        widened = ipaddress.ip_network(text, strict=False)
        return str(widened), True
    return str(exact), False


def _overlap(first: tuple[str, ...] | None, second: tuple[str, ...] | None) -> bool:
    if first is None or second is None:
        return True
    for a in first:
        for b in second:
            left, right = ipaddress.ip_network(a), ipaddress.ip_network(b)
            if left.version == right.version and left.overlaps(right):
                return True
    return False


def accessLists(
    rules: Sequence[AccessRule], notes: list[Note]
) -> tuple[list[str], list[str]]:
    """
    The gateway's C{allow} and C{deny} lists for ordered first-match rules.

    The gateway's rule is simpler: C{deny} wins, and with C{allow} set
    everything not allowed is refused.  The two agree unless an allow rule
    comes before a deny rule that overlaps it (NGINX lets the allowed
    addresses through, the gateway would refuse them): such rules are
    noted and left out, so the result never lets in a client the source
    refused.  Rules after a rule for every address are never reached.

    @return: C{(allow, deny)}; C{["all"]} as C{deny} when every client is
        refused.
    """
    effective: list[AccessRule] = []
    final = True  # what happens to a client no rule matches: allowed
    for index, rule in enumerate(rules):
        if rule.networks is None:
            final = rule.allow
            for unreached in rules[index + 1 :]:
                notes.append(
                    Note(
                        unreached.line,
                        unreached.text,
                        "never reached: an earlier rule matches every address",
                    )
                )
            break
        effective.append(rule)
    allow: list[str] = []
    deny: list[str] = []
    for index, rule in enumerate(effective):
        if rule.allow:
            conflict = next(
                (
                    later
                    for later in effective[index + 1 :]
                    if not later.allow and _overlap(rule.networks, later.networks)
                ),
                None,
            )
            if conflict is not None:
                notes.append(
                    Note(
                        rule.line,
                        rule.text,
                        f"comes before {conflict.text!r}, which overlaps it: the"
                        " gateway's deny always wins, so these addresses stay"
                        " refused; list the exceptions in allow and narrow deny",
                    )
                )
                continue
            if not final:
                allow += rule.networks or ()
        else:
            covered = final is False and not any(
                later.allow and _overlap(rule.networks, later.networks)
                for later in effective[index + 1 :]
            )
            if not covered:
                deny += rule.networks or ()
    if not final and not allow:
        return [], ["all"]
    return _unique(allow), _unique(deny)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@attrs.define
class Draft:
    """
    The configuration being converted, and every note about it.

    @ivar source: the source file's name as the operator gave it, for the
        notes.
    @ivar kind: C{nginx} or C{haproxy}, for the header comment.
    """

    source: str
    kind: str
    gateway: dict[str, str] = attrs.Factory(dict)
    listeners: list[Listener] = attrs.Factory(list)
    upstreams: dict[str, Upstream] = attrs.Factory(dict)
    certificates: dict[str, tuple[str, str, int | None]] = attrs.Factory(dict)
    notes: list[Note] = attrs.Factory(list)

    def note(self, line: int | None, directive: str, reason: str) -> None:
        self.notes.append(Note(line, _shorten(directive), reason))

    def freeName(self, wanted: str, taken: Iterable[str]) -> str:
        """C{wanted} made a valid section name, numbered if C{taken} has it."""
        base = sectionName(wanted)
        used = set(taken)
        name, number = base, 2
        while name in used:
            name, number = f"{base}-{number}", number + 1
        return name

    def addUpstream(self, wanted: str, line: int | None, origin: str) -> Upstream:
        name = self.freeName(wanted, self.upstreams)
        upstream = Upstream(name, line, origin)
        self.upstreams[name] = upstream
        return upstream

    def addListener(self, wanted: str, line: int | None, origin: str) -> Listener:
        name = self.freeName(wanted, (listener.name for listener in self.listeners))
        listener = Listener(name, line, origin)
        self.listeners.append(listener)
        return listener

    def addCertificate(
        self, wanted: str, certificate: str, privateKey: str, line: int | None
    ) -> str:
        for name, (cert, key, _) in self.certificates.items():
            if (cert, key) == (certificate, privateKey):
                return name
        name = self.freeName(wanted, self.certificates)
        self.certificates[name] = (certificate, privateKey, line)
        return name

    # -- checking the whole ------------------------------------------------

    def _settle(self) -> None:
        """
        Drop what would make the file invalid, each with a note: upstreams
        without servers, routes to missing upstreams or with a pattern the
        gateway refuses, listeners without a destination or an address.
        """
        for name, upstream in list(self.upstreams.items()):
            if not upstream.servers:
                self.note(upstream.line, upstream.origin, "no server left to convert")
                del self.upstreams[name]
        self._mergeDualStack()
        bound: dict[str, str] = {}
        for listener in list(self.listeners):
            self._settleRoutes(listener)
            if (
                listener.upstream is not None
                and listener.upstream not in self.upstreams
            ):
                listener.upstream = None
            endpoints: list[tuple[str, int | None]] = []
            for endpoint, line in listener.listen:
                if endpoint in bound:
                    self.note(
                        line,
                        endpoint,
                        f"already the address of [listener:{bound[endpoint]}]",
                    )
                    continue
                bound[endpoint] = listener.name
                endpoints.append((endpoint, line))
            listener.listen = endpoints
            problem = None
            if not listener.listen:
                problem = "no address left to listen on"
            elif listener.upstream is None and not listener.routes:
                problem = "nothing left to send its connections to"
            elif (
                listener.keys.get("mode") == "terminate"
                and "certificate" not in listener.keys
                and "certificates" not in listener.keys
            ):
                problem = "terminates TLS but has no certificate"
            if problem is not None:
                self.note(listener.line, listener.origin, f"not converted: {problem}")
                self.listeners.remove(listener)

    def _mergeDualStack(self) -> None:
        """
        C{tcp:443} beside C{tcp6:443:interface=\\:\\:} (NGINX's C{listen 443}
        and C{listen [::]:443}, HAProxy's C{bind :443} and C{bind :::443}):
        on Linux the IPv6 socket accepts IPv4 too, and beside it the IPv4 one
        would find the port taken at start.  Keep the IPv6 one, which serves
        both: silently in one listener, with a note across two.
        """
        anyIPv6 = {
            endpoint.split(":")[1]: listener.name
            for listener in self.listeners
            for endpoint, _ in listener.listen
            if endpoint.startswith("tcp6:") and endpoint.endswith(":interface=\\:\\:")
        }
        for listener in self.listeners:
            kept = []
            for endpoint, line in listener.listen:
                owner = None
                if endpoint.startswith("tcp:") and endpoint[4:].isdigit():
                    owner = anyIPv6.get(endpoint[4:])
                if owner is None:
                    kept.append((endpoint, line))
                elif owner != listener.name:
                    self.note(
                        line,
                        endpoint,
                        f"[listener:{owner}] listens on tcp6:{endpoint[4:]}"
                        ":interface=\\:\\:, which accepts IPv4 too on Linux",
                    )
            listener.listen = kept

    def _settleRoutes(self, listener: Listener) -> None:
        seen: dict[str, str] = {}
        kept: list[tuple[str, str, int | None]] = []
        for pattern, upstream, line in listener.routes:
            text = f"{pattern} {upstream}"
            if upstream not in self.upstreams:
                self.note(line, text, f"upstream {upstream!r} was not converted")
                continue
            try:
                canonical = normalizePattern(pattern)
            except ValueError as e:
                self.note(line, text, f"the gateway cannot match this: {e}")
                continue
            if canonical in seen:
                if seen[canonical] != upstream:
                    self.note(
                        line,
                        text,
                        f"never used: an earlier rule sends {pattern!r} to"
                        f" {seen[canonical]!r}",
                    )
                continue
            seen[canonical] = upstream
            kept.append((pattern, upstream, line))
        listener.routes = kept

    # -- writing -------------------------------------------------------------

    def render(self) -> str:
        """The INI text: a header, the notes as comments, then the sections."""
        self._settle()
        # A stream-level directive inherited by several servers is named once.
        self.notes[:] = sorted(dict.fromkeys(self.notes), key=lambda n: n.line or 0)
        out = [
            f"# Converted by 'tlsgateway convert {self.kind}' from {self.source}.",
            "# Review it, then: tlsgateway check --config THIS_FILE",
        ]
        if self.notes:
            out += ["#", f"# Not converted ({len(self.notes)}):"]
            out += [f"#   {note.format(self.source)}" for note in self.notes]
        if self.gateway:
            out += ["", "[gateway]", *(f"{k} = {v}" for k, v in self.gateway.items())]
        for listener in self.listeners:
            out += ["", f"# {self._from(listener.line, listener.origin)}"]
            out.append(f"[listener:{listener.name}]")
            out.append("listen = " + ", ".join(e for e, _ in listener.listen))
            out += [f"{k} = {v}" for k, v in listener.keys.items()]
            if listener.routes:
                width = max(len(pattern) for pattern, _, _ in listener.routes)
                out.append("routes =")
                out += [
                    f"    {pattern.ljust(width)}  {upstream}"
                    for pattern, upstream, _ in listener.routes
                ]
            elif listener.upstream is not None:
                out.append(f"upstream = {listener.upstream}")
        for name, (certificate, privateKey, line) in self.certificates.items():
            out += ["", f"# {self._from(line, 'certificate')}"]
            out += [
                f"[certificate:{name}]",
                f"certificate = {certificate}",
                f"private_key = {privateKey}",
            ]
        for upstream in self.upstreams.values():
            out += ["", f"# {self._from(upstream.line, upstream.origin)}"]
            out += [f"[upstream:{upstream.name}]", "servers ="]
            out += [f"    {server}" for server in upstream.servers]
            out += [f"{k} = {v}" for k, v in upstream.keys.items()]
        return "\n".join(out) + "\n"

    def _from(self, line: int | None, origin: str) -> str:
        return f"{self.source}:{line}: {origin}" if line else f"{origin}"


def _shorten(text: str, limit: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
