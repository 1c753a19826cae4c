"""Process logging for authsvc: one key=value (or JSON) line per record, passwords masked.

Decisions are logged as structured fields (``extra={"fields": {...}}``) so the
same record renders as ``key=value`` or as JSON (``[log] format``).  Every value
that came from a client (the login as typed, ``Client-IP``) is quoted and
escaped, so a login cannot forge a second log line.

Passwords never reach a log call in the first place: ``auth_http.py`` wraps
``Auth-Pass`` in :class:`~authsvc.redact.Secret` at once.  :class:`PasswordFilter`
is the second line of defence for text we do not write ourselves (aiohttp's
error messages can quote a raw request line, a ``repr`` of the request headers
names ``'Auth-Pass': '...'``): it masks any ``Auth-Pass`` value in a record's
message and traceback before a handler writes it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from authsvc.settings import LogSettings

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

MASK = "***"

# A value is written bare when it is made of these characters only; anything
# else (space, quote, '=', control or non-ASCII characters) is quoted.
_BARE = re.compile(r"[A-Za-z0-9_.:@/+\-\[\],%]+")

# ``Auth-Pass`` (any case, '-' or '_') in the forms it can take inside text:
#   a raw header line        Auth-Pass: secret%20x
#   bytes/str repr           b'...\r\nAuth-Pass: s\x7fcret\r\n...'
#   a mapping's repr / JSON  'Auth-Pass': 'secret'   "Auth-Pass": "secret"
#   key=value                auth_pass=secret
# The value ends at whitespace or at a CR/LF (raw, or the two characters of a
# repr escape).  A quoted value is masked through its closing quote and beyond,
# up to the next whitespace: masking a trailing ``,`` or ``)`` too costs
# nothing, leaving the tail of a password that contains a quote would.
_PASSWORD = re.compile(
    r"""(?ix)
    (auth[-_]pass['"]?\s*[:=]\s*b?)
    (?:'(?:[^'\\\r\n]|\\.)*'?|"(?:[^"\\\r\n]|\\.)*"?)?
    (?:[^\s\\]|\\(?![rn]).)*
    """
)


def mask_passwords(text: str) -> str:
    """``text`` with every ``Auth-Pass`` value replaced by ``***``."""
    if "pass" not in text.lower():
        return text
    return _PASSWORD.sub(lambda match: match.group(1) + MASK, text)


class PasswordFilter(logging.Filter):
    """Masks ``Auth-Pass`` values in a record's message and exception text.

    Attach it to handlers, not loggers: a handler filter sees the records of
    every logger (aiohttp's included), a logger filter only its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: let the handler report it as usual
            return True
        masked = mask_passwords(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_passwords(
                logging.Formatter().formatException(record.exc_info)
            )
        elif record.exc_text:
            record.exc_text = mask_passwords(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_passwords(record.stack_info)
        return True


def quote_value(value: object) -> str:
    """One value for a key=value line: bare when safe, else a JSON string.

    Non-printable characters (controls, U+2028, lone surrogates) are always
    escaped, so a client-supplied value stays on one line.
    """
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in quoted)


def format_fields(fields: Mapping[str, object]) -> str:
    """``key=value key=value``; None values are written as ``-``."""
    return " ".join(
        f"{key}={'-' if value is None else quote_value(value)}" for key, value in fields.items()
    )


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... <fields or msg=...>`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"ts={_timestamp(record.created)} level={record.levelname.lower()} "
            f"pid={record.process} logger={record.name}"
        )
        fields = getattr(record, "fields", None)
        parts = [head]
        message = record.getMessage()
        if message:
            parts.append(f"msg={quote_value(message)}")
        if isinstance(fields, Mapping):
            parts.append(format_fields(fields))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={quote_value(record.exc_text)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as :class:`KeyValueFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
        }
        message = record.getMessage()
        if message:
            out["msg"] = message
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


def make_handler(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with our formatter and the password filter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter() if settings.format == "json" else KeyValueFormatter()
    )
    handler.setFormatter(formatter)
    handler.addFilter(PasswordFilter())
    return handler


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records through one handler at ``settings.level``.

    Called once by a process entry point (``authsvc serve``); library code only
    calls ``logging.getLogger(__name__)``.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_authsvc", False):
            root.removeHandler(old)
    handler = make_handler(settings, stream)
    handler._authsvc = True  # type: ignore[attr-defined]  # marks our own handler for reconfiguration
    root.addHandler(handler)
    root.setLevel(LEVELS.get(settings.level, logging.INFO))
    return handler
