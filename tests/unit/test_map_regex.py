"""The regex map: popmap.re lines, POSIX ERE on Python re, $0..$9, first match, the quirk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.file import MapFileError
from authsvc.maps.regex import EreError, RegexMap, compile_ere, parse_regex_map, translate_ere
from authsvc.settings import RegexMapSettings


def regex_map(tmp_path: Path, text: str, *, quirk: bool = False) -> RegexMap:
    path = tmp_path / "popmap.re"
    path.write_text(text)
    return RegexMap(RegexMapSettings(str(path), perdition_prefix_quirk=quirk), recheck_interval=0.0)


async def test_perdition_example_file(tmp_path: Path) -> None:
    # horms/perdition's shipped popmap.re.
    m = regex_map(tmp_path, "# Format: <regular expression>: <server>[:<port>]\n\n"
                            "^[a-k]: localhost\n^[^a-k]: localhost:110\n")
    assert await m.lookup("horms") == MapEntry("localhost")
    assert await m.lookup("zoe") == MapEntry("localhost", 110)
    assert await m.lookup("") is None


async def test_backreferences_one_to_nine(tmp_path: Path) -> None:
    m = regex_map(
        tmp_path,
        r"^(.)(.)(.)(.)(.)(.)(.)(.)(.)@x$: $9$8$7$6$5$4$3$2$1@10.0.0.1" "\n"
        r"(.*)@(.*)\.org$: $1_$2@10.0.0.2:143" "\n"
        r"^whole-(.*)$ $0.10.0.0.3" "\n",
    )
    assert await m.lookup("abcdefghi@x") == MapEntry("10.0.0.1", user="ihgfedcba")
    assert await m.lookup("zed@riseup.org") == MapEntry("10.0.0.2", 143, user="zed_riseup")
    entry = await m.lookup("whole-x")
    assert entry == MapEntry("whole-x.10.0.0.3")


async def test_first_match_wins(tmp_path: Path) -> None:
    m = regex_map(tmp_path, "^bob: 10.0.0.1\n^b: 10.0.0.2\n.*: 10.0.0.3\n")
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.1")
    assert await m.lookup("ben@riseup.net") == MapEntry("10.0.0.2")
    assert await m.lookup("zoe@riseup.net") == MapEntry("10.0.0.3")


async def test_case_sensitive_and_unanchored(tmp_path: Path) -> None:
    m = regex_map(tmp_path, r"@example\.org: 10.0.0.5" "\n")
    assert await m.lookup("xyz@example.org.evil") == MapEntry("10.0.0.5")  # no implicit anchors
    assert await m.lookup("xyz@EXAMPLE.org") is None


async def test_prefix_quirk_only_when_asked(tmp_path: Path) -> None:
    text = r"@example\.org$: 127.0.0.1" "\n"
    # Perdition 2.2: xyz@example.org gave "xyz127.0.0.1" (docs/maps.md).
    quirky = await regex_map(tmp_path, text, quirk=True).lookup("xyz@example.org")
    assert quirky == MapEntry("xyz127.0.0.1")
    assert await regex_map(tmp_path, text).lookup("xyz@example.org") == MapEntry("127.0.0.1")
    # Anchored at ^, the quirk changes nothing: the part before the match is empty.
    anchored = regex_map(tmp_path, r"^(.*)@example\.org$: $1@127.0.0.1" "\n", quirk=True)
    assert await anchored.lookup("xyz@example.org") == MapEntry("127.0.0.1", user="xyz")


async def test_unmatched_group_is_empty(tmp_path: Path) -> None:
    m = regex_map(tmp_path, "^(a)?b(x)?: $1$2@10.0.0.1\n")
    assert await m.lookup("b") == MapEntry("10.0.0.1")


async def test_bytes_matching_as_perdition(tmp_path: Path) -> None:
    # "." is one byte in Perdition's C locale: é is two.
    m = regex_map(tmp_path, "^jos..@: 10.0.0.1\n^jos.@: 10.0.0.2\n")
    assert await m.lookup("josé@riseup.net") == MapEntry("10.0.0.1")
    assert await m.lookup("josx@riseup.net") == MapEntry("10.0.0.2")


async def test_bad_answer_is_unavailable_not_missing(tmp_path: Path) -> None:
    m = regex_map(tmp_path, "^(.*)$: 10.0.0.1:$1\n")
    with pytest.raises(MapUnavailable, match=r"popmap.re:1: answer '10.0.0.1:bob'"):
        await m.lookup("bob")


async def test_reload_and_errors(tmp_path: Path) -> None:
    m = regex_map(tmp_path, "^b: 10.0.0.1\n")
    assert await m.lookup("bob") == MapEntry("10.0.0.1")
    path = tmp_path / "popmap.re"
    path.write_text("^b: 10.0.0.2\n^(?i)x: 10.0.0.3\n")
    assert await m.lookup("bob") == MapEntry("10.0.0.1")  # the broken file is not used
    with pytest.raises(MapUnavailable, match=r"popmap.re:2: .*repeats nothing"):
        await m.check()
    assert "first match wins" in m.describe()


@pytest.mark.parametrize(
    ("line", "regex", "subst"),
    [
        ("^a: 10.0.0.1", "^a", b"10.0.0.1"),
        ("^a 10.0.0.1", "^a", b"10.0.0.1"),  # the colon is optional
        ("   ^a:\t\t10.0.0.1   # comment", "^a", b"10.0.0.1"),
        (r"^a\ b: 10.0.0.1", "^a b", b"10.0.0.1"),
        ("'^a b': 10.0.0.1", "^a b", b"10.0.0.1"),
        (r"^a\#b: 10.0.0.1", "^a#b", b"10.0.0.1"),
        (r"^a\.b\\: 10.0.0.1", r"^a\.b\\", b"10.0.0.1"),
        ("'^a:': 10.0.0.1", "^a:", b"10.0.0.1"),  # a quoted colon stays in the regex
        ("^a\\\n: 10.0.0.1", "^a", b"10.0.0.1"),  # a trailing backslash joins the next line
    ],
)
def test_config_file_line_rules(line: str, regex: str, subst: bytes) -> None:
    (rule,) = parse_regex_map(line, "re").data
    assert rule.regex.pattern == translate_ere(regex).encode()
    assert rule.template == (subst,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("^a\n", r"re:1: no substitution"),
        ("# ok\n^a:10.0.0.1\n", r"re:2: no substitution"),
        ("^(a: 10.0.0.1\n", r"re:1: unmatched \("),
        ("^a: $1@10.0.0.1\n", r"re:1: \$1 but the regex has 0 group"),
        ("^a: 10.0.0.1:imap\n", r"re:1: port 'imap'"),
        ("'^a: 10.0.0.1\n", r"re:1: unterminated '"),
    ],
)
def test_load_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(MapFileError, match=message):
        parse_regex_map(text, "re")


@pytest.mark.parametrize(
    ("ere", "matches", "misses"),
    [
        ("^[]a]$", ["]", "a"], ["b"]),
        ("^[^]a]$", ["b"], ["]", "a"]),
        ("^[a-]$", ["a", "-"], ["b"]),
        (r"^[\]$", ["\\"], ["]"]),  # a backslash is literal inside brackets
        ("^[[:digit:]]+$", ["0123"], ["12a"]),
        ("^[[:alpha:][:digit:]_.]+$", ["ab_1.x"], ["a-b"]),
        ("^[[.-.]]$", ["-"], ["a"]),
        ("^a{2,3}$", ["aa", "aaa"], ["a", "aaaa"]),
        ("^a{2}$", ["aa"], ["aaa"]),
        ("^(ab|cd)+$", ["abcd", "ab"], ["ac"]),
        (r"^\w+\s\w+$", ["a b"], ["a  b"]),
        (r"\<bob\>", ["x bob y"], ["bobby"]),
        (r"^(a)\1$", ["aa"], ["ab"]),
        ("^a.c$", ["abc"], ["ac"]),
        ("^a|b$", ["ax", "xb"], ["xa"]),
        ("a$", ["xa"], ["ab"]),
        ("^$", [""], ["a"]),
        (r"^\.\+\?\*\(\)\{\}\|\^\$$", [".+?*(){}|^$"], ["x"]),
        ("^[[=a=]]$", ["a"], ["b"]),  # C locale: a's class is just a
    ],
)
def test_posix_semantics(ere: str, matches: list[str], misses: list[str]) -> None:
    compiled = compile_ere(ere)
    for text in matches:
        assert compiled.search(text.encode()), (ere, text)
    for text in misses:
        assert not compiled.search(text.encode()), (ere, text)


@pytest.mark.parametrize(
    ("ere", "message"),
    [
        ("a*?", "stacked quantifiers"),
        ("a+*", "stacked quantifiers"),
        ("(?i)bob", "repeats nothing"),
        ("*a", "repeats nothing"),
        ("a|*b", "repeats nothing"),
        (r"\d+", r"\\d .* is not POSIX ERE"),
        (r"\Ax", r"\\A .* is not POSIX ERE"),
        ("a{", "starts no interval"),
        ("a{3,2}", "invalid interval"),
        ("a{256}", "invalid interval"),
        ("a{,}", "empty interval"),
        ("[é]", "non-ASCII"),
        ("[[:word:]]", "unknown class"),
        ("[[=ab=]]", "not supported"),
        ("[[.ch.]]", "not supported"),
        ("[z-a]", "invalid range"),
        ("[abc", "unterminated"),
        ("(a", r"unmatched \("),
        ("a)", r"unmatched \)"),
        (r"\1(a)", "back-reference"),
        ("a\\", "trailing backslash"),
    ],
)
def test_refused_constructs(ere: str, message: str) -> None:
    with pytest.raises(EreError, match=message):
        compile_ere(ere)


def test_negated_list_never_matches_newline() -> None:
    # REG_NEWLINE: [^a] does not match "\n", and ^/$ work at line ends.
    assert not compile_ere("^[^a]$").search(b"\n")
    assert compile_ere("^b$").search(b"a\nb")
    assert compile_ere("a$").search(b"a\nb")


def test_translation_is_plain_python_regex() -> None:
    assert translate_ere("(.*)@(.*)") == "(.*)@(.*)"
    assert re.compile(translate_ere("[^[:space:]]")).pattern == r"[^ \t\n\r\f\v\n]"
