"""
HAProxy C{mode tcp} configurations converted: realistic files in, an INI
the gateway's own loader accepts out, and every line left behind named.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.cli.convert import ConvertError, convert
from gateway.cli.convert.haproxybackends import haproxyTime

from .helpers import converted, noteAt, sections

SNI_ROUTER = """\
global
    log /dev/log local0
    maxconn 4096
    daemon

defaults
    mode tcp
    option tcplog
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend tls_in
    bind :443
    bind :::8443 v4v6
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    acl is_api req_ssl_sni -i api.example.com
    acl is_sub req_ssl_sni -m end .example.com
    use_backend be_api if is_api
    use_backend be_web if is_sub
    use_backend be_shop if { req_ssl_sni -i shop.example.com }
    use_backend be_db if { req.ssl_sni -m reg ^db[0-9]+\\.example\\.net$ }
    use_backend be_org if { req_ssl_sni -i www.example.org } || { req_ssl_sni -i example.org }
    use_backend be_web if { req_ssl_sni -m beg intranet. }
    default_backend be_web

backend be_api
    balance roundrobin
    server api1 10.0.1.1:443 check inter 3s rise 1 fall 2 weight 10
    server api2 10.0.1.2:443 check inter 3s rise 1 fall 2 backup
backend be_web
    balance source
    option ssl-hello-chk
    server web1 10.0.2.1:443 check
backend be_shop
    server shop1 shop.internal:443 maxconn 100
backend be_db
    balance random
    server db1 10.0.3.1:5432
backend be_org
    balance leastconn
    server org1 [2001:db8::1]:443
"""


def test_useBackendRulesBecomeRoutes() -> None:
    _conversion, config = converted("haproxy", SNI_ROUTER)
    (listener,) = config.listeners
    assert listener.mode == "passthrough"
    assert [(r.pattern, r.upstream) for r in listener.routes] == [
        ("api.example.com", "be_api"),
        ("*.example.com", "be_web"),
        ("~^db[0-9]+\\.example\\.net$", "be_db"),
        ("www.example.org", "be_org"),
        ("example.org", "be_org"),
        ("~^intranet\\.", "be_web"),
        ("default", "be_web"),
    ]


def test_routeHaproxyNeverReachesIsDroppedNotPromoted() -> None:
    conversion, _config = converted("haproxy", SNI_ROUTER)
    # -m end .example.com (line 21) catches shop.example.com first in
    # HAProxy; in the gateway the exact name would win, so it is left out.
    assert "never reached in HAProxy: line 21" in noteAt(conversion, 22)


def test_listenerTakesTimeoutsInspectDelayAndAddresses() -> None:
    _conversion, config = converted("haproxy", SNI_ROUTER)
    (listener,) = config.listeners
    assert listener.listen == ("tcp:443", "tcp6:8443:interface=\\:\\:")
    assert listener.preread_timeout == 5
    assert listener.connect_timeout == 5
    assert listener.idle_timeout == 60


def test_serverChecksBecomeUpstreamHealthKeys() -> None:
    conversion, config = converted("haproxy", SNI_ROUTER)
    api = config.upstreams["be_api"]
    assert (
        api.health_check,
        api.health_interval,
        api.health_rise,
        api.health_fall,
    ) == (
        "tcp",
        3,
        1,
        2,
    )
    assert [(s.host, s.weight, s.backup) for s in api.servers] == [
        ("10.0.1.1", 10, False),
        ("10.0.1.2", 1, True),
    ]
    web = config.upstreams["be_web"]
    # ssl-hello-chk checks for a ServerHello; inter's default is 2s.
    assert (web.health_check, web.health_interval, web.balance) == ("tls", 2, "hash")
    assert config.upstreams["be_shop"].health_check == "off"
    assert config.upstreams["be_db"].balance == "random"
    assert config.upstreams["be_org"].balance == "least_conn"
    assert config.upstreams["be_org"].servers[0].host == "2001:db8::1"
    assert "maxconn" in noteAt(conversion, 37)


def test_globalAndDefaultsLeftBehindAreNamed() -> None:
    conversion, _ = converted("haproxy", SNI_ROUTER)
    assert {2, 3, 4, 8} <= {n.line for n in conversion.notes}
    assert "twistd" in noteAt(conversion, 4)


TERMINATION_AND_ACLS = """\
global
    crt-base /etc/haproxy/certs
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h

