"""
C{tlsgateway check} warns about an upstream host name that does not
resolve now, and still says C{configuration OK} (exit 0): the gateway
resolves names at each connection, so the name may exist by then.  Run
through the real console script and the system resolver (C{.invalid}
never resolves, RFC 6761; C{localhost} always does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import commandFor, freePort, runCommand

pytestmark = pytest.mark.timeout(60)


def test_checkWarnsAboutANameThatDoesNotResolve(tmp_path: Path) -> None:
    path = tmp_path / "gateway.ini"
    path.write_text(
        f"[listener:web]\n"
        f"listen = tcp:{freePort()}:interface=127.0.0.1\n"
        f"upstream = app\n"
        f"\n"
        f"[upstream:app]\n"
        f"servers =\n"
        f"    localhost:8443\n"
        f"    backend.invalid:443\n"
    )
    result = runCommand(commandFor("script", "check", str(path)), tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "configuration OK", result
    [warning] = result.stderr.strip().splitlines()
    assert warning.startswith(f"{path}:8: [upstream:app] servers: warning:"), warning
    assert "backend.invalid does not resolve now" in warning, warning
    assert "localhost" not in warning
