"""docs/configuration.md documents every native key and every Perdition option the code knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings
from authsvc.config.perdition_options import OPTIONS, Option

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()

#: Section -> its keys, as the validator reads them.
NATIVE_KEYS = {
    "login": ["lower_case", "strip_domain", "add_domain", "add_domain_depth", "explicit_domain",
              "domain_delimiter", "username_from_database", "max_login_length"],
    "map": ["type", "name", "path", "perdition_prefix_quirk", "hosts", "port", "database", "table",
            "user", "password_file", "server_column", "user_column", "port_column",
            "port_constant", "connect_timeout", "query_timeout", "pool_size",
            "failback_interval", "max_replica_lag", "tls", "tls_ca_file", "tls_cert_file",
            "tls_key_file", "tls_verify_name", "default_server_on_error"],
    "cache": ["enabled", "ttl", "negative_ttl", "max_size", "stale_if_error"],
    "http": ["listen", "unix", "path", "secret_file", "secret_header", "max_attempts",
             "auth_wait", "ready_requires_map", "head_timeout"],
    "log": ["level", "connection_logging", "format"],
    "control": ["listen", "secret_file", "allow", "cert", "key"],
    "nginx": ["server_name", "proxy_protocol_from", "ssl_protocols", "auth_http_timeout",
              "sessions_per_node"],
    "haproxy": ["nodes", "proxy_protocol", "check_inter", "check_fall", "check_rise", "stats",
                "admin_socket"],
    "listener": ["name", "protocol", "tls", "tls_required", "port", "bind", "capability",
                 "outgoing_server", "outgoing_port", "backend_tls", "cert", "key",
                 "connection_limit", "timeout", "login_timeout", "login", "map"],
}


def doc_section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n### ", start + 1)
    return DOC[start:end]


@pytest.mark.parametrize(("section", "key"),
                         [(s, k) for s, keys in NATIVE_KEYS.items() for k in keys])
def test_every_native_key_is_documented_in_its_section(section: str, key: str) -> None:
    title = "### `[[listener]]`" if section == "listener" else f"### `[{section}]`"
    assert f"| `{key}` |" in doc_section(title)


@pytest.mark.parametrize(("section", "key"),
                         [(s, k) for s, keys in NATIVE_KEYS.items() for k in keys])
def test_every_listed_key_is_known_to_the_validator(
    tmp_path: Path, section: str, key: str
) -> None:
    """A documented key with a silly value gives a value error, never "unknown key"."""
    map_type = 'type = "mysql"\n' if section == "map" and key != "type" else ""
    if section == "map" and key in ("path", "perdition_prefix_quirk"):
        map_type = 'type = "regex"\n'
    table = "[[listener]]" if section == "listener" else f"[{section}]"
    text = f"{table}\n{map_type}{key} = 1979-05-27\n"
    if section != "listener":
        text += '[[listener]]\nname = "x"\nprotocol = "imap"\n'
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(tmp_path / "a.toml")])
    assert not any("unknown key" in str(i) or "does not apply" in str(i)
                   for i in caught.value.issues)


def test_no_undocumented_native_key_is_accepted(tmp_path: Path) -> None:
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", DOC, re.MULTILINE))
    for keys in NATIVE_KEYS.values():
        assert set(keys) <= documented | {"nodes"}


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_perdition_option_is_in_the_mapping_table(option: Option) -> None:
    table = doc_section("### Option mapping")
    cell = f" `{option.short}` " if option.short else " "
    row = re.search(rf"^\| `{option.name}` \|{cell}\| (.*) \|$", table, re.MULTILINE)
    assert row is not None, option.name
    assert row.group(1).startswith("ignored") == (option.ignored is not None), option.name


def test_the_mapping_table_has_no_extra_options() -> None:
    table = doc_section("### Option mapping")
    names = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert names == {o.name for o in OPTIONS}
