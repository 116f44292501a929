"""
Tests for L{gateway.config}: the INI file, its model, and its problems.

Problems are asserted as the operator reads them, C{FILE:LINE: [section]
key: message}, with C{FILE} shortened to C{gw.ini}.
"""

from __future__ import annotations

import configparser
import contextlib
import ipaddress
import os
import textwrap
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    CertificateConfig,
    ConfigError,
    ConfigWarning,
    GatewayConfig,
    GatewaySettings,
    ListenerConfig,
    Location,
    Problem,
    RouteConfig,
    ServerConfig,
    UpstreamConfig,
)
from gateway.config.loader import _NGINX_NAMES
from gateway.config.scan import _scan
from gateway.core.ratelimit import ConnectionRate
from gateway.run.loading import load_config, load_config_text

MINIMAL = """\
[listener:web]
listen = tcp:8443
upstream = app

[upstream:app]
servers = 127.0.0.1:9000
"""

UPSTREAMS = """
[upstream:app]
servers = 127.0.0.1:9000

[upstream:api]
servers = 127.0.0.1:9001
"""


def write(tmp_path: Path, text: str, name: str = "gw.ini") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    """
    Load C{text} from C{gw.ini} and return its problems as printed, with
    the path shortened to C{gw.ini}.
    """
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return [str(p).replace(str(path), "gw.ini") for p in caught.value.problems]


def listener(text: str, upstreams: str = UPSTREAMS) -> str:
    """
    A file with C{[listener:web]} on line 1 made of C{text}, then upstreams.
    """
    return "[listener:web]\n" + textwrap.dedent(text) + upstreams


# --- what run would trip on ---------------------------------------------------


def test_anAccessLogInAFolderThatDoesNotExistIsAProblem(tmp_path: Path) -> None:
    assert problems(
        tmp_path, "[gateway]\naccess_log = nowhere/access.log\n" + MINIMAL
    ) == [
        f"gw.ini:2: [gateway] access_log: cannot open {tmp_path}/nowhere/access.log:"
        f" the folder {tmp_path}/nowhere does not exist"
    ]


