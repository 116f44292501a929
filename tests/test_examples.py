"""
Every example configuration in C{etc/} passes C{tlsgateway check}.

The examples are documentation that operators copy, so a key renamed or a
default changed must break a test, not a reader's deployment.  They are
found with a glob: an example added later is checked without touching this
file.

The certificate, key and CA files an example names do not exist in the
source tree (and must not: they would be private keys in git), so each
example is checked in a copy of its own under C{tmp_path}, next to real
PEM files made with trustme for the names the example routes:

  - Relative paths are relative to the INI file's folder, so they land in
    C{tmp_path} as they are.
  - An absolute path (C{/etc/letsencrypt/live/example.com/fullchain.pem})
    is moved under C{tmp_path/"root"}, keeping its whole path
    (C{tmp_path/root/etc/letsencrypt/live/example.com/fullchain.pem}), by
    replacing the path's text wherever it occurs in the copy, comments
    included: a plain text substitution, so what is checked is the
    example's own text with only those paths changed.

C{check} runs as an operator runs it: C{python -m gateway check --config
FILE} in a real subprocess, from an empty working directory.
"""

from __future__ import annotations

import configparser
import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import ocsp

from gateway.wire.echopen import generateKeyFile

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO_ROOT / "etc").glob("*.ini"))

#: The keys whose values name files the check reads.
FILE_KEYS = (
    "certificate",
    "private_key",
    "client_ca",
    "tls_ca",
    "ocsp_response",
    "client_crl",
    "ech_keys",
)

#: The keys whose value is a comma-separated list of files.
LIST_KEYS = ("client_crl", "ech_keys")

#: The keys whose values name folders the gateway creates and writes
#: (C{[acme] state_dir}): moved like absolute file paths, created by nobody,
#: so the check sees a folder it could create, as on a fresh machine.
FOLDER_KEYS = ("state_dir",)

#: The name a certificate is issued for when its listener routes no names
#: (a listener with C{upstream} instead of C{routes}): the examples' domain.
FALLBACK_NAME = "example.com"


def test_examplesAreFound() -> None:
    """
    The glob finds the examples, so the parametrised test below cannot pass
    by checking nothing.
    """
    names = {path.name for path in EXAMPLES}
    assert {
        "passthrough.ini",
        "sni-routing.ini",
        "termination.ini",
        "letsencrypt.ini",
        "mixed.ini",
        "mtls.ini",
        "reencrypt.ini",
        "postgres-passthrough.ini",
        "postgres-termination.ini",
        "mysql-tcp.ini",
        "mysql-termination.ini",
        "acme.ini",
        "bank.ini",
    } <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_exampleChecksOK(example: Path, tmp_path: Path) -> None:
    """
    C{tlsgateway check} accepts the example, with its files in place.
    """
    config = materialise(example, tmp_path)
    result = _check(config, tmp_path)
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "configuration OK" in result.stdout, output
    # Examples are what operators copy: they check clean, without warnings.
    assert "warning" not in (result.stdout + result.stderr).lower(), output


