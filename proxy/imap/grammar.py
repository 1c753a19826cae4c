"""The pre-auth IMAP command grammar: fragments in, one parsed command out.

Only what a client may say before login is parsed: a tag, a command name and
arguments that are atoms, quoted strings, literals or parenthesised lists
(for ID).  The ABNF beside each rule is RFC 9051 §9 (IMAP4rev2), which
agrees with RFC 3501 for everything here.  No I/O, no asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from authsvc.proxy.imap.fragmentizer import LiteralFragment

#: How deep ID's parenthesised lists may nest before we call it abuse.
MAX_LIST_DEPTH = 4

# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
#                 resp-specials;  list-wildcards = "%" / "*";
#                 quoted-specials = DQUOTE / "\";  resp-specials = "]"
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
# ATOM-CHAR = <any CHAR except atom-specials>;  CHAR = %x01-7F;  CTL = %x00-1F / %x7F
ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
# ASTRING-CHAR = ATOM-CHAR / resp-specials
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
# tag = 1*<any ASTRING-CHAR except "+">
TAG_CHARS = ASTRING_CHARS - {ord("+")}



def _class_of(allowed: frozenset[int]) -> bytes:
    """A character class of the ``allowed`` bytes."""
    return b"[" + b"".join(re.escape(bytes([c])) for c in sorted(allowed)) + b"]"


def _run_of(allowed: frozenset[int]) -> re.Pattern[bytes]:
    """A pattern matching the longest run of ``allowed`` bytes (the scan in C, not per byte)."""
    return re.compile(_class_of(allowed) + b"*")


_TAG_RUN = _run_of(TAG_CHARS)
_ATOM_RUN = _run_of(ATOM_CHARS)
_ASTRING_RUN = _run_of(ASTRING_CHARS)
# The usual command, matched whole: one line of atoms and quoted strings with
# no escape, e.g. ``a1 LOGIN bob "pass word"``.  Anything else (a literal, a
# list, an escape, an error) takes the general path below; on this one both
# give the same Command.  The quoted body is what _quoted takes without an
# escape: any byte but DQUOTE, backslash and NUL.
_ARG_TEXT = rb'(?:' + _class_of(ASTRING_CHARS) + rb'+|"[^"\\\x00]*")'
_SIMPLE = re.compile(_class_of(TAG_CHARS) + rb"+ " + _class_of(ATOM_CHARS) + rb"+(?: "
                     + _ARG_TEXT + rb")*")
_SIMPLE_ARG = re.compile(rb' (?:(' + _class_of(ASTRING_CHARS) + rb'+)|"([^"\\\x00]*)")')

_SP = 0x20
_DQUOTE = 0x22
_BACKSLASH = 0x5C


class CommandError(ValueError):
    """A command we cannot parse; answered ``<tag> BAD <text>`` (or ``* BAD``)."""

    def __init__(self, tag: str | None, text: str) -> None:
        super().__init__(text)
        self.tag = tag
        self.text = text


@dataclass(frozen=True, slots=True)
class Atom:
    """``atom`` / ``1*ASTRING-CHAR``."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Quoted:
    """``quoted``, with ``\\"`` and ``\\\\`` already undone."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Literal:
    """``literal``: raw bytes."""

    value: bytes


@dataclass(frozen=True, slots=True)
class ParenList:
    """``"(" [arg *(SP arg)] ")"``, as ID sends (RFC 2971 §3.1)."""

    items: tuple[Arg, ...]


Arg = Atom | Quoted | Literal | ParenList
#: The parts of one command: line texts at even positions, literals between.
Parts = Sequence[bytes | LiteralFragment]


@dataclass(frozen=True, slots=True)
class Command:
    """``tag SP command-name *(SP arg)``; the name is upper-cased ASCII."""

    tag: str
    name: str
    args: tuple[Arg, ...] = ()


def astring(arg: Arg) -> bytes | None:
    """The value of ``astring = 1*ASTRING-CHAR / string``, or None for a list."""
    if isinstance(arg, ParenList):
        return None
    return arg.value


class _Cursor:
    """A read position across line parts and the literals between them."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._index = 0
        self._pos = 0

    def _line(self) -> bytes:
        part = self._parts[self._index]
        assert isinstance(part, bytes)
        return part

    def peek(self) -> int | None:
        line = self._line()
        return line[self._pos] if self._pos < len(line) else None

    def advance(self) -> None:
        self._pos += 1

    def at_literal(self) -> bool:
        return self._pos == len(self._line()) and self._index + 1 < len(self._parts)

    def at_end(self) -> bool:
        return self._pos == len(self._line()) and self._index + 1 >= len(self._parts)

    def take_literal(self) -> bytes:
        part = self._parts[self._index + 1]
        assert isinstance(part, LiteralFragment)
        self._index += 2
        self._pos = 0
        return part.data

    def take_run(self, run: re.Pattern[bytes]) -> bytes:
        """The bytes ``run`` (one of the ``_*_RUN`` patterns) matches from here on."""
        match = run.match(self._line(), self._pos)
        assert match is not None  # a ``*`` pattern matches, if only b""
        self._pos = match.end()
        return match.group()


