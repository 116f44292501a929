"""
Properties of both converters over random configurations built from the
directives they know and some they do not: a conversion never crashes, and
it gives either an INI file the gateway's own loader accepts, or nothing
to listen on and the reasons named.
"""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.cli.convert
from gateway.cli.convert import convert
from gateway.config import parseConfigText

UPSTREAM_LINES = [
    "server 10.0.0.1:443;",
    "server 10.0.0.2:443 weight=3 max_fails=2 fail_timeout=5s;",
    "server backend.internal:8443 backup;",
    "server [2001:db8::7]:443;",
    "server unix:/run/app.sock;",
    "server 10.0.0.3:443 down;",
    "server 10.0.0.4;",
    "server 10.0.0.5:443 weight=0;",
    "server 10.0.0.6:443 max_conns=10 slow_start=30s;",
    "least_conn;",
    "hash $remote_addr consistent;",
    "hash $ssl_preread_server_name;",
    "random;",
    "zone z 64k;",
]
MAP_ENTRIES = [
    "a.example.com {v};",
    ".example.org {v};",
    "*.example.net {v};",
    "www.example.* {v};",
    "~^db[0-9]+\\.example\\.com$ {v};",
    "~^(a {v};",
    "~^(?<n>x)\\.example$ {v};",
    "default {v};",
    "hostnames;",
    "volatile;",
]
VALUES = ["u1", "u2", "u3", "10.0.0.9:443", "$other", "nowhere", "unix:/run/x.sock"]
LISTENS = [
    "listen 443;",
    "listen 127.0.0.1:8443;",
    "listen [::]:443;",
    "listen [::1]:9443 ssl;",
    "listen 5353 udp;",
    "listen unix:/run/gw.sock;",
    "listen localhost:443;",
    "listen 443 ssl proxy_protocol reuseport;",
    "listen 8443 proxy_protocol;",
]
SERVER_LINES = [
    "ssl_preread on;",
    "proxy_protocol on;",
    "proxy_connect_timeout 3s;",
    "proxy_timeout 10m;",
    "proxy_timeout 0;",
    "preread_timeout 1m30s;",
    "preread_buffer_size 32k;",
    "ssl_certificate /etc/ssl/a.pem;",
    "ssl_certificate_key /etc/ssl/a.key;",
    "ssl_certificate b.pem;",
    "ssl_protocols TLSv1.1 TLSv1.3;",
    "ssl_verify_client optional_no_ca;",
    "allow 10.0.0.0/8;",
    "allow 10.0.0.1/8;",
    "deny 10.0.0.66;",
    "deny all;",
    "allow all;",
    "allow unix:;",
    "limit_conn perip 5;",
    "limit_conn nozone 5;",
    "proxy_ssl on;",
    "proxy_next_upstream_tries 0;",
    "health_check interval=5 passes=2 fails=x;",
    "access_log /var/log/stream.log main;",
    "tcp_nodelay off;",
]
PASSES = ["u1", "u2", "$backend", "10.0.0.2:443", "nowhere", "$foo", "unix:/run/y.sock"]


@st.composite
def nginxConfigs(draw: st.DrawFn) -> str:
    lines = ["worker_processes auto;", "stream {"]
    lines.append("    limit_conn_zone $binary_remote_addr zone=perip:10m;")
    for name in draw(st.lists(st.sampled_from(["u1", "u2", "u3"]), unique=True)):
        body = draw(st.lists(st.sampled_from(UPSTREAM_LINES), max_size=4))
        lines += [f"    upstream {name} {{", *(f"        {b}" for b in body), "    }"]
    if draw(st.booleans()):
        entries = draw(
            st.lists(
                st.tuples(st.sampled_from(MAP_ENTRIES), st.sampled_from(VALUES)),
                max_size=6,
            )
        )
        key = draw(st.sampled_from(["$ssl_preread_server_name", "$remote_addr"]))
        lines.append(f"    map {key} $backend {{")
        lines += [f"        {e.format(v=v)}" for e, v in entries]
        lines.append("    }")
    lines += [
        f"    {d}" for d in draw(st.lists(st.sampled_from(SERVER_LINES), max_size=3))
    ]
    for _ in range(draw(st.integers(1, 3))):
        lines.append("    server {")
        lines += [
            f"        {d}"
            for d in draw(st.lists(st.sampled_from(LISTENS), min_size=1, max_size=2))
        ]
        lines += [
            f"        {d}"
            for d in draw(st.lists(st.sampled_from(SERVER_LINES), max_size=6))
        ]
        lines.append(f"        proxy_pass {draw(st.sampled_from(PASSES))};")
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


