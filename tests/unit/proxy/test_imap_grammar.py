"""The pre-auth IMAP grammar, fed through the fragmentizer at every split."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from authsvc.proxy.imap import grammar
from authsvc.proxy.imap.fragmentizer import Fragmentizer, LineFragment, LiteralFragment
from authsvc.proxy.imap.grammar import (
    Atom,
    Command,
    CommandError,
    Literal,
    ParenList,
    Quoted,
    parse_command,
    parse_tag,
)
from authsvc.proxy.linebuffer import TooLong

from tests.helpers.feed import same_for_all_splits

Result = Command | tuple[str | None, str]


def parse_all(chunks: Sequence[bytes]) -> list[Result]:
    frag = Fragmentizer(128)
    parts: list[bytes | LiteralFragment] = []
    out: list[Result] = []
    for chunk in chunks:
        frag.feed(chunk)
        while (piece := frag.next()) is not None:
            if isinstance(piece, TooLong):
                out.append((None, "too long"))
                continue
            if isinstance(piece, LiteralFragment):
                parts.append(piece)
                continue
            parts.append(piece.text)
            if piece.literal is not None:
                frag.expect_literal(piece.literal.length)
                continue
            try:
                out.append(parse_command(parts))
            except CommandError as exc:
                out.append((exc.tag, exc.text))
            parts = []
    return out


def one(data: bytes) -> Result:
    results = same_for_all_splits(data, parse_all)
    assert len(results) == 1
    return results[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a1 NOOP\r\n", Command("a1", "NOOP")),
        (b"a1 noop\n", Command("a1", "NOOP")),
        (b"A.b-1 capability\r\n", Command("A.b-1", "CAPABILITY")),
        (b"a LOGIN bob secret\r\n", Command("a", "LOGIN", (Atom(b"bob"), Atom(b"secret")))),
        (
            b'a LOGIN "bob smith" "pa\\"ss\\\\word"\r\n',
            Command("a", "LOGIN", (Quoted(b"bob smith"), Quoted(b'pa"ss\\word'))),
        ),
        (b'a LOGIN "" ""\r\n', Command("a", "LOGIN", (Quoted(b""), Quoted(b"")))),
        (
            b"a LOGIN {3}\r\nbob {8}\r\np\xc3\xa4ss w\r\r\n",
            Command("a", "LOGIN", (Literal(b"bob"), Literal(b"p\xc3\xa4ss w\r"))),
        ),
        (b"a LOGIN bob] x\r\n", Command("a", "LOGIN", (Atom(b"bob]"), Atom(b"x")))),
        (
            b'a ID ("name" "mutt" "version" NIL)\r\n',
            Command("a", "ID", (ParenList((Quoted(b"name"), Quoted(b"mutt"),
                                           Quoted(b"version"), Atom(b"NIL"))),)),
        ),
        (b"a ID ()\r\n", Command("a", "ID", (ParenList(()),))),
        (b"a ID NIL\r\n", Command("a", "ID", (Atom(b"NIL"),))),
        (b'a LOGIN "caf\xc3\xa9" x\r\n',
         Command("a", "LOGIN", (Quoted(b"caf\xc3\xa9"), Atom(b"x")))),
    ],
)
def test_commands(data: bytes, expected: Command) -> None:
    assert one(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\r\n", (None, "Invalid tag.")),
        (b"* NOOP\r\n", (None, "Invalid tag.")),
        (b"a+b NOOP\r\n", (None, "Invalid tag.")),
        (b"\xff\xfe\x00garbage\r\n", (None, "Invalid tag.")),
        (b"\x00\r\n", (None, "Invalid tag.")),
        (b"a\r\n", ("a", "Missing command.")),
        (b"a \r\n", ("a", "Missing command.")),
        (b"abc\xff NOOP\r\n", (None, "Invalid tag.")),
        (b"a NOOP \r\n", ("a", "Syntax error in argument.")),
        (b"a LOGIN  bob x\r\n", ("a", "Syntax error in argument.")),
        (b"a LOGIN b\xffob x\r\n", ("a", "Syntax error: expected a space.")),
        (b'a LOGIN "bob x\r\n', ("a", "Unterminated quoted string.")),
        (b'a LOGIN "bo\\b" x\r\n', ("a", "Invalid escape in quoted string.")),
        (b'a LOGIN "bob\x00evil" x\r\n', ("a", "NUL is not allowed in a quoted string.")),
        (b"a LOGIN {8}\r\nbob\x00evil x\r\n", ("a", "NUL is not allowed in a literal.")),
        (b"a LOGIN{3}\r\nbob x\r\n", ("a", "Syntax error: expected a space.")),
        (b"a ID ((((((x))))))\r\n", ("a", "Lists nested too deeply.")),
        (b"a ID (x\r\n", ("a", "Syntax error in list.")),
    ],
)
def test_errors(data: bytes, expected: tuple[str | None, str]) -> None:
    assert one(data) == expected


def test_a_pipeline_of_commands_parses_in_order() -> None:
    data = b"a CAPABILITY\r\nb LOGIN {3}\r\nbob pw\r\nc NOOP\r\n"
    results = same_for_all_splits(data, parse_all)
    assert [r.name for r in results if isinstance(r, Command)] == ["CAPABILITY", "LOGIN", "NOOP"]


@pytest.mark.parametrize(
    ("line", "tag"),
    [(b"a1 LOGIN {3}", "a1"), (b"a1", "a1"), (b"*", None), (b"", None), (b"t\x01 x", None)],
)
def test_parse_tag(line: bytes, tag: str | None) -> None:
    assert parse_tag(line) == tag


def test_line_fragment_text_is_what_the_grammar_reads() -> None:
    assert parse_command([LineFragment(b"a NOOP").text]) == Command("a", "NOOP")


_LINES = [
    b"a LOGIN bob pw", b'a LOGIN bob "pass word"', b'a LOGIN "" ""', b'a1 login Bob "p\\"w"',
    b'a LOGIN bob "unterminated', b"a CAPABILITY", b'a ID ("name" "x")', b"a LOGIN b\x80b pw",
    b'a LOGIN bob "p\x01w"', b"+ LOGIN a b", b"a LOGIN bob  pw", b"a LOGIN bob pw ",
    b"a LOG]IN x", b"a LOGIN x] y]", b'a LOGIN "\xc3\xa9" x', b'a LOGIN "a\x00b" x',
    b"a", b"a ", b" a LOGIN", b"a\tLOGIN x y", b"a LOGIN {3}", b'a LOGIN "x"y', b"a nOoP",
    b'a AUTHENTICATE PLAIN "="', b"* LOGIN a b", b"a% LOGIN a b", b'a LOGIN a "b\\\\"',
]


@pytest.mark.parametrize("line", _LINES)
def test_the_usual_line_parses_as_the_general_path_does(
        line: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed() -> object:
        try:
            return parse_command([line])
        except CommandError as exc:
            return ("error", exc.tag, exc.text)

    fast = parsed()
    monkeypatch.setattr(grammar, "_SIMPLE", re.compile(b"(?!)"))  # never matches
    assert parsed() == fast