def test_anAccessLogThatIsAFolderIsAProblem(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    assert problems(tmp_path, "[gateway]\naccess_log = logs\n" + MINIMAL) == [
        f"gw.ini:2: [gateway] access_log: {tmp_path}/logs is a folder, not a file"
    ]


def test_anAccessLogThroughADanglingLinkIsAProblem(tmp_path: Path) -> None:
    (tmp_path / "access.log").symlink_to(tmp_path / "gone" / "access.log")
    assert problems(tmp_path, "[gateway]\naccess_log = access.log\n" + MINIMAL) == [
        f"gw.ini:2: [gateway] access_log: cannot open {tmp_path}/access.log:"
        f" the folder {tmp_path}/gone does not exist"
    ]


def test_fileProblemsAreReportedWithTheOthers(tmp_path: Path) -> None:
    """
    A typo, a key file that holds no key and an access log nowhere: one
    load reports all three (the files of what converted are checked even
    though the INI has problems).
    """
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    found = problems(
        tmp_path,
        "[gateway]\n"
        "access_log = nowhere/access.log\n"
        "workerz = 2\n"
        "[listener:web]\n"
        "listen = tcp:8443\n"
        "mode = terminate\n"
        "certificate = cert.pem\n"
        "private_key = key.pem\n"
        "upstream = app\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:9000\n",
    )
    assert [": ".join(p.split(": ")[:2]) for p in found] == [
        "gw.ini:2: [gateway] access_log",
        "gw.ini:3: [gateway] workerz",
        "gw.ini:7: [listener:web] certificate",
    ], found


def test_theAccessLogIsNotCreatedByALoad(tmp_path: Path) -> None:
    load_config(write(tmp_path, "[gateway]\naccess_log = access.log\n" + MINIMAL))
    assert not (tmp_path / "access.log").exists()


# --- loading good files ------------------------------------------------------


def test_minimalFileGetsEveryDefault(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    loaded = load_config(path)
    assert loaded == GatewayConfig(
        path=str(path),
        gateway=GatewaySettings(),
        listeners=(ListenerConfig(name="web", listen=("tcp:8443",), upstream="app"),),
        upstreams={
            "app": UpstreamConfig(
                name="app", servers=(ServerConfig("127.0.0.1", 9000),)
            )
        },
    )
    web = loaded.listeners[0]
    assert web.location == Location(str(path), 1)
    assert loaded.upstreams["app"].location == Location(str(path), 5)
    assert (web.mode, web.protocol, web.relay) == ("passthrough", "tls", "auto")
    assert (web.preread_timeout, web.preread_buffer_size) == (5.0, 65536)
    assert (web.connect_timeout, web.idle_timeout) == (10.0, 600.0)
    assert web.protocols == ("TLSv1.2", "TLSv1.3")
    assert loaded.gateway == GatewaySettings("-", "text", 1, None, 30.0)


def test_loadConfigTextTakesThePathForFolderAndMessages(tmp_path: Path) -> None:
    (tmp_path / "etc" / "logs").mkdir(parents=True)
    loaded = load_config_text(
        MINIMAL + "[gateway]\naccess_log = logs/access.log\n",
        str(tmp_path / "etc" / "gw.ini"),
    )
    assert loaded.gateway.access_log == str(tmp_path / "etc" / "logs" / "access.log")
    assert loaded.path == str(tmp_path / "etc" / "gw.ini")
    with pytest.raises(
        ConfigError, match=r"\netc/x\.ini:1: \[bogus\]: unknown section"
    ):
        load_config_text("[bogus]\n", "etc/x.ini")


def test_modelIsImmutable(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        loaded.listeners[0].upstream = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.upstreams["x"] = loaded.upstreams["app"]  # type: ignore[index]


EVERYTHING = """\
[gateway]
access_log = logs/access.log
access_log_format = JSON
workers = 4
metrics = tcp:9100:interface=127.0.0.1
drain_timeout = 1m

[listener:web]
listen = tcp:8443, tcp6:8443:interface=\\:\\:
         unix:run/gw.sock
mode = terminate
routes =
    api.example.com    api   passthrough
    bücher.example     app
    *.example.com      app   terminate
    ALPN:h2            api
    default            app
preread_timeout = 500ms
preread_buffer_size = 32k
connect_timeout = 2.5
idle_timeout = 1h
proxy_protocol = v2
accept_proxy_protocol = yes
proxy_protocol_from = 192.0.2.0/24, 2001:db8:1::5
allow = 10.0.0.0/8, 2001:db8::/32, 192.0.2.7
deny = 10.1.0.0/16
deny_ja4 = t13d1516h2_8DAAF6152771_02713d6af862
max_connections = 1000
max_connections_per_client = 10
max_connection_rate = 600/m
passthrough_protocols = TLSv1.3, tlsv1.2
relay = portable
certificates = rsa, ecdsa
protocols = TLSv1.3
ciphers = ECDHE+AESGCM
ciphersuites = TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
prefer_server_ciphers = off
alpn = h2, http/1.1
client_ca = ca/clients.pem
verify_client = optional
session_tickets = off
session_cache = on

[listener:pg]
listen = tcp:5432
protocol = postgres
allow_plaintext = on
certificate = pg.pem
private_key = /etc/keys/pg.key
upstream = db
mode = terminate

[listener:mysql]
listen = tcp:3306
mode = tcp
upstream = db
relay = splice

[upstream:app]
servers =
    app1.example:443 weight=3 max_fails=2 fail_timeout=30s
    [2001:db8::1]:443
    unix:sockets/app.sock backup
balance = least_conn
next_upstream_tries = 2
health_check = tls
health_interval = 10s
health_rise = 1
health_fall = 5
tls = on
tls_verify = off
tls_ca = ca/upstream.pem
tls_server_name = Bücher.example

[upstream:api]
servers = 192.0.2.10:8443

[upstream:db]
servers = 127.0.0.1:5432

[certificate:rsa]
certificate = certs/rsa.pem
private_key = certs/rsa.key
ocsp_response = certs/rsa.ocsp

[certificate:ecdsa]
certificate = certs/ecdsa.pem
private_key = certs/ecdsa.key
"""


def test_everyKeyIsConverted(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, EVERYTHING), checkFiles=False)
    folder = str(tmp_path)
    assert loaded.gateway == GatewaySettings(
        access_log=os.path.join(folder, "logs", "access.log"),
        access_log_format="json",
        workers=4,
        metrics="tcp:9100:interface=127.0.0.1",
        drain_timeout=60.0,
    )
    web, pg, mysql = loaded.listeners
    assert web == ListenerConfig(
        name="web",
        listen=(
            "tcp:8443",
            "tcp6:8443:interface=\\:\\:",
            "unix:" + os.path.join(folder, "run", "gw.sock"),
        ),
        mode="terminate",
        routes=(
            RouteConfig("api.example.com", "api", "passthrough", 13),
            RouteConfig("xn--bcher-kva.example", "app", None, 14),
            RouteConfig("*.example.com", "app", "terminate", 15),
            RouteConfig("ALPN:h2", "api", None, 16),
            RouteConfig("default", "app", None, 17),
        ),
        preread_timeout=0.5,
        preread_buffer_size=32768,
        connect_timeout=2.5,
        idle_timeout=3600.0,
        proxy_protocol="v2",
        accept_proxy_protocol=True,
        proxy_protocol_from=(
            ipaddress.ip_network("192.0.2.0/24"),
            ipaddress.ip_network("2001:db8:1::5/128"),
        ),
        allow=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8::/32"),
            ipaddress.ip_network("192.0.2.7/32"),
        ),
        deny=(ipaddress.ip_network("10.1.0.0/16"),),
        deny_ja4=("t13d1516h2_8daaf6152771_02713d6af862",),
        max_connections=1000,
        max_connections_per_client=10,
        max_connection_rate=ConnectionRate(600, 60.0),
        passthrough_protocols=("TLSv1.2", "TLSv1.3"),
        relay="portable",
        certificates=("rsa", "ecdsa"),
        protocols=("TLSv1.3",),
        ciphers="ECDHE+AESGCM",
        ciphersuites="TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        prefer_server_ciphers=False,
        alpn=("h2", "http/1.1"),
        client_ca=os.path.join(folder, "ca", "clients.pem"),
        verify_client="optional",
        session_tickets=False,
        session_cache=True,
    )
    assert [r.line for r in web.routes] == [13, 14, 15, 16, 17]
    assert (pg.protocol, pg.allow_plaintext, pg.mode) == ("postgres", True, "terminate")
    assert pg.certificate == os.path.join(folder, "pg.pem")
    assert pg.private_key == "/etc/keys/pg.key"
    assert (mysql.mode, mysql.upstream) == ("tcp", "db")
    assert loaded.upstreams["app"] == UpstreamConfig(
        name="app",
        servers=(
            ServerConfig("app1.example", 443, weight=3, max_fails=2, fail_timeout=30.0),
            ServerConfig("2001:db8::1", 443),
            ServerConfig(
                None, None, os.path.join(folder, "sockets", "app.sock"), backup=True
            ),
        ),
        balance="least_conn",
        next_upstream_tries=2,
        health_check="tls",
        health_interval=10.0,
        health_rise=1,
        health_fall=5,
        tls=True,
        tls_verify=False,
        tls_ca=os.path.join(folder, "ca", "upstream.pem"),
        tls_server_name="xn--bcher-kva.example",
    )
    assert [s.address for s in loaded.upstreams["app"].servers] == [
        "app1.example:443",
        "[2001:db8::1]:443",
        "unix:" + os.path.join(folder, "sockets", "app.sock"),
    ]
    assert loaded.certificates == {
        "rsa": CertificateConfig(
            "rsa",
            os.path.join(folder, "certs", "rsa.pem"),
            os.path.join(folder, "certs", "rsa.key"),
            os.path.join(folder, "certs", "rsa.ocsp"),
        ),
        "ecdsa": CertificateConfig(
            "ecdsa",
            os.path.join(folder, "certs", "ecdsa.pem"),
            os.path.join(folder, "certs", "ecdsa.key"),
        ),
    }


def test_everyFeatureOfTheFileAboveIsAccepted(tmp_path: Path) -> None:
    """
    Every feature the file above uses runs in this version: the only
    problems are the missing files.
    """
    found = "\n".join(problems(tmp_path, EVERYTHING))
    assert "not supported by this version yet" not in found
    assert "cannot read" in found


def test_maxConnectionsIsConverted(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nmax_connections = 5\n")
    loaded = load_config(write(tmp_path, text), checkFiles=False)
    assert loaded.listeners[0].max_connections == 5


def test_keysSetToTheirDefaultsAreAccepted(tmp_path: Path) -> None:
    text = """\
    [gateway]
    workers = 1
    [listener:web]
    listen = tcp:1
    upstream = app
    mode = passthrough
    protocol = tls
    session_tickets = on
    protocols = TLSv1.3 TLSv1.2
    [upstream:app]
    servers = 127.0.0.1:1 weight=1
    tls = off
    tls_verify = on
    balance = round_robin
    """
    loaded = load_config(write(tmp_path, text))
    assert loaded.listeners[0].protocols == ("TLSv1.2", "TLSv1.3")


def test_workersAutoIsTheCpuCount(tmp_path: Path) -> None:
    loaded = load_config(
        write(tmp_path, "[gateway]\nworkers = auto\n" + MINIMAL),
        checkFiles=False,
    )
    assert loaded.gateway.workers == (os.cpu_count() or 1)


# --- syntax: comments, continuation lines, IDNA ----------------------------------


def test_commentsAndInlineComments(tmp_path: Path) -> None:
    text = """\
    # a comment
    ; another comment
    [listener:web]   ; the web listener
    listen = tcp:8443   # the port
    routes =
        # a commented-out route
        ~^a#b.example   app   ; '#' without a space before it stays
        ; another commented-out route
        default         api   # fallback
    preread_timeout = 2s;not-a-comment-without-space
    """
    found = problems(tmp_path, text + UPSTREAMS)
    assert found == [
        "gw.ini:10: [listener:web] preread_timeout: '2s;not-a-comment-without-space'"
        " is not a duration (use 500ms, 5s, 10m, 1h or seconds)"
    ]
    path = write(tmp_path, text.replace(";not-a-comment-without-space", "") + UPSTREAMS)
    web = load_config(path).listeners[0]
    assert web.routes == (
        RouteConfig("~^a#b.example", "app", None, 7),
        RouteConfig("default", "api", None, 9),
    )
    assert web.preread_timeout == 2.0


def test_noInterpolation(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nroutes = ~^(%(x)s|a)$ app\n")
    web = load_config(write(tmp_path, text)).listeners[0]
    assert web.routes[0].pattern == "~^(%(x)s|a)$"


def test_listenAcrossContinuationLines(tmp_path: Path) -> None:
    text = listener("listen =\n    tcp:1,\n    tcp:2\nupstream = app\n")
    assert load_config(write(tmp_path, text)).listeners[0].listen == ("tcp:1", "tcp:2")


def test_keysAreCaseInsensitive(tmp_path: Path) -> None:
    text = listener("Listen = tcp:1\nUPSTREAM = app\n")
    assert load_config(write(tmp_path, text)).listeners[0].upstream == "app"


def test_durationsAndSizesInKeys(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = tcp:1
        upstream = app
        preread_timeout = 750ms
        preread_buffer_size = 4096
        connect_timeout = 3
        idle_timeout = 2m
        """
    )
    web = load_config(write(tmp_path, text)).listeners[0]
    assert (web.preread_timeout, web.preread_buffer_size) == (0.75, 4096)
    assert (web.connect_timeout, web.idle_timeout) == (3.0, 120.0)


def test_unicodeRouteNamesAreStoredAsALabels(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nroutes =\n    Bücher.Example.  app\n    *.straße.de api\n"
    )
    routes = load_config(write(tmp_path, text)).listeners[0].routes
    assert [r.pattern for r in routes] == [
        "xn--bcher-kva.example",
        "*.xn--strae-oqa.de",
    ]


def test_utf8ByteOrderMarkIsIgnored(tmp_path: Path) -> None:
    path = tmp_path / "gw.ini"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path).listeners[0].name == "web"


# --- relative paths ------------------------------------------------------------


def test_relativePathsAreRelativeToTheFilesFolder(tmp_path: Path) -> None:
    text = """\
    [gateway]
    access_log = ../log/access.log
    [listener:web]
    listen = unix:gw.sock:mode=660, unix:/abs/gw.sock, unix:address=rel.sock
    upstream = app
    certificate = tls/cert.pem
    private_key = /keys/key.pem
    client_ca = ca.pem
    [upstream:app]
    servers = unix:../app.sock
    tls_ca = ./ca/../ca.pem
    [certificate:x]
    certificate = x.pem
    private_key = x.key
    ocsp_response = x.ocsp
    """
    folder = tmp_path / "etc"
    folder.mkdir()
    loaded = load_config(write(folder, text), checkFiles=False)
    web = loaded.listeners[0]
    assert loaded.gateway.access_log == str(tmp_path / "log" / "access.log")
    assert web.listen == (
        f"unix:{folder}/gw.sock:mode=660",
        "unix:/abs/gw.sock",
        f"unix:address={folder}/rel.sock",
    )
    assert (web.certificate, web.private_key) == (
        str(folder / "tls/cert.pem"),
        "/keys/key.pem",
    )
    assert web.client_ca == str(folder / "ca.pem")
    upstream = loaded.upstreams["app"]
    assert upstream.servers[0].path == str(tmp_path / "app.sock")
    assert upstream.tls_ca == str(folder / "ca.pem")
    assert loaded.certificates["x"] == CertificateConfig(
        "x", str(folder / "x.pem"), str(folder / "x.key"), str(folder / "x.ocsp")
    )


def test_relativePathsKeepColonsEscapedInEndpoints(tmp_path: Path) -> None:
    folder = tmp_path / "a:b"
    folder.mkdir()
    text = listener("listen = unix:gw.sock\nupstream = app\n")
    loaded = load_config(write(folder, text))
    assert loaded.listeners[0].listen == (f"unix:{tmp_path}/a\\:b/gw.sock",)


@pytest.mark.parametrize("value", ["-", "off"])
def test_accessLogSpecialValuesAreNotPaths(tmp_path: Path, value: str) -> None:
    loaded = load_config(
        write(tmp_path, f"[gateway]\naccess_log = {value}\n" + MINIMAL)
    )
    assert loaded.gateway.access_log == value


# --- problems: format and collection -------------------------------------------------


def test_problemFormat() -> None:
    assert str(Problem("gw.ini", 7, "upstream:api", "balance", "bad")) == (
        "gw.ini:7: [upstream:api] balance: bad"
    )
    assert str(Problem("gw.ini", 3, "bogus", None, "unknown section")) == (
        "gw.ini:3: [bogus]: unknown section"
    )
    assert (
        str(Problem("gw.ini", None, None, None, "cannot read")) == "gw.ini: cannot read"
    )


def test_everyProblemIsReportedAtOnceInFileOrder(tmp_path: Path) -> None:
    text = """\
    [gateway]
    drain_timeout = soon
    [listener:web]
    listen = tcp:1
    upstream = nowhere
    preread_buffer_size = lots
    [upstream:app]
    servers = 127.0.0.1:99999
    balance = roundrobin
    """
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert str(error) == "\n".join(
        [
            f"{path}:2: [gateway] drain_timeout: 'soon' is not a duration"
            " (use 500ms, 5s, 10m, 1h or seconds)",
            f"{path}:5: [listener:web] upstream: upstream 'nowhere' is not defined"
            " (no [upstream:nowhere] section)",
            f"{path}:6: [listener:web] preread_buffer_size: 'lots' is not a size"
            " (use 16k, 1m, 1g or bytes)",
            f"{path}:8: [upstream:app] servers: '127.0.0.1:99999': '99999' is not a"
            " port (use 1..65535)",
            f"{path}:9: [upstream:app] balance: 'roundrobin' is not one of"
            " round_robin, least_conn, random, hash",
        ]
    )
    assert [p.line for p in error.problems] == [2, 5, 6, 8, 9]
    assert error.problems[0] == Problem(
        str(path),
        2,
        "gateway",
        "drain_timeout",
        "'soon' is not a duration (use 500ms, 5s, 10m, 1h or seconds)",
    )
    assert error.reason == "invalid_config"


def test_missingFile(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: cannot read the configuration: No such file or directory"
    )


def test_notUtf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.ini"
    path.write_bytes(b"[gateway]\naccess_log = \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


# --- problems: syntax --------------------------------------------------------------


def test_missingSectionHeader(tmp_path: Path) -> None:
    assert problems(tmp_path, "listen = tcp:1\n") == [
        "gw.ini:1: expected a [section] header before this line"
    ]


def test_unreadableLinesAndOtherProblemsTogether(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nroutes are here\nmode = fast\n")
    assert problems(tmp_path, text) == [
        "gw.ini:4: [listener:web]: cannot read 'routes are here': expected KEY = VALUE,"
        " a [SECTION] header or an indented continuation line",
        "gw.ini:5: [listener:web] mode: 'fast' is not one of passthrough, terminate, tcp",
    ]


def test_duplicateSectionsAndKeysAreAllReported(tmp_path: Path) -> None:
    text = """\
    [listener:web]
    listen = tcp:1
    upstream = app
    listen = tcp:2
    [upstream:app]
    servers = 127.0.0.1:1
    [upstream:app]
    servers = 127.0.0.1:2
    [listener:web]
    """
    assert problems(tmp_path, text) == [
        "gw.ini:4: [listener:web] listen: duplicate key (first on line 2)",
        "gw.ini:7: [upstream:app]: duplicate section (first on line 5)",
        "gw.ini:8: [upstream:app] servers: duplicate key (first on line 6)",
        "gw.ini:9: [listener:web]: duplicate section (first on line 1)",
    ]


def test_unknownSections(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + "[DEFAULT]\nx = 1\n[listener]\n[gateway:x]\n[upstream:bad name]\nservers = a:1\n"
    )
    assert problems(tmp_path, text) == [
        "gw.ini:7: [DEFAULT]: unknown section (use [gateway], [listener:NAME],"
        " [upstream:NAME] or [certificate:NAME])",
        "gw.ini:9: [listener]: unknown section (use [listener:NAME])",
        "gw.ini:10: [gateway:x]: unknown section (use [gateway], [listener:NAME],"
        " [upstream:NAME] or [certificate:NAME])",
        "gw.ini:11: [upstream:bad name]: 'bad name' is not a upstream name: use"
        " letters, digits, '_', '-' and '.'",
    ]


def test_unknownKeysSuggestTheNearestKey(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nupstream = app\nconect_timeout = 5s\nflavour = x\n"
    )
    assert problems(tmp_path, text) == [
        "gw.ini:4: [listener:web] conect_timeout: unknown key (did you mean connect_timeout?)",
        "gw.ini:5: [listener:web] flavour: unknown key",
    ]


def test_keyOfAnotherSectionIsUnknown(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nservers = 127.0.0.1:1\n")
    assert problems(tmp_path, text) == ["gw.ini:4: [listener:web] servers: unknown key"]


def test_noListenerAtAll(tmp_path: Path) -> None:
    assert problems(tmp_path, "[gateway]\n" + UPSTREAMS) == [
        "gw.ini: no [listener:NAME] section: nothing would listen"
    ]


# --- problems: required keys and references --------------------------------------------


def test_missingRequiredKeysAreReportedAtTheSectionHeader(tmp_path: Path) -> None:
    text = """\
    [listener:web]
    upstream = app
    [upstream:app]
    balance = random
    [certificate:c]
    certificate = c.pem
    """
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:1: [listener:web] listen: required key is missing",
        "gw.ini:3: [upstream:app] servers: required key is missing",
        "gw.ini:5: [certificate:c] private_key: required key is missing",
    ]


def test_emptyServers(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\n", "[upstream:app]\nservers =\n")
    assert problems(tmp_path, text) == ["gw.ini:5: [upstream:app] servers: is empty"]


def test_listenerNeedsUpstreamOrRoutesNotBoth(tmp_path: Path) -> None:
    text = """\
    [listener:both]
    listen = tcp:1
    upstream = app
    routes = default app
    [listener:neither]
    listen = tcp:2
    routes =
    """
    assert problems(tmp_path, text + UPSTREAMS) == [
        "gw.ini:4: [listener:both] routes: use upstream or routes, not both",
        "gw.ini:5: [listener:neither]: needs upstream or routes",
    ]


def test_undefinedUpstreamsAreReportedAtTheirLine(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = tcp:1
        routes =
            a.example   app
            b.example   nowhere
            default     api
        """
    )
    assert problems(tmp_path, text) == [
        "gw.ini:5: [listener:web] routes: upstream 'nowhere' is not defined"
        " (no [upstream:nowhere] section)"
    ]


# --- problems: values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "preread_timeout",
            "5x",
            "'5x' is not a duration (use 500ms, 5s, 10m, 1h or seconds)",
        ),
        ("preread_timeout", "0", "'0' is too short: use more than 0"),
        ("idle_timeout", "-1s", "'-1s' is negative: a duration must be 0 or more"),
        (
            "preread_buffer_size",
            "16kb",
            "'16kb' is not a size (use 16k, 1m, 1g or bytes)",
        ),
        ("preread_buffer_size", "0", "'0' is too small: use more than 0"),
        (
            "accept_proxy_protocol",
            "maybe",
            "'maybe' is not a boolean (use on/off, yes/no, true/false or 1/0)",
        ),
        ("mode", "fast", "'fast' is not one of passthrough, terminate, tcp"),
        ("protocol", "http", "'http' is not one of tls, postgres, mysql"),
        ("proxy_protocol", "v3", "'v3' is not one of off, v1, v2"),
        ("relay", "fast", "'fast' is not one of auto, splice, portable"),
        ("verify_client", "required", "'required' is not one of off, on, optional"),
        ("max_connections", "0", "0 is too small: use 1 or more"),
        ("max_connections_per_client", "ten", "'ten' is not a whole number"),
        (
            "protocols",
            "TLSv1.1 TLSv1.2",
            "TLSv1.1 is not allowed: only TLSv1.2 and TLSv1.3",
        ),
        ("protocols", "SSLv3", "SSLv3 is not allowed: only TLSv1.2 and TLSv1.3"),
        ("protocols", "TLSv1", "TLSv1 is not allowed: only TLSv1.2 and TLSv1.3"),
        (
            "protocols",
            "TLSv1.4",
            "'TLSv1.4' is not a TLS version (use TLSv1.2, TLSv1.3)",
        ),
        (
            "allow",
            "10.0.0.1/8",
            "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        ),
        (
            "deny",
            "10.0.0.0/8, example.com",
            "'example.com' is not an IP address or CIDR network",
        ),
        (
            "deny",
            "2001:db8::1/32",
            "'2001:db8::1/32' has host bits set (did you mean 2001:db8::/32?)",
        ),
        (
            "deny_ja4",
            "t13d1516h2",
            "'t13d1516h2' is not a JA4 fingerprint (like t13d1516h2_8daaf6152771_02713d6af862)",
        ),
        (
            "alpn",
            "h2, h 2",
            "'h 2' is not an ALPN protocol: printable ASCII, at most 255 bytes",
        ),
        (
            "certificates",
            "a b",
            "'a b' is not a section name: use letters, digits, '_', '-' and '.'",
        ),
        ("ciphers", "", "is empty"),
        (
            "proxy_protocol_from",
            "lb.example",
            "'lb.example' is not an IP address or CIDR network",
        ),
        (
            "max_connection_rate",
            "10/h",
            "'10/h' is not a connection rate (use N/s or N/m, like 10/s)",
        ),
        (
            "max_connection_rate",
            "0/s",
            "'0/s' allows no connection at all: use 1 or more",
        ),
        (
            "passthrough_protocols",
            "SSLv3",
            "'SSLv3' is not a TLS version (use any, or some of TLSv1, TLSv1.1,"
            " TLSv1.2, TLSv1.3)",
        ),
        (
            "passthrough_protocols",
            "any TLSv1.3",
            "any cannot be combined with versions",
        ),
    ],
)
def test_badListenerValues(tmp_path: Path, key: str, value: str, message: str) -> None:
    text = listener(f"listen = tcp:1\nupstream = app\n{key} = {value}\n")
    found = problems(tmp_path, text, checkFiles=False)
    assert f"gw.ini:4: [listener:web] {key}: {message}" in found


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("access_log_format", "xml", "'xml' is not one of text, json"),
        ("workers", "0", "'0' is not a number of workers (use 1 or more, or auto)"),
        (
            "workers",
            "many",
            "'many' is not a number of workers (use 1 or more, or auto)",
        ),
        (
            "drain_timeout",
            "forever",
            "'forever' is not a duration (use 500ms, 5s, 10m, 1h or seconds)",
        ),
        ("access_log", "", "is empty"),
        (
            "metrics",
            "http:9100",
            "'http:9100' is not a Twisted server endpoint: Unknown endpoint type: 'http'",
        ),
    ],
)
def test_badGatewayValues(tmp_path: Path, key: str, value: str, message: str) -> None:
    found = problems(
        tmp_path,
        f"[gateway]\n{key} = {value}\n" + MINIMAL,
        checkFiles=False,
    )
    assert found == [f"gw.ini:2: [gateway] {key}: {message}"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "balance",
            "roundrobin",
            "'roundrobin' is not one of round_robin, least_conn, random, hash",
        ),
        ("next_upstream_tries", "0", "0 is too small: use 1 or more"),
        ("health_check", "http", "'http' is not one of off, tcp, tls"),
        ("health_interval", "0s", "'0s' is too short: use more than 0"),
        ("health_rise", "0", "0 is too small: use 1 or more"),
        ("health_fall", "two", "'two' is not a whole number"),
        (
            "tls",
            "sometimes",
            "'sometimes' is not a boolean (use on/off, yes/no, true/false or 1/0)",
        ),
        (
            "tls_verify",
            "2",
            "'2' is not a boolean (use on/off, yes/no, true/false or 1/0)",
        ),
        ("tls_server_name", "bad..name", "'bad..name' has an empty label"),
        ("tls_ca", " ", "is empty"),
    ],
)
def test_badUpstreamValues(tmp_path: Path, key: str, value: str, message: str) -> None:
    text = MINIMAL + f"{key} = {value}\n"
    assert problems(tmp_path, text, checkFiles=False) == [
        f"gw.ini:7: [upstream:app] {key}: {message}"
    ]


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("::1:443", "'::1:443': an IPv6 address needs brackets, as in [::1]:443"),
        ("[::1]443", "'[::1]443' is not [IPv6]:PORT"),
        ("[fe80::zz]:443", "'fe80::zz' is not an IPv6 address"),
        ("127.0.0.1", "'127.0.0.1' has no port (use HOST:PORT or unix:/path)"),
        ("127.0.0.1:0", "'127.0.0.1:0': '0' is not a port (use 1..65535)"),
        ("127.0.0.1:65536", "'127.0.0.1:65536': '65536' is not a port (use 1..65535)"),
        ("127.0.0.1:http", "'127.0.0.1:http': 'http' is not a port (use 1..65535)"),
        ("10.0.0.300:1", "'10.0.0.300' is not an IPv4 address"),
        ("bad_host!:1", "may only contain letters, digits"),
        ("unix:", "'unix:' names no socket path"),
        (
            "a.example:1 color=blue",
            "unknown server flag 'color=blue' (use weight=N, max_fails=N, fail_timeout=DURATION or backup)",
        ),
        ("a.example:1 weight", "unknown server flag 'weight'"),
        ("a.example:1 weight=0", "weight=0: 0 is too small: use 1 or more"),
        ("a.example:1 max_fails=x", "max_fails=x: 'x' is not a whole number"),
        ("a.example:1 fail_timeout=5x", "fail_timeout=5x: '5x' is not a duration"),
        ("a.example:1 backup backup", "backup is given twice"),
    ],
)
def test_badServerLines(tmp_path: Path, server: str, message: str) -> None:
    text = listener(
        "listen = tcp:1\nupstream = app\n",
        f"[upstream:app]\nservers =\n    127.0.0.1:1\n    {server}\n",
    )
    found = problems(tmp_path, text, checkFiles=False)
    assert len(found) == 1
    assert found[0].startswith("gw.ini:7: [upstream:app] servers: ")
    assert message in found[0]


