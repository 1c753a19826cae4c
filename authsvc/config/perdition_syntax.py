"""Perdition's config-file syntax: text to ``(key, value, line)`` directives.

The rules are perdition(8)'s CONFIGURATION FILE, as libvanessa_adt's config_file.c
reads them (docs/configuration.md, "Syntax").

This is libvanessa_adt's ``vanessa_config_file_read`` with flags 0, the reader
Perdition 2.2 uses:

* a logical line is ``key[<whitespace>value]``; leading whitespace and blank
  lines are ignored;
* everything after the key and its separating whitespace is ONE value, with
  runs of inner spaces kept verbatim and trailing unescaped spaces and tabs
  trimmed (so the seed's ``key.pem `` is ``key.pem``);
* ``#`` starts a comment unless quoted or escaped;
* ``\\`` before a newline joins the next line, before anything else makes
  that character literal (also inside ``"..."``);
* ``'...'`` is literal throughout, ``"..."`` is literal except for ``\\``;
  the quotes themselves are dropped, so ``map_library ""`` is an empty value;
* a bare key (``debug``) is a boolean option turned on.

Deliberate differences, each reported as an error instead of guessed at:
a logical line over 4096 bytes (vanessa_adt silently cuts it) and a quote left
open at the end of a line (vanessa_adt carries it over, dropping the newline).
"""

from __future__ import annotations

from dataclasses import dataclass

from authsvc.config.issues import Report

#: vanessa_adt's MAX_LINE_LENGTH.
MAX_LINE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Directive:
    """One logical line: the key, its value (None for a bare key), its first line."""

    key: str
    value: str | None
    line: int


class _Line:
    """The state of one logical line while its characters arrive."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.key: list[str] = []
        self.value: list[str] = []
        self.phase = "before"  # before -> key -> between -> value
        self.key_started = False
        #: Length of the value up to the last quoted or escaped character:
        #: trailing whitespace before that point is protected from trimming.
        self.protected = 0
        self.bytes = 0

    def start_token(self) -> None:
        if self.phase == "before":
            self.phase = "key"
            self.key_started = True
        elif self.phase == "between":
            self.phase = "value"

    def add(self, ch: str, *, protect: bool = False) -> None:
        self.start_token()
        target = self.key if self.phase == "key" else self.value
        target.append(ch)
        if protect and self.phase == "value":
            self.protected = len(self.value)

    def space(self, ch: str) -> None:
        if self.phase == "key":
            self.phase = "between"
        elif self.phase == "value":
            self.value.append(ch)

    def finish(self) -> Directive | None:
        if not self.key_started:
            return None
        if self.phase != "value":
            return Directive("".join(self.key), None, self.line)
        value = self.value
        end = len(value)
        while end > self.protected and value[end - 1] in " \t":
            end -= 1
        return Directive("".join(self.key), "".join(value[:end]), self.line)


def lex(file: str, text: str, report: Report) -> list[Directive]:
    """The directives of a Perdition config file; syntax errors go to ``report``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # vanessa_adt ends lines at \r too
    directives: list[Directive] = []
    lineno = 1
    cur = _Line(lineno)
    quote: str | None = None
    escape = False
    comment = False
    broken = False  # an error was reported for this logical line: drop it

    def end_line() -> None:
        nonlocal cur, broken
        if cur.bytes > MAX_LINE_BYTES and not broken:
            report.error(file, cur.line, "".join(cur.key) or "(line)",
                         f"line is {cur.bytes} bytes long; Perdition reads at most "
                         f"{MAX_LINE_BYTES} and silently cuts the rest")
            broken = True
        directive = cur.finish()
        if directive is not None and not broken:
            if directive.key:
                directives.append(directive)
            else:
                report.error(file, cur.line, "(key)", "empty key (a quoted \"\" at the start "
                             "of the line)")
        cur = _Line(lineno + 1)
        broken = False

    for ch in text:
        if ch != "\n":
            cur.bytes += len(ch.encode("utf-8", "surrogateescape"))
        if escape:
            escape = False
            if ch == "\n":  # continuation: the logical line goes on
                lineno += 1
                continue
            if not comment:
                cur.add(ch, protect=True)
            continue
        if comment:
            if ch == "\\":
                escape = True  # vanessa_adt: "\" + newline continues even a comment
            elif ch == "\n":
                comment = False
                end_line()
                lineno += 1
            continue
        if ch == "\n":
            if quote is not None:
                report.error(file, lineno, "".join(cur.key) or "(line)",
                             f"unterminated {quote} quote at the end of the line")
                broken = True
                quote = None
            end_line()
            lineno += 1
            continue
        if quote == "'":
            if ch == "'":
                quote = None
                cur.start_token()
                cur.protected = len(cur.value) if cur.phase == "value" else cur.protected
            else:
                cur.add(ch, protect=True)
            continue
        if quote == '"':
            if ch == '"':
                quote = None
                cur.start_token()
                cur.protected = len(cur.value) if cur.phase == "value" else cur.protected
            elif ch == "\\":
                escape = True
            else:
                cur.add(ch, protect=True)
            continue
        if ch == "\\":
            escape = True
        elif ch == "#":
            comment = True
        elif ch in "\"'":
            quote = ch
            cur.start_token()
        elif ch in " \t":
            cur.space(ch)
        else:
            cur.add(ch)
    if quote is not None:
        report.error(file, lineno, "".join(cur.key) or "(line)",
                     f"unterminated {quote} quote at the end of the file")
        broken = True
    end_line()
    return directives