def test_materialiseWritesWhatAnExampleNames(tmp_path: Path) -> None:
    """
    The helper itself, on the features no example uses yet: certificate
    sections (RSA and ECDSA for the same names), an OCSP response, names
    from wildcard routes, and an absolute path, which lands under
    C{tmp_path/"root"}.
    """
    example = tmp_path / "src" / "future.ini"
    example.parent.mkdir()
    example.write_text(
        "[listener:https]\n"
        "listen = tcp:443\n"
        "routes =\n"
        "    .example.org        app  terminate\n"
        "    *.example.net       app  terminate\n"
        "    bank.example.com    app  passthrough\n"
        "    default             app\n"
        "certificates = ec, rsa   # chosen by signature algorithms\n"
        "client_ca = /etc/tlsgateway/clients.pem\n"
        "[certificate:ec]\n"
        "certificate = ec.pem\n"
        "private_key = ec.key\n"
        "ocsp_response = ec.ocsp\n"
        "[certificate:rsa]\n"
        "certificate = rsa.pem\n"
        "private_key = rsa.key\n"
        "[upstream:app]\n"
        "servers = 127.0.0.1:8080\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    out.mkdir()
    copy = materialise(example, out)

    clientCA = out / "root" / "etc" / "tlsgateway" / "clients.pem"
    assert f"client_ca = {clientCA}\n" in copy.read_text(encoding="utf-8")
    assert x509.load_pem_x509_certificate(clientCA.read_bytes()).issuer
    for stem, keyClass in [
        ("ec", ec.EllipticCurvePrivateKey),
        ("rsa", rsa.RSAPrivateKey),
    ]:
        chain = x509.load_pem_x509_certificates((out / f"{stem}.pem").read_bytes())
        assert len(chain) == 2  # leaf, then the intermediate
        names = (
            chain[0]
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.DNSName)
        )
        assert names == ["example.org", "*.example.org", "*.example.net"]
        key = load_pem_private_key((out / f"{stem}.key").read_bytes(), None)
        assert isinstance(key, keyClass)
        assert (out / f"{stem}.key").stat().st_mode & 0o077 == 0
    response = ocsp.load_der_ocsp_response((out / "ec.ocsp").read_bytes())
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD


def materialise(example: Path, directory: Path) -> Path:
    """
    Copy C{example} into C{directory} (absolute file paths moved under
    C{directory/"root"}) and create every certificate, key, CA bundle and
    OCSP response it names.

    @return: the path of the copy.
    """
    text = example.read_text(encoding="utf-8")
    parser = _parse(text)
    folders = [
        parser[section][key]
        for section in parser.sections()
        for key in FOLDER_KEYS
        if parser[section].get(key)
    ]
    for value in [*_fileValues(parser), *folders]:
        if os.path.isabs(value):
            text = text.replace(value, str(directory / "root" / value.lstrip("/")))
    copy = directory / example.name
    copy.write_text(text, encoding="utf-8")
    _Files(directory, _parse(text)).create()
    return copy