def test_serverFlagsWithTheGateOff(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nupstream = app\n",
        "[upstream:app]\nservers = a.example:1 BACKUP max_fails=0 fail_timeout=1m\n",
    )
    loaded = load_config(write(tmp_path, text), checkFiles=False)
    assert loaded.upstreams["app"].servers == (
        ServerConfig("a.example", 1, backup=True, max_fails=0, fail_timeout=60.0),
    )


def test_poolsAreAcceptedByDefault(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nupstream = app\n",
        "[upstream:app]\nservers =\n    a.example:1 weight=5 max_fails=2\n"
        "    b.example:1 backup\nbalance = hash\nnext_upstream_tries = 2\n"
        "health_check = tcp\nhealth_interval = 2s\nhealth_rise = 4\n",
    )
    app = load_config(write(tmp_path, text)).upstreams["app"]
    assert app.servers == (
        ServerConfig("a.example", 1, weight=5, max_fails=2),
        ServerConfig("b.example", 1, backup=True),
    )
    assert (app.balance, app.next_upstream_tries) == ("hash", 2)
    assert (app.health_check, app.health_interval) == ("tcp", 2.0)
    assert (app.health_rise, app.health_fall) == (4, 3)


# --- problems: listen endpoints -----------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        (
            "bogus:1",
            "'bogus:1' is not a Twisted server endpoint: Unknown endpoint type: 'bogus'",
        ),
        (
            "tcp:abc",
            "'tcp:abc' is not a Twisted server endpoint: invalid literal for int()",
        ),
        ("tcp:1:colour=red", "'tcp:1:colour=red' is not a Twisted server endpoint"),
        ("tcp:70000", "'tcp:70000': port 70000 is not in 0..65535"),
        (
            "tcp:1:interface=localhost",
            "'tcp:1:interface=localhost': interface 'localhost' is not an IP address",
        ),
        (
            "ssl:443",
            "'ssl:443' would decrypt TLS before the gateway reads the ClientHello",
        ),
        ("", "is empty"),
    ],
)
def test_badListen(tmp_path: Path, listen: str, message: str) -> None:
    found = problems(tmp_path, listener(f"listen = {listen}\nupstream = app\n"))
    assert len(found) == 1
    assert found[0].startswith(f"gw.ini:2: [listener:web] listen: {message}")


