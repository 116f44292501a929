"""
The access-log record: typed fields, the same line as ever.
"""

import io
import json

from gateway.core.vocabulary import Action, Status
from gateway.rules.accesslog import AccessLog, ConnectionRecord, formatJSON, formatText
from gateway.testing import makeClientHello
from gateway.wire.clienthello import NEED_MORE
from gateway.wire.helloreader import ClientHelloReader
from gateway.wire.ja4 import ja4


def _terminated() -> ConnectionRecord:
    record = ConnectionRecord("web", "127.0.0.1:5000", 0.0, 10.0)
    record.sni, record.alpn = "a.test", ("h2",)
    record.action = Action.TERMINATE
    record.upstream = "127.0.0.1:8443"
    record.bytesIn, record.bytesOut = 517, 4096
    record.ended = 10.25
    record.extra.update(
        {
            "tls_version": "TLSv1.3",
            "cipher": "TLS_AES_128_GCM_SHA256",
            "tls_group": "X25519",
            "alpn_selected": "h2",
            "client_cert": None,
        }
    )
    record.extra["closed_by"] = "client_reset"
    return record


def test_theJSONLineIsPlainWordsInTheContractsOrder() -> None:
    """
    Status and action are the vocabulary's enums in the record, and the
    same plain words on the line; the extra fields follow in the order
    they were set.
    """
    record = _terminated()
    record.fail(Status.IDLE_TIMEOUT, "idle for 60s")
    assert formatJSON(record) == (
        '{"time":"1970-01-01T00:00:00.000+00:00","listener":"web",'
        '"client":"127.0.0.1:5000","transport":"tcp","sni":"a.test",'
        '"alpn":["h2"],"ja4":null,"action":"terminate",'
        '"upstream":"127.0.0.1:8443","status":"idle_timeout","bytes_in":517,'
        '"bytes_out":4096,"duration_ms":250,"ech":null,"outer_sni":null,'
        '"reason":"idle for 60s","tls_version":"TLSv1.3",'
        '"cipher":"TLS_AES_128_GCM_SHA256","tls_group":"X25519",'
        '"alpn_selected":"h2","client_cert":null,"closed_by":"client_reset"}'
    )


def test_theTextLineSaysTheSameWords() -> None:
    record = _terminated()
    line = formatText(record)
    assert " action=terminate " in line
    assert " status=ok " in line
    assert "Status" not in line
    assert "Action" not in line


def test_theFirstCauseWins() -> None:
    record = ConnectionRecord("web", "127.0.0.1:5000", 0.0, 0.0)
    record.fail(Status.IDLE_TIMEOUT, "idle")
    record.fail(Status.SHUTDOWN, "stopped")
    assert (record.status, record.reason) == (Status.IDLE_TIMEOUT, "idle")
    assert record.fields()["status"] == "idle_timeout"


def test_theHelloIsTheParsedOneAndGivesTheFingerprint() -> None:
    hello = ClientHelloReader().feed(makeClientHello("a.test", [b"h2"]))
    assert hello is not NEED_MORE
    record = ConnectionRecord("web", "127.0.0.1:5000", 0.0, 0.0, hello=hello)
    assert record.fields()["ja4"] == ja4(hello)


def test_everyLineGetsTheLogsOwnFieldsLast() -> None:
    out = io.StringIO()
    log = AccessLog("-", "json", extra={"worker_pid": 42}, standardOutput=out)
    log.write(_terminated())
    fields = json.loads(out.getvalue())
    assert list(fields)[-2:] == ["closed_by", "worker_pid"]
    assert fields["worker_pid"] == 42
