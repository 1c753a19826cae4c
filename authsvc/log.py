"""Process logging for authsvc: one key=value (or JSON) line per record, passwords masked.

Decisions are logged as structured fields (``extra={"fields": {...}}``) so the
same record renders as ``key=value`` or as JSON (``[log] format``).  Every value
that came from a client (the login as typed, ``Client-IP``) is quoted and
escaped, so a login cannot forge a second log line.

Passwords never reach a log call in the first place: ``auth_http.py`` wraps
``Auth-Pass`` in :class:`~authsvc.redact.Secret` at once, and serve refuses a
head aiohttp's parser would refuse before aiohttp sees it
(``authsvc/http/headcheck.py``).  :class:`PasswordFilter` is the second line
of defence for text we do not write ourselves: it drops the text of any
aiohttp parser error from a record (that text quotes the request's bytes, and
no pattern can tell which of them are a password), and masks any
``Auth-Pass`` value in a record's message and traceback (a ``repr`` of the
request headers names ``'Auth-Pass': '...'``) before a handler writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from authsvc.privacy import shown_fields
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


_PASS = re.compile("pass", re.IGNORECASE)


def mask_passwords(text: str) -> str:
    """``text`` with every ``Auth-Pass`` value replaced by ``***``."""
    if "pass" not in text.lower():
        return text
    return _PASSWORD.sub(lambda match: match.group(1) + MASK, text)


def mask_fields(fields: Mapping[str, object]) -> Mapping[str, object]:
    """``fields`` with ``Auth-Pass`` values masked in its strings (the same object if none)."""
    # The usual case, found with one search: "pass" is in no value's repr, so
    # in no string value (repr escapes no letter).  A match in another value's
    # repr only costs the full check below, whose result is the same.
    if _PASS.search(repr(tuple(fields.values()))) is None:
        return fields
    return {k: mask_passwords(v) if type(v) is str else v for k, v in fields.items()}


#: Where aiohttp's HTTP parser errors are defined; their text quotes the request.
_PARSER_ERRORS = "aiohttp.http_exceptions"


def _quotes_the_request(exc: BaseException | None) -> bool:
    # By module, not by class: importing aiohttp here would load it into the
    # proxy, which uses it only for its health port (docs/architecture.md).
    return exc is not None and any(cls.__module__ == _PARSER_ERRORS
                                   for cls in type(exc).__mro__)


class PasswordFilter(logging.Filter):
    """Masks ``Auth-Pass`` values in a record's message and exception text.

    The text of an aiohttp parser error is dropped whole, leaving its class
    name.  Attach it to handlers, not loggers: a handler filter sees the
    records of every logger (aiohttp's included), a logger filter only its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _quotes_the_request(record.exc_info[1]):
            record.exc_text = f"{type(record.exc_info[1]).__name__} (its text quotes the request)"
            record.exc_info = None
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: let the handler report it as usual
            return True
        masked = mask_passwords(message)
        if masked != message:
            record.msg = masked
            record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = mask_fields(fields)
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


def format_fields(fields: Mapping[str, object], memo: dict[str, str] | None = None) -> str:
    """``key=value key=value``; None values are written as ``-``.

    ``memo`` caches quoted strings: a decision line is written per login, and
    most of its values (listener, result, backend, often the login) repeat.
    """
    parts: list[str] = []
    append = parts.append  # once per line, not once per field
    for key, value in fields.items():
        kind = type(value)
        if kind is str and memo is not None:
            # ``type(value) is str`` (cheaper than isinstance) does not narrow for mypy.
            quoted = memo.get(value)  # type: ignore[call-overload]
            if quoted is None:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                quoted = memo[value] = quote_value(value)  # type: ignore[index]
            append(f"{key}={quoted}")
        elif kind is int:
            append(f"{key}={value}")
        elif value is None:
            append(key + "=-")
        else:
            append(f"{key}={quote_value(value)}")
    return " ".join(parts)


_MEMO_SIZE = 4096


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... <fields or msg=...>`` on one line.

    ``client_ip`` is ``[log] client_ip``: how much of a client address the
    fields show (``authsvc/privacy.py``).
    """

    def __init__(self, client_ip: str = "full") -> None:
        super().__init__()
        self.client_ip = client_ip
        self._second = -1
        self._second_text = ""
        self._memo: dict[str, str] = {}

    def _timestamp(self, created: float) -> str:
        # strftime once per second, not once per line.
        seconds = int(created)
        if seconds != self._second:
            self._second = seconds
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._second_text}.{int((created - seconds) * 1000):03d}Z"

    def fields_line(self, created: float, level: str, pid: int | None, logger: str,
                    fields: Mapping[str, object]) -> str:
        """The line of a record with no message, only ``fields`` (BatchedLog's direct path)."""
        fields = shown_fields(fields, self.client_ip)
        return (f"ts={self._timestamp(created)} level={level.lower()} pid={pid} "
                f"logger={logger} {format_fields(fields, self._memo)}")

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"ts={self._timestamp(record.created)} level={record.levelname.lower()} "
            f"pid={record.process} logger={record.name}"
        )
        fields = getattr(record, "fields", None)
        parts = [head]
        message = record.getMessage()
        if message:
            parts.append(f"msg={quote_value(message)}")
        if isinstance(fields, Mapping):
            parts.append(format_fields(shown_fields(fields, self.client_ip), self._memo))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={quote_value(record.exc_text)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as :class:`KeyValueFormatter`."""

    def __init__(self, client_ip: str = "full") -> None:
        super().__init__()
        self.client_ip = client_ip

    def fields_line(self, created: float, level: str, pid: int | None, logger: str,
                    fields: Mapping[str, object]) -> str:
        """The line of a record with no message, only ``fields`` (BatchedLog's direct path)."""
        out: dict[str, object] = {"ts": _timestamp(created), "level": level.lower(), "pid": pid,
                                  "logger": logger}
        out.update(shown_fields(fields, self.client_ip))
        return json.dumps(out, default=str)

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
            out.update(shown_fields(fields, self.client_ip))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


#: Longest a batched line waits to be written (BatchedLog).
FLUSH_DELAY = 0.05
#: Batched lines queued before they are written without waiting for FLUSH_DELAY.
FLUSH_LINES = 512


class BatchedLog:
    """One logger's records, handed to logging together at most FLUSH_DELAY (or ``delay``) s late.

    The decision line is written for every login.  Written one by one, each
    costs a ``write`` and, at nginx's pace of one request per wake-up, the
    logging code cold in the CPU's caches: about a fifth of serve's CPU per
    login.  Batched, one ``write`` carries up to FLUSH_LINES lines, and a line
    is at most FLUSH_DELAY (50 ms) late; its timestamp is the moment of the
    decision.  A warning is written at once, after the lines queued before
    it.  :meth:`flush` runs at shutdown too.  Without a running loop a
    line is written at once.
    """

    def __init__(self, logger: logging.Logger, source: str = "",
                 delay: float = FLUSH_DELAY) -> None:
        """``delay``: the longest a line waits; 0 writes at the end of the loop's
        pass, together with the lines of that pass only."""
        self._logger = logger
        self._source = source
        self._delay = delay
        self._pending: list[tuple[int, Mapping[str, object], float]] = []
        self._timer: asyncio.TimerHandle | None = None

    def log(self, level: int, fields: Mapping[str, object]) -> None:
        """Queue one record with ``fields`` (see KeyValueFormatter) at ``level``."""
        if not self._logger.isEnabledFor(level):
            return
        pending = self._pending
        pending.append((level, fields, time.time()))
        if level >= logging.WARNING:
            self.flush()  # rare, and wanted at once: with the lines before it, in order
            return
        if self._timer is not None:
            if len(pending) >= FLUSH_LINES:
                self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Hand every queued record to logging now."""
        pending, self._pending = self._pending, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not pending:
            return
        logger = self._logger
        handlers = _handlers(logger)
        if (len(handlers) == 1 and isinstance(handlers[0], LineHandler)
                and not _logger_filters(logger)
                and handlers[0].write_fields(logger.name, pending)):
            return  # the usual production set-up: only our handler listens
        # One record made the ordinary way per batch, then copied per line:
        # LogRecord.__init__ (clock, pid, path splitting) is the costly part,
        # and Logger.log would also walk the stack (findCaller) every time.
        template = logger.makeRecord(logger.name, logging.INFO, self._source, 0, "", (), None,
                                     None, {"batched": True}).__dict__
        base_created, base_relative = template["created"], template["relativeCreated"]
        for level, fields, created in pending:
            record = logging.LogRecord.__new__(logging.LogRecord)
            attributes = dict(template)
            attributes["levelno"] = level
            attributes["levelname"] = logging.getLevelName(level)
            attributes["created"] = created
            attributes["msecs"] = (created - int(created)) * 1000
            attributes["relativeCreated"] = base_relative + (created - base_created) * 1000
            attributes["fields"] = fields
            record.__dict__ = attributes
            logger.handle(record)
        for handler in _handlers(logger):
            handler.flush()


def _logger_filters(logger: logging.Logger) -> bool:
    """Whether a logger on the record's way filters (then records must be made)."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return True
        current = current.parent if current.propagate else None
    return False


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of ``logger`` reaches (its own and its ancestors')."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += current.handlers
        current = current.parent if current.propagate else None
    return found


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that leaves batched records to be flushed with their batch.

    Every other record is flushed at once, as ``logging.StreamHandler`` does.
    """

    def write_fields(self, logger: str,
                     pending: list[tuple[int, Mapping[str, object], float]]) -> bool:
        """Write field-only records without making LogRecords; False if it cannot.

        The same text as through ``handle()``: the password mask (this
        handler's only filter) on the fields, then our formatter's line.
        """
        formatter = self.formatter
        if not isinstance(formatter, (KeyValueFormatter, JsonFormatter)) or any(
            not isinstance(f, PasswordFilter) for f in self.filters
        ):
            return False
        pid = os.getpid() if logging.logProcesses else None
        mask = bool(self.filters)
        text = "".join(
            formatter.fields_line(created, logging.getLevelName(level), pid, logger,
                                  mask_fields(fields) if mask else fields)
            + self.terminator
            for level, fields, created in pending
            if level >= self.level
        )
        with self.lock if self.lock is not None else contextlib.nullcontext():
            try:
                self.stream.write(text)
                self.flush()
            except RecursionError:
                raise
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "writing decision lines"}))
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if not getattr(record, "batched", False):
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def make_handler(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with our formatter and the password filter.

    Without ``stream``: standard error, block-buffered (Python's own stderr
    writes each line with its own system call); see :class:`LineHandler`.
    """
    if stream is None:
        try:
            stream = open(  # noqa: SIM115 - lives as long as the process
                sys.stderr.fileno(), "w", buffering=65536, encoding="utf-8",
                errors="backslashreplace", closefd=False)
        except (AttributeError, OSError, ValueError):  # no real stderr (embedded, tests)
            stream = sys.stderr
    handler = LineHandler(stream)
    formatter: logging.Formatter = (
        JsonFormatter(settings.client_ip) if settings.format == "json"
        else KeyValueFormatter(settings.client_ip)
    )
    handler.setFormatter(formatter)
    handler.addFilter(PasswordFilter())
    return handler


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records through one handler at ``settings.level``.

    Called once by a process entry point (``authsvc serve``); library code only
    calls ``logging.getLogger(__name__)``.
    """
    # Every record would otherwise look up the current thread and the
    # multiprocessing process name, which no line of ours prints.
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_authsvc", False):
            root.removeHandler(old)
    handler = make_handler(settings, stream)
    handler._authsvc = True  # type: ignore[attr-defined]  # marks our own handler for reconfiguration
    root.addHandler(handler)
    root.setLevel(LEVELS.get(settings.level, logging.INFO))
    return handler
