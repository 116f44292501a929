"""
Micro-benchmarks of the gateway's pure hot paths (pytest-benchmark).

Files here are named C{bench_*.py} so that a plain C{pytest} run, whose
C{testpaths} is C{tests}, never collects them even when given this folder
by accident of a glob; this hook collects them when the folder is named:

    .venv/bin/pip install pytest-benchmark
    .venv/bin/pytest benchmarks/
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "clienthello"


def pytest_collect_file(
    parent: pytest.Collector, file_path: Path
) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def capturedHellos() -> dict[str, bytes]:
    """
    The ClientHellos real clients sent (curl, openssl s_client, Python's
    ssl, a pyOpenSSL client with a post-quantum key share), by name.
    """
    return {path.stem: path.read_bytes() for path in sorted(DATA.glob("*.bin"))}