def test_duplicateListenAddresses(tmp_path: Path) -> None:
    text = """\
    [gateway]
    metrics = tcp:9100
    [listener:a]
    listen = tcp:443, tcp:0, tcp6:8443
    upstream = app
    [listener:b]
    listen = tcp:443:interface=0.0.0.0, tcp:0, tcp:9100:interface=127.0.0.1
    upstream = app
    [listener:c]
    listen = tcp:8443:interface=\\:\\:, unix:gw.sock, tcp:9100
    upstream = app
    [listener:d]
    listen = unix:./gw.sock
    upstream = app
    """
    assert problems(tmp_path, text + UPSTREAMS, checkFiles=False) == [
        "gw.ini:7: [listener:b] listen: 'tcp:443:interface=0.0.0.0' listens on the"
        " same address as 'tcp:443' in [listener:a]",
        "gw.ini:10: [listener:c] listen: 'tcp:8443:interface=\\\\:\\\\:' listens on"
        " the same address as 'tcp6:8443' in [listener:a]",
        "gw.ini:10: [listener:c] listen: 'tcp:9100' listens on the same address as"
        " 'tcp:9100' in [gateway]",
        f"gw.ini:13: [listener:d] listen: 'unix:{tmp_path}/gw.sock' listens on the"
        f" same address as 'unix:{tmp_path}/gw.sock' in [listener:c]",
    ]