frontend term
    bind 127.0.0.1:9443 ssl crt sites/ alpn h2,http/1.1 accept-proxy
    acl office src 192.168.10.0/24 10.1.0.0/16
    acl bad src 192.168.10.66
    tcp-request connection reject if bad
    tcp-request connection reject if !office
    default_backend be_app

frontend single
    bind 127.0.0.1:9444 ssl crt /etc/ssl/site.pem
    default_backend be_app

listen mysql
    bind :3306
    balance leastconn
    server m1 10.0.0.5:3306 check send-proxy
    server m2 10.0.0.6:3306 check backup send-proxy

backend be_app
    server app1 127.0.0.1:8080 send-proxy-v2

backend be_http
    mode http
    server h 10.9.9.9:80
"""


def folders(listing: dict[str, list[str]]) -> object:
    def listFolder(path: str) -> Sequence[str] | None:
        return listing.get(path.rstrip("/"))

    return listFolder


def test_crtFolderGivesOneCertificateEach() -> None:
    listFolder = folders(
        {
            "/etc/haproxy/certs/sites": [
                "b.example.pem",
                "a.example.pem",
                "a.example.pem.key",
                "a.example.pem.ocsp",
            ],
            "/etc/haproxy/certs/sites/": [],
        }
    )
    _conversion, config = converted(
        "haproxy", TERMINATION_AND_ACLS, listFolder=listFolder
    )
    term = config.listeners[0]
    assert term.mode == "terminate"
    assert term.certificates == ("a.example", "b.example")  # HAProxy's order: by name
    a, b = config.certificates["a.example"], config.certificates["b.example"]
    assert a.private_key == "/etc/haproxy/certs/sites/a.example.pem.key"
    assert b.private_key == b.certificate == "/etc/haproxy/certs/sites/b.example.pem"
    assert term.alpn == ("h2", "http/1.1")
    assert term.accept_proxy_protocol
    assert term.protocols == ("TLSv1.2", "TLSv1.3")
    assert not term.session_tickets


def test_crtFileKeepsItsKeyInsideOrBeside() -> None:
    _conversion, config = converted("haproxy", TERMINATION_AND_ACLS)
    single = config.listeners[1]
    assert single.certificate == single.private_key == "/etc/ssl/site.pem"


def test_srcRulesBecomeAllowAndDeny() -> None:
    conversion, _config = converted("haproxy", TERMINATION_AND_ACLS)
    keys = sections(conversion.ini)["listener:term"]
    assert keys["allow"] == "192.168.10.0/24, 10.1.0.0/16"
    assert keys["deny"] == "192.168.10.66/32"


def test_sendProxyMovesToTheListenerAndTunnelIsTheIdleTimeout() -> None:
    conversion, config = converted("haproxy", TERMINATION_AND_ACLS)
    term, _, mysql = config.listeners
    assert term.proxy_protocol == "v2"
    assert mysql.proxy_protocol == "v1"
    assert mysql.mode == "tcp"
    assert mysql.upstream == "mysql"
    assert term.idle_timeout == 3600
    assert term.connect_timeout == 2
    assert config.upstreams["mysql"].balance == "least_conn"
    assert "mode http" in noteAt(conversion, 33)


def test_unconvertibleConditionsAreNamed() -> None:
    text = """\
frontend fe
    mode tcp
    bind :443
    tcp-request inspect-delay 5s
    acl h2 req.ssl_alpn h2
    use_backend one if { req_ssl_sni -i a.example.com } h2
    use_backend one unless { req_ssl_sni -i b.example.com }
    use_backend one if { req_ssl_sni -f /etc/haproxy/names.lst }
    use_backend %[req.ssl_sni,lower,map(/etc/haproxy/map)] if { req_ssl_sni -m found }
    tcp-request content accept if { req_ssl_hello_type 1 }
    tcp-request content reject if { src 10.0.0.1 }
    default_backend one
backend one
    server s 10.0.0.1:443
