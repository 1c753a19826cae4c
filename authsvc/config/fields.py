"""Typed reads of one raw table for validate.py: each getter checks, reports, and falls back.

A getter that finds a bad value reports it (with the value's file, line and
key, plus any hint its reader left) and returns the default, so validation
goes on and the operator sees every error at once.  :meth:`Section.finish`
reports the keys nobody asked for: unknown keys are errors, never ignored.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

from authsvc.address import parse_hostport
from authsvc.config.issues import EVERY, Report
from authsvc.config.raw import Pos, RawTable, RawValue
from authsvc.redact import Secret
from authsvc.settings import HostPort

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def where(pos: Pos) -> str:
    """``file:line``, or just ``file`` for a value no line sets."""
    return pos.where() if pos.line else pos.file


class Section:
    """One raw table under validation."""

    def __init__(self, table: RawTable, prefix: str, report: Report) -> None:
        self.table = table
        self.prefix = prefix
        self.report = report
        self.used: set[str] = set()

    # -- reporting ---------------------------------------------------------------
    def key_name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str, raw: RawValue | None = None) -> None:
        """Report ``message`` at ``raw``'s position (its hint appended), else at the table."""
        if raw is None:
            pos = self.table.pos
            self.report.error(pos.file, pos.line, self.key_name(key), message)
            return
        if raw.hint:
            message = f"{message}; {raw.hint}"
        self.report.error(raw.pos.file, raw.pos.line, raw.pos.key, message)

    def warn(self, key: str, message: str, raw: RawValue | None = None,
             used_by: frozenset[str] = EVERY) -> None:
        if raw is None:
            raw = self.table.items.get(key)
        pos = raw.pos if raw is not None else self.table.pos
        name = raw.pos.key if raw is not None else self.key_name(key)
        self.report.warn(pos.file, pos.line, name, message, used_by)

    # -- getters ---------------------------------------------------------------
    def raw(self, key: str) -> RawValue | None:
        self.used.add(key)
        return self.table.items.get(key)

    def _text(self, key: str, raw: RawValue, *, nonempty: bool) -> str | None:
        """``raw`` as a string, or None after reporting why it is not one."""
        if not isinstance(raw.value, str):
            self.error(key, f"expected a string, got {_kind(raw)}", raw)
            return None
        if nonempty and not raw.value:
            self.error(key, "must not be empty", raw)
            return None
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw.value):
            self.error(key, "control character in value", raw)
            return None
        return raw.value

    def string(self, key: str, default: str, *, nonempty: bool = False) -> str:
        raw = self.raw(key)
        if raw is None:
            return default
        value = self._text(key, raw, nonempty=nonempty)
        return default if value is None else value

    def optional_string(self, key: str, *, nonempty: bool = False) -> str | None:
        raw = self.raw(key)
        return None if raw is None else self._text(key, raw, nonempty=nonempty)

    def required_string(self, key: str) -> str | None:
        raw = self.raw(key)
        if raw is None:
            self.error(key, "missing (required)")
            return None
        return self._text(key, raw, nonempty=True)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.raw(key)
        if raw is None:
            return default
        if not isinstance(raw.value, bool):
            self.error(key, f"expected true or false, got {_kind(raw)}", raw)
            return default
        return raw.value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.raw(key)
        if raw is None:
            return default
        if isinstance(raw.value, bool) or not isinstance(raw.value, int):
            self.error(key, f"expected a whole number, got {_kind(raw)}", raw)
            return default
        if not low <= raw.value <= high:
            self.error(key, f"{raw.value} is out of range {low}-{high}", raw)
            return default
        return raw.value

    def seconds(self, key: str, default: float, *, positive: bool = False) -> float:
        raw = self.raw(key)
        if raw is None:
            return default
        if isinstance(raw.value, bool) or not isinstance(raw.value, int | float):
            self.error(key, f"expected a number of seconds, got {_kind(raw)}", raw)
            return default
        value = float(raw.value)
        if value < 0 or (positive and value == 0) or value != value or value > 10**9:
            self.error(key, f"{raw.value} seconds is out of range "
                       f"({'more than 0' if positive else '0 or more'})", raw)
            return default
        return value

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        options = tuple(choices)
        raw = self.raw(key)
        if raw is None:
            return default
        if not isinstance(raw.value, str) or raw.value not in options:
            shown = repr(raw.value) if isinstance(raw.value, str) else _kind(raw)
            self.error(key, f"{shown} is not one of {', '.join(options)}", raw)
            return default
        return raw.value

    def strings(self, key: str, default: list[str]) -> list[tuple[str, RawValue | None]]:
        """A list of strings, each with its raw item (None for a default)."""
        raw = self.raw(key)
        if raw is None:
            return [(text, None) for text in default]
        if not isinstance(raw.value, list):
            self.error(key, f"expected a list of strings, got {_kind(raw)}", raw)
            return [(text, None) for text in default]
        good: list[tuple[str, RawValue | None]] = []
        for item in raw.value:
            if not isinstance(item.value, str):
                self.error(key, f"expected a string in the list, got {_kind(item)}", item)
                continue
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in item.value):
                self.error(key, "control character in value", item)
                continue
            good.append((item.value, item))
        return good

    def hostports(self, key: str, default: list[str]) -> list[tuple[HostPort, RawValue | None]]:
        found: list[tuple[HostPort, RawValue | None]] = []
        for text, item in self.strings(key, default):
            try:
                found.append((parse_hostport(text), item))
            except ValueError as exc:
                self.error(key, str(exc), item)
        return found

    def hostport(self, key: str, *, need_port: bool) -> HostPort | None:
        text = self.optional_string(key)
        if text is None:
            return None
        try:
            return parse_hostport(text, need_port=need_port)
        except ValueError as exc:
            self.error(key, str(exc), self.table.items[key])
            return None

    def path(self, key: str, *, check: str | None = None,
             used_by: frozenset[str] = EVERY) -> str | None:
        """A path, relative ones resolved against the directory of the file that set it.

        ``check`` names what the file is for; a missing or unreadable file is then a
        warning (the file may be deployed after the config is checked) for the
        commands ``used_by``.
        """
        text = self.optional_string(key)
        if text is None:
            return None
        raw = self.table.items[key]
        if not text:
            self.error(key, "must not be empty", raw)
            return None
        path = os.path.abspath(os.path.join(os.path.dirname(raw.pos.file), text))
        if check is not None and not os.access(path, os.R_OK):
            hint = f" ({raw.hint})" if raw.hint else ""
            self.warn(key, f"{check} {path} does not exist or is not readable{hint}", raw,
                      used_by)
        return path

    def secret(self, key: str) -> Secret | None:
        """A value only a Perdition file can carry (its MySQL password)."""
        raw = self.raw(key)
        if raw is None:
            return None
        if not isinstance(raw.value, Secret):
            self.error(key, "put the password in a file and name it with password_file: "
                       "the configuration file holds no secrets", raw)
            return None
        return raw.value

    def table_of(self, key: str) -> RawTable | None:
        raw = self.raw(key)
        if raw is None:
            return None
        if not isinstance(raw.value, RawTable):
            self.error(key, f"expected a table, got {_kind(raw)}", raw)
            return None
        return raw.value

    def tables(self, key: str) -> list[RawTable]:
        raw = self.raw(key)
        if raw is None:
            return []
        if not isinstance(raw.value, list):
            self.error(key, f"expected a list of tables ([[{self.key_name(key)}]]), "
                       f"got {_kind(raw)}", raw)
            return []
        found: list[RawTable] = []
        for item in raw.value:
            if isinstance(item.value, RawTable):
                found.append(item.value)
            else:
                self.error(key, f"expected a table, got {_kind(item)}", item)
        return found

    def finish(self, elsewhere: dict[str, str] | None = None) -> None:
        """Report every key no getter asked for; ``elsewhere`` explains known-but-misplaced keys."""
        for key, raw in self.table.items.items():
            if key in self.used:
                continue
            if elsewhere and key in elsewhere:
                self.error(key, elsewhere[key], raw)
                continue
            close = difflib.get_close_matches(key, sorted(self.used), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            self.error(key, f"unknown key{guess}", raw)


def _kind(raw: RawValue) -> str:
    value = raw.value
    if isinstance(value, RawTable):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, Secret):
        return "a secret"
    return f"a {type(value).__name__}"