# --- problems: routes --------------------------------------------------------------------


def test_routeProblemsPointAtTheRoutesOwnLine(tmp_path: Path) -> None:
    text = listener(
        """\
        listen = tcp:1
        routes =
            api.example.com     api
            ~(unclosed          app
            a.*.example.com     app
            API.Example.COM.    app
            x.example.com       app   sideways
            lonely
            too many columns here
            default             app
        """
    )
    assert problems(tmp_path, text) == [
        "gw.ini:5: [listener:web] routes: bad regex '(unclosed': missing ):"
        " (unclosed (route regexes use RE2 syntax, which runs in linear time:"
        " no backreferences, no lookarounds)",
        "gw.ini:6: [listener:web] routes: 'a.*.example.com': '*' is only allowed as"
        " the whole first label, as in '*.example.com'",
        "gw.ini:7: [listener:web] routes: duplicate route pattern 'API.Example.COM.'"
        " (first on line 4)",
        "gw.ini:8: [listener:web] routes: 'sideways' is not one of passthrough, terminate",
        "gw.ini:9: [listener:web] routes: 'lonely' is not PATTERN UPSTREAM"
        " [passthrough|terminate]",
        "gw.ini:10: [listener:web] routes: 'too many columns here' is not PATTERN"
        " UPSTREAM [passthrough|terminate]",
    ]


