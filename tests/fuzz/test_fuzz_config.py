"""Fuzz both config readers end to end: any file text gives Settings or a ConfigError.

``load_settings`` is what ``check-config``, ``serve`` and ``proxy`` call, so it
is fuzzed whole: Perdition files (``perdition_syntax.lex``, ``perdition.py``,
``perdition_map.py``, ``merge.py``) and native TOML (``tomllib``,
``toml.key_lines``, the converter) each followed by ``validate.py``.  Inputs
are the deployment's own files mutated line by line (lines dropped, doubled,
moved; values swapped for values of every type and shape; options, keys and
table headers added from the real vocabularies) plus some raw noise, so most
examples get past the syntax into validation.  Property: the result is
:class:`Loaded` or :class:`ConfigError`, never another exception; and the
Perdition lexer refuses a logical line over 4096 bytes instead of cutting it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from authsvc.config import ConfigError, ConfigSource, Loaded, load_settings
from authsvc.config.issues import Report
from authsvc.config.perdition_options import OPTIONS
from authsvc.config.perdition_syntax import MAX_LINE_BYTES, lex
from authsvc.config.toml import key_lines

ROOT = Path(__file__).resolve().parents[2]
PERDITION_SEEDS = sorted((ROOT / "deploy" / "perdition").glob("perdition.*.conf"))
TOML_SEEDS = [ROOT / "deploy" / "authsvc.toml"]

# --- mutation ----------------------------------------------------------------------

_edits = st.lists(
    st.tuples(st.sampled_from(["drop", "double", "move", "value", "insert", "noise"]),
              st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=200)),
    max_size=6,
)


def _mutate(lines: list[str], edits: list[tuple[str, int, int]], values: list[str],
            inserts: list[str], noise: list[str], separator: str) -> str:
    """Apply line edits; ``values`` replace the part after ``separator``."""
    out = list(lines)
    for kind, a, b in edits:
        at = a % (len(out) + 1)
        if kind == "insert":
            out.insert(at, inserts[b % len(inserts)])
            continue
        if kind == "noise":
            text = noise[b % len(noise)] if noise else ""
            if out:
                line = out[at % len(out)]
                cut = b % (len(line) + 1)
                out[at % len(out)] = line[:cut] + text + line[cut:]
            continue
        if not out:
            continue
        at %= len(out)
        if kind == "drop":
            del out[at]
        elif kind == "double":
            out.insert(at, out[at])
        elif kind == "move":
            out.insert(b % len(out), out.pop(at))
        elif kind == "value" and separator in out[at]:
            key = out[at].split(separator, 1)[0]
            out[at] = key + separator + values[b % len(values)]
    return "\n".join(out) + "\n"


_noise = st.lists(st.text(max_size=6), min_size=1, max_size=3)

# Perdition: values from the languages its options take (perdition(8), OPTIONS).
_perdition_values = st.lists(st.one_of(
    st.sampled_from([
        "0", "1", "143", "65536", "-1", "99999999999999999999", "imap", "pop3s", "x",
        "servername_lookup", "remote_login", "all", "none", "tls_all_force", "ssl_listen",
        "tls_outgoing", "IMAP4", "POP3S", "MANAGESIEVE", "'riseup.net'", '"a b"', '""', "''",
        "\\", "'open", '"open', "a\\\nb", "# comment", "10.0.0.1:143", "[::1]:110", "::1",
        "0.0.0.0", "host..name", "/etc/perdition/popmap.re", "popmap",
        "/usr/lib/libperditiondb_posix_regex.so.0", "/usr/lib/libperditiondb_gdbm.so",
        "libperditiondb_mysql.so.0.0.0", "libperditiondb_ldap.so", "libc.so.6",
        "h:3306:db:t:u:pw:srv:usr:143", "h:3306:db:t:u:pw:srv:usr:port:extra",
        "h::db:t:u:pw:srv:usr:", "h:x:db", "::::::::", "IMAP4rev1 IDLE", "TOP UIDL",
        "a\tb", "é", "%", "@",
    ]),
    st.text(max_size=10),
), min_size=1, max_size=4)
_perdition_inserts = st.lists(st.one_of(
    st.builds(lambda option, value: f"{option} {value}",
              st.sampled_from([o.name for o in OPTIONS] + [o.short for o in OPTIONS if o.short]),
              st.sampled_from(["", "0", "1", "all", "x", "'a b'", "tls_all", "10.0.0.1"])),
    st.sampled_from([o.name for o in OPTIONS]),
    st.sampled_from(["protocol POP3", "protocol IMAP4S", "protocol nonsense", "key=value", "  ",
                     "\\", "x" * (MAX_LINE_BYTES + 1), "map_library \"\"",
                     "map_library /usr/lib/libperditiondb_posix_regex.so.0"]),
), min_size=1, max_size=3)


def _seed_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


perdition_texts = st.builds(
    _mutate,
    st.sampled_from(PERDITION_SEEDS).map(_seed_lines),
    _edits,
    _perdition_values,
    _perdition_inserts,
    _noise,
    st.just(" "),
)

# TOML: values of every TOML type and shape, keys and tables from the schema.
_toml_values = st.lists(st.sampled_from([
    '"x"', '""', '"imap"', '"pop3"', '"starttls"', '"implicit"', '"none"', '"mysql"', '"file"',
    '"regex"', '"id"', '"proxy_v2"', '"127.0.0.1:9143"', '"[::1]:0"', '"0.0.0.0:143"',
    '"10.0.0.0/8"', '"10.0.0.0/33"', '"/nonexistent/x"', '"popmap"', '"a\\u0000b"', '"\\t"',
    "0", "1", "-1", "143", "65535", "65536", "9223372036854775807", "1.5", "-0.0", "inf", "nan",
    "1e300", "true", "false", "[]", '["all"]', '["lookup", "backend_login"]', "[1, 2]",
    '[1, "a"]', "[[]]", "[{}]", "{}", "{ a = 1 }", '{ type = "file", path = "p" }',
    "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", '"""a\nb"""', "'''a\n[x]\n'''",
    '[\n"a", # c\n"b",\n]', '"#"', "'#'",
]), min_size=1, max_size=4)
_SCHEMA_KEYS = [
    "name", "protocol", "tls", "bind", "port", "cert", "key", "capability", "timeout",
    "outgoing_port", "outgoing_server", "proxy_protocol", "tls_required", "type", "path",
    "hosts", "database", "table", "user", "password_file", "server_column", "user_column",
    "port_column", "port_constant", "ttl", "negative_ttl", "max_size", "listen", "secret_file",
    "secret_header", "level", "format", "lower_case", "add_domain", "explicit_domain",
    "strip_domain", "forward_client", "backend_ca_file", "server", "proxy_protocol_from",
    "client_limit", "max_line_length", "max_literal_length", "auth_log", "health_listen",
    "connection_limit", "unknown_key", '"quoted key"', "a.b", "stale_if_error",
]
_toml_inserts = st.lists(st.one_of(
    st.builds(lambda key, value: f"{key} = {value}", st.sampled_from(_SCHEMA_KEYS),
              st.sampled_from(['"x"', "1", "true", "[]", '["a"]', "{}"])),
    st.sampled_from([
        "[login]", "[map]", "[cache]", "[http]", "[log]", "[nginx]", "[haproxy]", "[proxy]",
        "[[listener]]", "[listener.login]", "[listener.map]", "[[proxy.backends]]",
        "[[haproxy.nodes]]", "[listener]", "[[map]]", "[a.b.c]", "['quoted']", "[\"x y\"]",
        "[[listener]]\nname = \"imap4\"\nprotocol = \"imap\"", "x = 1 # comment",
    ]),
), min_size=1, max_size=3)

toml_texts = st.builds(
    _mutate,
    st.sampled_from(TOML_SEEDS).map(_seed_lines),
    _edits,
    _toml_values,
    _toml_inserts,
    _noise,
    st.just(" = "),
)

# --- the property ------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-config")
    (path / "popmap").write_text("bob@riseup.net: 10.0.0.5\n", encoding="utf-8")
    return path


def load(sources: list[ConfigSource]) -> Loaded | ConfigError:
    try:
        return load_settings(sources)
    except ConfigError as exc:
        error = exc
    assert error.issues, "a ConfigError with no issue in it"
    return error


@given(perdition_texts, st.lists(perdition_texts, max_size=1),
       st.sampled_from([None, "imap4", "pop3s"]))
@example("map_library ''\n", [], None)
@example("bind_address ::1\nlisten_port 0\nmap_library ''\n", ["map_library ''\n"], "imap4")
def test_perdition_files_give_settings_or_config_error(
    workdir: Path, first: str, more: list[str], proto: str | None
) -> None:
    sources = []
    for index, text in enumerate([first, *more]):
        name = ["perdition.imap4.conf", "perdition.pop3.conf"][index]
        path = workdir / name
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        sources.append(ConfigSource(str(path), proto if index == 0 else None))
    result = load(sources)
    event(type(result).__name__)


@given(toml_texts)
def test_toml_gives_settings_or_config_error(workdir: Path, text: str) -> None:
    path = workdir / "authsvc.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = load([ConfigSource(str(path))])
    event(type(result).__name__)
    if isinstance(result, ConfigError):
        event("syntax error" if any(i.key == "toml" for i in result.issues) else "value error")


@given(st.one_of(toml_texts, st.text(max_size=200)))
@example('[[listener]]\nname = "x"\n[listener.login]\nlower_case = []\n[[listener]]\n')
def test_key_lines_places_every_key_of_valid_toml(text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        event("not TOML")
        return
    event("TOML with keys" if data else "empty TOML")
    lines = key_lines(text)
    # Every top-level key has a line to report errors at...
    assert set(data) <= {path[0] for path in lines}, (data, lines)
    rows = text.split("\n")
    for path, line in lines.items():
        # ...every path named is one the document holds...
        node: Any = data
        for part in path:
            if isinstance(part, int):  # an element of an array of tables
                assert isinstance(node, list) and part < len(node), (path, data)
            else:
                assert isinstance(node, dict) and part in node, (path, data)
            node = node[part]
        # ...and its line is the one that spells the key (a bare key: written as it is).
        key = next(p for p in reversed(path) if isinstance(p, str))
        assert 1 <= line <= len(rows), (path, line)
        if re.fullmatch(r"[A-Za-z0-9_-]+", key):
            assert key in rows[line - 1], (path, line, rows[line - 1])


@given(st.text(max_size=80), st.integers(min_value=MAX_LINE_BYTES + 1, max_value=3 * 4096),
       st.sampled_from([("x", 1), ("é", 2), ("\\\n", 1), (" ", 1)]))
def test_perdition_lexer_refuses_an_overlong_line(
    prefix: str, length: int, fill: tuple[str, int]
) -> None:
    # fill: a unit and the bytes it adds to the logical line (a continuation adds its "\\").
    unit, size = fill
    text = "key " + unit * (length // size + 1) + "\nnext 1\n"
    report = Report()
    directives = lex("f.conf", prefix.replace("\n", " ").replace("\\", "") + text, report)
    long_line = [d for d in directives if d.value is not None and len(d.value) > MAX_LINE_BYTES]
    assert not long_line, "a line over 4096 bytes was read (Perdition would cut it)"
    assert report.errors, "an overlong line went by without an error"
    assert directives[-1].key == "next", "the line after an overlong one was lost"


@given(st.text(max_size=300))
def test_perdition_lexer_never_raises(text: str) -> None:
    report = Report()
    for directive in lex("f.conf", text, report):
        assert directive.key
        assert "\n" not in directive.key