def parse_tag(line: bytes) -> str | None:
    """The tag at the start of a line, if it has a valid one (for error replies)."""
    match = _TAG_RUN.match(line)
    end = match.end() if match is not None else 0
    if end == 0 or (end < len(line) and line[end] != _SP):
        return None
    return line[:end].decode("ascii")


def parse_command(parts: Parts) -> Command:
    """Parse one complete pre-auth command; raises :class:`CommandError`."""
    if len(parts) == 1:
        line = parts[0]
        assert isinstance(line, bytes)
        if _SIMPLE.fullmatch(line):
            return _simple_command(line)
    cur = _Cursor(parts)
    tag_bytes = cur.take_run(_TAG_RUN)
    if not tag_bytes or not (cur.at_end() or cur.peek() == _SP or cur.at_literal()):
        raise CommandError(None, "Invalid tag.")
    tag = tag_bytes.decode("ascii")
    if cur.at_end():
        raise CommandError(tag, "Missing command.")
    _space(cur, tag)
    name = cur.take_run(_ATOM_RUN)
    if not name:
        raise CommandError(tag, "Missing command.")
    args: list[Arg] = []
    while not cur.at_end():
        _space(cur, tag)
        args.append(_arg(cur, tag, 0))
    return Command(tag, name.decode("ascii").upper(), tuple(args))


def _simple_command(line: bytes) -> Command:
    """A line :data:`_SIMPLE` matched: split in C, no step per byte."""
    tag, _, rest = line.partition(b" ")
    name, space, _ = rest.partition(b" ")
    args: list[Arg] = []
    if space:
        for atom, quoted in _SIMPLE_ARG.findall(line, len(tag) + 1 + len(name)):
            args.append(Atom(atom) if atom else Quoted(quoted))
    return Command(tag.decode("ascii"), name.decode("ascii").upper(), tuple(args))


def _space(cur: _Cursor, tag: str) -> None:
    if cur.peek() != _SP:
        raise CommandError(tag, "Syntax error: expected a space.")
    cur.advance()


def _arg(cur: _Cursor, tag: str, depth: int) -> Arg:
    if cur.at_literal():
        data = cur.take_literal()
        # literal = "{" number "}" CRLF *CHAR8;  CHAR8 = %x01-ff: no NUL, ever.
        if b"\0" in data:
            raise CommandError(tag, "NUL is not allowed in a literal.")
        return Literal(data)
    first = cur.peek()
    if first == _DQUOTE:
        return Quoted(_quoted(cur, tag))
    if first == ord("("):
        return _list(cur, tag, depth)
    value = cur.take_run(_ASTRING_RUN)
    if not value:
        raise CommandError(tag, "Syntax error in argument.")
    return Atom(value)


def _quoted(cur: _Cursor, tag: str) -> bytes:
    # quoted = DQUOTE *QUOTED-CHAR DQUOTE
    # QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials / UTF8-2..4
    cur.advance()
    out = bytearray()
    while True:
        char = cur.peek()
        if char is None:
            raise CommandError(tag, "Unterminated quoted string.")
        cur.advance()
        if char == _DQUOTE:
            return bytes(out)
        if char == _BACKSLASH:
            escaped = cur.peek()
            if escaped not in (_DQUOTE, _BACKSLASH):
                raise CommandError(tag, "Invalid escape in quoted string.")
            cur.advance()
            out.append(escaped)
        elif char == 0:
            # TEXT-CHAR excludes NUL: refused, never truncated.
            raise CommandError(tag, "NUL is not allowed in a quoted string.")
        else:
            out.append(char)


def _list(cur: _Cursor, tag: str, depth: int) -> ParenList:
    if depth >= MAX_LIST_DEPTH:
        raise CommandError(tag, "Lists nested too deeply.")
    cur.advance()
    items: list[Arg] = []
    if cur.peek() == ord(")"):
        cur.advance()
        return ParenList(())
    while True:
        items.append(_arg(cur, tag, depth + 1))
        char = cur.peek()
        if char == ord(")"):
            cur.advance()
            return ParenList(tuple(items))
        if char != _SP:
            raise CommandError(tag, "Syntax error in list.")
        cur.advance()