BACKEND_LINES = [
    "balance roundrobin",
    "balance leastconn",
    "balance source",
    "balance random",
    "balance uri",
    "option ssl-hello-chk",
    "option tcp-check",
    "option redispatch",
    "retries 3",
    "default-server inter 3s fall 2",
    "server s1 10.0.0.1:443 check inter 2s rise 2 fall 3",
    "server s2 10.0.0.2:443 check send-proxy-v2 weight 5",
    "server s3 backend.internal:443 backup send-proxy",
    "server s4 10.0.0.4:443 disabled",
    "server s5 10.0.0.5 check",
    "server s6 /run/app.sock",
    "server s7 10.0.0.7:443 weight 0",
    "server s8 10.0.0.8:443 check inter x",
    "server s9 10.0.0.9:443 frobnicate 3 check",
    "timeout server 30s",
    "timeout tunnel 1h",
    "mode http",
]
FRONTEND_LINES = [
    "bind :443",
    "bind 127.0.0.1:8443 accept-proxy",
    "bind :::443 v4v6",
    "bind :9443 ssl crt /etc/haproxy/site.pem alpn h2,http/1.1",
    "bind :9444 ssl crt-list /etc/haproxy/list.txt",
    "bind localhost:443",
    "bind :8000-8010",
    "tcp-request inspect-delay 5s",
    "tcp-request content accept if { req_ssl_hello_type 1 }",
    "tcp-request content reject if !{ req_ssl_hello_type 1 }",
    "tcp-request connection reject if !office",
    "tcp-request connection reject if { src 10.0.0.66 }",
    "tcp-request connection accept if office",
    "tcp-request connection reject",
    "tcp-request content track-sc0 src",
    "acl office src 10.0.0.0/8 192.168.0.0/255.255.0.0",
    "stick-table type ip size 1k expire 30s store conn_cur,conn_rate(1s)",
    "stick-table type string size 1k store conn_rate(10s)",
    "tcp-request connection track-sc0 src",
    "tcp-request connection reject if { sc_conn_cur(0) gt 3 }",
    "tcp-request connection reject if { sc_conn_rate(0) ge 1 }",
    "tcp-request connection reject if { src_conn_rate gt 5 }",
    "tcp-request connection reject if { sc1_conn_cur gt x }",
    "acl api req_ssl_sni -i api.example.com",
    "acl sub req_ssl_sni -m end .example.com",
    "acl weird req_ssl_sni -m len 5",
    "use_backend {b} if api",
    "use_backend {b} if sub",
    "use_backend {b} if { req_ssl_sni -m reg ^db[0-9]+ }",
    "use_backend {b} if { req_ssl_sni -m reg ^(a }",
    "use_backend {b} if { req_ssl_sni -m dom example.org } || api",
    "use_backend {b} if weird",
    "use_backend {b} if nosuchacl",
    "use_backend {b} if !api",
    "default_backend {b}",
    "maxconn 1000",
    "timeout client 1m",
    "option tcplog",
    "mode http",
]


@st.composite
def haproxyConfigs(draw: st.DrawFn) -> str:
    lines = [
        "global",
        "    daemon",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
    ]
    backends = draw(
        st.lists(st.sampled_from(["b1", "b2", "b3"]), min_size=1, unique=True)
    )
    for name in backends:
        lines.append(f"backend {name}")
        lines.append(f"    server s0 10.0.0.{len(lines)}:443")
        lines += [
            f"    {d}"
            for d in draw(st.lists(st.sampled_from(BACKEND_LINES), max_size=5))
        ]
    for number in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["frontend", "listen"]))
        lines.append(f"{kind} f{number}")
        binds = [line for line in FRONTEND_LINES if line.startswith("bind")]
        chosen = [draw(st.sampled_from(binds))]
        chosen += draw(st.lists(st.sampled_from(FRONTEND_LINES), max_size=8))
        chosen.append("default_backend {b}")
        if kind == "listen":
            chosen += draw(st.lists(st.sampled_from(BACKEND_LINES), max_size=3))
        for line in chosen:
            lines.append(
                "    "
                + line.replace("{b}", draw(st.sampled_from(["b1", "b2", "b3", "nope"])))
            )
    return "\n".join(lines) + "\n"


