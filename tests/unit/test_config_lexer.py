"""Perdition's config-file syntax (perdition(8)), as config/perdition_syntax.py reads it."""

from __future__ import annotations

import pytest

from authsvc.config.issues import Report
from authsvc.config.perdition_syntax import MAX_LINE_BYTES, Directive, lex


def lexed(text: str) -> list[tuple[str, str | None, int]]:
    report = Report()
    directives = lex("f.conf", text, report)
    assert report.errors == [], report.errors
    return [(d.key, d.value, d.line) for d in directives]


def errors(text: str) -> list[str]:
    report = Report()
    lex("f.conf", text, report)
    return [str(issue) for issue in report.errors]


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("timeout 1800\n", "timeout", "1800"),
        ("   timeout\t1800\n", "timeout", "1800"),  # leading whitespace, tab separator
        ("debug\n", "debug", None),  # a bare key is a boolean turned on
        ("debug   \n", "debug", None),
        ("d\n", "d", None),  # a short option keeps its one letter
        ('map_library ""\n', "map_library", ""),  # quoted empty: an empty value, not None
        ("map_library ''\n", "map_library", ""),
        # Everything after the key is ONE value; inner runs of spaces stay (as Perdition).
        ("imap_capability A B  C\n", "imap_capability", "A B  C"),
        ('imap_capability "A B  C"\n', "imap_capability", "A B  C"),
        ('imap_capability "IMAP4rev1 UIDPLUS  CHILDREN IDLE"   # comment\n',
         "imap_capability", "IMAP4rev1 UIDPLUS  CHILDREN IDLE"),
        # The seed's trailing space after key.pem is trimmed.
        ("ssl_key_file /etc/certs/key.pem \n", "ssl_key_file", "/etc/certs/key.pem"),
        ("ssl_key_file /etc/certs/key.pem \t \n", "ssl_key_file", "/etc/certs/key.pem"),
        # ...unless quoted or escaped.
        ('ssl_key_file "key.pem "\n', "ssl_key_file", "key.pem "),
        ("ssl_key_file key.pem\\ \n", "ssl_key_file", "key.pem "),
        ("explicit_domain 'riseup.net'\n", "explicit_domain", "riseup.net"),
        ("explicit_domain riseup.net # the domain\n", "explicit_domain", "riseup.net"),
        ("ok_line a\\#b\n", "ok_line", "a#b"),  # an escaped # is literal
        ("ok_line 'a#b'\n", "ok_line", "a#b"),
        ('ok_line "a#b"\n', "ok_line", "a#b"),
        ("ok_line 'a\\b'\n", "ok_line", "a\\b"),  # single quotes: backslash is literal
        ('ok_line "a\\"b"\n', "ok_line", 'a"b'),  # double quotes: backslash escapes
        ("ok_line \"it's\"\n", "ok_line", "it's"),  # ' inside "..." is literal
        ("ok_line 'say \"hi\"'\n", "ok_line", 'say "hi"'),
        ("ok_line a'b c'd\n", "ok_line", "ab cd"),  # quotes inside a word
        ("ok_line \\\\\n", "ok_line", "\\"),
        ("query_key \\\\u,\\\\D\\\\d\n", "query_key", "\\u,\\D\\d"),  # doubled backslashes
        ("'my key' value\n", "my key", "value"),  # whitespace in a key must be quoted
        ("my\\ key value\n", "my key", "value"),
        ("timeout 1800", "timeout", "1800"),  # no newline at the end of the file
        ("timeout 1800\r\n", "timeout", "1800"),  # CRLF
    ],
)
def test_one_line(text: str, key: str, value: str | None) -> None:
    assert lexed(text) == [(key, value, 1)]


def test_comments_and_blank_lines_are_skipped_and_lines_counted() -> None:
    text = "# a comment\n\n   \n\t# indented comment\ntimeout 5\n\ndebug # on\n"
    assert lexed(text) == [("timeout", "5", 5), ("debug", None, 7)]


def test_backslash_newline_joins_lines_and_keeps_the_first_line_number() -> None:
    text = "x\nimap_capability IMAP4rev1 \\\nIDLE\ntimeout 5\n"
    assert lexed(text) == [("x", None, 1), ("imap_capability", "IMAP4rev1 IDLE", 2),
                           ("timeout", "5", 4)]


def test_continuation_of_a_key_alone() -> None:
    assert lexed("time\\\nout 5\n") == [("timeout", "5", 1)]


def test_a_comment_ending_in_backslash_swallows_the_next_line() -> None:
    # vanessa_adt keeps the comment going after "\" + newline; so do we.
    assert lexed("# off \\\ndebug\ntimeout 5\n") == [("timeout", "5", 3)]


def test_carriage_return_ends_a_line_like_newline() -> None:
    assert lexed("debug\rtimeout 5\r") == [("debug", None, 1), ("timeout", "5", 2)]


def test_a_line_of_exactly_the_limit_is_read() -> None:
    value = "x" * (MAX_LINE_BYTES - len("ok_line "))
    assert lexed(f"ok_line {value}\n") == [("ok_line", value, 1)]


def test_a_line_over_4096_bytes_is_an_error() -> None:
    value = "x" * (MAX_LINE_BYTES - len("ok_line ") + 1)
    assert errors(f"debug\nok_line {value}\n") == [
        "f.conf:2: ok_line: line is 4097 bytes long; Perdition reads at most 4096 and "
        "silently cuts the rest"
    ]


def test_the_limit_counts_bytes_not_characters() -> None:
    value = "é" * 2045  # 4090 bytes + "ok_line " = 4098
    assert errors(f"ok_line {value}\n")[0].startswith("f.conf:1: ok_line: line is 4098 bytes")


def test_the_limit_applies_to_the_joined_line() -> None:
    half = "x" * 2100
    assert "line is" in errors(f"ok_line {half}\\\n{half}\n")[0]


def test_unterminated_quote_at_end_of_line_is_an_error_and_the_line_is_dropped() -> None:
    report = Report()
    directives = lex("f.conf", "ok_line 'abc\ntimeout 5\n", report)
    assert [str(i) for i in report.errors] == [
        "f.conf:1: ok_line: unterminated ' quote at the end of the line"
    ]
    assert directives == [Directive("timeout", "5", 2)]


def test_unterminated_quote_at_end_of_file() -> None:
    assert errors('timeout 5\nok_line "abc') == [
        'f.conf:2: ok_line: unterminated " quote at the end of the file'
    ]


def test_empty_quoted_key_is_an_error() -> None:
    assert errors('"" value\n') == ['f.conf:1: (key): empty key (a quoted "" at the start '
                                    "of the line)"]
