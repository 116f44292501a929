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
  - C{~REGEX} (C{~*REGEX} ignores case): a Python regular expression,
    searched for anywhere in the lower-case name, as NGINX does;
  - C{default}: everything nothing else matched, including hellos with no
    SNI at all;
  - C{ALPN:proto}: a hello offering that ALPN protocol, whatever its name.

Precedence is NGINX's, with ALPN in front: ALPN patterns (first in file
order among those offered), then the exact name, then the longest
wildcard, then the first regex in file order, then C{default}.

Patterns are normalised once by L{normalizePattern} (so the configuration
loader can report a bad one at its line) and compiled once by L{Router};
matching a name costs one dictionary lookup per label plus the regexes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import idna

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


def _compileRegex(pattern: str) -> re.Pattern[str]:
    """
    Compile a normalised C{~REGEX} or C{~*REGEX} pattern.
    """
    if pattern.startswith("~*"):
        return re.compile(pattern[2:], re.IGNORECASE)
    return re.compile(pattern[1:])


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
            _compileRegex(text)
        except re.error as e:
            raise ValueError(f"bad regex {body!r}: {e}") from None
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

# A regex tier: a matcher (a merged expression's match, or one regex's
# search) and the routes it stands for, in file order.
_RegexTier = tuple[Callable[[str], "re.Match[str] | None"], tuple[T, ...]]
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
    @ivar _regexes: in file order, (compiled, routes) pairs.  A merged
        expression holds several groupless regexes, each as an alternative
        C{(?=[\\s\\S]*?(?:REGEX))()}: C{re.match} tries alternatives left
        to right and each lookahead is exactly C{re.search(REGEX)}, so the
        first regex in file order that matches anywhere wins, and the
        empty group's C{lastindex} says which one it was.  A regex with
        groups (its backreferences would be renumbered) or inline flags
        (only allowed at the very start) stays on its own.
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
        self._regexes = _mergeRegexes(regexes)

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
        for matcher, routes in self._regexes:
            found = matcher(name)
            if found is not None:
                if len(routes) == 1:
                    return routes[0]
                assert found.lastindex is not None  # one empty group per route
                return routes[found.lastindex - 1]
        return None


def _mergeRegexes(regexes: list[tuple[str, T]]) -> list[_RegexTier[T]]:
    """
    Merge runs of groupless, flagless regexes into single expressions.

    See L{Router._regexes} for why the merged form keeps first-in-order
    semantics, and which regexes cannot take part.
    """
    tiers: list[_RegexTier[T]] = []
    run: list[tuple[str, T]] = []

    def flush() -> None:
        if run:
            source = "|".join(f"(?={_ANY}*?{body})()" for body, _ in run)
            tiers.append((re.compile(source).match, tuple(r for _, r in run)))
            run.clear()

    for pattern, route in regexes:
        compiled = _compileRegex(pattern)
        ignoreCase = pattern.startswith("~*")
        expected = re.UNICODE | (re.IGNORECASE if ignoreCase else 0)
        if compiled.groups == 0 and compiled.flags == expected:
            body = pattern[2:] if ignoreCase else pattern[1:]
            run.append((f"(?i:{body})" if ignoreCase else f"(?:{body})", route))
        else:
            flush()
            tiers.append((compiled.search, (route,)))
    flush()
    return tiers