def _convertsToLoadableIni(kind: str, text: str) -> None:
    conversion = convert(kind, text, f"{kind}.conf", "/etc/" + kind)
    lines = text.count("\n")
    assert all(n.line is None or 1 <= n.line <= lines for n in conversion.notes)
    if conversion.listeners:
        parseConfigText(conversion.ini, "/etc/tlsgateway/converted.ini")
    else:
        assert conversion.notes, text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nginxConfigs())
def test_nginxConvertsToWhatTheLoaderAcceptsOrSaysWhyNot(text: str) -> None:
    _convertsToLoadableIni("nginx", text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(haproxyConfigs())
def test_haproxyConvertsToWhatTheLoaderAcceptsOrSaysWhyNot(text: str) -> None:
    _convertsToLoadableIni("haproxy", text)


def test_theConvertersImportNeitherTwistedNorOpenSSL() -> None:
    """Checked in the source: the converters are pure, text in, text out."""
    folder = Path(gateway.cli.convert.__file__).parent
    found = {}
    for path in sorted(folder.glob("*.py")):
        names = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
        found[path.name] = [
            n for n in names if n.split(".")[0] in ("twisted", "OpenSSL")
        ]
    assert {k: v for k, v in found.items() if v} == {}


NGINX_NAMES = sorted(
    {line.split()[0].rstrip(";") for line in SERVER_LINES + UPSTREAM_LINES + LISTENS}
    | {"proxy_pass", "map", "upstream", "server", "ssl_client_certificate", "ssl_crl"}
    | {"proxy_ssl_trusted_certificate", "proxy_ssl_name", "proxy_ssl_verify"}
    | {"ssl_session_cache", "ssl_conf_command", "ssl_alpn", "include", "hostnames"}
)
WORDS = [
    "on",
    "off",
    "443",
    "10.0.0.1:443",
    "$backend",
    "u1",
    "all",
    "5s",
    "x",
    "a.example.com",
]


@st.composite
def nginxDirectives(draw: st.DrawFn) -> str:
    """Any known directive name with any few arguments, in and out of order."""
    names = st.sampled_from(NGINX_NAMES)
    args = st.lists(st.sampled_from(WORDS), max_size=3)
    body = [
        f"        {draw(names)} {' '.join(draw(args))};"
        for _ in range(draw(st.integers(0, 12)))
    ]
    upstream = [
        f"        {draw(names)} {' '.join(draw(args))};"
        for _ in range(draw(st.integers(0, 3)))
    ]
    return "\n".join(
        [
            "stream {",
            "    upstream u1 {",
            *upstream,
            "    }",
            "    map $ssl_preread_server_name $backend {",
            *upstream,
            "    }",
            "    server {",
            "        listen 443;",
            *body,
            "    }",
            "}",
            "",
        ]
    )


HAPROXY_KEYWORDS = sorted(
    {line.split()[0] for line in BACKEND_LINES + FRONTEND_LINES}
    | {"server", "default-server", "timeout", "option", "bind", "tcp-request", "acl"}
)
HAPROXY_WORDS = [
    "if",
    "unless",
    "{",
    "}",
    "!",
    "||",
    "-i",
    "-m",
    "end",
    "req_ssl_sni",
    "src",
    "10.0.0.1",
    ":443",
    "s1",
    "10.0.0.1:443",
    "check",
    "inter",
    "ssl",
    "crt",
    "b1",
    "connect",
    "content",
    "reject",
    "5s",
]


@st.composite
def haproxyKeywords(draw: st.DrawFn) -> str:
    """Any known keyword with any few arguments, in every kind of section."""
    keywords = st.sampled_from(HAPROXY_KEYWORDS)
    args = st.lists(st.sampled_from(HAPROXY_WORDS), max_size=5)
    lines = []
    for section in ("defaults", "backend b1", "frontend f1", "listen l1"):
        lines.append(section)
        if section != "defaults":
            lines += [f"    bind :44{len(lines)}", "    server s0 10.0.0.1:443"]
        lines += [
            f"    {draw(keywords)} {' '.join(draw(args))}"
            for _ in range(draw(st.integers(0, 8)))
        ]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nginxDirectives())
def test_nginxDirectivesWithAnyArgumentsNeverCrash(text: str) -> None:
    _convertsToLoadableIni("nginx", text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(haproxyKeywords())
def test_haproxyKeywordsWithAnyArgumentsNeverCrash(text: str) -> None:
    _convertsToLoadableIni("haproxy", text)