def test_routeOnTheKeyLine(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nroutes = ~[ app\n")
    assert problems(tmp_path, text) == [
        "gw.ini:3: [listener:web] routes: bad regex '[': missing ]: [ (route"
        " regexes use RE2 syntax, which runs in linear time: no backreferences,"
        " no lookarounds)"
    ]


def test_aRegexRE2CannotRunIsAProblemNamingIt(tmp_path: Path) -> None:
    """
    A backreference needs backtracking, which RE2 refuses: the pattern is
    reported at its line rather than run in exponential time.
    """
    text = listener("listen = tcp:1\nroutes =\n    ~^(a+)\\1$ app\n    default app\n")
    assert problems(tmp_path, text) == [
        "gw.ini:4: [listener:web] routes: bad regex '^(a+)\\\\1$': invalid escape"
        " sequence: \\1 (route regexes use RE2 syntax, which runs in linear time:"
        " no backreferences, no lookarounds)"
    ]


# --- problems: modes, termination and client certificates ------------------------------


def test_tcpModeNeedsUpstreamAndNoRoutes(tmp_path: Path) -> None:
    text = """\
    [listener:a]
    listen = tcp:1
    mode = tcp
    routes = default app
    [listener:b]
    listen = tcp:2
    mode = tcp
    """
    assert problems(tmp_path, text + UPSTREAMS, checkFiles=False) == [
        "gw.ini:4: [listener:a] routes: mode = tcp reads no ClientHello, so it cannot"
        " route: use upstream",
        "gw.ini:7: [listener:b] mode: mode = tcp needs upstream",
    ]


def test_terminationNeedsACertificate(tmp_path: Path) -> None:
    text = """\
    [listener:a]
    listen = tcp:1
    mode = terminate
    upstream = app
    [listener:b]
    listen = tcp:2
    routes =
        a.example  app  terminate
        default    app
    [listener:c]
    listen = tcp:3
    mode = terminate
    routes =
        a.example  app  passthrough
    """
    assert problems(tmp_path, text + UPSTREAMS, checkFiles=False) == [
        "gw.ini:3: [listener:a] mode: mode = terminate needs certificate and"
        " private_key, or certificates",
        "gw.ini:8: [listener:b] routes: route 'a.example' terminates TLS, so the"
        " listener needs certificate and private_key, or certificates",
    ]


def test_certificateKeysGoTogether(tmp_path: Path) -> None:
    text = """\
    [listener:a]
    listen = tcp:1
    upstream = app
    certificate = a.pem
    [listener:b]
    listen = tcp:2
    upstream = app
    private_key = b.key
    [listener:c]
    listen = tcp:3
    upstream = app
    certificate = c.pem
    private_key = c.key
    certificates = x, nope
    [certificate:x]
    certificate = x.pem
    private_key = x.key
    """
    assert problems(tmp_path, text + UPSTREAMS, checkFiles=False) == [
        "gw.ini:4: [listener:a] certificate: certificate needs private_key",
        "gw.ini:8: [listener:b] private_key: private_key needs certificate",
        "gw.ini:14: [listener:c] certificates: use certificate and private_key,"
        " or certificates, not both",
        "gw.ini:14: [listener:c] certificates: certificate 'nope' is not defined"
        " (no [certificate:nope] section)",
    ]


def test_verifyClientNeedsClientCa(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nverify_client = on\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:4: [listener:web] verify_client: verify_client = on needs client_ca"
    ]


def test_allowPlaintextIsForPostgres(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nallow_plaintext = on\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:4: [listener:web] allow_plaintext: allow_plaintext only applies to"
        " protocol = postgres or mysql"
    ]


def test_proxyProtocolFromNeedsAcceptProxyProtocol(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nproxy_protocol_from = 10.0.0.1\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:4: [listener:web] proxy_protocol_from: proxy_protocol_from only"
        " applies with accept_proxy_protocol = on"
    ]


def test_acceptProxyProtocolFromAnyoneIsAWarning(tmp_path: Path) -> None:
    """
    Accepting PROXY headers from every peer works, but lets anyone who can
    connect pick their address: C{check} says so, at the key's line.
    """
    path = write(
        tmp_path,
        listener("listen = tcp:1\nupstream = app\naccept_proxy_protocol = on\n"),
    )
    loaded = load_config(path, checkFiles=False)
    assert [str(w).replace(str(path), "gw.ini") for w in loaded.warnings] == [
        "gw.ini:4: [listener:web] accept_proxy_protocol: warning: on without"
        " proxy_protocol_from: any peer that can connect may send a PROXY header"
        " and choose its own client address, past allow/deny and the per-client"
        " limits; list your balancers in proxy_protocol_from"
    ]
    # The warning comes with the certificate checks' own, at a full load.
    assert load_config(path).warnings == loaded.warnings


@pytest.mark.parametrize(
    "keys",
    [
        "accept_proxy_protocol = on\nproxy_protocol_from = 10.0.0.0/8\n",
        "listen = unix:gw.sock\naccept_proxy_protocol = on\n",
        "accept_proxy_protocol = off\n",
    ],
)
def test_noProxyWarningWhenSendersAreKnown(tmp_path: Path, keys: str) -> None:
    """
    No warning with the senders listed, on a UNIX socket (whose file
    permissions say who may connect), or without PROXY headers at all.
    """
    listen = "" if "listen" in keys else "listen = tcp:1\n"
    text = listener(f"{listen}upstream = app\n{keys}")
    assert load_config(write(tmp_path, text), checkFiles=False).warnings == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("any", None),
        ("ANY", None),
        ("TLSv1.3", ("TLSv1.3",)),
        ("tlsv1.3 TLSv1 TLSv1.0, TLSv1.1", ("TLSv1", "TLSv1.1", "TLSv1.3")),
    ],
)
def test_passthroughProtocolsAreRead(
    tmp_path: Path, value: str, expected: tuple[str, ...] | None
) -> None:
    text = listener(
        f"listen = tcp:1\nupstream = app\npassthrough_protocols = {value}\n"
    )
    [web] = load_config(write(tmp_path, text), checkFiles=False).listeners
    assert web.passthrough_protocols == expected


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "mode = tcp\n",
            "mode = tcp reads no ClientHello, so it cannot check its version: use"
            " mode = passthrough",
        ),
        (
            "mode = terminate\ncertificate = c.pem\nprivate_key = c.key\n",
            "nothing on this listener passes through: terminated connections follow"
            " protocols",
        ),
    ],
)
def test_passthroughProtocolsNeedSomethingThatPassesThrough(
    tmp_path: Path, keys: str, message: str
) -> None:
    text = listener(
        f"listen = tcp:1\nupstream = app\n{keys}passthrough_protocols = TLSv1.3\n"
    )
    found = problems(tmp_path, text, checkFiles=False)
    assert any(
        p.endswith(f"[listener:web] passthrough_protocols: {message}") for p in found
    ), found


