"""
C{etc/kubernetes-fleet/}: the Kubernetes manifests of C{etc/kubernetes/}
as a fleet sharing state through etcd, checked as C{tests/test_deploy.py}
checks those: schemas, the rendered overlay, the INI through C{check}.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trustme
import yaml

from tests.test_deploy import (
    REPO_ROOT,
    iniText,
    missing,
    mountPath,
    run,
)

FLEET = REPO_ROOT / "etc" / "kubernetes-fleet"


def fleetIni() -> str:
    document = yaml.safe_load((FLEET / "configmap.yaml").read_text())
    text: str = document["data"]["gateway.ini"]
    return text


def test_theFleetIniIsTheBaseIniPlusCluster() -> None:
    """
    The patch replaces the whole INI: it must stay the base INI, with
    only C{[cluster]} added, or the two would drift apart.
    """
    base, fleet = iniText(), fleetIni()
    assert fleet.startswith(base.rstrip("\n") + "\n\n[cluster]\n")
    assert fleet.count("[") - base.count("[") == 1


def test_theConfigMapPatchValidates() -> None:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing("kubernetes-validate")
    result = run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            str(FLEET / "configmap.yaml"),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomizeBuildValidates(tmp_path: Path) -> None:
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing("kubernetes-validate")
    built = run(["kubectl", "kustomize", str(FLEET)])
    assert built.returncode == 0, built.stderr
    documents = list(yaml.safe_load_all(built.stdout))
    (config,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert config["data"]["gateway.ini"] == fleetIni()
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built.stdout)
    result = run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(rendered)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_theFleetIniPassesTheCheckWithoutEtcd(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("legacy.example.com")
    config = tmp_path / mountPath("configMap").removeprefix("/etc/tlsgateway/")
    tls = tmp_path / mountPath("secret").removeprefix("/etc/tlsgateway/")
    config.mkdir(parents=True)
    tls.mkdir(parents=True)
    (config / "gateway.ini").write_text(fleetIni())
    (tls / "tls.crt").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (tls / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    (tls / "tls.key").chmod(0o600)
    result = run(
        [
            sys.executable,
            "-m",
            "gateway",
            "check",
            "--config",
            str(config / "gateway.ini"),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
