"""
The enums are the contract's words: the access log and the metrics write
exactly the strings they always did.
"""

from __future__ import annotations

import json

from gateway.core.vocabulary import Action, Mode, Status

#: The contract's statuses (CONTRACT.md, "Access log", plus tls_error and client_closed).
CONTRACT_STATUSES = {
    "ok",
    "no_route",
    "denied",
    "limited",
    "preread_timeout",
    "bad_client_hello",
    "client_closed",
    "bad_proxy_header",
    "handshake_failed",
    "tls_error",
    "plaintext_refused",
    "upstream_unavailable",
    "idle_timeout",
    "shutdown",
}


def test_statusesAreTheContractsWords() -> None:
    assert {s.value for s in Status} == CONTRACT_STATUSES


def test_modesAndActions() -> None:
    assert [m.value for m in Mode] == ["passthrough", "terminate", "tcp"]
    assert [a.value for a in Action] == ["passthrough", "terminate", "tcp"]


def test_writtenAsPlainStrings() -> None:
    """
    JSON, formatting and comparison see the plain word.
    """
    assert json.dumps({"status": Status.TLS_ERROR}) == '{"status": "tls_error"}'
    assert f"{Status.NO_ROUTE}" == "no_route"
    assert str(Action.TCP) == "tcp"
    assert str(Mode.TERMINATE) == "terminate"
    assert Mode("terminate") is Mode.TERMINATE
