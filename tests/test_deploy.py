"""
The deployment files under etc/, checked as a CI pipeline checks them:
without a cluster, a Docker engine or systemd running.

  - etc/kubernetes/: every manifest against the Kubernetes API schemas
    (C{kubernetes-validate --strict}, newest and oldest bundled versions),
    the manifests against each other (names, ports, labels, timeouts), and
    the INI of the ConfigMap through C{python -m gateway check}.
  - etc/docker/Dockerfile: C{hadolint}, and its build context against
    what C{setup.cfg} needs to install the project.
  - etc/systemd/tlsgateway.service: C{systemd-analyze verify} and its
    offline security score, when C{systemd-analyze} is installed.

Every tool runs as a real subprocess.  A tool from the C{test} extra that
is missing fails the test under CI (C{CI} set) and skips it elsewhere, so
a developer without the extra still gets the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.core.units import parseDuration

try:
    import yaml
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip(
        "PyYAML is not installed (pip install '.[test]')", allow_module_level=True
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = REPO_ROOT / "etc" / "kubernetes"
DOCKERFILE = REPO_ROOT / "etc" / "docker" / "Dockerfile"
UNIT = REPO_ROOT / "etc" / "systemd" / "tlsgateway.service"
MANIFESTS = sorted(
    p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"
)
#: The oldest API schemas kubernetes-validate ships; docs/deploy.rst names
#: it as the oldest Kubernetes the manifests are written for.
OLDEST_KUBERNETES = "1.25.0"


def run(
    argv: Sequence[str], cwd: Path = REPO_ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p
    )
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def missing(what: str) -> None:
    """
    A tool of the C{test} extra is not installed: a failure in CI, where
    C{pip install .[test]} must have installed it; a skip elsewhere.
    """
    message = f"{what} is not installed (pip install '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def venvTool(name: str) -> str:
    """
    An executable that a package installs next to this interpreter (the
    venv's C{bin}), or on C{PATH}.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        missing(name)
    assert found is not None
    return found


def manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text())
    return document


def podSpec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("deployment.yaml")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    [gateway] = podSpec()["containers"]
    return dict(gateway)


def iniText() -> str:
    text: str = manifest("configmap.yaml")["data"]["gateway.ini"]
    return text


def iniValue(section: str, key: str) -> str | None:
    import configparser

    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";")
    )
    parser.read_string(iniText())
    return parser.get(section, key, fallback=None)


def mountPath(volumeKind: str) -> str:
    """The mount path of the pod's volume of that kind (configMap, secret)."""
    [volume] = [v for v in podSpec()["volumes"] if volumeKind in v]
    [mount] = [m for m in container()["volumeMounts"] if m["name"] == volume["name"]]
    path: str = mount["mountPath"]
    return path


# -- Kubernetes ----------------------------------------------------------------


@pytest.mark.parametrize("version", [None, OLDEST_KUBERNETES])
def test_manifestsValidateAgainstTheKubernetesSchemas(version: str | None) -> None:
    """
    Strict: a misspelt or misplaced field fails, as C{kubectl apply
    --validate=strict} would fail it.
    """
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing("kubernetes-validate")
    assert MANIFESTS, "no manifest in etc/kubernetes"
    versionArgs = ["--kubernetes-version", version] if version else []
    result = run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            *versionArgs,
            *map(str, MANIFESTS),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(MANIFESTS), result.stdout


def test_kustomizationListsEveryManifest() -> None:
    resources = manifest("kustomization.yaml")["resources"]
    assert sorted(resources) == [p.name for p in MANIFESTS]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomizeBuildValidates(tmp_path: Path) -> None:
    """
    What C{kubectl apply -k etc/kubernetes} would send, rendered offline
    and validated again.
    """
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing("kubernetes-validate")
    built = run(["kubectl", "kustomize", str(KUBERNETES)])
    assert built.returncode == 0, built.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(built.stdout)
    result = run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(rendered)]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_namesLabelsAndPortsAgree() -> None:
    """
    What the schemas cannot see: the Deployment selects its own pods, the
    Service and the PodDisruptionBudget select them too, the Service's
    target port is the container's named port, which is the port the INI
    listens on, and the volumes name the ConfigMap and Secret that exist.
    """
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        manifest("service.yaml")["spec"]["selector"],
        manifest("poddisruptionbudget.yaml")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), (selector, labels)

    [port] = container()["ports"]
    [servicePort] = manifest("service.yaml")["spec"]["ports"]
    assert servicePort["targetPort"] == port["name"]
    assert container()["readinessProbe"]["tcpSocket"]["port"] == port["name"]
    listen = iniValue("listener:https", "listen")
    assert listen is not None
    match = re.fullmatch(r"tcp6?:(\d+)(:.*)?", listen.strip())
    assert match, listen
    assert int(match.group(1)) == port["containerPort"]

    volumes = {v["name"]: v for v in podSpec()["volumes"]}
    assert {m["name"] for m in container()["volumeMounts"]} == volumes.keys()
    configMaps = {v["configMap"]["name"] for v in volumes.values() if "configMap" in v}
    secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
    assert configMaps == {manifest("configmap.yaml")["metadata"]["name"]}
    assert secrets == {manifest("secret.yaml")["metadata"]["name"]}


