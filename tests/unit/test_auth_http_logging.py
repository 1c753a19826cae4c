"""The decision log line, and passwords never reaching a log (plain, %-escaped or base64)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from authsvc.log import (
    FLUSH_DELAY,
    FLUSH_LINES,
    BatchedLog,
    KeyValueFormatter,
    PasswordFilter,
    configure_logging,
    format_fields,
    make_handler,
    mask_fields,
    mask_passwords,
)
from authsvc.settings import LogSettings
from tests.helpers.eventually import eventually_async
from tests.unit.auth_http_fakes import (
    PASSWORD,
    exchange,
    make_app,
    make_maps,
    nginx_escape,
    nginx_facing_server,
    nginx_request,
    secret_settings,
    seed_settings,
)


def password_forms(password: str) -> list[str]:
    """Every shape a password could leak in."""
    raw = password.encode()
    forms = [
        password,
        nginx_escape(raw).decode(),
        base64.b64encode(raw).decode(),
        base64.b64encode(b"\0bob\0" + raw).decode(),  # SASL PLAIN
        repr(password)[1:-1],
    ]
    return [f for f in forms if len(f) >= 6]


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    """Root at DEBUG through our own handler (formatter + PasswordFilter)."""
    stream = io.StringIO()
    root = logging.getLogger()
    handler = make_handler(LogSettings(level="debug"), stream)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "aiohttp"])
async def test_no_password_in_any_record_with_debug_and_access_log(
    caplog: pytest.LogCaptureFixture, debug_logs: io.StringIO, fast_path: bool
) -> None:
    """First line of defence: caplog's handler has NO password filter."""
    caplog.set_level(logging.DEBUG)
    passwords = [PASSWORD, "pw\x7fdel", "pa ss%word\tx", "Auth-Pass-lookalike"]
    app = make_app(secret_settings(), make_maps())
    key = (b"X-Authsvc-Key", b"s3cret-key")
    async with nginx_facing_server(app, fast_path=fast_path,
                                   access_log=logging.getLogger("aiohttp.access")) as port:
        for password in passwords:
            for user, extra in ((b"Bob", (key,)), (b"nobody", (key,)), (b"Bob", ()),
                                (b"bo\nb", (key,))):
                await exchange(port, nginx_request(user, password.encode(), extra=extra))
            await exchange(port, nginx_request(b"Bob", password.encode(), protocol=b"smtp",
                                               extra=(key,)))
    text = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "event" in text
    assert ("aiohttp.access" in {r.name for r in caplog.records}) is not fast_path
    for password in passwords:
        for form in password_forms(password):
            assert form not in text, form
            assert form not in debug_logs.getvalue(), form
    assert "s3cret-key" not in text


async def test_filter_drops_aiohttp_parser_error_text(debug_logs: io.StringIO) -> None:
    """Second line of defence: without wire.py, aiohttp logs its parser's quote of the head."""
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app, shim=False) as port:
        await exchange(port, nginx_request(b"Bob", b"X").replace(
            b"Auth-Pass: X", b"Auth-Pass: A B\x01hunter2"))
    out = debug_logs.getvalue()
    assert "Error handling request from 127.0.0.1" in out  # aiohttp did log it...
    assert "BadHttpMessage (its text quotes the request)" in out  # ...without the text
    assert "Invalid header value char" not in out
    assert "hunter2" not in out and "unter" not in out


@pytest.mark.parametrize(
    "text",
    [
        "GET /auth HTTP/1.0\r\nAuth-Pass: hunter2%20x\r\nClient-IP: 1",
        "b'Auth-Pass: hunter2\\x7fhun\\'ter2\\r\\nAuth-Protocol: imap'",
        "<CIMultiDictProxy('Auth-User': 'bob', 'Auth-Pass': 'hunter2', 'X': 'y')>",
        "<CIMultiDictProxy('Auth-Pass': \"hun'ter2\", 'X': 'y')>",
        '{"Auth-Pass": "hunter2\\"x", "Auth-User": "bob"}',
        "auth_pass=hunter2 user=bob",
        "AUTH-PASS:hunter2",
    ],
)
def test_mask_passwords(text: str) -> None:
    masked = mask_passwords(text)
    assert "hunter2" not in masked
    assert "ter2" not in masked
    assert "***" in masked
    assert "bob" in masked or "bob" not in text  # the rest of the line survives


def test_mask_fields_masks_string_values_and_keeps_the_rest() -> None:
    clean = {"event": "session", "login": "bob", "attempts": 1, "end": None}
    assert mask_fields(clean) is clean  # nothing to mask: the same object
    odd = {"login": "x\r\nAUTH_PASS=hunter2", "n": 2, "words": ["pass"]}
    masked = mask_fields(odd)
    assert "hunter2" not in str(masked["login"])
    assert masked["n"] == 2 and masked["words"] == ["pass"]  # only strings change


def test_filter_masks_message_args_and_traceback() -> None:
    try:
        raise ValueError("bad header b'Auth-Pass: hunter2'")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "got %s", ("Auth-Pass: hunter2",),
            exc_info=__import__("sys").exc_info())
    assert PasswordFilter().filter(record)
    line = KeyValueFormatter().format(record)
    assert "hunter2" not in line
    assert "got Auth-Pass: ***" in line


