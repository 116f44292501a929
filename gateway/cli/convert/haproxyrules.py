"""
HAProxy ACLs and conditions, as far as a TLS gateway can follow them.

Pure.  A C{use_backend ... if COND} or C{tcp-request ... if COND} is read
into its terms (ACL names and C{{ inline }} criteria, C{!}, C{||}); a
criterion on the server name (C{req_ssl_sni}, C{req.ssl_sni},
C{ssl_fc_sni}) becomes route patterns, one on the client address (C{src})
networks, and C{req_ssl_hello_type 1} is what the gateway always waits
for.  Anything else makes the rule unconvertible, and the caller notes it.

HAProxy tries C{use_backend} rules in file order; the gateway tries the
most specific pattern first (exact name, longest wildcard, first regex).
L{shadowedBy} finds the routes whose order matters, so that the converter
drops a route HAProxy never reaches instead of letting it win.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

__all__ = ["Criterion", "Term", "parseCondition", "shadowedBy", "sniPatterns"]

SNI_FETCHES = {"req_ssl_sni", "req.ssl_sni", "ssl_fc_sni"}
HELLO_FETCHES = {"req_ssl_hello_type", "req.ssl_hello_type"}


class Unconvertible(Exception):
    """A condition or criterion the gateway cannot express; the message says why."""


@attrs.frozen
class Criterion:
    """One ACL criterion: a fetch, its flags, its values."""

    fetch: str
    ignoreCase: bool
    method: str
    values: tuple[str, ...]


@attrs.frozen
class Term:
    """One term of a condition: an ACL's criteria (OR), maybe negated."""

    negated: bool
    criteria: tuple[Criterion, ...]
    text: str


def parseCriterion(words: Sequence[str]) -> Criterion:
    """
    C{req_ssl_sni -i -m end .example.com} into its parts.

    @raise Unconvertible: for pattern files and flags the gateway cannot
        follow.
    """
    if not words:
        raise Unconvertible("an empty criterion")
    fetch, rest = words[0], list(words[1:])
    ignoreCase, method = False, "str"
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag == "--":
            break
        if flag == "-i":
            ignoreCase = True
        elif flag == "-m" and rest:
            method = rest.pop(0)
        elif flag in ("-n", "-u") or (flag == "-M"):
            continue
        elif flag == "-f":
            raise Unconvertible("patterns from a file (-f) are not read: list them")
        else:
            raise Unconvertible(f"the flag {flag} has no equivalent")
    return Criterion(fetch, ignoreCase, method, tuple(rest))


def _tokens(words: Sequence[str]) -> list[str]:
    """Split C{{}}, C{!} and C{||} off the words they may be written against."""
    out: list[str] = []
    for word in words:
        while word.startswith(("!", "{")) and len(word) > 1:
            out.append(word[0])
            word = word[1:]
        tail = []
        while word.endswith("}") and len(word) > 1:
            tail.append("}")
            word = word[:-1]
        out.append(word)
        out += tail
    return out


def parseCondition(
    words: Sequence[str], acls: Mapping[str, Sequence[Criterion]]
) -> list[list[Term]]:
    """
    C{if}/C{unless} and what follows, as OR-groups of AND-ed terms.

    C{unless X} is read as C{if !X} when X is one term.

    @raise Unconvertible: for an unknown ACL, an unbalanced brace, or an
        C{unless} over more than one term.
    """
    if not words or words[0] not in ("if", "unless"):
        raise Unconvertible("expected 'if' or 'unless'")
    tokens = _tokens(words[1:])
    groups: list[list[Term]] = [[]]
    negated = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("||", "or"):
            groups.append([])
        elif token == "!":  # noqa: S105 (a condition's "not", no password)
            negated = not negated
        elif token == "{":  # noqa: S105 (an inline ACL, no password)
            end = tokens.index("}", i) if "}" in tokens[i:] else -1
            if end < 0:
                raise Unconvertible("a '{' is never closed")
            inner = tokens[i + 1 : end]
            text = "{ " + " ".join(inner) + " }"
            groups[-1].append(Term(negated, (parseCriterion(inner),), text))
            negated, i = False, end
        else:
            if token not in acls:
                raise Unconvertible(f"no acl named {token!r}")
            groups[-1].append(Term(negated, tuple(acls[token]), token))
            negated = False
        i += 1
    if words[0] == "unless":
        if len(groups) != 1 or len(groups[0]) != 1:
            raise Unconvertible("'unless' over several terms")
        only = groups[0][0]
        groups = [[Term(not only.negated, only.criteria, only.text)]]
    return groups