def test_gatewayFindsItsFilesWhereThePodMountsThem() -> None:
    """
    The container runs the INI where the ConfigMap is mounted, and the
    INI's certificate paths (relative to the INI's folder) land in the
    Secret's mount.
    """
    args = container()["args"]
    configPath = args[args.index("--config") + 1]
    assert configPath == f"{mountPath('configMap')}/gateway.ini"
    secretKeys = set(manifest("secret.yaml")["stringData"])
    for key in ("certificate", "private_key"):
        value = iniValue("listener:https", key)
        assert value is not None
        resolved = os.path.normpath(os.path.join(mountPath("configMap"), value))
        assert os.path.dirname(resolved) == mountPath("secret"), (key, resolved)
        assert os.path.basename(resolved) in secretKeys


def test_podOutlivesItsDrain() -> None:
    """
    Kubernetes kills the pod at C{terminationGracePeriodSeconds}, counted
    from the start of the preStop sleep: the gateway's drain must end
    before.
    """
    drain = parseDuration(iniValue("gateway", "drain_timeout") or "30s")
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = podSpec()["terminationGracePeriodSeconds"]
    assert float(command[1]) + drain < grace


def test_podRunsUnprivileged() -> None:
    pod = podSpec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    security = container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    [port] = container()["ports"]
    added = security["capabilities"].get("add", [])
    if port["containerPort"] < 1024:
        assert added == ["NET_BIND_SERVICE"]
    else:
        assert added == []
    assert manifest("deployment.yaml")["spec"]["replicas"] >= 2
    assert "limits" in container()["resources"]


def test_proxyProtocolIsOnAtBothEndsOrNeither() -> None:
    """
    A load balancer that sends a PROXY header to a gateway that does not
    expect one breaks every connection (the header is no ClientHello); a
    gateway that expects one from a load balancer that sends none does too.
    """
    annotations = manifest("service.yaml")["metadata"].get("annotations", {})
    sends = any("proxy-protocol" in key for key in annotations)
    accepts = iniValue("listener:https", "accept_proxy_protocol") in (
        "on",
        "yes",
        "true",
        "1",
    )
    assert sends == accepts, (
        annotations,
        iniValue("listener:https", "accept_proxy_protocol"),
    )
    assert manifest("service.yaml")["spec"]["externalTrafficPolicy"] == "Local"


def writeConfigMapFolder(root: Path, certificate: bytes, key: bytes) -> Path:
    """
    The pod's /etc/tlsgateway under C{root}: the ConfigMap's INI in
    C{config/}, the Secret's two files in C{tls/}.
    """
    config = root / mountPath("configMap").removeprefix("/etc/tlsgateway/")
    tls = root / mountPath("secret").removeprefix("/etc/tlsgateway/")
    config.mkdir(parents=True)
    tls.mkdir(parents=True)
    (config / "gateway.ini").write_text(iniText())
    (tls / "tls.crt").write_bytes(certificate)
    (tls / "tls.key").write_bytes(key)
    (tls / "tls.key").chmod(0o600)
    return config / "gateway.ini"


