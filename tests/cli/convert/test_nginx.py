"""
NGINX C{stream} configurations converted: realistic files in, an INI the
gateway's own loader accepts out, and every directive left behind named.
"""

from __future__ import annotations

import pytest

from gateway.cli.convert import ConvertError, convert
from gateway.cli.convert.nginxsyntax import seconds

from .helpers import converted, noteAt, sections

SNI_ROUTER = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 4;
events { worker_connections 1024; }

stream {
    map $ssl_preread_server_name $backend {
        hostnames;
        app.example.com        app;
        .example.org           org;
        *.example.net          10.0.0.9:443;
        ~^db[0-9]+\\.example\\.com$  db;
        www.example.*          app;
        default                app;
    }
    upstream app {
        least_conn;
        server 10.0.1.1:443 weight=2 max_fails=3 fail_timeout=30s;
        server 10.0.1.2:443 backup;
        server 10.0.1.3:443 down;
    }
    upstream org { hash $remote_addr consistent; server org.internal:8443; }
    upstream db { server unix:/run/db.sock; zone db 64k; }

    server {
        listen 443;
        listen [::]:443;
        ssl_preread on;
        proxy_pass $backend;
        proxy_connect_timeout 3s;
        proxy_timeout 1h;
        preread_timeout 2s;
        proxy_protocol on;
    }
}
"""


def test_sniMapBecomesRoutesWithNginxPatterns() -> None:
    conversion, config = converted("nginx", SNI_ROUTER)
    (listener,) = config.listeners
    assert listener.mode == "passthrough"
    assert [(r.pattern, r.upstream) for r in listener.routes] == [
        ("app.example.com", "app"),
        (".example.org", "org"),
        ("*.example.net", "10.0.0.9"),
        ("~^db[0-9]+\\.example\\.com$", "db"),
        ("default", "app"),
    ]
    assert "trailing wildcards" in noteAt(conversion, 12)


def test_listenerKeysCarryNginxTimeoutsAndProxyProtocol() -> None:
    _conversion, config = converted("nginx", SNI_ROUTER)
    (listener,) = config.listeners
    assert listener.connect_timeout == 3
    assert listener.idle_timeout == 3600
    assert listener.preread_timeout == 2
    assert listener.proxy_protocol == "v1"  # NGINX sends v1 only
    # listen 443 beside listen [::]:443: one IPv6 socket serves both.
    assert listener.listen == ("tcp6:443:interface=\\:\\:",)
    assert config.gateway.workers == 4


def test_upstreamBlocksKeepServersFlagsAndBalancing() -> None:
    conversion, config = converted("nginx", SNI_ROUTER)
    app = config.upstreams["app"]
    assert app.balance == "least_conn"
    assert [
        (s.host, s.port, s.weight, s.max_fails, s.fail_timeout, s.backup)
        for s in app.servers
    ] == [
        ("10.0.1.1", 443, 2, 3, 30.0, False),
        ("10.0.1.2", 443, 1, 1, 10.0, True),
    ]
    assert config.upstreams["org"].balance == "hash"
    assert config.upstreams["db"].servers[0].path == "/run/db.sock"
    assert config.upstreams["10.0.0.9"].servers[0].port == 443
    assert "down" in noteAt(conversion, 19)
    assert "zone" in noteAt(conversion, 22) or "not needed" in noteAt(conversion, 22)


def test_everythingLeftBehindIsNamedWithItsLine() -> None:
    conversion, _ = converted("nginx", SNI_ROUTER)
    assert {n.line for n in conversion.notes} == {1, 3, 12, 19, 22}
    head = conversion.ini.split("\n[", 1)[0]
    for note in conversion.notes:
        assert note.format("nginx.conf") in head


TERMINATION = """\
stream {
    limit_conn_zone $binary_remote_addr zone=perip:10m;
    limit_conn_zone $server_name zone=perserver:1m;
    ssl_protocols TLSv1 TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE+AESGCM;

    server {
        listen 127.0.0.1:8443 ssl proxy_protocol;
        ssl_certificate     tls/site-ecdsa.pem;
        ssl_certificate_key tls/site-ecdsa.key;
        ssl_certificate     tls/site-rsa.pem;
        ssl_certificate_key tls/site-rsa.key;
        ssl_alpn http/1.1;
        ssl_session_timeout 1h;
        proxy_pass 127.0.0.1:8080;
        allow 10.0.0.0/8;
        deny 10.0.0.66;
        allow 192.168.0.1/24;
        deny all;
        limit_conn perip 20;
        limit_conn perserver 100;
    }
}
"""


def test_sslServerTerminatesWithEachCertificate() -> None:
    conversion, config = converted("nginx", TERMINATION, folder="/etc/nginx")
    (listener,) = config.listeners
    assert listener.mode == "terminate"
    assert listener.accept_proxy_protocol
    assert listener.listen == ("tcp:8443:interface=127.0.0.1",)
    assert listener.certificates == ("site-ecdsa", "site-rsa")
    assert config.certificates["site-rsa"].certificate == "/etc/nginx/tls/site-rsa.pem"
    assert config.certificates["site-rsa"].private_key == "/etc/nginx/tls/site-rsa.key"
    assert listener.protocols == ("TLSv1.2", "TLSv1.3")
    assert listener.ciphers == "ECDHE+AESGCM"  # inherited from stream {}
    assert listener.alpn == ("http/1.1",)
    assert listener.session_ticket_lifetime == 3600
    assert "below TLSv1.2" in noteAt(conversion, 4)


def test_orderedAllowDenyKeepsWhatNginxRefuses() -> None:
    conversion, _config = converted("nginx", TERMINATION)
    keys = sections(conversion.ini)["listener:stream-8443"]
    # deny 10.0.0.66 after allow 10.0.0.0/8 is never reached in NGINX (the
    # allow matched first): the gateway's deny would win, so the allow is
    # noted; 192.168.0.1/24 has host bits, which NGINX ignores.
    assert keys["allow"] == "192.168.0.0/24"
    assert "deny" not in keys
    assert "overlaps" in noteAt(conversion, 16)
    assert "192.168.0.0/24" in noteAt(conversion, 18)


def test_limitConnPerClientConvertsOthersAreNamed() -> None:
    conversion, config = converted("nginx", TERMINATION)
    assert config.listeners[0].max_connections_per_client == 20
    assert "per client address" in noteAt(conversion, 21)


PLAIN_TCP = """\
stream {
    upstream mysql { server 10.0.0.5:3306; server 10.0.0.6:3306 backup; random two least_conn; }
    server {
        listen 3306;
        proxy_pass mysql;
        proxy_next_upstream_tries 2;
        tcp_nodelay on;
    }
    server {
        listen 5353 udp;
        proxy_pass 10.0.0.53:53;
    }
}
"""


def test_serverWithoutPrereadIsAPlainTcpRelay() -> None:
    conversion, config = converted("nginx", PLAIN_TCP)
    (listener,) = config.listeners
    assert listener.mode == "tcp"
    assert listener.upstream == "mysql"
    assert config.upstreams["mysql"].balance == "random"
    assert config.upstreams["mysql"].next_upstream_tries == 2
    assert "TCP_NODELAY" in noteAt(conversion, 7)
    assert "UDP" in noteAt(conversion, 10)
    # The UDP server had nothing else to listen on: named, not written.
    assert "not converted" in noteAt(conversion, 9)


def test_prereadOffMeansOnlyTheMapDefault() -> None:
    text = """\
