"""Citations in the repository point at sources a reader can open.

* a ``§`` follows an RFC number (``RFC 3501 §6.2.3``, ``RFC 5530 §3 and §4``)
  or a file of the project's own docs (``docs/serve.md §...``); anything else
  (a section of a note that is not in the repository, or a bare ``(§1.7)``) fails;
* the research notes outside the repository are never cited by name;
* this project's issue tracker is not cited ("issue 9", "issues 7 and 8"): the
  code says what it does, git says when and why.  An upstream tracker's issue,
  written with its project (``nginx/nginx issue 205``, ``Mailu issue #272``,
  ``cpython#142352``), may stay.

Each rule is also shown failing on a synthetic text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("authsvc", "proxy", "templates", "deploy", "docs", "tests", "bench")
TOP_FILES = ("README.md",)
SKIP_DIRS = {"__pycache__", ".venv", "build", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SELF = Path(__file__).resolve()

#: What may stand right before a ``§``: an RFC number or a docs/ file, then any
#: run of other sections of the same source ("RFC 5530 §3, §4 and §5").
_ANCHOR = r"(?:RFC[ -]?\d+|docs/[\w./-]+\.md)"
_SECTION = r"§ ?[\w.]+"
_SEPARATOR = r"(?:,|;|/|-|\u2013|\band\b|\bor\b|\(|\))"
_ALLOWED_BEFORE = re.compile(rf"{_ANCHOR}(?:\s*(?:{_SECTION}|{_SEPARATOR}))*\s*$")
#: A line break inside a comment or docstring, with the next line's comment marker.
_WRAP = re.compile(r"\s*\n\s*(?:#+|//|\*|;+)?\s*")
#: "issue 9", "Issues 7 and 8", "issue #12"; an upstream one names its project
#: right before the word: ``nginx/nginx issue 205``, ``Mailu issue #272``.
_ISSUE = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
_UPSTREAM = re.compile(
    r"(?:[\w.-]+/[\w.-]+|\b(?!(?:The|This|That|See|In|For|By|As|Per|From|Since|After|Our|Its)\b)"
    r"[A-Z][\w.-]*|\b(?:aiohttp|cpython|nginx|haproxy|dovecot|perdition|mypy|pytest|ruff|pip"
    r"|setuptools|hypothesis|uvloop|aiomysql|redis|fail2ban|cachetools|jinja2?))\s*$"
)
#: The research notes that are not part of the repository.
_NOTES = re.compile(r"(?<![\w/.-])(?:perdition|nginx-haproxy)\.md\b|/work/shared|\.\./shared")


def text_files() -> Iterator[Path]:
    """Every text file of the checked trees, this test excepted."""
    for name in CHECKED:
        for path in sorted((ROOT / name).rglob("*")):
            if (
                path.is_file()
                and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
                and path.resolve() != SELF
                and path.suffix not in {".svg", ".png", ".pyc"}
            ):
                yield path
    for name in TOP_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name


def problems(text: str) -> list[str]:
    """What is wrong with the citations in ``text``: one entry per finding."""
    found: list[str] = []
    for match in re.finditer("§", text):
        before = _WRAP.sub(" ", text[max(0, match.start() - 300) : match.start()])
        if not _ALLOWED_BEFORE.search(before):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: § not after an RFC or docs/ file: ...{before[-50:]}§")
    for match in _ISSUE.finditer(text):
        before = _WRAP.sub(" ", text[max(0, match.start() - 100) : match.start()])
        if not _UPSTREAM.search(before):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"line {line}: this project's issue cited: {match.group()!r}")
    for match in _NOTES.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(f"line {line}: a note outside the repository: {match.group()!r}")
    return found


def test_the_repository_cites_only_what_it_holds() -> None:
    bad: list[str] = []
    read: set[str] = set()
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        read.add(path.relative_to(ROOT).parts[0])
        bad.extend(f"{path.relative_to(ROOT)} {p}" for p in problems(text))
    # Every checked tree was read: a wrong ROOT or an over-eager SKIP_DIRS
    # would otherwise pass with nothing looked at.
    assert read == {*CHECKED, *TOP_FILES}, read
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "text",
    [
        "# RFC 3501 §6.2.3: LOGIN",
        "(RFC 5530 §3, §4 and §5)",
        "RFC 2595\n    # §3.1 says so",
        "see docs/serve.md §2",
        "RFC 9051 §7.1 (codes) and RFC 3206 §4",
        "nginx/nginx issue 205 asks for a port header",
        "as cpython#142352 showed",
        "nginx mail has no TLS to backends (Mailu issue #272)",
        "aiohttp issue 1234 tracks it",
        "docs/perdition-compatibility.md, 'Greeting'",
    ],
)
def test_good_citations_pass(text: str) -> None:
    assert problems(text) == []


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("# the Auth line (perdition.md §7.2)", "§ not after"),
        ("closes the session (§1.7).", "§ not after"),
        ("nginx-haproxy.md §0 rule 9", "§ not after"),
        ("docs/architecture.md is fine, but §5.10 is not", "§ not after"),
        ("RFC 3501 says so, §6.2.3", "§ not after"),
        ("haproxy doc/proxy-protocol.txt §2.1", "§ not after"),
        ('"""Hot reload (issue 11): read the configuration again."""', "issue cited"),
        ("## Proxy TLS path (Issues 7 and 8)", "issue cited"),
        ("moved here by issue #9", "issue cited"),
        ("The issue 9 decision", "issue cited"),
        ("as before.  Issue 12 item 4.", "issue cited"),
        ("see perdition.md for depth", "outside the repository"),
        ("copied from /work/shared/seed/x.txt", "outside the repository"),
    ],
)
def test_bad_citations_fail(text: str, what: str) -> None:
    found = problems(text)
    assert found, text
    assert what in found[0]