"""
    conversion, config = converted("haproxy", text)
    assert [r.pattern for r in config.listeners[0].routes] == []
    assert config.listeners[0].upstream == "one"
    assert "one positive server-name test" in noteAt(conversion, 6)
    assert "one positive server-name test" in noteAt(conversion, 7)
    assert "-f" in noteAt(conversion, 8)
    assert "expression" in noteAt(conversion, 9)
    assert "never reached for a TLS client" in noteAt(conversion, 11)


def test_frontendWithoutHelloInspectionIsPlainTcp() -> None:
    text = """\
frontend ssh
    mode tcp
    bind 127.0.0.1:2222
    use_backend other if { req_ssl_sni -i a.example.com }
    default_backend ssh
backend ssh
    server s 10.0.0.22:22
backend other
    server o 10.0.0.23:22
"""
    _conversion, config = converted("haproxy", text)
    # A server-name rule implies reading the hello: passthrough, routed.
    assert config.listeners[0].mode == "passthrough"
    text = text.replace(
        "    use_backend other if { req_ssl_sni -i a.example.com }\n", ""
    )
    _conversion, config = converted("haproxy", text)
    assert config.listeners[0].mode == "tcp"
    assert config.listeners[0].upstream == "ssh"


def test_sectionsBeforeAnyLineAreAnError() -> None:
    with pytest.raises(ConvertError) as raised:
        convert("haproxy", "    bind :443\nfrontend x\n", "haproxy.cfg")
    assert raised.value.line == 1
    with pytest.raises(ConvertError) as raised:
        convert("haproxy", "frontend x\n    bind ':443\n", "haproxy.cfg")
    assert raised.value.line == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5000", 5.0),
        ("5s", 5),
        ("100ms", 0.1),
        ("2m", 120),
        ("1h", 3600),
        ("1d", 86400),
    ],
)
def test_haproxyTimesDefaultToMilliseconds(text: str, expected: float) -> None:
    assert haproxyTime(text) == pytest.approx(expected)


def test_checksOnSomeServersOnlyAreNamed() -> None:
    text = """\
listen app
    mode tcp
    bind 127.0.0.1:8443
    bind 127.0.0.1:8444 accept-proxy
    timeout check 5s
    server a 10.0.0.1:443 check fall 5
    server b 10.0.0.2:443 check-ssl
    server c 10.0.0.3:443 no-check
"""
    conversion, config = converted("haproxy", text)
    upstream = config.upstreams["app"]
    assert (upstream.health_check, upstream.health_fall) == ("tls", 5)
    assert "only some servers have check" in noteAt(conversion, 1)
    assert "without accept-proxy beside binds with it" in noteAt(conversion, 3)
    assert "no equivalent" in noteAt(conversion, 5)


@pytest.mark.parametrize(
    ("bind", "endpoint"),
    [
        (":443", "tcp:443"),
        ("*:443", "tcp:443"),
        ("0.0.0.0:443", "tcp:443"),
        ("ipv4@127.0.0.1:443", "tcp:443:interface=127.0.0.1"),
        (":::443", "tcp6:443:interface=\\:\\:"),
        ("[::1]:443", "tcp6:443:interface=\\:\\:1"),
        ("ipv6@:443", "tcp6:443:interface=\\:\\:"),
        ("unix@/run/gw.sock", "unix:/run/gw.sock"),
        ("/run/gw.sock", "unix:/run/gw.sock"),
    ],
)
def test_bindAddressesBecomeEndpoints(bind: str, endpoint: str) -> None:
    text = f"frontend fe\n    bind {bind}\n    default_backend be\nbackend be\n    server s 10.0.0.1:443\n"
    _conversion, config = converted("haproxy", text)
    assert config.listeners[0].listen == (endpoint,)


def test_serverNameFetchMustFitWhereHaproxyReadsIt() -> None:
    text = """\
frontend pass
    bind :443
    tcp-request inspect-delay 5s
    use_backend one if { ssl_fc_sni -i a.example.com }
    use_backend one if { req_ssl_sni -i b.example.com }
    default_backend two
frontend term
    bind :8443 ssl crt /etc/haproxy/site.pem
    use_backend one if { req_ssl_sni -i a.example.com }
    use_backend one if { ssl_fc_sni -i b.example.com }
    default_backend two
