"""
Tests for L{gateway.core.routing}: NGINX C{map hostnames} patterns, plus ALPN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import re2  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.routing import Router, normalizeName, normalizePattern


@attrs.frozen
class Route:
    """
    A test route: a pattern and a name to recognise it by.
    """

    pattern: str
    name: str = ""


def router(*patterns: str) -> Router[Route]:
    """
    A router whose routes are named after their patterns.
    """
    return Router([Route(pattern, pattern) for pattern in patterns])


def chosen(
    r: Router[Route], serverName: str | None, alpn: Sequence[str | bytes] = ()
) -> str | None:
    """
    The name of the route a hello takes, or L{None}.
    """
    route = r.match(serverName, alpn)
    return None if route is None else route.name


# --- normalizePattern ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  example.com  ", "example.com"),
        ("*.Example.com.", "*.example.com"),
        (".Example.com", ".example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        (".bücher.example", ".xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),
        ("_acme-challenge.Example.com", "_acme-challenge.example.com"),
        ("localhost", "localhost"),
        ("default", "default"),
        ("DEFAULT", "default"),
        ("ALPN:h2", "ALPN:h2"),
        ("alpn:http/1.1", "ALPN:http/1.1"),
        ("ALPN:H2", "ALPN:H2"),
        ("~^API\\.", "~^API\\."),
        ("~*^api\\.", "~*^api\\."),
        ("~\\d+", "~\\d+"),
    ],
)
def test_patternsAreNormalised(raw: str, normal: str) -> None:
    assert normalizePattern(raw) == normal


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty pattern"),
        ("a..example.com", "has an empty label"),
        ("*.a..b", "bad pattern '*.a..b': 'a..b' has an empty label"),
        ("a.*.example.com", "'*' is only allowed as the whole first label"),
        ("www.example.*", "'*' is only allowed as the whole first label"),
        ("*example.com", "'*' is only allowed as the whole first label"),
        ("**.example.com", "'*' is only allowed as the whole first label"),
        ("*", "use default to match everything"),
        ("~(", "bad regex '(': missing ): ( (route regexes use RE2 syntax"),
        ("~*[", "bad regex '[': missing ]: ["),
        ("~(x)\\1", "bad regex '(x)\\\\1': invalid escape sequence: \\1"),
        ("~^(?=api)", "bad regex '^(?=api)': invalid perl operator: (?="),
        ("~", "empty regex"),
        ("ALPN:", "names no ALPN protocol"),
        ("ALPN:h\u00e92", "printable ASCII"),
        ("-bad.example.com", "may only contain letters, digits"),
        ("ex!ample.com", "may only contain letters, digits"),
        ("a" * 64 + ".example.com", "label longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("xn--zz.example", "invalid IDNA A-label 'xn--zz'"),
        ("bü cher.example", "is not a valid IDNA host name"),
        (".", "is empty"),
        ("*.", "is empty"),
    ],
)
def test_badPatternsSayWhatIsWrong(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        normalizePattern(raw)


def test_normalizeNameRejectsEmptyNames() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalizeName(" . ")


# --- Router: the tiers ----------------------------------------------------------


PRECEDENCE = router(
    "default",
    "~example",
    "*.com",
    ".example.com",
    "*.api.example.com",
    "api.example.com",
    "ALPN:acme-tls/1",
)


@pytest.mark.parametrize(
    ("serverName", "alpn", "route"),
    [
        ("api.example.com", (), "api.example.com"),
        ("v1.api.example.com", (), "*.api.example.com"),
        ("deep.v1.api.example.com", (), "*.api.example.com"),
        ("www.example.com", (), ".example.com"),
        ("example.com", (), ".example.com"),
        ("other.com", (), "*.com"),
        ("example.org", (), "~example"),
        ("www.example.net", (), "~example"),
        ("localhost", (), "default"),
        (None, (), "default"),
        ("api.example.com", ("h2", "acme-tls/1"), "ALPN:acme-tls/1"),
        (None, ("acme-tls/1",), "ALPN:acme-tls/1"),
        ("api.example.com", ("h2",), "api.example.com"),
    ],
)
def test_precedence(serverName: str | None, alpn: tuple[str, ...], route: str) -> None:
    """
    ALPN, then exact, then the longest wildcard, then the first regex,
    then default.
    """
    assert chosen(PRECEDENCE, serverName, alpn) == route


def test_starWildcardMatchesAnyDepthButNotTheNameItself() -> None:
    r = router("*.example.com")
    assert chosen(r, "a.example.com") == "*.example.com"
    assert chosen(r, "a.b.c.example.com") == "*.example.com"
    assert chosen(r, "example.com") is None
    assert chosen(r, "badexample.com") is None
    assert chosen(r, "example.com.evil") is None


def test_dotWildcardMatchesTheNameItselfAndBelow() -> None:
    r = router(".example.com")
    assert chosen(r, "example.com") == ".example.com"
    assert chosen(r, "a.b.example.com") == ".example.com"
    assert chosen(r, "badexample.com") is None


def test_exactBeatsDotWildcardForTheNameItself() -> None:
    r = router(".example.com", "example.com")
    assert chosen(r, "example.com") == "example.com"
    assert chosen(r, "www.example.com") == ".example.com"


def test_longestWildcardWins() -> None:
    r = router("*.com", "*.example.com", ".api.example.com")
    assert chosen(r, "x.api.example.com") == ".api.example.com"
    assert chosen(r, "api.example.com") == ".api.example.com"
    assert chosen(r, "x.example.com") == "*.example.com"
    assert chosen(r, "x.org.com") == "*.com"


def test_serverNameCaseAndTrailingDotAreIgnored() -> None:
    r = router("api.example.com", "*.example.com")
    assert chosen(r, "API.Example.COM.") == "api.example.com"
    assert chosen(r, "WWW.EXAMPLE.COM") == "*.example.com"


def test_unicodeRouteMatchesTheALabelClientsSend() -> None:
    r = router("bücher.example", "*.straße.de")
    assert chosen(r, "xn--bcher-kva.example") == "bücher.example"
    assert chosen(r, "XN--BCHER-KVA.EXAMPLE.") == "bücher.example"
    assert chosen(r, "shop.xn--strae-oqa.de") == "*.straße.de"


def test_regexesAreSearchedInFileOrder() -> None:
    r = router("~^www", "~example", "~^www\\.example")
    assert chosen(r, "www.example.com") == "~^www"
    assert chosen(r, "mail.example.com") == "~example"
    assert chosen(r, "nothing.org") is None


def test_regexIsSearchedNotAnchored() -> None:
    assert chosen(router("~amp"), "www.example.com") == "~amp"
    assert chosen(router("~^amp"), "www.example.com") is None
    assert chosen(router("~com$"), "www.example.com") == "~com$"


def test_regexSeesTheLowerCaseName() -> None:
    assert chosen(router("~^api\\."), "API.example.com") == "~^api\\."
    assert chosen(router("~^API\\."), "API.example.com") is None
    assert chosen(router("~*^API\\."), "API.example.com") == "~*^API\\."


def test_regexesWithGroupsAndFlagsKeepTheirPlace() -> None:
    """
    Regexes with groups of their own or inline flags are merged with the
    others without losing file order.
    """
    r = router("~^nope", "~^(a|b)c", "~^a", "~(?i)^A", "~^b", "~(?s)^c")
    assert chosen(r, "ac.example") == "~^(a|b)c"
    assert chosen(r, "ab.example") == "~^a"
    assert chosen(r, "bc.example") == "~^(a|b)c"
    assert chosen(r, "bb.example") == "~^b"
    assert chosen(r, "c.example") == "~(?s)^c"


def test_inlineFlagsDoNotLeakIntoTheNextRegex() -> None:
    r = router("~(?i)^X", "~B")
    assert chosen(r, "x.example") == "~(?i)^X"
    assert chosen(r, "b.example") is None


@pytest.mark.timeout(30)
def test_catastrophicPatternsRunInLinearTime() -> None:
    """
    With backtracking (Python's C{re}), C{^(a+)+$} against 62 letters and
    a mismatch at the end would take longer than the universe is old; RE2
    answers at once, so this test ends well within its timeout.
    """
    name = "a" * 62 + "b.example"
    r = router("~^(a+)+$", "~^(a|aa)+$", "~(x+x+)+y", "default")
    assert chosen(r, name) == "default"
    assert chosen(r, "a" * 63) == "~^(a+)+$"


def test_manyRegexesStillPickTheFirstInFileOrder() -> None:
    patterns = [f"~^api-[0-9]+\\.region{i}\\.internal$" for i in range(90)]
    patterns.append("~internal$")
    r = router(*patterns)
    assert chosen(r, "api-7.region42.internal") == patterns[42]
    assert chosen(r, "db.region42.internal") == "~internal$"
    assert chosen(r, "db.region42.example") is None


def test_alpnRoutesComeBeforeNames() -> None:
    r = router("api.example.com", "ALPN:h2", "default")
    assert chosen(r, "api.example.com", ["h2"]) == "ALPN:h2"
    assert chosen(r, "api.example.com", ["http/1.1"]) == "api.example.com"
    assert chosen(r, "api.example.com") == "api.example.com"


def test_firstAlpnRouteInFileOrderWins() -> None:
    """
    The file decides between two offered protocols, not the client's
    preference order.
    """
    r = router("ALPN:http/1.1", "ALPN:h2")
    assert chosen(r, None, ["h2", "http/1.1"]) == "ALPN:http/1.1"
    assert chosen(r, None, ["h2"]) == "ALPN:h2"


def test_alpnMayBeGivenAsWireBytes() -> None:
    r = router("ALPN:postgresql")
    assert chosen(r, None, [b"postgresql"]) == "ALPN:postgresql"
    assert chosen(r, None, [b"\xff\xfe"]) is None


def test_alpnIsCaseSensitive() -> None:
    assert chosen(router("ALPN:h2"), None, ["H2"]) is None


@pytest.mark.parametrize("serverName", [None, "", "."])
def test_helloWithoutSniOnlyMatchesAlpnAndDefault(serverName: str | None) -> None:
    r = router("~.*", "~^$", ".example.com", "example.com")
    assert chosen(r, serverName) is None
    r = router("~.*", "default", "ALPN:h2")
    assert chosen(r, serverName) == "default"
    assert chosen(r, serverName, ["h2"]) == "ALPN:h2"


def test_noMatchAndNoDefaultIsNone() -> None:
    assert chosen(router("example.com", "*.example.org"), "example.net") is None
    assert chosen(router(), "example.net") is None


def test_duplicatePatternsFirstWins() -> None:
    r = Router(
        [
            Route("example.com", "first"),
            Route("EXAMPLE.com.", "second"),
            Route("*.example.org", "first star"),
            Route(".example.org", "dot after star"),
            Route("~x", "first regex"),
            Route("~x", "second regex"),
            Route("default", "first default"),
            Route("default", "second default"),
            Route("ALPN:h2", "first alpn"),
            Route("ALPN:h2", "second alpn"),
        ]
    )
    assert chosen(r, "example.com") == "first"
    assert chosen(r, "www.example.org") == "first star"
    assert chosen(r, "example.org") == "dot after star"
    assert chosen(r, "x.net") == "first regex"
    assert chosen(r, "y.net") == "first default"
    assert chosen(r, "y.net", ["h2"]) == "first alpn"


def test_routerNormalisesPatternsAsTyped() -> None:
    r = Router([Route("*.Bücher.Example.", "shop")])
    assert chosen(r, "www.xn--bcher-kva.example") == "shop"


def test_routerRefusesBadPatterns() -> None:
    with pytest.raises(ValueError, match="bad regex"):
        router("~(")


# --- properties -------------------------------------------------------------------

# Hyphens in the third and fourth places are reserved for A-labels
# ("xn--"), which IDNA refuses unless they are valid punycode: not a host
# name an operator types, so not one these properties generate.
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"
)
names = st.lists(labels, min_size=1, max_size=6).map(".".join)


@given(names, st.data())
def test_exactRouteAlwaysWins(name: str, data: st.DataObject) -> None:
    """
    Whatever wildcards, regexes and default surround it, in any order, an
    exact route takes its own name.
    """
    labels = name.split(".")
    others = [f"*.{'.'.join(labels[i:])}" for i in range(1, len(labels))]
    others += [f".{'.'.join(labels[i:])}" for i in range(len(labels))]
    others += ["~.", "~^", f"~{re.escape(name)}", "default"]
    routes = data.draw(st.permutations([*others, name]))
    assert chosen(router(*routes), name.upper() + ".") == name


@given(names, st.data())
def test_longestMatchingWildcardWins(name: str, data: st.DataObject) -> None:
    labels = name.split(".")
    candidates = [f"*.{'.'.join(labels[i:])}" for i in range(1, len(labels))]
    candidates += [f".{'.'.join(labels[i:])}" for i in range(len(labels))]
    routes = data.draw(st.lists(st.sampled_from(candidates), unique=True, min_size=1))
    routes = data.draw(st.permutations(routes))

    def suffixLength(pattern: str) -> int:
        return len(pattern.removeprefix("*").removeprefix("."))

    longest = max(suffixLength(p) for p in routes)
    expected = next(p for p in routes if suffixLength(p) == longest)
    assert chosen(router(*routes), name) == expected


regexParts = st.sampled_from(
    [
        "a",
        "b",
        ".",
        "^",
        "$",
        "a+",
        "b*",
        "[ab]",
        "(?:a|b)",
        "\\.",
        "(a)",
        "(b)",
        "x?",
        "(?i)A",
        "\\d",
    ]
)
regexes = st.lists(regexParts, min_size=1, max_size=4).map("".join)


@given(
    st.lists(regexes, min_size=1, max_size=8),
    st.text(alphabet="ab.1x", max_size=8),
)
def test_mergedRegexesPickTheFirstThatSearchMatches(
    patterns: list[str], name: str
) -> None:
    """
    However the router merges regexes, it picks what a plain loop of
    RE2 searches in file order picks.
    """
    compiled: list[Any] = []
    routes: list[Route] = []
    for index, pattern in enumerate(patterns):
        try:
            compiled.append(re2.compile(pattern))
        except re2.error:
            continue
        routes.append(Route(f"~{pattern}", str(index)))
    seen = name.removesuffix(".")  # what the router matches against
    expected = next(
        (
            route.name
            for route, c in zip(routes, compiled, strict=True)
            if c.search(seen)
        ),
        None,
    )
    assert chosen(Router(routes), name or None) == (expected if seen else None)


@given(names, st.sampled_from(["", "*.", "."]))
def test_normalisingTwiceChangesNothing(name: str, prefix: str) -> None:
    once = normalizePattern(prefix + name.upper() + ".")
    assert normalizePattern(once) == once


@given(st.one_of(st.none(), st.text()), st.lists(st.one_of(st.text(), st.binary())))
def test_matchNeverRaises(serverName: str | None, alpn: list[str | bytes]) -> None:
    r = router(
        "example.com", "*.example.com", ".example.org", "~^a", "~(x)+", "ALPN:h2"
    )
    r.match(serverName, alpn)


def test_aTableTooLargeForOneRE2ProgramIsStillSearchedInOrder() -> None:
    """
    Past RE2's memory budget for one program, the regexes are searched one
    by one: slower, with the same answers.
    """
    patterns = [f"~^x{i}[a-z]{{1000}}" for i in range(400)] + ["~example", "~^www"]
    r = router(*patterns)
    assert r._regexes._set is None  # the fallback is what this test is about
    assert chosen(r, "x3" + "a" * 1000) == "~^x3[a-z]{1000}"
    assert chosen(r, "www.example.com") == "~example"
    assert chosen(r, "www.other.org") == "~^www"
    assert chosen(r, "nothing.org") is None