MYSQL_ADVICE = (
    "protocol = mysql terminates TLS (the gateway answers the greeting and the"
    " SSLRequest itself); to relay MySQL TLS untouched use mode = tcp"
)
TERMINATION_KEYS = "certificate = c.pem\nprivate_key = k.pem\n"


def test_mysqlOnAPassthroughListenerPointsAtTCPMode(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nprotocol = mysql\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        f"gw.ini:4: [listener:web] protocol: {MYSQL_ADVICE}"
    ]


def test_mysqlWithOnlyPassthroughRoutesPointsAtTCPMode(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nprotocol = mysql\nroutes =\n    a.example app\n"
        "    default api passthrough\n"
    )
    assert problems(tmp_path, text, checkFiles=False) == [
        f"gw.ini:3: [listener:web] protocol: {MYSQL_ADVICE}"
    ]


def test_mysqlPassthroughRouteIsReportedAtItsLine(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nmode = terminate\nprotocol = mysql\n"
        + TERMINATION_KEYS
        + "routes =\n    a.example app\n    b.example api passthrough\n"
    )
    assert problems(tmp_path, text, checkFiles=False) == [
        f"gw.ini:9: [listener:web] routes: route 'b.example' passes TLS through:"
        f" {MYSQL_ADVICE}"
    ]


def test_mysqlInTCPModeIsAnError(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nmode = tcp\nprotocol = mysql\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:5: [listener:web] protocol: mode = tcp relays MySQL untouched (its"
        " TLS included); protocol = mysql is for termination: use mode = terminate,"
        " or drop protocol"
    ]


def test_mysqlUpstreamCannotHaveATLSHealthCheck(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nmode = terminate\nprotocol = mysql\n"
        + TERMINATION_KEYS
        + "upstream = app\n",
        "[upstream:app]\nservers = 127.0.0.1:3306\nhealth_check = tls\n",
    )
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:10: [upstream:app] health_check: health_check = tls cannot check a"
        " MySQL server (listener 'web' has protocol = mysql): the server speaks"
        " first and TLS starts inside its protocol; use tcp"
    ]


def test_mysqlTerminationLoads(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nmode = terminate\nprotocol = mysql\nallow_plaintext = on\n"
        + TERMINATION_KEYS
        + "routes =\n    a.example app\n    default api\n"
    )
    loaded = load_config(write(tmp_path, text), checkFiles=False)
    [config] = loaded.listeners
    assert (config.protocol, config.allow_plaintext) == ("mysql", True)


