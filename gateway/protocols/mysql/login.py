"""
The client's login as a server gets it, pure: what the gateway changes in
a C{HandshakeResponse41} before it forwards it.

The server never saw the client's C{SSLRequest} (the gateway answered it),
so the login is renumbered, and its C{CLIENT_SSL} says whether the
gateway's own connection to the server is TLS (C{tls = on}).  A login for
another server than the one whose greeting the client read is
re-authenticated: its password hash was made with the other server's
scramble, so it goes with no auth data and an auth plugin no account uses
(L{SWITCH_PLUGIN}), which makes the server ask the client for its own.
No Twisted, no I/O: tested on values alone.
"""

from __future__ import annotations

import attrs

from gateway.wire.mysql import (
    CLIENT_PLUGIN_AUTH,
    CLIENT_SSL,
    Greeting,
    HandshakeResponse,
)

__all__ = ["SWITCH_PLUGIN", "ServerLogin", "Unforwardable", "serverLogin"]

SWITCH_PLUGIN = "tlsgateway_reauthenticate"
"""
The auth plugin name the gateway puts in a re-routed login: no server has
a plugin by that name, so every server asks the client to switch to the
account's own plugin.
"""


class Unforwardable(Exception):
    """
    This server cannot take the client's login.

    @ivar reason: a stable slug, as for every error of the gateway; the
        message says why, for the access log.
    """

    reason = "unforwardable_login"


@attrs.frozen
class ServerLogin:
    """
    The login to send a server.

    @ivar sequence: its sequence number on the server connection: 1, or 2
        after the gateway's own C{SSLRequest}.
    """

    login: HandshakeResponse
    sequence: int


def serverLogin(
    login: HandshakeResponse, greeting: Greeting, *, switch: bool, encrypted: bool
) -> ServerLogin:
    """
    The client's C{login} for the server that sent C{greeting}.

    @param switch: the client hashed its password for another server:
        re-authenticate it (see the module's docstring).
    @param encrypted: the gateway speaks TLS to this server.
    @raise Unforwardable: the server cannot serve it (no TLS where the
        upstream wants it; no plugin switch where one is needed).
    """
    if encrypted and not greeting.capabilities & CLIENT_SSL:
        raise Unforwardable(
            "the server does not offer TLS (CLIENT_SSL): is ssl off on it?"
        )
    capabilities = login.capabilities
    if switch:
        if not greeting.capabilities & CLIENT_PLUGIN_AUTH:
            raise Unforwardable("the server cannot switch auth plugins")
        capabilities &= greeting.capabilities | CLIENT_SSL
        login = attrs.evolve(login, authResponse=b"", authPlugin=SWITCH_PLUGIN)
    if encrypted:
        capabilities |= CLIENT_SSL
    else:
        capabilities &= ~CLIENT_SSL
    return ServerLogin(
        attrs.evolve(login, capabilities=capabilities), 2 if encrypted else 1
    )