class _Files:
    """
    Writes the files one configuration names, from one throwaway PKI: a
    root CA (the C{client_ca} and C{tls_ca} bundles) and an intermediate
    that issues the leaves, so a C{certificate} file is a full chain (leaf,
    then intermediate) as real ones are.

    A certificate is issued for the names of the routes that use it (see
    L{_namesFor}); its key is ECDSA, or RSA when the section name or the
    key file's name contains C{rsa} (so an example can show an RSA and an
    ECDSA certificate for the same names).
    """

    def __init__(self, directory: Path, parser: configparser.ConfigParser) -> None:
        self._directory = directory
        self._parser = parser
        self._root = trustme.CA()
        self._issuer = self._root.create_child_ca()
        self._written: set[Path] = set()

    def create(self) -> None:
        for section in self._parser.sections():
            items = self._parser[section]
            if "certificate" in items and "private_key" in items:
                self._leaf(section, items)
            for key in ("client_ca", "tls_ca"):
                if key in items:
                    self._write(items[key], self._root.cert_pem.bytes())
            for value in _names(items.get("client_crl", "")):
                self._write(value, self._crl())
            for configId, value in enumerate(_names(items.get("ech_keys", ""))):
                # A fresh key per file, each with its own config id (a
                # rotation lists several): as tlsgateway ech-keygen writes.
                text, _ = generateKeyFile("public.example.com", configId)
                self._write(value, text.encode("ascii"), private=True)

    def _crl(self) -> bytes:
        """
        A current PEM CRL from the root, the C{client_ca} bundle's
        certificate, revoking nothing.
        """
        root = x509.load_pem_x509_certificate(self._root.cert_pem.bytes())
        rootKey = load_pem_private_key(self._root.private_key_pem.bytes(), None)
        assert isinstance(rootKey, ec.EllipticCurvePrivateKey)  # trustme's default
        now = datetime.datetime.now(datetime.UTC)
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(root.subject)
            .last_update(now - datetime.timedelta(hours=1))
            .next_update(now + datetime.timedelta(days=7))
            .sign(rootKey, hashes.SHA256())
        )
        return crl.public_bytes(serialization.Encoding.PEM)

    def _leaf(self, section: str, items: configparser.SectionProxy) -> None:
        keyType = (
            trustme.KeyType.RSA
            if "rsa" in f"{section} {Path(items['private_key']).name}".lower()
            else trustme.KeyType.ECDSA
        )
        leaf = self._issuer.issue_cert(*self._namesFor(section), key_type=keyType)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        key = leaf.private_key_pem.bytes()
        if self._resolve(items["certificate"]) == self._resolve(items["private_key"]):
            self._write(items["certificate"], key + chain, private=True)
        else:
            self._write(items["certificate"], chain)
            self._write(items["private_key"], key, private=True)
        if "ocsp_response" in items:
            self._write(items["ocsp_response"], self._ocspResponse(leaf))

    def _namesFor(self, section: str) -> list[str]:
        """
        The names a certificate must carry: those of the terminating routes
        of the listener it belongs to (a listener's own C{certificate}) or
        of every listener that lists it in C{certificates} (a
        C{[certificate:NAME]} section).
        """
        kind, _, name = section.partition(":")
        if kind == "listener":
            listeners = [section]
        else:
            listeners = [
                other
                for other in self._parser.sections()
                if other.startswith("listener:")
                and name in _names(self._parser[other].get("certificates", ""))
            ]
        names: dict[str, None] = {}
        for listener in listeners:
            for identity in _routedNames(self._parser[listener]):
                names[identity] = None
        return list(names) or [FALLBACK_NAME]

    def _ocspResponse(self, leaf: trustme.LeafCert) -> bytes:
        """
        A DER OCSP response, signed by the leaf's issuer, saying C{good}.
        """
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        issuer = x509.load_pem_x509_certificate(self._issuer.cert_pem.bytes())
        issuerKey = load_pem_private_key(self._issuer.private_key_pem.bytes(), None)
        assert isinstance(issuerKey, ec.EllipticCurvePrivateKey)  # trustme's default
        now = datetime.datetime.now(datetime.UTC)
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=issuer,
                algorithm=hashes.SHA256(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now - datetime.timedelta(hours=1),
                next_update=now + datetime.timedelta(days=7),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
            .sign(issuerKey, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        resolved = path if path.is_absolute() else self._directory / path
        resolved = Path(os.path.normpath(resolved))
        # Nothing is ever written outside the test's own directory: an
        # absolute path that was not rewritten fails here, not in /etc.
        assert resolved.is_relative_to(self._directory), resolved
        return resolved

    def _write(self, value: str, data: bytes, *, private: bool = False) -> None:
        path = self._resolve(value)
        if path in self._written:
            return
        self._written.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if private:
            # As an operator should (chmod 600): check warns about a key
            # that group or others can read, and examples must check clean.
            path.chmod(0o600)


def _parse(text: str) -> configparser.ConfigParser:
    """
    Read an INI text with the gateway's configparser settings: C{#} and
    C{;} comments, also inline after whitespace, and no interpolation.
    """
    parser = configparser.ConfigParser(
        interpolation=None,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),
        default_section="\0no default section",
    )
    parser.read_string(text)
    return parser


def _fileValues(parser: configparser.ConfigParser) -> Iterator[str]:
    for section in parser.sections():
        for key in FILE_KEYS:
            value = parser[section].get(key)
            if value and key in LIST_KEYS:
                yield from _names(value)
            elif value:
                yield value.strip()


def _names(text: str) -> list[str]:
    """
    A comma-separated list (C{certificates = a, b}) as its items.
    """
    return text.replace(",", " ").split()


def _routedNames(listener: configparser.SectionProxy) -> Iterator[str]:
    """
    The certificate identities a listener's terminating routes need:
    C{api.example.com} as is, C{*.example.com} as the wildcard, and
    C{.example.com} as the name and its wildcard.  Regular expressions,
    C{ALPN:} routes and C{default} name no host, so they add nothing.
    """
    mode = listener.get("mode", "passthrough").strip()
    for line in listener.get("routes", "").splitlines():
        columns = line.split()
        if len(columns) < 2:
            continue
        pattern = columns[0]
        action = columns[2] if len(columns) > 2 else mode
        if action != "terminate":
            continue
        if pattern == "default" or pattern.startswith(("~", "ALPN:")):
            continue
        if pattern.startswith("."):
            yield pattern[1:]
            yield "*" + pattern
        else:
            yield pattern


def _check(config: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m gateway check --config CONFIG} as an operator would, from
    an empty working directory (so relative paths must resolve against the
    INI file's folder, not the working directory).
    """
    cwd = directory / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _resolve(config: Path, value: str) -> str:
    return os.path.normpath(os.path.join(config.parent, value))


def _environment() -> dict[str, str]:
    """
    This checkout first on the path, whether or not the package is
    installed in the running environment.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p
    )
    return env


@pytest.mark.parametrize(
    "example",
    [path for path in EXAMPLES if list(_fileValues(_parse(path.read_text())))],
    ids=lambda path: path.name,
)
def test_exampleFilesAreChecked(example: Path, tmp_path: Path) -> None:
    """
    Without the files it names, the example fails the check, at every
    section that names files: the test above passes because the files were
    loaded and found good, not because nothing looked at them.  (One
    missing file per section is enough: the rest of a pair is not read
    once its certificate is missing.)
    """
    config = materialise(example, tmp_path)
    for path in list(tmp_path.rglob("*")):
        if path.is_file() and path != config:
            path.unlink()
    result = _check(config, tmp_path)
    assert result.returncode == 1, result
    assert "configuration OK" not in result.stdout
    parser = _parse(config.read_text(encoding="utf-8"))
    for section in parser.sections():
        paths = [
            _resolve(config, parser[section][key])
            for key in FILE_KEYS
            if parser[section].get(key)
        ]
        if paths:
            assert any(f"cannot read {path}:" in result.stderr for path in paths), (
                section,
                result.stderr,
            )


def test_writeCertsCommandMakesEveryExampleCheckClean(tmp_path: Path) -> None:
    """
    What a newcomer does in a fresh clone: C{tlsgateway demo --write-certs
    etc/tls}, then C{check} each example, from the folder above C{etc/}.
    Every example passes without a warning: C{letsencrypt.ini} after the
    path change its header describes, the others as they are.
    """
    etc = tmp_path / "etc"
    etc.mkdir()
    for example in EXAMPLES:
        text = example.read_text()
        if example.name == "letsencrypt.ini":
            text = text.replace("= /etc/letsencrypt/", "= tls/letsencrypt/")
        (etc / example.name).write_text(text)
    written = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--write-certs", "etc/tls"],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    assert "wrote etc/tls/example.com.pem" in written.stdout
    assert (etc / "tls" / "example.com.key").stat().st_mode & 0o077 == 0
    needing = []
    for example in EXAMPLES:
        text = example.read_text()
        if list(_fileValues(_parse(text))):
            needing.append(example.name)
            # The header says how to get the files.
            assert "tlsgateway demo --write-certs etc/tls" in text, example.name
        result = _check(etc / example.name, tmp_path)
        output = f"{example.name}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.returncode == 0, output
        assert result.stdout.splitlines()[-1] == "configuration OK", output
        assert "warning" not in (result.stdout + result.stderr).lower(), output
    assert len(needing) >= 6, needing
