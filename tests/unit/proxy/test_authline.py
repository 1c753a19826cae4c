"""Perdition's Auth: line, byte for byte, and fail2ban's perdition filter on it."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
from authsvc.proxy.authline import (
    auth_line,
    perdition_status,
    protocol_name,
    secure_name,
    syslog_datagram,
)
from authsvc.proxy.syslog import REOPEN_AFTER, AuthLog, SyslogSender

from authsvc.routing import FailureKind
from authsvc.settings import ListenerSettings, ListenTls, MailProtocol, ProxySettings
from tests.helpers.fail2ban import FILTER_DIR, failregexes, logfile_line, match
from tests.services.require import require_file

#: Real samples of Perdition 2.2's Auth line (perdition(8), LOGGING).
SAMPLES = [
    b'Auth: 127.0.0.1:60900->127.0.0.1:31143 client-secure=plaintext authorisation_id=NONE '
    b'authentication_id="nobody" server="(null):143" protocol=IMAP4 server-secure=plaintext '
    b'status="failed: Could not determine server"',
    b'Auth: 127.0.0.1:51642->127.0.0.1:31144 client-secure=starttls authorisation_id=NONE '
    b'authentication_id="alice@example.com" server="127.0.0.1:32110" protocol=POP3 '
    b'server-secure=plaintext status="ok"',
]


def test_perdition_samples_byte_for_byte() -> None:
    assert auth_line(client=("127.0.0.1", 60900), local=("127.0.0.1", 31143),
                     client_secure="plaintext", login=b"nobody", server="(null):143",
                     protocol="IMAP4", server_secure="plaintext",
                     status=perdition_status(FailureKind.NO_ROUTE)) == SAMPLES[0]
    assert auth_line(client=("127.0.0.1", 51642), local=("127.0.0.1", 31144),
                     client_secure=secure_name("starttls"), login=b"alice@example.com",
                     server="127.0.0.1:32110", protocol=protocol_name("pop3", False),
                     server_secure=secure_name("none"), status=perdition_status(None)) == SAMPLES[1]


@pytest.mark.parametrize(("kind", "text"), [
    (FailureKind.BACKEND_AUTH, "failed: Re-Authentication Failure"),
    (FailureKind.BACKEND_CONNECT, "failed: Could not connect to server"),
    (FailureKind.BACKEND_PROTOCOL, "failed: Connection Negotiation Failure"),
    (FailureKind.NO_ROUTE, "failed: Could not determine server"),
    (FailureKind.MAP_UNAVAILABLE, "failed: Could not determine server"),
    (FailureKind.BAD_LOGIN, "failed: Could not determine server"),
])
def test_statuses_are_perdition_s(kind: FailureKind, text: str) -> None:
    assert perdition_status(kind) == text
    assert perdition_status(FailureKind.BACKEND_PROTOCOL, login_disabled=True) == (
        "failed: Login Disabled")


def test_names() -> None:
    assert [protocol_name(p, t) for p in ("imap", "pop3") for t in (False, True)] == [
        "IMAP4", "IMAP4S", "POP3", "POP3S"]
    assert [secure_name(t) for t in ("implicit", "starttls", "none")] == [
        "ssl", "starttls", "plaintext"]


def test_control_bytes_never_reach_the_line_and_8bit_stays() -> None:
    line = auth_line(client=("1.2.3.4", 1), local=("5.6.7.8", 2), client_secure="ssl",
                     login=b"b\x1bob\xc3\xa9", server="(null):143", protocol="IMAP4S",
                     server_secure="plaintext", status="ok")
    assert b'authentication_id="b?ob\xc3\xa9"' in line


def test_syslog_datagram_is_what_glibc_sends() -> None:
    now = time.mktime((2025, 11, 5, 9, 7, 3, 0, 0, -1))
    assert syslog_datagram(b"Auth: x", ident="perdition.imap4", pid=4242, facility="mail",
                           now=now) == b"<21>Nov  5 09:07:03 perdition.imap4[4242]: Auth: x"
    assert syslog_datagram(b"x", ident="p", pid=1, facility="local7", now=now).startswith(
        b"<189>")


def fail2ban_filter() -> list[re.Pattern[str]]:
    require_file(FILTER_DIR / "perdition.conf", "fail2ban")
    return failregexes("perdition")


def line_for(status: str, ident: str = "perdition.imaps") -> str:
    line = auth_line(client=("198.51.100.7", 50214), local=("192.0.2.1", 993),
                     client_secure="ssl", login=b"Bob", server="10.0.0.5:143",
                     protocol="IMAP4S", server_secure="plaintext", status=status)
    return logfile_line(syslog_datagram(line, ident=ident, pid=77, facility="mail"))


def test_fail2ban_perdition_filter_matches_a_refused_password() -> None:
    regexes = fail2ban_filter()
    found = match(regexes, line_for(perdition_status(FailureKind.BACKEND_AUTH)))
    assert found is not None
    assert found.group("ip4") == "198.51.100.7"


@pytest.mark.parametrize(("status", "ident"), [
    ("ok", "perdition.imaps"),
    ("failed: Could not determine server", "perdition.imaps"),  # as Perdition: not counted
    ("failed: Re-Authentication Failure", "mailproxy"),  # the filter wants perdition.*
])
def test_fail2ban_perdition_filter_ignores(status: str, ident: str) -> None:
    assert match(fail2ban_filter(), line_for(status, ident)) is None


def test_sender_to_a_unix_datagram_socket_and_back_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    now = [100.0]
    sender = SyslogSender(path, clock=lambda: now[0])
    assert not sender.send(b"nobody listens")  # dropped, never raised
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    # Within REOPEN_AFTER of the failure no socket is tried: dropped at once.
    assert not sender.send(b"too soon")
    now[0] += REOPEN_AFTER
    listener.settimeout(2)
    listener_settings = ListenerSettings("pop3s", MailProtocol.POP3, ListenTls.IMPLICIT)
    auth_log = AuthLog(ProxySettings(auth_log_target=path, auth_log_facility="auth"), sender)
    auth_log.record(listener_settings, client=("127.0.0.77", 1), local=("127.0.0.1", 995),
                    client_secure="ssl", login=b"bob", server="127.0.0.3:110",
                    server_secure="plaintext", status="ok")
    datagram = listener.recv(9000)
    assert datagram.startswith(b"<37>")
    assert f" perdition.pop3s[{os.getpid()}]: Auth: 127.0.0.77:1->127.0.0.1:995 ".encode() in (
        datagram)
    assert datagram.endswith(b'protocol=POP3S server-secure=plaintext status="ok"')
    listener.close()
    os.unlink(path)
    assert not sender.send(b"gone again")
    assert (sender.sent, sender.dropped) == (1, 3)
    auth_log.close()
