"""
L{gateway.protocols.mysql.login}: the client's login as each server gets
it, on values alone (the wire shapes are L{gateway.wire.mysql}'s, tested
there).
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.mysql.login import (
    SWITCH_PLUGIN,
    ServerLogin,
    Unforwardable,
    serverLogin,
)
from gateway.wire.mysql import (
    CLIENT_PLUGIN_AUTH,
    CLIENT_PROTOCOL_41,
    CLIENT_SSL,
    Greeting,
    HandshakeResponse,
)

SERVER = CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH | CLIENT_SSL
LOGIN = HandshakeResponse(
    capabilities=CLIENT_PROTOCOL_41 | CLIENT_PLUGIN_AUTH | CLIENT_SSL | 1 << 20,
    maxPacketSize=1 << 24,
    charset=0x21,
    reserved=b"\x00" * 23,
    user="alice",
    authResponse=b"H" * 20,
    database="shop",
    authPlugin="mysql_native_password",
)


def greeting(capabilities: int = SERVER) -> Greeting:
    return Greeting(
        serverVersion="5.5.5-10.11.6-MariaDB",
        connectionId=7,
        scramble=b"S" * 20,
        capabilities=capabilities,
        charset=0x21,
        status=2,
        authPlugin="mysql_native_password",
        payload=b"",
        capabilityOffsets=(0, -1),
    )


def test_theGreetingServerGetsTheLoginAsSentRenumbered() -> None:
    sent = serverLogin(LOGIN, greeting(), switch=False, encrypted=False)
    assert sent == ServerLogin(
        attrs.evolve(LOGIN, capabilities=LOGIN.capabilities & ~CLIENT_SSL), 1
    )


def test_aReencryptedLoginFollowsTheGatewaysSSLRequest() -> None:
    sent = serverLogin(LOGIN, greeting(), switch=False, encrypted=True)
    assert sent.sequence == 2
    assert sent.login.capabilities & CLIENT_SSL
    assert sent.login.authResponse == LOGIN.authResponse


def test_aReroutedLoginAsksTheServerForItsOwnScramble() -> None:
    sent = serverLogin(
        LOGIN, greeting(SERVER & ~(1 << 20)), switch=True, encrypted=False
    )
    assert (sent.login.authResponse, sent.login.authPlugin) == (b"", SWITCH_PLUGIN)
    assert (sent.login.user, sent.login.database) == ("alice", "shop")
    # Only what the server offers is claimed.
    assert not sent.login.capabilities & (1 << 20)


def test_aServerWithoutTLSCannotTakeAReencryptedLogin() -> None:
    with pytest.raises(Unforwardable, match="does not offer TLS"):
        serverLogin(LOGIN, greeting(SERVER & ~CLIENT_SSL), switch=False, encrypted=True)


def test_aServerThatCannotSwitchPluginsCannotReauthenticate() -> None:
    with pytest.raises(Unforwardable, match="cannot switch auth plugins") as e:
        serverLogin(
            LOGIN, greeting(SERVER & ~CLIENT_PLUGIN_AUTH), switch=True, encrypted=False
        )
    assert e.value.reason == "unforwardable_login"


@given(
    client=st.integers(min_value=0, max_value=2**32 - 1),
    server=st.integers(min_value=0, max_value=2**32 - 1),
    switch=st.booleans(),
    encrypted=st.booleans(),
)
def test_clientSSLSaysWhetherTheGatewaysSideIsTLS(
    client: int, server: int, switch: bool, encrypted: bool
) -> None:
    login = attrs.evolve(LOGIN, capabilities=client)
    try:
        sent = serverLogin(login, greeting(server), switch=switch, encrypted=encrypted)
    except Unforwardable:
        assert (encrypted and not server & CLIENT_SSL) or (
            switch and not server & CLIENT_PLUGIN_AUTH
        )
        return
    assert bool(sent.login.capabilities & CLIENT_SSL) is encrypted
    assert sent.sequence == (2 if encrypted else 1)
    if switch:
        assert sent.login.capabilities & ~CLIENT_SSL & ~server == 0
    else:
        assert sent.login.capabilities & ~CLIENT_SSL == client & ~CLIENT_SSL
