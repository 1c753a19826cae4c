"""Native TOML to a raw tree with a line number for every key.

``tomllib`` (stdlib) does the parsing and reports syntax errors; it gives no
positions for valid input, so :func:`key_lines` scans the text once more and
records the line of each table header and ``key = value`` line.  The scan only
has to be right for text tomllib accepted, so it tracks just enough TOML to
skip multi-line strings and arrays: quotes, brackets and comments.
Array-of-tables headers (``[[listener]]``) are numbered, so the second
listener's ``bind`` is ``("listener", 1, "bind")``.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from authsvc.config.issues import Report
from authsvc.config.raw import Pos, RawScalar, RawTable, RawValue

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_ESCAPE = re.compile(r"\\(.)")
_DECODE_LINE = re.compile(r"line (\d+)")


class _ValueScanner:
    """Follows a value across lines: inside a multi-line string, or open brackets."""

    def __init__(self) -> None:
        self.depth = 0
        self.multiline: str | None = None  # '"""' or "'''" while inside one

    @property
    def busy(self) -> bool:
        return self.depth > 0 or self.multiline is not None

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self.multiline is not None:
                end = self._find_close(text, i, self.multiline)
                if end < 0:
                    return
                self.multiline = None
                i = end
                continue
            ch = text[i]
            if ch == "#":
                return
            if ch in "\"'":
                if text.startswith(ch * 3, i):
                    self.multiline = ch * 3
                    i += 3
                    continue
                i = self._find_close(text, i + 1, ch)
                if i < 0:  # not valid TOML; tomllib already said so
                    return
                continue
            if ch in "[{":
                self.depth += 1
            elif ch in "]}":
                self.depth -= 1
            i += 1

    @staticmethod
    def _find_close(text: str, start: int, delim: str) -> int:
        """Index just past the closing ``delim`` from ``start``, or -1 on this line."""
        i = start
        while i < len(text):
            if delim[0] == '"' and text[i] == "\\":
                i += 2
                continue
            if text.startswith(delim, i):
                return i + len(delim)
            i += 1
        return -1


def _parse_key(text: str, start: int) -> tuple[list[str], int]:
    """A dotted key at ``text[start:]``: its parts and the index after it."""
    parts: list[str] = []
    i = start
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == '"':
            end = _ValueScanner._find_close(text, i + 1, '"')
            parts.append(_BASIC_ESCAPE.sub(r"\1", text[i + 1 : end - 1]))
            i = end
        elif i < len(text) and text[i] == "'":
            end = text.index("'", i + 1)
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            match = _BARE_KEY.match(text, i)
            if match is None:
                return parts, i
            parts.append(match.group())
            i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ".":
            i += 1
            continue
        return parts, i


def key_lines(text: str) -> dict[Path, int]:
    """The line of every table header and key in valid TOML ``text``, by path."""
    lines: dict[Path, int] = {}
    arrays: dict[Path, int] = {}  # array-of-tables path -> elements seen so far
    current: Path = ()
    scanner = _ValueScanner()

    def resolve(keys: list[str]) -> Path:
        path: Path = ()
        for key in keys:
            path = (*path, key)
            if path in arrays:
                path = (*path, arrays[path] - 1)
        return path

    for lineno, line in enumerate(text.split("\n"), 1):
        if scanner.busy:
            scanner.feed(line)
            continue
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            keys, _ = _parse_key(stripped, 2)
            parent = resolve(keys[:-1])
            array = (*parent, keys[-1])
            arrays[array] = arrays.get(array, 0) + 1
            current = (*array, arrays[array] - 1)
            lines.setdefault(array, lineno)
            lines[current] = lineno
        elif stripped.startswith("["):
            keys, _ = _parse_key(stripped, 1)
            current = resolve(keys)
            lines[current] = lineno
        else:
            keys, after = _parse_key(stripped, 0)
            path = current
            for key in keys:
                path = (*path, key)
                lines.setdefault(path, lineno)
            scanner.feed(stripped[after + 1 :])  # skip the "="
    return lines


def _display(path: Path) -> str:
    return ".".join(str(part) for part in path if isinstance(part, str)) or "(top)"


class _Converter:
    def __init__(self, file: str, lines: dict[Path, int]) -> None:
        self.file = file
        self.lines = lines

    def pos(self, path: Path) -> Pos:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return Pos(self.file, self.lines.get(probe, 0), _display(path))

    def table(self, data: dict[str, Any], path: Path) -> RawTable:
        table = RawTable(self.pos(path))
        for key, value in data.items():
            sub = (*path, key)
            table.items[key] = self.value(value, sub)
        return table

    def value(self, value: Any, path: Path) -> RawValue:
        if isinstance(value, dict):
            return RawValue(self.table(value, path), self.pos(path))
        if isinstance(value, list):
            return RawValue(
                [self.value(item, (*path, index)) for index, item in enumerate(value)],
                self.pos(path),
            )
        scalar: RawScalar = value
        return RawValue(scalar, self.pos(path))


def read_toml(file: str, text: str, report: Report) -> RawTable | None:
    """The raw tree of a native TOML file; None (and an error) when it is not TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _DECODE_LINE.search(str(exc))
        report.error(file, int(found.group(1)) if found else 0, "toml", str(exc))
        return None
    return _Converter(file, key_lines(text)).table(data, ())
