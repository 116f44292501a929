"""
Tests for C{[cluster]} in L{gateway.config}: read and checked without
asking etcd anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ClusterSettings, ConfigError, parseConfigText
from gateway.run.loading import load_config

BASE = """\
[listener:web]
listen = tcp:8443
upstream = app

[upstream:app]
servers = 127.0.0.1:9000
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parseConfigText(BASE + text, "/etc/gw/gw.ini")
    return [str(p).removeprefix("/etc/gw/gw.ini:") for p in caught.value.problems]


def test_defaults() -> None:
    config = parseConfigText(
        BASE + "[cluster]\netcd = http://127.0.0.1:2379\n", "/etc/gw/gw.ini"
    )
    assert config.cluster == ClusterSettings(etcd=("http://127.0.0.1:2379",))
    assert config.cluster.prefix == "/tlsgateway/"
    assert config.cluster.lease_ttl == 10.0
    assert config.cluster.name is None


def test_everyKey() -> None:
    config = parseConfigText(
        BASE + "[cluster]\n"
        "etcd = https://etcd-1:2379, https://etcd-2:2379/\n"
        "prefix = /fleet\n"
        "name = edge-1\n"
        "lease_ttl = 30s\n"
        "etcd_ca = ca.pem\n"
        "etcd_cert = client.pem\n"
        "etcd_key = client.key\n",
        "/etc/gw/gw.ini",
    )
    assert config.cluster == ClusterSettings(
        etcd=("https://etcd-1:2379", "https://etcd-2:2379"),
        prefix="/fleet/",
        name="edge-1",
        lease_ttl=30.0,
        etcd_ca="/etc/gw/ca.pem",
        etcd_cert="/etc/gw/client.pem",
        etcd_key="/etc/gw/client.key",
    )


def test_withoutClusterThereIsNone() -> None:
    assert parseConfigText(BASE, "/etc/gw/gw.ini").cluster is None


def test_everyProblemAtOnce() -> None:
    found = problems(
        "[cluster]\n"
        "etcd = 127.0.0.1:2379\n"
        "name = edge 1\n"
        "lease_ttl = 1s\n"
        "etcd_cert = c.pem\n"
        "colour = blue\n"
    )
    assert found == [
        "8: [cluster] etcd: '127.0.0.1:2379' is not an etcd client URL"
        " (like http://127.0.0.1:2379)",
        "9: [cluster] name: 'edge 1' is not a member name: use letters,"
        " digits, '_', '-' and '.'",
        "10: [cluster] lease_ttl: '1s' is too short: etcd keeps a lease 2"
        " seconds or more",
        "11: [cluster] etcd_cert: etcd_cert needs etcd_key",
        "12: [cluster] colour: unknown key",
    ]


def test_etcdIsRequired() -> None:
    assert problems("[cluster]\nprefix = /x/\n") == [
        "7: [cluster] etcd: required key is missing"
    ]


def test_clientKeysNeedHTTPS() -> None:
    assert problems("[cluster]\netcd = http://127.0.0.1:2379\netcd_ca = ca.pem\n") == [
        "9: [cluster] etcd_ca: etcd_ca applies to https:// etcd endpoints only"
    ]


def test_oneMemberPerProcess() -> None:
    found = problems(
        "[gateway]\nworkers = 2\n[cluster]\netcd = http://127.0.0.1:2379\n"
    )
    assert found == [
        "9: [cluster]: [cluster] runs with workers = 1 (one member per"
        " process): run one replica per core instead"
    ]


def test_clusterBeforeGatewayIsCheckedToo() -> None:
    with pytest.raises(ConfigError) as caught:
        parseConfigText(
            "[cluster]\netcd = http://127.0.0.1:2379\n[gateway]\nworkers = 2\n" + BASE,
            "gw.ini",
        )
    assert "workers = 1" in str(caught.value)


def test_checkReportsUnreadableEtcdFilesWithoutAskingEtcd(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    (tmp_path / "gw.ini").write_text(
        BASE + "[cluster]\n"
        "etcd = https://127.0.0.1:1\n"
        "etcd_ca = ca.pem\n"
        "etcd_cert = missing.pem\n"
        "etcd_key = missing.key\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "gw.ini")
    assert [
        str(p).removeprefix(f"{tmp_path}/gw.ini:") for p in caught.value.problems
    ] == [
        f"9: [cluster] etcd_ca: {tmp_path}/ca.pem is not a PEM file",
        f"10: [cluster] etcd_cert: cannot read {tmp_path}/missing.pem: No such file"
        " or directory",
        f"11: [cluster] etcd_key: cannot read {tmp_path}/missing.key: No such file"
        " or directory",
    ]


def test_checkPassesWithoutEtcdRunning(tmp_path: Path) -> None:
    (tmp_path / "gw.ini").write_text(BASE + "[cluster]\netcd = http://127.0.0.1:1\n")
    assert load_config(tmp_path / "gw.ini").cluster is not None
