"""
Every problem at once: what one mistake used to hide behind another.

A duplicate section or key, a bad entry after the first bad entry of a
list, a bad flag after a bad address on a server line: each is reported,
at its own line, in the same run as the rest.
"""

from __future__ import annotations

import random
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, parseConfigText

LISTENER = """\
[listener:web]
listen = tcp:8443
upstream = app
"""


def problems(text: str) -> list[str]:
    """
    The problems of C{text} as C{gw.ini}, as C{check} prints them.
    """
    with pytest.raises(ConfigError) as caught:
        parseConfigText(textwrap.dedent(text), "gw.ini")
    return [str(p) for p in caught.value.problems]


def test_aDuplicateSectionDoesNotHideTheErrorsOfTheCopyItReplaces() -> None:
    """
    configparser keeps the last value of a key, across two copies of a
    section too: the values the second copy replaced are converted all
    the same, so their problems show with the duplicate.
    """
    assert (
        problems(
            LISTENER + "\n"  # 4
            "[upstream:app]\n"  # 5
            "servers = 127.0.0.1:99999\n"  # 6
            "balance = roundrobin\n"  # 7
            "health_check = tcp\n"  # 8
            "\n"
            "[upstream:app]\n"  # 10
            "servers = 127.0.0.1:8080\n"  # 11
            "balance = round_robin\n"  # 12
            "bogus = 1\n"  # 13
        )
        == [
            "gw.ini:6: [upstream:app] servers: '127.0.0.1:99999': '99999' is not a"
            " port (use 1..65535)",
            "gw.ini:7: [upstream:app] balance: 'roundrobin' is not one of round_robin,"
            " least_conn, random, hash",
            "gw.ini:10: [upstream:app]: duplicate section (first on line 5)",
            "gw.ini:11: [upstream:app] servers: duplicate key (first on line 6)",
            "gw.ini:12: [upstream:app] balance: duplicate key (first on line 7)",
            "gw.ini:13: [upstream:app] bogus: unknown key",
        ]
    )


def test_aDuplicateKeyDoesNotHideTheErrorsOfTheValueItReplaces() -> None:
    assert problems(
        "[listener:web]\n"  # 1
        "listen = tcp:8443\n"  # 2
        "allow = 10.0.0.1/8\n"  # 3
        "routes =\n"  # 4
        "    bad~( app\n"  # 5
        "    x.test nope\n"  # 6
        "allow = 10.0.0.0/8\n"  # 7
        "routes = y.test app\n"  # 8
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080 weight=x\n"  # 11
        "servers = 127.0.0.1:8080\n"  # 12
    ) == [
        "gw.ini:3: [listener:web] allow: '10.0.0.1/8' has host bits set (did you"
        " mean 10.0.0.0/8?)",
        "gw.ini:5: [listener:web] routes: 'bad~(' is not a host name: 'bad~(' may"
        " only contain letters, digits, '-' and '_', and not start or end with '-'",
        "gw.ini:6: [listener:web] routes: upstream 'nope' is not defined (no"
        " [upstream:nope] section)",
        "gw.ini:7: [listener:web] allow: duplicate key (first on line 3)",
        "gw.ini:8: [listener:web] routes: duplicate key (first on line 4)",
        "gw.ini:11: [upstream:app] servers: weight=x: 'x' is not a whole number",
        "gw.ini:12: [upstream:app] servers: duplicate key (first on line 11)",
    ]


def test_aGoodReplacedValueAddsNothing() -> None:
    """
    Only the duplicate is reported when the value it replaced was fine.
    """
    assert (
        problems(
            LISTENER + "upstream = app\n"  # 4
            "\n"
            "[upstream:app]\n"
            "servers = 127.0.0.1:8080\n"
        )
        == ["gw.ini:4: [listener:web] upstream: duplicate key (first on line 3)"]
    )


def test_everyBadEntryOfAnAddressListIsNamed() -> None:
    assert problems(
        LISTENER + "allow = 10.0.0.1/8, 300.1.1.1, 10.0.0.0/33, 10.0.0.0/8\n"
        "deny = ::1/129, 192.0.2.0/24, nonsense\n"
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n"
    ) == [
        "gw.ini:4: [listener:web] allow: '10.0.0.1/8' has host bits set (did you"
        " mean 10.0.0.0/8?)",
        "gw.ini:4: [listener:web] allow: '300.1.1.1' is not an IP address or CIDR"
        " network",
        "gw.ini:4: [listener:web] allow: '10.0.0.0/33': /33 is not a prefix length"
        " for IPv4 (use 0..32)",
        "gw.ini:5: [listener:web] deny: '::1/129': /129 is not a prefix length for"
        " IPv6 (use 0..128)",
        "gw.ini:5: [listener:web] deny: 'nonsense' is not an IP address or CIDR"
        " network",
    ]


