"""
Tests for the QUIC keys of L{gateway.config}: C{udp:} endpoints in
C{listen}, C{quic_idle_timeout}, C{quic_max_flows}, and what C{check}
refuses on a listener with a UDP endpoint.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.udpendpoints import (
    UDPEndpoint,
    UDPEndpointError,
    isUDPEndpoint,
    parseUDPEndpoint,
)
from gateway.run.loading import load_config
from tests.config.test_config import listener, problems, write


def test_udpEndpointsParse() -> None:
    assert parseUDPEndpoint("udp:443") == UDPEndpoint(False, 443, "")
    assert parseUDPEndpoint("udp:0:interface=127.0.0.1") == UDPEndpoint(
        False, 0, "127.0.0.1"
    )
    assert parseUDPEndpoint("udp6:443") == UDPEndpoint(True, 443, "")
    assert parseUDPEndpoint("udp6:443:interface=\\:\\:1") == UDPEndpoint(
        True, 443, "::1"
    )
    assert parseUDPEndpoint("udp:443:interface=\\:\\:1").ipv6
    assert parseUDPEndpoint("udp:443").bindAddress == "0.0.0.0"
    assert parseUDPEndpoint("udp6:443").bindAddress == "::"


@pytest.mark.parametrize(
    "description",
    [
        "udp:",
        "udp:https",
        "udp:70000",
        "udp:443:interface=example.com",
        "udp:443:backlog=5",
        "udp6:443:interface=127.0.0.1",
        "tcp:443",
    ],
)
def test_badUDPEndpointsAreRefused(description: str) -> None:
    with pytest.raises(UDPEndpointError):
        parseUDPEndpoint(description)


@given(st.text(max_size=40))
def test_anyTextParsesOrRaisesUDPEndpointError(text: str) -> None:
    with contextlib.suppress(UDPEndpointError):
        parseUDPEndpoint("udp:" + text)


def test_isUDPEndpoint() -> None:
    assert isUDPEndpoint("udp:443")
    assert isUDPEndpoint("UDP6:443")
    assert not isUDPEndpoint("tcp:443")
    assert not isUDPEndpoint("unix:/run/udp:1")


def test_udpBesideTCPOnOneListener(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = tcp:8443, udp:8443:interface=127.0.0.1, udp6:8443
        routes =
          a.example app
          ALPN:h3 api
        quic_idle_timeout = 1m
        quic_max_flows = 10
        """
    )
    (web,) = load_config(write(tmp_path, text)).listeners
    assert web.listen == (
        "tcp:8443",
        "udp:8443:interface=127.0.0.1",
        "udp6:8443",
    )
    assert web.udpListen == ("udp:8443:interface=127.0.0.1", "udp6:8443")
    assert web.streamListen == ("tcp:8443",)
    assert web.quic_idle_timeout == 60.0
    assert web.quic_max_flows == 10


def test_quicDefaults(tmp_path: Path) -> None:
    text = listener("listen = udp:8443\nupstream = app\n")
    (web,) = load_config(write(tmp_path, text)).listeners
    assert (web.quic_idle_timeout, web.quic_max_flows) == (30.0, 100000)


def test_terminateOnAUDPListenerIsAProblem(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = tcp:8443, udp:8443
        mode = terminate
        protocol = postgres
        certificate = cert.pem
        private_key = key.pem
        upstream = app
        """
    )
    found = problems(tmp_path, text)
    assert (
        "gw.ini:3: [listener:web] mode: mode = terminate on a listener with UDP"
        " endpoint 'udp:8443': QUIC is passed through only (use mode ="
        " passthrough, or move the UDP endpoint to a listener of its own)"
    ) in found
    assert (
        "gw.ini:4: [listener:web] protocol: UDP endpoint 'udp:8443' carries QUIC:"
        " protocol must be tls"
    ) in found


def test_aTerminatingRouteOnAUDPListenerIsAProblem(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = udp:8443
        certificate = cert.pem
        private_key = key.pem
        routes =
          a.example app terminate
          default api
        """
    )
    assert (
        "gw.ini:6: [listener:web] routes: route 'a.example' terminates TLS, but"
        " QUIC on UDP endpoint 'udp:8443' is passed through only"
    ) in problems(tmp_path, text)


def test_badUDPEndpointsAndKeysAreReportedTogether(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = udp:99999, udp:1:interface=nowhere
        upstream = app
        quic_idle_timeout = soon
        quic_max_flows = 0
        """
    )
    found = problems(tmp_path, text)
    # Every bad entry of the list is named, each on its own line.
    assert [p.split(": ")[1] for p in found] == [
        "[listener:web] listen",
        "[listener:web] listen",
        "[listener:web] quic_idle_timeout",
        "[listener:web] quic_max_flows",
    ]
    assert "'udp:99999': port '99999' is not in 0..65535" in found[0]
    assert "'udp:1:interface=nowhere'" in found[1]


def test_twoListenersOnOneUDPAddressIsAProblem(tmp_path: Path) -> None:
    text = listener(
        "listen = udp:8443\nupstream = app\n"
        "[listener:other]\nlisten = udp:8443:interface=0.0.0.0, tcp:8443\n"
        "upstream = app\n"
    )
    assert problems(tmp_path, text) == [
        "gw.ini:5: [listener:other] listen: 'udp:8443:interface=0.0.0.0' listens"
        " on the same address as 'udp:8443' in [listener:web]"
    ]
