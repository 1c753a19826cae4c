"""SASL PLAIN decoding, the session log line, and the proxy's own layering rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from authsvc.proxy import sasl
from authsvc.proxy.logline import SessionRecord, address

from authsvc.log import format_fields

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"AGJvYgBzZWNyZXQ=", sasl.PlainResponse(b"", b"bob", b"secret")),
        (b"Ym9iAGJvYgBzZWNyZXQ=", sasl.PlainResponse(b"bob", b"bob", b"secret")),
    ],
)
def test_plain(line: bytes, expected: sasl.PlainResponse) -> None:
    assert sasl.parse_plain(sasl.decode_base64(line)) == expected
    assert sasl.encode_plain(expected.authcid, expected.password, expected.authzid) == line


@pytest.mark.parametrize(
    "message", [b"", b"bob\0secret", b"\0\0secret", b"\0bob\0", b"\0bob\0evil\0pw"]
)
def test_plain_refuses(message: bytes) -> None:
    with pytest.raises(sasl.SaslError):
        sasl.parse_plain(message)


@pytest.mark.parametrize("line", [b"!!!", b"AGJvYg", b"AG Jv"])
def test_base64_is_strict(line: bytes) -> None:
    with pytest.raises(sasl.SaslError):
        sasl.decode_base64(line)


def test_empty_initial_response() -> None:
    assert sasl.decode_base64(b"=") == b""


def test_session_fields_and_no_password_field() -> None:
    record = SessionRecord(7, "imap4", "imap", "127.0.0.1:5000", "127.0.0.1:143",
                           login="Bob Smith\nevent=forged", backend="127.0.0.2:143",
                           result="ok", attempts=1, end="client_eof", bytes_in=10, bytes_out=20,
                           duration=1.5)
    assert format_fields(record.fields()) == (
        'event=session session=7 listener=imap4 protocol=imap client=127.0.0.1:5000 '
        'local=127.0.0.1:143 tls=none login="Bob Smith\\nevent=forged" backend=127.0.0.2:143 '
        'result=ok attempts=1 end=client_eof bytes_in=10 bytes_out=20 duration=1.5'
    )
    assert not [name for name in SessionRecord.__slots__ if "pass" in name]


def test_address() -> None:
    assert address(("::1", 143, 0, 0)) == "[::1]:143"
    assert address(("127.0.0.1", 993)) == "127.0.0.1:993"
    assert address(None) == "-"


SANS_IO = [
    "proxy/events.py", "proxy/linebuffer.py", "proxy/sasl.py", "proxy/failures.py",
    "proxy/logline.py", *[f"proxy/{p}/{m}.py" for p in ("imap", "pop3")
                          for m in ("front", "back")],
    "proxy/imap/fragmentizer.py", "proxy/imap/grammar.py", "proxy/imap/serialise.py",
    "proxy/pop3/replies.py", "proxy/proxy_protocol.py", "proxy/limits.py", "proxy/forward.py",
    "proxy/authline.py", "proxy/metrics.py", "proxy/lograte.py",
]


@pytest.mark.parametrize("path", SANS_IO)
def test_machines_do_no_io(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert not names & {"asyncio", "socket", "ssl", "selectors"}
    assert not {n for n in names if n.startswith(("authsvc.maps", "authsvc.login"))}
    assert not {n for n in names if n.removeprefix("authsvc.") in (
        "proxy.transport", "proxy.session", "proxy.attempt", "proxy.store", "proxy.context",
        "proxy.relay", "proxy.userspace", "proxy.zerocopy", "proxy.idleclock",
        "proxy.server", "proxy.accept", "proxy.health", "proxy.syslog",
        "proxy.certificates", "proxy.listeners", "proxy.run", "proxy.command",
        "proxy.control")}


def test_every_proxy_module_is_listed_or_touches_the_loop() -> None:
    # The modules that do I/O (the event loop, sockets, or certificate files),
    # and context.py, which holds what they share (TLS contexts, the syslog writer).
    loop_modules = {"proxy/transport.py", "proxy/session.py", "proxy/attempt.py",
                    "proxy/store.py", "proxy/context.py", "proxy/relay.py",
                    "proxy/userspace.py", "proxy/zerocopy.py", "proxy/idleclock.py",
                    "proxy/server.py", "proxy/accept.py", "proxy/health.py", "proxy/syslog.py",
                    "proxy/certificates.py", "proxy/listeners.py", "proxy/run.py",
                    "proxy/command.py", "proxy/control.py"}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "proxy").rglob("*.py")
               if p.name != "__init__.py"}
    assert modules == set(SANS_IO) | loop_modules