def test_everyBadEntryOfOtherListsIsNamed() -> None:
    found = problems(
        "[listener:web]\n"
        "listen = tcp:8443, 443, tcp:99999\n"  # 2
        "upstream = app\n"
        "deny_ja4 = x, y\n"  # 4
        "alpn = h2, b\u00e4d, w\u00f6rse\n"  # 5
        "protocols = TLSv1, TLSv1.1, foo\n"  # 6
        "passthrough_protocols = TLSv1.2, v4, v5\n"  # 7
        "groups = X25519:bad!:X25519\n"  # 8
        "certificates = a b, c/d\n"  # 9
        "\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n"
    )
    keys = [line.split(": ")[1] for line in found]
    assert keys.count("[listener:web] listen") == 2
    assert keys.count("[listener:web] deny_ja4") == 2
    assert keys.count("[listener:web] alpn") == 2
    assert keys.count("[listener:web] protocols") == 3
    assert keys.count("[listener:web] passthrough_protocols") == 2
    assert keys.count("[listener:web] groups") == 2
    assert keys.count("[listener:web] certificates") == 2


def test_everyBadPartOfAServerLineIsNamed() -> None:
    """
    A bad port does not hide a bad weight on the same line, nor the flags
    after it.
    """
    assert (
        problems(
            LISTENER + "\n"
            "[upstream:app]\n"
            "servers =\n"  # 6
            "    127.0.0.1:99999 weight=x max_fails=-1 weight=2 frob\n"  # 7
            "    [::1:443 backup=yes\n"  # 8
        )
        == [
            "gw.ini:7: [upstream:app] servers: '127.0.0.1:99999': '99999' is not a"
            " port (use 1..65535)",
            "gw.ini:7: [upstream:app] servers: weight=x: 'x' is not a whole number",
            "gw.ini:7: [upstream:app] servers: max_fails=-1: '-1' is not a whole number",
            "gw.ini:7: [upstream:app] servers: weight is given twice",
            "gw.ini:7: [upstream:app] servers: unknown server flag 'frob' (use"
            " weight=N, max_fails=N, fail_timeout=DURATION or backup)",
            "gw.ini:8: [upstream:app] servers: '[::1:443' is not [IPv6]:PORT",
            "gw.ini:8: [upstream:app] servers: unknown server flag 'backup=yes' (use"
            " weight=N, max_fails=N, fail_timeout=DURATION or backup)",
        ]
    )


@given(
    good=st.lists(st.sampled_from(["10.0.0.0/8", "192.0.2.1", "::1", "all"])),
    bad=st.lists(
        st.sampled_from(["10.0.0.1/8", "300.1.1.1", "10.0.0.0/33", "x", "::/200"]),
        min_size=1,
    ),
    order=st.randoms(use_true_random=False),
)
def test_aListNamesEachOfItsBadEntriesOnce(
    good: list[str], bad: list[str], order: random.Random
) -> None:
    """
    However good and bad entries are mixed, each bad one is a problem of
    its own, in list order, and the good ones add nothing.
    """
    entries = [*good, *bad]
    order.shuffle(entries)
    found = problems(
        LISTENER + f"allow = {', '.join(entries)}\n\n[upstream:app]\nservers = a:1\n"
    )
    named = [line.split(": ", 3)[2].split("'")[1] for line in found]
    assert named == [entry for entry in entries if entry in bad]


_FLAGS = {
    "weight": ("weight=3", "weight=x"),
    "max_fails": ("max_fails=0", "max_fails=-1"),
    "fail_timeout": ("fail_timeout=5s", "fail_timeout=soon"),
    "backup": ("backup", "backup=yes"),
}


@given(
    badAddress=st.booleans(),
    flags=st.dictionaries(st.sampled_from(sorted(_FLAGS)), st.booleans()),
)
def test_aServerLineNamesEachOfItsBadParts(
    badAddress: bool, flags: dict[str, bool]
) -> None:
    """
    Whatever else is wrong on the line, each bad part is one problem, in
    the order written, and a good line is a server.
    """
    address = "127.0.0.1:70000" if badAddress else "127.0.0.1:7000"
    tokens = [_FLAGS[name][bad] for name, bad in flags.items()]
    text = LISTENER + f"\n[upstream:app]\nservers = {' '.join([address, *tokens])}\n"
    wrong = (["127.0.0.1:70000"] if badAddress else []) + [
        _FLAGS[name][1] for name, bad in flags.items() if bad
    ]
    if not wrong:
        [server] = parseConfigText(text, "gw.ini").upstreams["app"].servers
        assert server.port == 7000
        return
    found = problems(text)
    assert len(found) == len(wrong)
    for line, part in zip(found, wrong, strict=True):
        assert line.startswith("gw.ini:6: [upstream:app] servers: ")
        assert part in line