stream {
    map $ssl_preread_server_name $b { a.example.com one; default two; }
    upstream one { server 10.0.0.1:443; }
    upstream two { server 10.0.0.2:443; }
    server { listen 443; proxy_pass $b; }
}
"""
    conversion, config = converted("nginx", text)
    assert config.listeners[0].mode == "tcp"
    assert config.listeners[0].upstream == "two"
    assert "(ssl_preread is off): only the map's default" in noteAt(conversion, 5)


def test_mapOnAnotherVariableIsNamed() -> None:
    text = """\
stream {
    map $remote_addr $b { 10.0.0.1 one; default one; }
    upstream one { server 10.0.0.1:443; }
    server { listen 443; ssl_preread on; proxy_pass $b; }
}
"""
    conversion = convert("nginx", text, "nginx.conf")
    assert conversion.listeners == 0
    assert "routes on the server name" in noteAt(conversion, 2)
    assert "variable destination" in noteAt(conversion, 4)


def test_noStreamBlockConvertsNothing() -> None:
    conversion = convert("nginx", "http { server { listen 80; } }\n", "nginx.conf")
    assert conversion.listeners == 0
    assert any("no stream block" in n.reason for n in conversion.notes)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("stream { server { listen 443; }\n", 1),
        ("stream {\n server { listen 443 }\n}\n", 2),
        ("stream {\n}\n}\n", 3),
        ('stream { server { listen "443; } }\n', 1),
        ("worker_processes 4\n", 1),
    ],
)
def test_textNginxWouldNotReadIsAnErrorWithItsLine(text: str, line: int) -> None:
    with pytest.raises(ConvertError) as raised:
        convert("nginx", text, "nginx.conf")
    assert raised.value.line == line
    assert raised.value.where("nginx.conf").startswith(f"nginx.conf:{line}: ")


def test_quotesCommentsAndVariablesAreNginxLexing() -> None:
    text = """\
