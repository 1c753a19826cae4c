"""``[log] client_ip``: what ``authsvc/privacy.py`` writes for each address form, and
that both log formatters (and their batched path) and the Auth: line apply it."""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path

import pytest
from authsvc.proxy.authline import auth_line
from authsvc.proxy.syslog import AuthLog

from authsvc.log import BatchedLog, JsonFormatter, KeyValueFormatter, make_handler
from authsvc.privacy import shown_fields, shown_ip
from authsvc.settings import ListenerSettings, ListenTls, LogSettings, MailProtocol, ProxySettings


@pytest.mark.parametrize(("text", "truncated"), [
    ("127.1.2.77", "127.1.2.0/24"),
    ("127.1.2.77:5555", "127.1.2.0/24"),
    ("2001:db8:1:2::7", "2001:db8:1::/48"),
    ("[2001:db8:1:2::7]:993", "2001:db8:1::/48"),
    ("::ffff:127.1.2.77", "127.1.2.0/24"),
    ("unknown", "-"),
    ("", "-"),
])
def test_each_form(text: str, truncated: str) -> None:
    assert shown_ip(text, "full") == text
    assert shown_ip(text, "truncated") == truncated
    assert shown_ip(text, "none") == "-"


def test_fields_only_client_keys_change() -> None:
    fields = {"event": "auth", "client": "127.1.2.77", "peer": "127.1.2.8:1",
              "via": "127.0.0.1:5", "login": "127.1.2.77", "session": 3}
    assert shown_fields(fields, "full") is fields
    assert shown_fields({"event": "x"}, "none") == {"event": "x"}
    assert shown_fields(fields, "none") == {**fields, "client": "-", "peer": "-"}
    assert shown_fields(fields, "truncated") == {**fields, "client": "127.1.2.0/24",
                                                 "peer": "127.1.2.0/24"}


FIELDS = {"event": "session", "client": "127.1.2.77:40000", "login": "bob"}


def _record() -> logging.LogRecord:
    record = logging.LogRecord("proxy", logging.INFO, __file__, 1, "", (), None)
    record.fields = FIELDS
    return record


def test_formatters_show_what_the_mode_says() -> None:
    assert "client=127.1.2.77:40000" in KeyValueFormatter().format(_record())
    assert "client=127.1.2.0/24 " in KeyValueFormatter("truncated").format(_record())
    assert "client=- " in KeyValueFormatter("none").format(_record())
    assert json.loads(JsonFormatter("none").format(_record()))["client"] == "-"
    line = KeyValueFormatter("none").fields_line(0.0, "INFO", 1, "proxy", FIELDS)
    assert "192.0.2" not in line
    line = JsonFormatter("truncated").fields_line(0.0, "INFO", 1, "proxy", FIELDS)
    assert json.loads(line)["client"] == "127.1.2.0/24"


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_the_batched_path_too(log_format: str) -> None:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.privacy.{log_format}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = make_handler(LogSettings(format=log_format, client_ip="none"), stream)
    logger.addHandler(handler)
    try:
        batched = BatchedLog(logger)
        batched.log(logging.INFO, FIELDS)
        batched.flush()
    finally:
        logger.removeHandler(handler)
    assert "bob" in stream.getvalue()
    assert "192.0.2" not in stream.getvalue()


@pytest.mark.parametrize(("mode", "source"), [
    ("full", "127.1.2.77:40000"), ("truncated", "127.1.2.0/24:-"), ("none", "-:-"),
])
def test_the_auth_line(mode: str, source: str, tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(2)
    auth_log = AuthLog(ProxySettings(auth_log_target=path), client_ip=mode)
    imap4 = ListenerSettings("imap4", MailProtocol.IMAP, ListenTls.NONE)
    auth_log.record(imap4, client=("127.1.2.77", 40000),
                    local=("127.0.0.1", 143), client_secure="plaintext", login=b"bob",
                    server="127.0.0.3:143", server_secure="plaintext", status="ok")
    try:
        assert f"Auth: {source}->127.0.0.1:143 ".encode() in listener.recv(9000)
    finally:
        auth_log.close()
        listener.close()


def test_auth_line_unchanged_in_full() -> None:
    line = auth_line(client=("127.1.2.77", 40000), local=("127.0.0.1", 143),
                     client_secure="plaintext", login=b"bob", server="s:143",
                     protocol="IMAP4", server_secure="plaintext", status="ok")
    assert line.startswith(b"Auth: 127.1.2.77:40000->127.0.0.1:143 client-secure=plaintext ")
