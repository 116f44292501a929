"""
docs/migrating.rst's side-by-side example is what the converter does: its
NGINX and HAProxy blocks convert without notes, the HAProxy one into the
INI block shown, the NGINX one into the same routes and servers.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cli.convert import convert
from gateway.config import parseConfigText

DOC = Path(__file__).resolve().parents[3] / "docs" / "migrating.rst"


def codeBlocks() -> dict[str, str]:
    """The page's code blocks by language (C{nginx}, C{text}, C{ini})."""
    found = re.findall(
        r"\.\. code-block:: (\w+)\n\n((?:    .*\n|\n)+)", DOC.read_text()
    )
    return {
        kind: "\n".join(line[4:] for line in body.split("\n")) for kind, body in found
    }


def withoutComments(ini: str) -> str:
    lines = [line for line in ini.splitlines() if not line.startswith("#")]
    return "\n".join(lines).strip()


def test_theHaproxyExampleConvertsToTheIniShown() -> None:
    blocks = codeBlocks()
    conversion = convert("haproxy", blocks["text"], "haproxy.cfg")
    assert conversion.notes == ()
    assert withoutComments(conversion.ini) == blocks["ini"].strip()


def test_theNginxExampleConvertsToTheSameRoutesAndServers() -> None:
    blocks = codeBlocks()
    nginx = convert("nginx", blocks["nginx"], "nginx.conf")
    assert nginx.notes == ()
    fromNginx = parseConfigText(nginx.ini, "/etc/tlsgateway/a.ini")
    shown = parseConfigText(blocks["ini"], "/etc/tlsgateway/b.ini")
    route = [(r.pattern, r.upstream) for r in fromNginx.listeners[0].routes]
    assert route == [
        ("api.example.com", "api"),
        (".example.com", "web"),
        ("default", "web"),
    ]
    assert {n: u.servers for n, u in fromNginx.upstreams.items()} == {
        n: u.servers for n, u in shown.upstreams.items()
    }