stream {  # routing by name
    map $ssl_preread_server_name ${b} {
        hostnames;
        "~^(a|b)\\.example\\.com$"  one;   # a quoted regex keeps its backslashes
        default one;
    }
    upstream one { server 10.0.0.1:443; }
    server { listen 443; ssl_preread on; proxy_pass ${b}; }
}
"""
    _conversion, config = converted("nginx", text)
    assert (
        next(r.pattern for r in config.listeners[0].routes)
        == "~^(a|b)\\.example\\.com$"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30),
        ("30s", 30),
        ("500ms", 0.5),
        ("1m30s", 90),
        ("1h", 3600),
        ("2d", 172800),
    ],
)
def test_nginxTimes(text: str, expected: float) -> None:
    assert seconds(text) == expected


@pytest.mark.parametrize("text", ["", "1x", "s", "-1s", "1.5s"])
def test_notNginxTimes(text: str) -> None:
    with pytest.raises(ValueError, match="NGINX time"):
        seconds(text)


def test_addressWithoutSslBesideOneWithItIsNamed() -> None:
    text = """\
stream {
    server {
        listen 8443 ssl;
        listen 8080;
        ssl_certificate site.pem;
        ssl_certificate_key site.key;
        proxy_pass 127.0.0.1:8000;
    }
}
"""
    conversion, config = converted("nginx", text, folder="/etc/nginx")
    assert config.listeners[0].mode == "terminate"
    assert "without ssl beside addresses with it" in noteAt(conversion, 4)


def test_terminatingServerRoutesOnSslServerName() -> None:
    text = """\
stream {
    map $ssl_server_name $app { a.example.com one; default two; }
    map $ssl_preread_server_name $raw { a.example.com one; default two; }
    upstream one { server 10.0.0.1:8080; }
    upstream two { server 10.0.0.2:8080; }
    server {
        listen 8443 ssl;
        ssl_certificate site.pem;
        ssl_certificate_key site.key;
        proxy_pass $app;
    }
    server {
        listen 9443 ssl;
        ssl_certificate site.pem;
        ssl_certificate_key site.key;
        ssl_preread on;
        proxy_pass $raw;
    }
}
"""
    conversion, config = converted("nginx", text, folder="/etc/nginx")
    routed, preread = config.listeners
    assert [(r.pattern, r.upstream) for r in routed.routes] == [
        ("a.example.com", "one"),
        ("default", "two"),
    ]
    # NGINX terminates before its preread phase: only the default applies.
    assert preread.upstream == "two"
    assert "terminated before the preread phase" in noteAt(conversion, 17)


def test_anInheritedDirectiveIsNamedOnce() -> None:
    text = """\
stream {
    ssl_protocols TLSv1.1 TLSv1.3;
    server { listen 8443 ssl; ssl_certificate a.pem; ssl_certificate_key a.key; proxy_pass 10.0.0.1:80; }
    server { listen 9443 ssl; ssl_certificate a.pem; ssl_certificate_key a.key; proxy_pass 10.0.0.1:80; }
}
"""
    conversion, config = converted("nginx", text, folder="/etc/nginx")
    assert [listener.protocols for listener in config.listeners] == [("TLSv1.3",)] * 2
    assert [n.line for n in conversion.notes] == [2]


def test_aFileIncludedInStreamConvertsAsItsContents() -> None:
    text = """\
upstream app { server 10.0.0.1:443; }
server {
    listen 443;
    ssl_preread on;
    proxy_pass app;
}
"""
    conversion, config = converted("nginx", text)
    assert config.listeners[0].upstream == "app"
    assert conversion.notes == ()


@pytest.mark.parametrize(
    ("listen", "endpoint"),
    [
        ("443", "tcp:443"),
        ("*:443", "tcp:443"),
        ("0.0.0.0:443", "tcp:443"),
        ("127.0.0.1:443", "tcp:443:interface=127.0.0.1"),
        ("[::]:443", "tcp6:443:interface=\\:\\:"),
        ("[::1]:443", "tcp6:443:interface=\\:\\:1"),
        ("unix:/run/gw.sock", "unix:/run/gw.sock"),
    ],
)
def test_listenAddressesBecomeEndpoints(listen: str, endpoint: str) -> None:
    text = f"stream {{ server {{ listen {listen}; proxy_pass 10.0.0.1:443; }} }}\n"
    _conversion, config = converted("nginx", text)
    assert config.listeners[0].listen == (endpoint,)
