"""
L{gateway.config.files}: the one list of files a reload reads again, which
the start of a gateway that drops privileges checks.
"""

from __future__ import annotations

from gateway.config import parseConfigText
from gateway.config.files import FILE_KEYS, reloadedFiles

INI = """\
[gateway]
user = nobody

[listener:web]
listen = tcp:443
mode = terminate
certificate = site.pem
private_key = site.key
client_ca = clients.pem
verify_client = on
client_crl =
    one.crl
    two.crl
upstream = app

[upstream:app]
servers = 10.0.0.1:443
tls = on
tls_ca = backend-ca.pem

[certificate:shop]
certificate = shop.pem
private_key = shop.key
ocsp_response = shop.ocsp

[listener:db]
listen = tcp:5432
certificates = shop
upstream = app
"""


def test_everyFileKeyIsListedAtItsLineAfterTheIniFile() -> None:
    config = parseConfigText(INI, "/etc/tlsgateway/gateway.ini")
    listed = [(f.line, f.section, f.key, f.path) for f in reloadedFiles(config)]
    folder = "/etc/tlsgateway"
    assert listed == [
        (None, None, None, "/etc/tlsgateway/gateway.ini"),
        (7, "listener:web", "certificate", f"{folder}/site.pem"),
        (8, "listener:web", "private_key", f"{folder}/site.key"),
        (9, "listener:web", "client_ca", f"{folder}/clients.pem"),
        (11, "listener:web", "client_crl", f"{folder}/one.crl"),
        (11, "listener:web", "client_crl", f"{folder}/two.crl"),
        (19, "upstream:app", "tls_ca", f"{folder}/backend-ca.pem"),
        (22, "certificate:shop", "certificate", f"{folder}/shop.pem"),
        (23, "certificate:shop", "private_key", f"{folder}/shop.key"),
        (24, "certificate:shop", "ocsp_response", f"{folder}/shop.ocsp"),
    ]


def test_aProblemPointsAtTheKey() -> None:
    config = parseConfigText(INI, "/etc/tlsgateway/gateway.ini")
    key = next(f for f in reloadedFiles(config) if f.key == "private_key")
    assert str(key.problem("not readable")) == (
        "/etc/tlsgateway/gateway.ini:8: [listener:web] private_key: not readable"
    )


def test_theKeysNamedExistInTheModel() -> None:
    """A renamed key would silently drop out of the start check."""
    import attrs

    from gateway.config import (
        AcmeSettings,
        CertificateConfig,
        ListenerConfig,
        UpstreamConfig,
    )

    models = {
        "listener": ListenerConfig,
        "certificate": CertificateConfig,
        "upstream": UpstreamConfig,
        "acme": AcmeSettings,
    }
    for kind, keys in FILE_KEYS.items():
        fields = attrs.fields_dict(models[kind])
        assert set(keys) <= set(fields), kind