def isHelloCheck(term: Term) -> bool:
    """C{{ req_ssl_hello_type 1 }}: true of every ClientHello the gateway reads."""
    return not term.negated and all(
        c.fetch in HELLO_FETCHES and c.values == ("1",) for c in term.criteria
    )


def _regexFor(criterion: Criterion, value: str) -> str:
    escaped = re.escape(value)
    bodies = {
        "beg": f"^{escaped}",
        "end": f"{escaped}$",
        "sub": escaped,
        "dom": rf"(^|\.){escaped}($|\.)",
        "reg": value,
        "str": f"^{escaped}$",
    }
    return ("~*" if criterion.ignoreCase else "~") + bodies[criterion.method]


def sniPatterns(criterion: Criterion) -> list[str]:
    """
    The gateway's route patterns for a server-name criterion.

    Exact names and C{-m end .example.com} keep the gateway's own
    spelling (C{*.example.com}); the rest becomes a regex doing what
    HAProxy does.

    @raise Unconvertible: for other fetches and methods.
    """
    if criterion.fetch not in SNI_FETCHES:
        raise Unconvertible(f"{criterion.fetch}: the gateway routes on the server name")
    if criterion.method not in ("str", "end", "beg", "sub", "dom", "reg"):
        raise Unconvertible(f"-m {criterion.method} has no equivalent")
    if not criterion.values:
        raise Unconvertible("no value to match")
    patterns = []
    for value in criterion.values:
        plain = re.fullmatch(r"[A-Za-z0-9_.-]+", value) is not None
        if criterion.method == "str" and plain and not value.startswith("."):
            patterns.append(value.lower())
        elif (
            criterion.method == "end"
            and plain
            and value.startswith(".")
            and len(value) > 1
        ):
            patterns.append("*" + value.lower())
        else:
            patterns.append(_regexFor(criterion, value))
    return patterns


# -- precedence ------------------------------------------------------------------


def _kind(pattern: str) -> tuple[str, str]:
    """C{("exact"|"below"|"self_below"|"regex"|"default", domain or regex)}."""
    if pattern == "default":
        return "default", ""
    if pattern.startswith("~"):
        return "regex", pattern
    if pattern.startswith("*."):
        return "below", pattern[2:]
    if pattern.startswith("."):
        return "self_below", pattern[1:]
    return "exact", pattern


def _under(name: str, domain: str, itself: bool) -> bool:
    return name.endswith("." + domain) or (itself and name == domain)


def _regexMatches(pattern: str, name: str) -> bool:
    body = pattern[2:] if pattern.startswith("~*") else pattern[1:]
    flags = re.IGNORECASE if pattern.startswith("~*") else 0
    try:
        return re.search(body, name, flags) is not None
    except re.error:
        return False


def shadowedBy(earlier: str, later: str) -> str | None:
    """
    How route C{earlier}, tried first by HAProxy, relates to C{later},
    which the gateway may prefer.

    @return: C{"never"} when HAProxy never reaches C{later} (every name it
        matches, C{earlier} matched first: drop it), C{"some"} when it does
        for some names only (the order cannot be kept: note it), L{None}
        when the gateway's order gives the same answer.
    """
    first, second = _kind(earlier), _kind(later)
    if second[0] in ("default", "regex") or first[0] in ("default", "exact"):
        return None
    if second[0] == "exact":
        name = second[1]
        if first[0] == "regex":
            return "never" if _regexMatches(first[1], name) else None
        return "never" if _under(name, first[1], first[0] == "self_below") else None
    domain, itself = second[1], second[0] == "self_below"
    if first[0] == "regex":
        samples = [f"x.{domain}", *([domain] if itself else [])]
        return "some" if any(_regexMatches(first[1], s) for s in samples) else None
    covers = first[0] == "self_below" or not itself
    if _under(domain, first[1], True) and (domain != first[1] or covers):
        return "never"
    if domain == first[1]:
        return "some"
    return None
