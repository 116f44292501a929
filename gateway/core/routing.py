"""
Route patterns and the compiled table that picks a route for a ClientHello.

Pure: no Twisted, no OpenSSL, no I/O.  The patterns follow NGINX C{map}
with C{hostnames}, because that is what an operator who writes SNI routing
tables already knows:

  - C{example.com}: exactly that name (case-insensitive, trailing dot
    ignored; Unicode names are stored as IDNA A-labels, which is what
    clients send in SNI);
  - C{*.example.com}: any name below C{example.com}, at any depth, but not
    C{example.com} itself;
  - C{.example.com}: C{example.com} and any name below it;
  - C{~REGEX} (C{~*REGEX} ignores case): a regular expression in RE2
    syntax, searched for anywhere in the lower-case name, as NGINX does;
  - C{default}: everything nothing else matched, including hellos with no
    SNI at all;
  - C{ALPN:proto}: a hello offering that ALPN protocol, whatever its name.

Precedence is NGINX's, with ALPN in front: ALPN patterns (first in file
order among those offered), then the exact name, then the longest
wildcard, then the first regex in file order, then C{default}.

Patterns are normalised once by L{normalizePattern} (so the configuration
loader can report a bad one at its line) and compiled once by L{Router};
matching a name costs one dictionary lookup per label plus the regexes.

Regexes run on RE2 (the C{google-re2} binding), not Python's C{re}: RE2
matches in time linear in the name, whatever the pattern, where C{re}
backtracks.  With C{re}, C{~^(a+)+$} takes a second for a 24-letter label
and twice as long per letter more, and every listener of the process
waits meanwhile: a client could stall the gateway with one SNI name.
RE2's price is its syntax: no backreferences and no lookarounds.  A
pattern RE2 cannot compile is refused when the configuration is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

import idna
import re2  # type: ignore[import-untyped]

__all__ = ["Routable", "Router", "normalizeName", "normalizePattern"]

DEFAULT = "default"
ALPN_PREFIX = "ALPN:"

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_NAME = 253


def normalizeName(name: str) -> str:
    """
    Return the form of a host name that a client puts in SNI.

    Lower-case, no trailing dot, and Unicode labels converted to IDNA
    A-labels (UTS 46 mapping, non-transitional, as browsers do), so that
    C{Bücher.example.} in the file matches the C{xn--bcher-kva.example} a
    client sends.  Plain ASCII names skip the IDNA codec on purpose: it
    rejects the underscores that real internal names (C{_acme.example})
    contain, and SNI from real clients carries them.

    @raise ValueError: for an empty name, an empty label, a label that is
        too long or has characters no host name can have, or a Unicode
        name that IDNA refuses.
    """
    stripped = name.strip()
    trimmed = stripped.removesuffix(".")
    if not trimmed:
        raise ValueError(f"{name.strip()!r} is not a host name: it is empty")
    if not trimmed.isascii():
        try:
            trimmed = idna.encode(trimmed, uts46=True, transitional=False).decode(
                "ascii"
            )
        except idna.IDNAError as e:
            raise ValueError(
                f"{stripped!r} is not a valid IDNA host name: {e}"
            ) from None
    lowered = trimmed.lower()
    if len(lowered) > _MAX_NAME:
        raise ValueError(f"{stripped!r} is longer than {_MAX_NAME} characters")
    for label in lowered.split("."):
        if not label:
            raise ValueError(f"{stripped!r} has an empty label")
        if len(label) > 63:
            raise ValueError(f"{stripped!r} has a label longer than 63 characters")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{stripped!r} is not a host name: {label!r} may only contain"
                " letters, digits, '-' and '_', and not start or end with '-'"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as e:
                raise ValueError(
                    f"{stripped!r} has an invalid IDNA A-label {label!r}: {e}"
                ) from None
    return lowered


def _re2Options() -> Any:
    options = re2.Options()
    # Compile errors are raised to the caller, who reports them at their
    # line; RE2 would also print them to standard error.
    options.log_errors = False
    return options


_RE2_OPTIONS = _re2Options()


def _regexBody(pattern: str) -> str:
    """
    The RE2 source of a normalised C{~REGEX} or C{~*REGEX} pattern.
    """
    if pattern.startswith("~*"):
        return f"(?i:{pattern[2:]})"
    return pattern[1:]


def _compile(source: str) -> Any:
    """
    Compile RE2 source.

    @raise ValueError: with RE2's reason.
    """
    try:
        return re2.compile(source, _RE2_OPTIONS)
    except re2.error as e:
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None


def normalizePattern(raw: str) -> str:
    """
    Check one route pattern and return its canonical spelling.

    Canonical spellings compare equal exactly when two patterns match the
    same hellos in the same tier, which is how the loader finds duplicate
    routes; normalising twice changes nothing.  Regexes are kept as typed
    (lower-casing C{\\D} would change its meaning); everything else is
    lower-cased and IDNA-encoded, except the ALPN protocol, which is an
    exact byte string.

    @raise ValueError: with a message for the operator.
    """
    text = raw.strip()
    if not text:
        raise ValueError("empty pattern")
    if text.startswith("~"):
        body = text[2:] if text.startswith("~*") else text[1:]
        if not body:
            raise ValueError(f"{text!r} has an empty regex")
        try:
            _compile(body)  # so that the reason quotes the pattern as typed
            _compile(_regexBody(text))
        except ValueError as e:
            raise ValueError(
                f"bad regex {body!r}: {e.args[0]} (route regexes use RE2"
                " syntax, which runs in linear time: no backreferences, no"
                " lookarounds)"
            ) from None
        return text
    if text[:5].upper() == ALPN_PREFIX:
        protocol = text[5:]
        if not protocol:
            raise ValueError(f"{text!r} names no ALPN protocol (like ALPN:h2)")
        if not all("!" <= c <= "~" for c in protocol):
            raise ValueError(
                f"{text!r}: an ALPN protocol must be printable ASCII without spaces"
            )
        if len(protocol) > 255:
            raise ValueError(f"{text!r}: an ALPN protocol is at most 255 bytes")
        return ALPN_PREFIX + protocol
    if text.lower() == DEFAULT:
        return DEFAULT
    if text.startswith("*."):
        prefix, name = "*.", text[2:]
    elif text.startswith(".") and not text.startswith(".."):
        prefix, name = ".", text[1:]
    else:
        prefix, name = "", text
    if text == "*":
        raise ValueError("'*' is not a pattern: use default to match everything")
    if "*" in name:
        raise ValueError(
            f"{text!r}: '*' is only allowed as the whole first label, as in"
            " '*.example.com'"
        )
    if not prefix:
        return normalizeName(name)
    try:
        return prefix + normalizeName(name)
    except ValueError as e:
        raise ValueError(f"bad pattern {text!r}: {e}") from None


class Routable(Protocol):
    """
    Anything with a route pattern: a configuration line, or a test double.
    """

    @property
    def pattern(self) -> str: ...


T = TypeVar("T", bound=Routable)

_ANY = r"[\s\S]"


class Router(Generic[T]):
    """
    A compiled routing table: answers which route a hello takes.

    Each tier gets the structure that makes it cheap: dictionaries for ALPN
    and exact names, a suffix dictionary for wildcards (a name is looked up
    once per label, longest suffix first, so the longest wildcard wins
    without sorting), and regexes merged into as few compiled expressions
    as first-in-file-order allows.  When a pattern occurs twice in a tier,
    the first occurrence wins, like the first matching line of a file.

    @ivar _alpn: protocol -> (file position, route); the position decides
        between two offered protocols that both have routes.
    @ivar _apex: C{.example.com} routes keyed by C{example.com}: they match
        the name itself, and that is the longest suffix a name can have.
    @ivar _below: C{*.example.com} and C{.example.com} routes, keyed by
        C{example.com}, for the names under it.
    @ivar _regexes: the regexes, in file order, compiled into one RE2 set
        and one merged RE2 program (L{_RegexTable}).
    """

    def __init__(self, routes: Iterable[T]) -> None:
        """
        @param routes: in file order; each C{.pattern} is normalised again
            here (a no-op for loaded configuration) so that tests and
            embedders may pass patterns as typed.
        @raise ValueError: for an invalid pattern.
        """
        self._alpn: dict[str, tuple[int, T]] = {}
        self._exact: dict[str, T] = {}
        self._apex: dict[str, T] = {}
        self._below: dict[str, T] = {}
        self._default: T | None = None
        regexes: list[tuple[str, T]] = []
        seenRegexes: set[str] = set()
        for position, route in enumerate(routes):
            pattern = normalizePattern(route.pattern)
            if pattern.startswith(ALPN_PREFIX):
                self._alpn.setdefault(pattern[len(ALPN_PREFIX) :], (position, route))
            elif pattern == DEFAULT:
                if self._default is None:
                    self._default = route
            elif pattern.startswith("~"):
                if pattern not in seenRegexes:
                    seenRegexes.add(pattern)
                    regexes.append((pattern, route))
            elif pattern.startswith("*."):
                self._below.setdefault(pattern[2:], route)
            elif pattern.startswith("."):
                self._apex.setdefault(pattern[1:], route)
                self._below.setdefault(pattern[1:], route)
            else:
                self._exact.setdefault(pattern, route)
        self._regexes = _RegexTable(regexes)

    def match(
        self, serverName: str | None, alpn: Iterable[str | bytes] = ()
    ) -> T | None:
        """
        Choose the route for a hello.

        @param serverName: the SNI host name, or L{None} (or empty) when the
            client sent none; then only ALPN routes and C{default} apply.
        @param alpn: the offered ALPN protocols, as text or as the bytes on
            the wire (decoded as Latin-1, so nothing can fail to decode).
        @return: the chosen route, or L{None} for no route (the caller
            closes the connection with status C{no_route}).
        """
        if self._alpn:
            best: tuple[int, T] | None = None
            for offered in alpn:
                protocol = (
                    offered.decode("latin-1") if isinstance(offered, bytes) else offered
                )
                hit = self._alpn.get(protocol)
                if hit is not None and (best is None or hit[0] < best[0]):
                    best = hit
            if best is not None:
                return best[1]
        name = (serverName or "").lower().removesuffix(".")
        if name:
            route = self._matchName(name)
            if route is not None:
                return route
        return self._default

    def _matchName(self, name: str) -> T | None:
        """
        Run the name tiers: exact, longest wildcard, first regex.
        """
        route = self._exact.get(name)
        if route is not None:
            return route
        if self._below:
            route = self._apex.get(name)
            if route is not None:
                return route
            dot = name.find(".")
            while dot != -1:
                route = self._below.get(name[dot + 1 :])
                if route is not None:
                    return route
                dot = name.find(".", dot + 1)
        if self._regexes:
            return self._regexes.match(name)
        return None


class _RegexTable(Generic[T]):
    """
    The regex tier: which route's regex, first in file order, is found in
    a name.  See L{Router._regexes}.

    @ivar _set: an RE2 set of every regex: one pass over the name says
        which of them match, so the first in file order is the smallest
        index.  RE2 answers a set match with its DFA only, which gives up
        (and answers "none") when its memory budget runs out; so an empty
        answer is checked with C{_merged}, which falls back to RE2's NFA.
    @ivar _merged: every regex as one alternative
        C{(?:[\\s\\S]*?(?:REGEX)())}, matched from the start of the name:
        each alternative matches exactly when C{REGEX} is found anywhere,
        RE2 keeps Perl's leftmost-first preference (of alternatives that
        match at the same place, the first written wins) and all of them
        start at the first character, so the first regex in file order
        that matches wins; its empty marker group says which it was.  RE2
        has no backreferences, so renumbering the regexes' own groups
        changes nothing, and its inline flags end with their group, so none
        leaks into the next alternative.  L{None} if the program is too
        large for RE2 (then each regex is searched in turn).
    """

    def __init__(self, regexes: list[tuple[str, T]]) -> None:
        self._routes = tuple(route for _, route in regexes)
        bodies = [_regexBody(pattern) for pattern, _ in regexes]
        compiled = [_compile(body) for body in bodies]
        self._searches = [regex.search for regex in compiled]
        self._set: Any = None
        self._merged: Any = None
        self._markers: list[int] = []
        groups = 0
        for regex in compiled:
            groups += regex.groups + 1
            self._markers.append(groups)
        try:
            regexSet = re2.Set.SearchSet(_RE2_OPTIONS)
            for body in bodies:
                regexSet.Add(body)
            regexSet.Compile()
            self._merged = _compile(
                "|".join(f"(?:{_ANY}*?(?:{body})())" for body in bodies)
            )
        except (re2.error, ValueError):
            return  # too large for one program (RE2's max_mem): one by one
        self._set = regexSet

    def __bool__(self) -> bool:
        return bool(self._routes)

    def match(self, name: str) -> T | None:
        if self._set is None:
            for route, search in zip(self._routes, self._searches, strict=True):
                if search(name) is not None:
                    return route
            return None
        found: list[int] | None = self._set.Match(name)
        if found:
            return self._routes[min(found)]
        matched = self._merged.match(name)
        if matched is None:
            return None
        for route, marker in zip(self._routes, self._markers, strict=True):
            if matched.group(marker) is not None:
                return route
        raise AssertionError("a merged match without a marker")  # pragma: no cover