def test_allowAllIsEveryAddress(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\ndeny = all\n")
    loaded = load_config(write(tmp_path, text), checkFiles=False)
    assert loaded.listeners[0].deny == (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )


def test_tcpModeCannotSpeakPostgres(tmp_path: Path) -> None:
    text = listener("listen = tcp:1\nupstream = app\nmode = tcp\nprotocol = postgres\n")
    assert problems(tmp_path, text, checkFiles=False) == [
        "gw.ini:5: [listener:web] protocol: mode = tcp relays without reading"
        " anything, so it cannot speak the PostgreSQL preamble: use mode ="
        " passthrough or terminate",
    ]


def test_postgresListenersLoad(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:1\nupstream = app\nprotocol = postgres\nallow_plaintext = on\n"
    )
    [loaded] = load_config(write(tmp_path, text), checkFiles=False).listeners
    assert (loaded.protocol, loaded.allow_plaintext) == ("postgres", True)
    text = listener("listen = tcp:1\nupstream = app\nmode = tcp\n")
    [loaded] = load_config(write(tmp_path, text), checkFiles=False).listeners
    assert (loaded.mode, loaded.upstream) == ("tcp", "app")


# --- the line scan agrees with configparser ---------------------------------------------

lineForms = st.sampled_from(
    [
        "[s]",
        "[t]",
        "[s] ; comment",
        "k = v",
        "k=",
        "K: v ; c",
        "j = a#b",
        "j = a #b",
        "  continued",
        "    more ; comment",
        "\tcontinued # comment",
        "  # indented comment",
        "; comment",
        "# comment",
        "",
        "   ",
        "  [s]",
        "x = y = z",
    ]
)


@given(st.lists(lineForms, max_size=12))
def test_scanFindsTheLinesConfigparserReads(lines: list[str]) -> None:
    """
    For every key configparser reads, the scan's numbered lines hold the
    same text, so problems point at the right line.
    """
    text = "\n".join(["[s]", *lines]) + "\n"
    parser = configparser.ConfigParser(
        interpolation=None,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),
        strict=False,
        default_section="\0",
    )
    with contextlib.suppress(configparser.ParsingError):
        parser.read_string(text)
    scan = _scan(text)
    numbered = text.splitlines()
    for section in parser.sections():
        for key, value in parser.items(section, raw=True):
            expected = [t.strip() for t in value.splitlines() if t.strip()]
            found = scan.values[(section, key)]
            assert [t for _, t in found] == expected
            for number, part in found:
                assert part in numbered[number - 1]


# --- messages that say what to do (NGINX habits) -----------------------------


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [
        ("443", "tcp:443"),
        ("0.0.0.0:443", "tcp:443:interface=0.0.0.0"),
        ("127.0.0.1:8443", "tcp:8443:interface=127.0.0.1"),
        ("[::]:443", "tcp6:443:interface=\\:\\:"),
        ("*:443", "tcp:443"),
    ],
)
def test_nginxListenValuesSuggestTheEndpointString(
    tmp_path: Path, value: str, suggestion: str
) -> None:
    [problem] = problems(tmp_path, listener(f"listen = {value}\nupstream = app\n"))
    assert problem == (
        f"gw.ini:2: [listener:web] listen: {value!r} is not a Twisted server"
        f" endpoint string: write {suggestion}"
    )


def test_suggestedEndpointStringIsValid(tmp_path: Path) -> None:
    """What the message suggests for C{[::]:443} is itself accepted."""
    path = write(
        tmp_path, listener("listen = tcp6:0:interface=\\:\\:\nupstream = app\n")
    )
    assert load_config(path).listeners[0].listen == ("tcp6:0:interface=\\:\\:",)


def test_commaSeparatedServersSayOnePerLine(tmp_path: Path) -> None:
    text = listener(
        "listen = tcp:8443\nupstream = app\n",
        "[upstream:app]\nservers = 127.0.0.1:9000, 127.0.0.1:9001\n",
    )
    [problem] = problems(tmp_path, text)
    assert problem.startswith("gw.ini:5: [upstream:app] servers: ")
    assert "one server per line" in problem


@pytest.mark.parametrize(
    ("key", "pointer"),
    [
        ("proxy_pass", "upstream = NAME"),
        ("ssl_preread", "passthrough is the default mode"),
        ("ssl_certificate", "certificate = FILE"),
        ("ssl_certificate_key", "private_key = FILE"),
    ],
)
def test_nginxDirectivesPointAtTheGatewaysName(
    tmp_path: Path, key: str, pointer: str
) -> None:
    [problem] = problems(
        tmp_path, listener(f"listen = tcp:8443\nupstream = app\n{key} = on\n")
    )
    assert problem.startswith(
        f"gw.ini:4: [listener:web] {key}: unknown key: this is NGINX's name; here "
    )
    assert pointer in problem


def test_logLevel(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nlog_level = warn\n" + MINIMAL)
    assert load_config(path).gateway.log_level == "warn"
    assert GatewaySettings().log_level == "info"
    [problem] = problems(tmp_path, "[gateway]\nlog_level = loud\n" + MINIMAL)
    assert problem.startswith("gw.ini:2: [gateway] log_level: ")


def test_warningFormat() -> None:
    """
    A warning reads as a problem does, with C{warning:} before the message.
    """
    warning = ConfigWarning("gw.ini", 7, "listener:web", "ciphers", "allows CBC")
    assert str(warning) == "gw.ini:7: [listener:web] ciphers: warning: allows CBC"
    assert str(ConfigWarning("gw.ini", None, None, None, "x")) == "gw.ini: warning: x"
    assert warning != Problem("gw.ini", 7, "listener:web", "ciphers", "allows CBC")


def test_nginxHintsNameKeysThatExist() -> None:
    """
    Every key a hint tells the operator to use is a key of this version,
    and no NGINX name in the table is itself one of our keys (it would
    never be reported as unknown), except those that say which section
    the key belongs in.
    """
    import re

    ours = {
        field.name
        for cls in (GatewaySettings, ListenerConfig, UpstreamConfig, CertificateConfig)
        for field in attrs.fields(cls)
    }
    for nginx, hint in _NGINX_NAMES.items():
        assert nginx not in ours or "belongs in" in hint, nginx
        for key in re.findall(r"\b([a-z_]+) =", hint):
            assert key in ours, (nginx, key)


def test_whatAnEndpointBindsIsLearntInMemory() -> None:
    """
    The checks of listen addresses learn what an endpoint binds by letting
    it listen on a C{MemoryReactor}: public API, nothing bound.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    from gateway.config.endpoints import _bindingInMemory

    for description, expected in [
        ("tcp:8443:interface=127.0.0.1", (8443, "127.0.0.1", "")),
        ("tcp6:443:interface=\\:\\:1", (443, "::1", "")),
        ("tcp:443", (443, "", "")),
        ("unix:/run/gw.sock", (None, "", "/run/gw.sock")),
    ]:
        reactor = MemoryReactor()
        assert _bindingInMemory(serverFromString(reactor, description), reactor) == (
            expected
        )
    # Not an endpoint at all: nothing to judge.
    assert _bindingInMemory(object(), MemoryReactor()) == (None, "", "")