backend one
    server s 10.0.0.1:8080
backend two
    server s 10.0.0.2:8080
"""
    conversion, config = converted("haproxy", text)
    passthrough, terminate = config.listeners
    assert [r.pattern for r in passthrough.routes] == ["b.example.com", "default"]
    assert [r.pattern for r in terminate.routes] == ["b.example.com", "default"]
    assert "never knows ssl_fc_sni in this frontend (no ssl bind)" in noteAt(
        conversion, 4
    )
    assert "never knows req_ssl_sni" in noteAt(conversion, 9)


def test_stickTableCountersBecomePerClientLimits() -> None:
    text = """\
frontend fe
    bind :443
    stick-table type ip size 100k expire 30s store conn_cur,conn_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if { sc_conn_cur(0) gt 20 }
    tcp-request connection reject if { sc0_conn_rate ge 11 }
    default_backend be
frontend slow
    bind :444
    stick-table type ip size 100k expire 30s store conn_rate(10s)
    tcp-request connection track-sc1 src
    tcp-request connection reject if { sc_conn_rate(1) gt 100 }
    tcp-request connection reject if { sc_conn_cur(0) gt 5 }
    default_backend be
backend be
    server s 10.0.0.1:443
"""
    conversion, config = converted("haproxy", text)
    fe, slow = config.listeners
    assert fe.max_connections_per_client == 20
    assert str(fe.max_connection_rate) == "10/s"
    assert slow.max_connection_rate is None
    assert "per second or per minute" in noteAt(conversion, 12)
    assert "sticky counter 0 does not track src" in noteAt(conversion, 13)


def test_defaultsMaxconnIsEachFrontendsLimit() -> None:
    text = """\
defaults
    mode tcp
    maxconn 500
    option redispatch
frontend one
    bind :443
    default_backend be
frontend two
    bind :444
    maxconn 20
    default_backend be
backend be
    server s 10.0.0.1:443
"""
    conversion, config = converted("haproxy", text)
    assert [listener.max_connections for listener in config.listeners] == [500, 20]
    assert "next_upstream_tries" in noteAt(conversion, 4)


def test_clientCertificatesFromCaBase() -> None:
    text = """\
global
    ca-base /etc/haproxy/ca
frontend mtls
    bind :8443 ssl crt /etc/haproxy/site.pem ca-file clients.pem verify required crl-file clients.crl
    default_backend be
backend be
    server s 127.0.0.1:8080
"""
    _conversion, config = converted("haproxy", text)
    (listener,) = config.listeners
    assert listener.client_ca == "/etc/haproxy/ca/clients.pem"
    assert listener.verify_client == "on"
    assert listener.client_crl == ("/etc/haproxy/ca/clients.crl",)


def test_backendsWithDifferentTimeoutsAreNamed() -> None:
    text = """\
frontend fe
    bind :443
    tcp-request inspect-delay 5s
    use_backend slow if { req_ssl_sni -i slow.example.com }
    default_backend fast
backend slow
    timeout server 1h
    server s 10.0.0.1:443
backend fast
    timeout server 30s
    timeout connect 2000
    server f 10.0.0.2:443
"""
    conversion, config = converted("haproxy", text)
    (listener,) = config.listeners
    assert (listener.idle_timeout, listener.connect_timeout) == (30, 2)
    assert "differ in timeouts" in noteAt(conversion, 1)


def test_ipv4AnyBesideIpv6AnyOnOnePortKeepsTheIpv6One() -> None:
    text = """\
frontend both
    bind :443
    bind :::443
    default_backend be
frontend v4
    bind :8443
    default_backend be
frontend v6
    bind :::8443 v4v6
    default_backend be
backend be
    server s 10.0.0.1:443
"""
    conversion, config = converted("haproxy", text)
    assert [listener.listen for listener in config.listeners] == [
        ("tcp6:443:interface=\\:\\:",),
        ("tcp6:8443:interface=\\:\\:",),
    ]
    assert (
        "[listener:v6] listens on tcp6:8443:interface=\\:\\:, which accepts IPv4 too"
        in noteAt(conversion, 6)
    )