def test_decision_line_fields(debug_logs: io.StringIO) -> None:
    logging.getLogger("authsvc.auth").info("", extra={"fields": {
        "event": "auth", "login": 'Bob "the\nbuilder"', "key": "bob@riseup.net",
        "client": "192.0.2.7", "listener": "imap4", "attempt": 1, "result": "ok",
        "reason": None, "backend": "10.0.0.5:143", "ms": "0.41"}})
    (line,) = debug_logs.getvalue().splitlines()
    assert line.split(" ", 1)[1].startswith("level=info pid=")
    assert line.endswith(
        'logger=authsvc.auth event=auth login="Bob \\"the\\nbuilder\\"" key=bob@riseup.net '
        "client=192.0.2.7 listener=imap4 attempt=1 result=ok reason=- backend=10.0.0.5:143 "
        "ms=0.41")


async def test_real_decision_is_logged_once_with_every_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "authsvc.auth")
    app = make_app(seed_settings(), make_maps())
    async with nginx_facing_server(app) as port:
        await exchange(port, nginx_request(b"Bob", attempt=2))
    (record,) = [r for r in caplog.records if r.name == "authsvc.auth"]
    fields = record.fields  # type: ignore[attr-defined]
    assert {k: fields[k] for k in ("login", "key", "client", "listener", "attempt", "result",
                                   "reason", "backend", "user", "source")} == {
        "login": "Bob", "key": "bob@riseup.net", "client": "192.0.2.7", "listener": "imap4",
        "attempt": 2, "result": "ok", "reason": None, "backend": "10.0.0.5:143",
        "user": "bob", "source": "map"}
    assert float(fields["ms"]) >= 0


def test_control_characters_stay_on_one_line() -> None:
    assert format_fields({"login": "a\u2028b\x00c\x7f"}) == 'login="a\\u2028b\\u0000c\\u007f"'
    assert format_fields({"login": "plain@x.org", "n": None}) == "login=plain@x.org n=-"


def test_json_format() -> None:
    stream = io.StringIO()
    handler = make_handler(LogSettings(format="json"), stream)
    record = logging.getLogger("authsvc.auth").makeRecord(
        "authsvc.auth", logging.INFO, __file__, 1, "", (), None,
        extra={"fields": {"event": "auth", "login": "bob", "attempt": 1}})
    handler.handle(record)
    line = json.loads(stream.getvalue())
    assert line["event"] == "auth"
    assert line["login"] == "bob"
    assert line["attempt"] == 1
    assert line["level"] == "info"
    assert "msg" not in line


def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = configure_logging(LogSettings(level="warning"), io.StringIO())
        second = configure_logging(LogSettings(level="debug"), io.StringIO())
        assert first not in root.handlers
        assert second in root.handlers
        assert all(h in root.handlers for h in before)
        assert root.level == logging.DEBUG
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_batched_direct_lines_equal_the_record_path(fmt: str) -> None:
    """BatchedLog writes straight to our handler when nothing else listens: same text."""
    logger = logging.getLogger(f"authsvc.test.batched.{fmt}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    fields = {"event": "auth", "login": "Auth-Pass: hunter2", "attempt": 3, "reason": None,
              "ms": "0.12"}

    def write(extra_handler: bool) -> str:
        stream = io.StringIO()
        handler = make_handler(LogSettings(format=fmt), stream)
        logger.handlers = [handler]
        if extra_handler:  # anything else listening forces real LogRecords
            logger.addHandler(logging.NullHandler())
        batch = BatchedLog(logger, "x.py")
        batch.log(logging.INFO, fields)
        batch.log(logging.DEBUG, fields)  # below the logger's level: dropped
        batch.log(logging.WARNING, fields)
        return re.sub(r'"?ts"?[=:] ?"?[0-9T:.-]+Z"?', "TS", stream.getvalue())

    try:
        direct, through_records = write(False), write(True)
    finally:
        logger.handlers = []
    assert direct == through_records
    assert direct.count("\n") == 2
    assert "hunter2" not in direct
    assert "warning" in direct.splitlines()[1]


async def test_batched_lines_wait_at_most_flush_delay_and_warnings_go_at_once() -> None:
    logger = logging.getLogger("authsvc.test.batched.timing")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    logger.handlers = [make_handler(LogSettings(), stream)]
    try:
        batch = BatchedLog(logger, "x.py")
        batch.log(logging.INFO, {"event": "auth", "n": 1})
        batch.log(logging.INFO, {"event": "auth", "n": 2})
        assert stream.getvalue() == ""  # queued, not written per line
        await eventually_async(stream.getvalue, FLUSH_DELAY + 5)
        assert [line.split()[-1] for line in stream.getvalue().splitlines()] == ["n=1", "n=2"]

        batch.log(logging.INFO, {"event": "auth", "n": 3})
        batch.log(logging.WARNING, {"event": "auth", "n": 4})
        # The warning is written at once, after the line queued before it.
        assert [line.split()[-1] for line in stream.getvalue().splitlines()] == [
            "n=1", "n=2", "n=3", "n=4"]

        for n in range(FLUSH_LINES):  # a full batch does not wait for the timer
            batch.log(logging.INFO, {"event": "auth", "n": n})
        assert stream.getvalue().count("\n") == 4 + FLUSH_LINES
    finally:
        logger.handlers = []
