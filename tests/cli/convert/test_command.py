"""
The C{tlsgateway convert} command around the converters: files in and out,
notes on standard error, exit statuses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli.convert.command import addConvertCommand
from gateway.config import parseConfig

HAPROXY = """\
global
    daemon
frontend fe
    bind 127.0.0.1:8443 ssl crt certs/
    default_backend be
backend be
    server s1 127.0.0.1:8080
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    addConvertCommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *argv])
    result: int = args.func(args)
    return result


def test_writesTheIniAndNamesWhatItLeftBehind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "haproxy.cfg"
    source.write_text(HAPROXY)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "site.pem").write_text("")
    output = tmp_path / "out" / "gateway.ini"
    output.parent.mkdir()
    assert run("haproxy", str(source), "-o", str(output)) == 0
    err = capsys.readouterr().err
    assert f"{source}:2: daemon: " in err
    assert "1 listener(s) converted, 1 item(s) not converted" in err
    config = parseConfig(output)
    # crt certs/ is relative to the configuration's folder, listed for real.
    assert config.listeners[0].certificate == str(tmp_path / "certs" / "site.pem")


def test_withoutOutputTheIniGoesToStandardOutput(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "nginx.conf"
    source.write_text("stream { server { listen 443; proxy_pass 10.0.0.1:443; } }\n")
    assert run("nginx", str(source)) == 0
    captured = capsys.readouterr()
    assert "[listener:stream-443]" in captured.out
    assert "mode = tcp" in captured.out
    assert "0 item(s) not converted" in captured.err


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("nginx", "stream { server {\n", ":1: the block of 'server' is never closed"),
        ("nginx", "http { server { listen 80; } }\n", "nothing converted would listen"),
        (
            "haproxy",
            "frontend fe\n    mode http\n    bind :80\n",
            "nothing converted would listen",
        ),
    ],
)
def test_nothingToWriteExitsOne(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    text: str,
    message: str,
) -> None:
    source = tmp_path / "conf"
    source.write_text(text)
    output = tmp_path / "gateway.ini"
    assert run(kind, str(source), "-o", str(output)) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_unreadableFileExitsOne(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("nginx", str(tmp_path / "missing.conf")) == 1
    assert (
        "missing.conf: cannot read it: No such file or directory"
        in capsys.readouterr().err
    )
