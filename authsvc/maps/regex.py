"""Perdition's POSIX-regex map (``popmap.re``, perditiondb_posix_regex.c), on ``re``.

Each rule line is ``<ERE>[:] <substitution>``; the first rule whose regex
matches anywhere in the key wins (case-sensitive, no implicit anchors), and
``$0``..``$9`` in the substitution are the match and its groups.  The file
follows Perdition's config-file rules (perdition(8)): ``#`` starts a comment unless
quoted or escaped, ``'...'`` and ``"..."`` quote, a backslash before a blank,
``#`` or a quote makes it literal, and a trailing backslash joins lines.  Other
backslashes stay in the regex, where they escape.

Python's ``re`` is not POSIX ERE, so each regex is translated (see
:func:`translate_ere`), and what cannot be translated faithfully is refused
with the file and line:

* Matching is on the key's UTF-8 bytes, as Perdition's ``regexec`` in the C
  locale: ``.`` is one byte, bracket expressions are ASCII-only, and the
  classes (``[:alpha:]`` ...) are the C locale's.
* POSIX picks the leftmost-*longest* match, Python the leftmost-first.  Whether
  a rule matches is the same; with alternations, what ``$1`` captures can
  differ: ``(a|ab)(c|bcd)(d*)`` on ``abcd`` gives POSIX ``$1=ab $2=c $3=d``
  but Python ``$1=a $2=bcd $3=``.  Write alternatives longest first.
* Refused: Python-only syntax (``(?...)``, lazy ``*?``), stacked quantifiers,
  escapes POSIX leaves undefined (``\\d`` is "d" to glibc but a digit to
  Python), equivalence classes and multi-character collating elements.
  Accepted GNU extensions: ``\\w \\W \\s \\S \\b \\B \\< \\>`` and back-references.
* ``$n`` of a group that took no part in the match is empty; Perdition copies
  ``$n`` literally.  ``$n`` beyond the regex's groups is a load error.
* Perdition keeps the part of the key before the match in front of the result
  (``xyz@example.org`` with ``@example\\.org$: 10.0.0.5`` gives
  ``xyz10.0.0.5``).  That happens here only with
  ``RegexMapSettings.perdition_prefix_quirk``; by default the result is the
  substitution alone.
* The file is re-read when it changes (Perdition: on SIGHUP), like the map file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.file import Loaded, MapFileError, WatchedFile
from authsvc.maps.serverspec import ServerSpecError, parse_server
from authsvc.settings import RegexMapSettings


class EreError(ValueError):
    """A regex that is not POSIX ERE, or that Python cannot match the same way."""


# The C locale's classes (Perdition never calls setlocale), as Python set fragments.
_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "xdigit": "0-9A-Fa-f",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "cntrl": r"\x00-\x1f\x7f",
}
_INTERVAL = re.compile(r"\{(\d*)(,?)(\d*)\}")
_RE_DUP_MAX = 255  # POSIX's minimum RE_DUP_MAX, glibc's value


def _set_char(ch: str, pattern: str) -> str:
    if not ch.isascii():
        raise EreError(f"non-ASCII {ch!r} in a bracket expression of {pattern!r}: Perdition "
                       "matches bytes, so write the alternatives out with |")
    return ch if ch.isalnum() else "\\" + ch


def _bracket(pattern: str, start: int) -> tuple[str, int]:
    """Translate the bracket expression at ``pattern[start] == '['``; returns (set, end)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while True:
        if i >= len(pattern):
            raise EreError(f"unterminated [ in {pattern!r}")
        ch = pattern[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        if ch == "[" and pattern[i + 1 : i + 2] in (":", "=", "."):
            kind = pattern[i + 1]
            end = pattern.find(kind + "]", i + 2)
            if end < 0:
                raise EreError(f"unterminated [{kind} in {pattern!r}")
            name = pattern[i + 2 : end]
            i = end + 2
            if kind == ":":
                if name not in _CLASSES:
                    raise EreError(f"unknown class [:{name}:] in {pattern!r}")
                items.append(_CLASSES[name])
            elif len(name) == 1:
                items.append(_set_char(name, pattern))
            else:
                raise EreError(f"[{kind}{name}{kind}] is not supported in {pattern!r}")
            continue
        i += 1
        if pattern[i : i + 1] == "-" and pattern[i + 1 : i + 2] not in ("", "]"):
            last = pattern[i + 1]
            if last == "[":
                raise EreError(f"a range may not end in a [..] element in {pattern!r}")
            if ord(last) < ord(ch):
                raise EreError(f"invalid range {ch}-{last} in {pattern!r}")
            items.append(f"{_set_char(ch, pattern)}-{_set_char(last, pattern)}")
            i += 2
        else:
            items.append(_set_char(ch, pattern))
    # REG_NEWLINE: a non-matching list never matches a newline.
    body = "".join(items) + ("\\n" if negate else "")
    return f"[{'^' if negate else ''}{body}]", i


def translate_ere(pattern: str) -> str:
    """A Python regex (for re.MULTILINE, on bytes) equal to the POSIX ERE ``pattern``.

    re.MULTILINE gives ``^`` and ``$`` the REG_NEWLINE meaning Perdition compiles
    with; keys never hold a newline anyway (the login check refuses them).
    """
    out: list[str] = []
    i = 0
    depth = 0
    groups = 0
    can_repeat = False  # the previous token is an atom a quantifier may follow
    after_quantifier = False
    while i < len(pattern):
        ch = pattern[i]
        quantifier = False
        if ch == "\\":
            if i + 1 >= len(pattern):
                raise EreError(f"trailing backslash in {pattern!r}")
            nxt = pattern[i + 1]
            i += 2
            if nxt in "wWsS":
                out.append("\\" + nxt)
                can_repeat = True
            elif nxt in "bB":
                out.append("\\" + nxt)
                can_repeat = False
            elif nxt == "<":
                out.append(r"\b(?=\w)")
                can_repeat = False
            elif nxt == ">":
                out.append(r"\b(?<=\w)")
                can_repeat = False
            elif nxt in "123456789":
                if int(nxt) > groups:
                    raise EreError(f"back-reference \\{nxt} before its group in {pattern!r}")
                out.append("\\" + nxt)
                can_repeat = True
            elif nxt.isalnum() or nxt == "_" or not nxt.isascii():
                raise EreError(
                    f"\\{nxt} in {pattern!r} is not POSIX ERE (glibc reads it as {nxt!r}, "
                    "Python differently); write the character or a bracket expression"
                )
            else:
                out.append(re.escape(nxt))
                can_repeat = True
        elif ch == "[":
            translated, i = _bracket(pattern, i)
            out.append(translated)
            can_repeat = True
        elif ch in "*+?" or ch == "{":
            if ch == "{":
                interval = _INTERVAL.match(pattern, i)
                if interval is None:
                    raise EreError(f"'{{' that starts no interval in {pattern!r}; write \\{{")
                low, comma, high = interval.groups()
                low_n = int(low) if low else 0
                if (high and int(high) > _RE_DUP_MAX) or low_n > _RE_DUP_MAX or (
                    high and int(high) < low_n
                ):
                    raise EreError(f"invalid interval {interval.group()} in {pattern!r}")
                if not (low or high):
                    raise EreError(f"empty interval {interval.group()} in {pattern!r}")
                token = "{" + str(low_n) + comma + high + "}"
                i = interval.end()
            else:
                token = ch
                i += 1
            if after_quantifier:
                raise EreError(f"stacked quantifiers in {pattern!r} (Python reads *? as lazy)")
            if not can_repeat:
                raise EreError(f"{token!r} repeats nothing in {pattern!r}")
            out.append(token)
            quantifier = True
        elif ch == "(":
            i += 1
            depth += 1
            groups += 1
            out.append("(")
            can_repeat = False
        elif ch == ")":
            i += 1
            if depth == 0:
                raise EreError(f"unmatched ) in {pattern!r}")
            depth -= 1
            out.append(")")
            can_repeat = True
        elif ch in "|^$":
            i += 1
            out.append(ch)
            can_repeat = False
        elif ch == ".":
            i += 1
            out.append(".")
            can_repeat = True
        else:
            i += 1
            out.append(re.escape(ch))
            can_repeat = True
        after_quantifier = quantifier
        if quantifier:
            can_repeat = False
    if depth:
        raise EreError(f"unmatched ( in {pattern!r}")
    return "".join(out)


def compile_ere(pattern: str) -> re.Pattern[bytes]:
    """Compile a POSIX ERE for matching UTF-8 keys as bytes."""
    translated = translate_ere(pattern)
    try:
        return re.compile(translated.encode("utf-8", "surrogateescape"), re.MULTILINE)
    except re.error as exc:
        raise EreError(f"{pattern!r}: {exc}") from None


# A substitution, split into literal bytes and group numbers.
Template = tuple[bytes | int, ...]
_DOLLAR = re.compile(r"\$([0-9])")


def compile_substitution(text: str, groups: int) -> Template:
    """Split ``$0``..``$9`` out of a substitution; ``$`` before anything else is literal."""
    parts: list[bytes | int] = []
    at = 0
    for ref in _DOLLAR.finditer(text):
        number = int(ref.group(1))
        if number > groups:
            raise EreError(f"${number} but the regex has {groups} group(s)")
        if ref.start() > at:
            parts.append(text[at : ref.start()].encode("utf-8", "surrogateescape"))
        parts.append(number)
        at = ref.end()
    if at < len(text):
        parts.append(text[at:].encode("utf-8", "surrogateescape"))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of ``popmap.re``."""

    regex: re.Pattern[bytes]
    template: Template
    line: int
    source: str


def _split_rule(line: str) -> tuple[str, bool, str] | None:
    """One logical line split by the config-file rules (docs/maps.md).

    Returns (regex, whether it ended in a plain ``:``, substitution), or None
    for a blank or comment line.
    """
    word: list[str] = []
    rest: list[str] = []
    target = word
    plain_colon = False
    i, end = 0, len(line)
    while i < end and line[i] in " \t":
        i += 1
    while i < end:
        ch = line[i]
        if ch == "#":
            break
        if ch in " \t" and target is word:
            while i < end and line[i] in " \t":
                i += 1
            target = rest
            continue
        if ch == "\\" and i + 1 < end:
            nxt = line[i + 1]
            # Blanks, '#' and quotes need the escape; in the regex, other escapes
            # are the regex's own and keep their backslash.
            target.append(nxt if nxt in " \t#'\"" or target is rest else ch + nxt)
            plain_colon = False
            i += 2
            continue
        if ch in "'\"":
            close = line.find(ch, i + 1)
            if close < 0:
                raise MapFileError(f"unterminated {ch}")
            target.append(line[i + 1 : close])
            plain_colon = False
            i = close + 1
            continue
        target.append(ch)
        if target is word:
            plain_colon = ch == ":"
        i += 1
    regex = "".join(word)
    if not regex:
        return None
    return regex, plain_colon, "".join(rest).rstrip(" \t")


def parse_regex_map(
    text: str, source: str, delimiter: str = "@"
) -> Loaded[tuple[Rule, ...]]:
    """Parse a ``popmap.re`` file into rules, in file order."""
    rules: list[Rule] = []
    physical = text.split("\n")
    number = 0
    while number < len(physical):
        first = number + 1
        line = physical[number].removesuffix("\r")
        number += 1
        # A backslash before the newline joins the next line (config-file rule).
        while line.endswith("\\") and not line.endswith("\\\\") and number < len(physical):
            line = line[:-1] + physical[number].removesuffix("\r")
            number += 1
        where = f"{source}:{first}"
        try:
            tokens = _split_rule(line)
        except MapFileError as exc:
            raise MapFileError(f"{where}: {exc}") from None
        if tokens is None:
            continue
        regex_text, colon, substitution = tokens
        if colon:
            regex_text = regex_text[:-1]
        if not substitution:
            raise MapFileError(
                f"{where}: no substitution; write '<regex>: <server>' with a blank after the colon"
            )
        if not regex_text:
            raise MapFileError(f"{where}: empty regex")
        try:
            regex = compile_ere(regex_text)
            template = compile_substitution(substitution, regex.groups)
        except EreError as exc:
            raise MapFileError(f"{where}: {exc}") from None
        if not any(isinstance(part, int) for part in template):
            # A constant answer can be checked now rather than at some user's login.
            try:
                parse_server(substitution, delimiter)
            except ServerSpecError as exc:
                raise MapFileError(f"{where}: {exc}") from None
        rules.append(Rule(regex, template, first, source))
    return Loaded(tuple(rules))


def expand(rule: Rule, key: bytes, match: re.Match[bytes], prefix_quirk: bool) -> bytes:
    """The rule's answer for ``key``: the substitution with ``$n`` filled in."""
    pieces = [key[: match.start()]] if prefix_quirk else []
    for part in rule.template:
        if isinstance(part, int):
            pieces.append(match.group(part) or b"")
        else:
            pieces.append(part)
    return b"".join(pieces)


class RegexMap:
    """``popmap.re``: the first matching rule's substitution is the answer."""

    def __init__(
        self,
        settings: RegexMapSettings,
        delimiter: str = "@",
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_interval: float = 1.0,
    ) -> None:
        self._delimiter = delimiter
        self._quirk = settings.perdition_prefix_quirk
        self._file = WatchedFile(
            settings.path,
            lambda text, source: parse_regex_map(text, source, delimiter),
            clock=clock,
            recheck_interval=recheck_interval,
        )

    async def lookup(self, key: str) -> MapEntry | None:
        raw = key.encode("utf-8", "surrogateescape")
        for rule in self._file.current():
            match = rule.regex.search(raw)
            if match is None:
                continue
            answer = expand(rule, raw, match, self._quirk).decode("utf-8", "surrogateescape")
            try:
                return parse_server(answer, self._delimiter)
            except ServerSpecError as exc:
                # A map that answers nonsense cannot answer: a temporary failure
                # the operator sees, not a "no such user" the client believes.
                raise MapUnavailable(
                    f"{rule.source}:{rule.line}: answer {answer!r} for {key!r}: {exc}"
                ) from None
        return None

    async def check(self) -> None:
        self._file.check()

    def describe(self) -> str:
        quirk = ", Perdition prefix quirk" if self._quirk else ""
        return f"regex map {self._file.path} (first match wins{quirk})"

    async def close(self) -> None:
        return None
