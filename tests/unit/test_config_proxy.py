"""``[proxy]`` and the listeners' PROXY protocol keys, from TOML and from Perdition files."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings
from authsvc.settings import BackendOverride, ForwardClient, HostPort, ProxySettings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'
#: Every [proxy] key with a value that differs from its default.
FULL = {
    "auth_failure_delay": ("0.5", 0.5),
    "max_login_attempts": ("5", 5),
    "max_bad_commands": ("4", 4),
    "max_line_length": ("1024", 1024),
    "max_literal_length": ("512", 512),
    "backend_timeout": ("7", 7.0),
    "backend_ca_file": ('"/etc/ssl/stores.pem"', "/etc/ssl/stores.pem"),
    "backend_verify": ("false", False),
    "splice_buffer": ("65536", 65536),
    "zero_copy": ("false", False),
    "drain_timeout": ("3", 3.0),
    "backend_ca_path": ('"/etc/ssl/stores"', "/etc/ssl/stores"),
    "backend_verify_name": ("false", False),
    "backend_tls_name": ('"store.example.org"', "store.example.org"),
    "forward_client": ('"id"', ForwardClient.ID),
    "proxy_protocol_from": ('["10.0.0.20", "2001:db8::/64"]', ("10.0.0.20/32", "2001:db8::/64")),
    "proxy_protocol_timeout": ("1.5", 1.5),
    "client_limit": ("20", 20),
    "preauth_limit": ("1000", 1000),
    "client_preauth_limit": ("10", 10),
    "nofile": ("65536", 65536),
    "trusted": ('["192.0.2.80/28", "2001:db8:1::1"]', ("192.0.2.80/28", "2001:db8:1::1/128")),
    "login_deadline": ("120", 120.0),
    "health_listen": ('"127.0.0.1:9200"', HostPort("127.0.0.1", 9200)),
    "auth_log": ("true", True),
    "auth_log_target": ('"127.0.0.1:514"', "127.0.0.1:514"),
    "auth_log_ident": ('"mailproxy"', "mailproxy"),
    "auth_log_facility": ('"local3"', "local3"),
}


def load(tmp_path: Path, text: str) -> ProxySettings:
    path = tmp_path / "a.toml"
    path.write_text(text)
    return load_settings([str(path)]).settings.proxy


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "a.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    return [str(issue).split(": ", 1)[1] for issue in caught.value.issues]


def test_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, LISTENER) == ProxySettings()


def test_limits_are_on_by_default_in_toml_and_perdition_files(tmp_path: Path) -> None:
    """docs/configuration.md: 20 per address, a derived total, a 60 s login deadline."""
    path = tmp_path / "perdition.imap4.conf"
    path.write_text('map_library ""\noutgoing_server 127.0.0.9\nconnection_limit 0\n')
    for proxy in (load(tmp_path, LISTENER), load_settings([str(path)]).settings.proxy):
        assert (proxy.client_preauth_limit, proxy.preauth_limit, proxy.login_deadline,
                proxy.client_limit, proxy.trusted) == (20, None, 60.0, 0, ())


def test_zero_turns_a_limit_off(tmp_path: Path) -> None:
    proxy = load(tmp_path, "[proxy]\npreauth_limit = 0\nclient_preauth_limit = 0\n"
                 "login_deadline = 0\n" + LISTENER)
    assert (proxy.preauth_limit, proxy.client_preauth_limit, proxy.login_deadline) == (0, 0, 0.0)


def test_every_key_is_read(tmp_path: Path) -> None:
    text = "[proxy]\n" + "".join(f"{key} = {raw}\n" for key, (raw, _) in FULL.items())
    text += '[[proxy.backends]]\nserver = "10.0.0.7:10143"\nforward_client = "proxy_v2"\n'
    text += '[[proxy.backends]]\nserver = "10.0.0.8"\ntls_name = "b.example.org"\n'
    settings = load(tmp_path, text + LISTENER)
    expected: dict[str, object] = {key: value for key, (_, value) in FULL.items()}
    expected["backends"] = (BackendOverride("10.0.0.7", 10143, ForwardClient.PROXY_V2, None),
                            BackendOverride("10.0.0.8", None, None, "b.example.org"))
    assert {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)} == expected
    assert {f.name for f in dataclasses.fields(ProxySettings)} == set(FULL) | {"backends"}


def section(title: str) -> str:
    start = DOC.index(title)
    return DOC[start:DOC.find("\n### ", start + 1)]


@pytest.mark.parametrize("key", [*FULL, "backends", "backends.server",
                                 "backends.forward_client", "backends.tls_name"])
def test_every_proxy_key_is_documented(key: str) -> None:
    assert f"| `{key}` |" in section("### `[proxy]`")


@pytest.mark.parametrize("key", ["proxy_protocol", "proxy_protocol_from"])
def test_listener_keys_are_documented(key: str) -> None:
    assert f"| `{key}` |" in section("### `[[listener]]`")


@pytest.mark.parametrize("key", [*FULL, "backends"])
def test_documented_keys_are_known(tmp_path: Path, key: str) -> None:
    found = errors(tmp_path, f"[proxy]\n{key} = {datetime.date(1979, 5, 27)}\n" + LISTENER)
    assert found
    assert not any("unknown key" in e for e in found)


def test_listener_with_its_own_trusted_networks(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(LISTENER + 'proxy_protocol = true\nproxy_protocol_from = ["127.0.0.1"]\n')
    [listener] = load_settings([str(path)]).settings.listeners
    assert listener.proxy_protocol
    assert listener.proxy_protocol_from == ("127.0.0.1/32",)


def test_proxy_protocol_needs_someone_to_trust(tmp_path: Path) -> None:
    assert errors(tmp_path, LISTENER + "proxy_protocol = true\n") == [
        "listener.proxy_protocol: listener 'imap4' expects PROXY headers but trusts nobody to send "
        "them: set proxy_protocol_from here or in [proxy]"]
    assert load(tmp_path, '[proxy]\nproxy_protocol_from = ["10.0.0.0/8"]\n' + LISTENER
                + "proxy_protocol = true\n").proxy_protocol_from == ("10.0.0.0/8",)


@pytest.mark.parametrize(("text", "message"), [
    ('proxy_protocol_from = ["10.0.0.300"]',
     "proxy.proxy_protocol_from: '10.0.0.300' is not a network (CIDR) or address"),
    ('auth_log_facility = "mial"', "proxy.auth_log_facility: 'mial' is not one of kern, user, "
     "mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, local0, local1, local2, "
     "local3, local4, local5, local6, local7"),
    ('auth_log_target = "syslog.example.org"', "proxy.auth_log_target: 'syslog.example.org' "
     "needs a port: give a unix socket path (/dev/log) or host:port for UDP"),
    ('auth_log_ident = "perdition imap"', "proxy.auth_log_ident: 'perdition imap': no spaces, "
     "':', '[', ']' or braces other than {listener}"),
    ('forward_client = "xclient"',
     "proxy.forward_client: 'xclient' is not one of none, id, proxy_v1, proxy_v2"),
    ('trusted = ["webmail"]', "proxy.trusted: 'webmail' is not a network (CIDR) or address"),
    ("preauth_limit = -1", "proxy.preauth_limit: -1 is out of range 0-10000000"),
    ('health_listen = "127.0.0.1"', "proxy.health_listen: '127.0.0.1' needs a port (host:port)"),
    ("[[proxy.backends]]\nforward_client = \"id\"", "proxy.backends.server: missing (required)"),
    ("[[proxy.backends]]\nserver = \"a b\"", "proxy.backends.server: 'a b' is not an IP "
     "address or host name"),
])
def test_bad_values(tmp_path: Path, text: str, message: str) -> None:
    found = errors(tmp_path, f"[proxy]\n{text}\n" + LISTENER)
    assert [e.split(": ", 1)[1] if e.startswith("proxy.") else e for e in found] == [
        message.split(": ", 1)[1]]


# --- Perdition files -----------------------------------------------------------------

BASE = 'map_library ""\noutgoing_server 127.0.0.9\n'


def perdition(tmp_path: Path, **texts: str) -> list[str]:
    paths = []
    for proto, text in texts.items():
        path = tmp_path / f"perdition.{proto}.conf"
        path.write_text(BASE + text)
        paths.append(str(path))
    return paths


def test_perdition_backend_tls_options_and_facility(tmp_path: Path) -> None:
    text = ("ssl_ca_file stores.pem\nssl_ca_path /etc/perdition/ca/\nssl_no_cn_verify\n"
            "log_facility LOCAL3\n")
    paths = perdition(tmp_path, imap4=text, pop3=text)
    loaded = load_settings(paths)
    proxy = loaded.settings.proxy
    assert proxy.backend_ca_file == str(tmp_path / "stores.pem")
    assert proxy.backend_ca_path == "/etc/perdition/ca"
    assert proxy.backend_verify is True
    assert proxy.backend_verify_name is False
    assert proxy.auth_log is True
    assert proxy.auth_log_facility == "local3"
    assert proxy.auth_log_ident == "perdition.{listener}"
    assert not any(w.key in ("ssl_ca_file", "ssl_no_cn_verify", "log_facility")
                   for w in loaded.warnings if "ignored" in w.message)


def test_perdition_files_log_auth_lines_by_default(tmp_path: Path) -> None:
    proxy = load_settings(perdition(tmp_path, imap4="")).settings.proxy
    assert (proxy.auth_log, proxy.auth_log_facility, proxy.backend_verify) == (True, "mail", True)


def test_perdition_no_cert_verify(tmp_path: Path) -> None:
    proxy = load_settings(perdition(tmp_path, imap4="ssl_no_cert_verify\n")).settings.proxy
    assert proxy.backend_verify is False


def test_perdition_backend_tls_options_must_agree(tmp_path: Path) -> None:
    imap4, pop3 = perdition(tmp_path, imap4="ssl_no_cert_verify\n", pop3="")
    with pytest.raises(ConfigError) as caught:
        load_settings([imap4, pop3])
    assert [str(i) for i in caught.value.issues] == [
        f"{imap4}:3: ssl_no_cert_verify: ssl_no_cert_verify is on here but off in {pop3} "
        "(the default); process-wide settings must agree across the files, as one authsvc "
        "process serves every listener"]


def test_perdition_log_file_is_a_warning(tmp_path: Path) -> None:
    loaded = load_settings(perdition(tmp_path, imap4="log_facility /var/log/perdition.log\n"))
    assert [w.message for w in loaded.warnings if w.key == "log_facility"] == [
        "a log file, stdout or stderr: authsvc logs to stderr (the journal) and writes the "
        "Auth: lines to syslog; ignored"]
    assert loaded.settings.proxy.auth_log_facility == "mail"