def test_configMapIniPassesTheCheck(tmp_path: Path) -> None:
    """
    C{python -m gateway check} accepts the ConfigMap's INI, with a real
    certificate for its terminate route where the Secret would be.
    """
    leaf = trustme.CA().issue_cert("legacy.example.com")
    path = writeConfigMapFolder(
        tmp_path,
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        leaf.private_key_pem.bytes(),
    )
    result = run([sys.executable, "-m", "gateway", "check", "--config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout


def test_placeholderSecretFailsTheCheckLoudly(tmp_path: Path) -> None:
    """
    The committed Secret holds no key (placeholders only), and a pod
    started with it fails its configuration check naming the file,
    rather than serving something.
    """
    stringData = manifest("secret.yaml")["stringData"]
    for path in KUBERNETES.glob("*.yaml"):
        assert "PRIVATE KEY" not in path.read_text(), path
    assert all("REPLACE-ME" in value for value in stringData.values())
    path = writeConfigMapFolder(
        tmp_path, stringData["tls.crt"].encode(), stringData["tls.key"].encode()
    )
    result = run([sys.executable, "-m", "gateway", "check", "--config", str(path)])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tls.crt" in result.stderr, result.stderr


# -- Docker ----------------------------------------------------------------------


def test_dockerfileIsHadolintClean() -> None:
    result = run([venvTool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def dockerInstructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerBuildContextHoldsWhatTheInstallNeeds() -> None:
    """
    The image is built from the checkout with C{pip install}: every file
    and package folder that C{setup.cfg} names must be copied in first.
    """
    import configparser

    copied = set()
    for keyword, arguments in dockerInstructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, _ = arguments.split()
            copied.update(sources)
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    needed = {"setup.cfg", "pyproject.toml"}
    needed.add(setup["metadata"]["long_description"].removeprefix("file:").strip())
    needed.update(
        package.split(".")[0]
        for package in setup["options"]["packages"].split()
        if package
    )
    assert needed <= copied, needed - copied


def test_dockerImageRunsAsTheDeploymentsUser() -> None:
    """
    A numeric, non-root C{USER}: Kubernetes' C{runAsNonRoot} can only
    verify a numeric one, and it is the uid the Deployment asks for.
    """
    [user] = [args for keyword, args in dockerInstructions() if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert int(uid) == podSpec()["securityContext"]["runAsUser"]
    assert int(gid or uid) == podSpec()["securityContext"]["runAsGroup"]
    [expose] = [args for keyword, args in dockerInstructions() if keyword == "EXPOSE"]
    assert int(expose) == container()["ports"][0]["containerPort"]


# -- systemd ---------------------------------------------------------------------


def unitEntries() -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, repeats kept."""
    entries = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unitValues(key: str) -> list[str]:
    return [value for section, k, value in unitEntries() if k == key]


def test_unitChecksRunsAndReloadsTheSameFile() -> None:
    [check] = unitValues("ExecStartPre")
    [start] = unitValues("ExecStart")
    reloads = unitValues("ExecReload")
    config = re.search(r" run --config (\S+)$", start)
    assert config, start
    assert check.endswith(f" check --config {config.group(1)}")
    assert reloads[0] == check
    assert reloads[-1] == "/bin/kill -HUP $MAINPID"
    assert unitValues("Type") == ["simple"]


def test_unitOutlivesTheDefaultDrain() -> None:
    [stop] = unitValues("TimeoutStopSec")
    assert parseDuration(stop) > 30


def test_unitAllowsWhatPyOpenSSLCallbacksNeed() -> None:
    """
    C{MemoryDenyWriteExecute=yes} breaks termination: every pyOpenSSL
    callback (SNI, ALPN, client certificate verification) is a cffi
    callback in writable+executable memory.
    """
    assert unitValues("MemoryDenyWriteExecute") in ([], ["no"])


def systemdAnalyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed")
    return found


def unitForAnalysis(directory: Path) -> Path:
    """
    The unit with its C{tlsgateway} command pointed at a stub executable:
    C{verify} checks that every command exists, and this machine need not
    have the gateway installed in /usr/local/bin.
    """
    stub = directory / "tlsgateway"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = directory / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tlsgateway", str(stub)))
    return unit


def test_unitVerifies(tmp_path: Path) -> None:
    """
    C{systemd-analyze verify} exits 0 on a misspelt key, with a warning:
    so the test wants no output at all.
    """
    analyze = systemdAnalyze()
    unit = unitForAnalysis(tmp_path)
    result = run([analyze, "verify", str(unit)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_unitIsWellSandboxed(tmp_path: Path) -> None:
    """
    C{systemd-analyze security} rates the unit's exposure at most 2.0
    ("OK"); its C{--threshold} counts in tenths.
    """
    analyze = systemdAnalyze()
    unit = unitForAnalysis(tmp_path)
    result = run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
        cwd=tmp_path,
    )
    if "--offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot rate unit files: {result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
