"""The one ``host[:port]`` rule (authsvc/address.py, docs/configuration.md "Addresses").

Every reader of an address goes through it, so the same text means the same
address in a TOML file, a Perdition file, a map answer and on the command line;
the last tests check that for the readers one by one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from authsvc.address import (
    parse_host,
    parse_hostport,
    parse_port,
    split_hostport,
    well_known_port,
)
from authsvc.cli import main
from authsvc.config import ConfigError, load_settings
from authsvc.http.serve import apply_overrides
from authsvc.maps import MapEntry
from authsvc.maps.serverspec import ServerSpecError, parse_server
from authsvc.render import RenderError, parse_node
from authsvc.render.command import parse_stats
from authsvc.render.common import bind_host
from authsvc.settings import HostPort, MailProtocol, PoolNode, Settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # host names and IPv4, with and without a port
        ("mail.example.org", HostPort("mail.example.org")),
        ("mail.example.org:143", HostPort("mail.example.org", 143)),
        ("localhost", HostPort("localhost")),
        ("10.0.0.5", HostPort("10.0.0.5")),
        ("10.0.0.5:993", HostPort("10.0.0.5", 993)),
        ("  10.0.0.5:993  ", HostPort("10.0.0.5", 993)),
        ("10.0.0.5:0143", HostPort("10.0.0.5", 143)),
        # IPv6 in brackets, with and without a port
        ("[::1]:80", HostPort("::1", 80)),
        ("[::1]", HostPort("::1")),
        ("[2001:DB8::1]:143", HostPort("2001:db8::1", 143)),
        # a bare IPv6 address has no port ...
        ("::1", HostPort("::1")),
        ("2001:db8::5", HostPort("2001:db8::5")),
        ("::", HostPort("::")),
        # ... so "::1:80" is the whole address ::1:80, never host ::1 port 80
        ("::1:80", HostPort("::1:80")),
        ("fe80::1:993", HostPort("fe80::1:993")),
    ],
)
def test_hostport(text: str, expected: HostPort) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' has no host"),
        (":80", "':80' has no host"),
        ("10.0.0.5:", "port '' is not a number from 1 to 65535"),
        ("10.0.0.5:0", "port '0' is not a number from 1 to 65535"),
        ("10.0.0.5:65536", "port '65536' is not a number from 1 to 65535"),
        ("10.0.0.5:imap", "port 'imap' is not a number from 1 to 65535"),
        ("10.0.0.5:-1", "port '-1' is not a number from 1 to 65535"),
        ("10.0.0.5:٣١", "port '٣١' is not a number from 1 to 65535"),
        ("[::1]:", "port '' is not a number from 1 to 65535"),
        ("[::1]:99999", "port '99999' is not a number from 1 to 65535"),
        ("[::1", "'[::1': '[' without ']'"),
        ("[::1]x", "'[::1]x': unexpected 'x' after ']'"),
        ("[::1]80", "'[::1]80': unexpected '80' after ']'"),
        ("[10.0.0.5]:80", "'[10.0.0.5]:80': '10.0.0.5' in brackets is no IPv6 address"),
        ("[mail.example.org]:80", "in brackets is no IPv6 address"),
        ("[]:80", "'' in brackets is no IPv6 address"),
        ("10.0.0.5:993:143", "'10.0.0.5:993:143' has several colons but is no IPv6 address"),
        ("::1::80", "has several colons but is no IPv6 address"),
        ("bad host", "'bad host' is not an IP address or host name"),
        ("a..b:80", "'a..b' is not an IP address or host name"),
        ("-a:80", "'-a' is not an IP address or host name"),
    ],
)
def test_hostport_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_hostport(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "'127.0.0.1' needs a port (host:port)"),
        ("mail.example.org", "'mail.example.org' needs a port (host:port)"),
        # A bare IPv6 address never carries a port: the message says how to write one.
        ("::1:80", "'::1:80' needs a port (host:port); an IPv6 address takes a port in "
                   "brackets, [v6]:port"),
        ("[::1]", "'[::1]' needs a port"),
    ],
)
def test_need_port(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_hostport(text, need_port=True)


def test_need_port_accepts_ports() -> None:
    assert parse_hostport("[::1]:80", need_port=True) == HostPort("::1", 80)
    assert parse_hostport("127.0.0.1:9143", need_port=True) == HostPort("127.0.0.1", 9143)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", None)),
        ("10.0.0.5:", ("10.0.0.5", "")),
        ("host:143", ("host", "143")),
        ("[::1]:143", ("::1", "143")),
        ("[::1]", ("::1", None)),
        ("::1:80", ("::1:80", None)),
        ("", ("", None)),
        (":143", ("", "143")),
    ],
)
def test_split_leaves_the_meaning_of_empty_parts_to_the_caller(
    text: str, expected: tuple[str, str | None]
) -> None:
    assert split_hostport(text) == expected


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("143", 143), ("0993", 993),
                                            ("65535", 65535)])
def test_ports(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "", " 1", "1.0", "+1", "000000143", "²"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
        parse_port(text)


@pytest.mark.parametrize(
    ("text", "host"),
    [("10.0.0.5", "10.0.0.5"), ("2001:DB8:0::1", "2001:db8::1"),
     ("mail_1.example", "mail_1.example"), ("localhost", "localhost")],
)
def test_host(text: str, host: str) -> None:
    assert parse_host(text) == host


@pytest.mark.parametrize("text", ["", "[::1]", "a b", "a..b", "host:80", "-a", "a-"])
def test_bad_host(text: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or host name"):
        parse_host(text)


def test_well_known_ports() -> None:
    assert well_known_port(MailProtocol.IMAP, False) == 143
    assert well_known_port(MailProtocol.IMAP, True) == 993
    assert well_known_port(MailProtocol.POP3, False) == 110
    assert well_known_port(MailProtocol.POP3, True) == 995


# -- every reader applies the same rule ------------------------------------------------------


def test_map_answers_follow_the_rule() -> None:
    assert parse_server("bob@[::1]:2143") == MapEntry("::1", 2143, user="bob")
    assert parse_server("::1:80") == MapEntry("::1:80")
    with pytest.raises(ServerSpecError, match="several colons"):
        parse_server("10.0.0.5:993:143")


def test_render_node_and_stats_follow_the_rule() -> None:
    assert parse_node("n=[::1]:9143") == PoolNode("n", "::1", 0, HostPort("::1", 9143))
    assert parse_node("n=::1:9143") == PoolNode("n", "::1:9143")
    assert parse_stats("[::1]:8404") == HostPort("::1", 8404)
    # The renderer cut at the last colon: host ::1, port 80.
    with pytest.raises(RenderError, match=r"^--stats: '::1:80' needs a port"):
        parse_stats("::1:80")
    with pytest.raises(RenderError, match=r"^--node 'n=h:x': port 'x'"):
        parse_node("n=h:x")


@pytest.mark.parametrize(
    ("text", "host"),
    [("::1", "::1"), ("[::1]", "::1"), ("127.0.0.1", "127.0.0.1"), ("*", "*"),
     ("mail.example.org", "mail.example.org")],
)
def test_render_bind(text: str, host: str) -> None:
    assert bind_host(text) == host


@pytest.mark.parametrize(
    ("text", "message"),
    [("127.0.0.1:143", "has a port"), ("[::1]:143", "has a port"), ("", "has no host"),
     ("a b", "not an IP address or host name")],
)
def test_render_bind_refused(text: str, message: str) -> None:
    with pytest.raises(RenderError, match=f"^--bind: .*{message}"):
        bind_host(text)


def test_serve_listen_follows_the_rule() -> None:
    settings = Settings(listeners=())
    assert apply_overrides(settings, listen="[::1]:9144", unix=None).http.listen == HostPort(
        "::1", 9144)
    # serve cut at the last colon too, and then asked for brackets; now it is one rule.
    with pytest.raises(ValueError, match="needs a port"):
        apply_overrides(settings, listen="::1:9144", unix=None)
    with pytest.raises(ValueError, match="port '0' is not a number"):
        apply_overrides(settings, listen="127.0.0.1:0", unix=None)


def test_render_haproxy_stats_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[[listener]]\nname = "imap4"\nprotocol = "imap"\n')
    argv = ["render-haproxy", "-c", str(config), "--node", "a=127.0.0.2"]
    assert main([*argv, "--stats", "[::1]:8404"]) == 0
    assert "    bind [::1]:8404\n" in capsys.readouterr().out
    assert main([*argv, "--stats", "::1:8404"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "authsvc: render-haproxy: --stats: '::1:8404' needs a port" in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"::1:9143"', "'::1:9143' needs a port (host:port); an IPv6 address takes a port in "
                       "brackets, [v6]:port"),
        ('"[127.0.0.1]:9143"', "'[127.0.0.1]:9143': '127.0.0.1' in brackets is no IPv6 address"),
        ('"10.0.0.1:9143:1"', "'10.0.0.1:9143:1' has several colons but is no IPv6 address "
                              "(an IPv6 address with a port is written [v6]:port)"),
    ],
)
def test_config_errors_name_file_line_and_key(tmp_path: Path, value: str, message: str) -> None:
    config = tmp_path / "a.toml"
    config.write_text(f'[http]\nlisten = {value}\n[[listener]]\nname = "a"\nprotocol = "imap"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([str(config)])
    assert [str(i) for i in caught.value.issues] == [f"{config}:2: http.listen: {message}"]


def test_config_reads_ipv6_binds_and_servers(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[[listener]]\nname = "imap4"\nprotocol = "imap"\n'
                      'bind = ["::1", "[::2]:1143", "127.0.0.1"]\n'
                      'outgoing_server = ["::1:80", "[::1]:80"]\n')
    (listener,) = load_settings([str(config)]).settings.listeners
    assert listener.bind == (HostPort("::1", 143), HostPort("::2", 1143),
                             HostPort("127.0.0.1", 143))
    assert listener.default_servers == (HostPort("::1:80"), HostPort("::1", 80))


def test_perdition_bind_address_follows_the_rule(tmp_path: Path) -> None:
    config = tmp_path / "perdition.pop3s.conf"
    config.write_text('map_library ""\noutgoing_server [::1]:1110\nssl_mode ssl_listen\n'
                      "bind_address ::1,[::2]:1995\nssl_cert_file c\nssl_key_file k\n")
    (listener,) = load_settings([str(config)]).settings.listeners
    assert listener.bind == (HostPort("::1", 995), HostPort("::2", 1995))
    assert listener.default_servers == (HostPort("::1", 1110),)


def test_haproxy_node_host_takes_no_port(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[[listener]]\nname = "imap4"\nprotocol = "imap"\n'
                      '[[haproxy.nodes]]\nname = "n1"\nhost = "[2001:db8::1]"\n'
                      '[[haproxy.nodes]]\nname = "n2"\nhost = "10.0.0.1:80"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([str(config)])
    assert [str(i) for i in caught.value.issues] == [
        f"{config}:9: haproxy.nodes.host: '10.0.0.1:80': a node's host takes no port (the "
        "ports come from the listeners, port_offset and health)"]
    config.write_text('[[listener]]\nname = "imap4"\nprotocol = "imap"\n'
                      '[[haproxy.nodes]]\nname = "n1"\nhost = "[2001:db8::1]"\n')
    (node,) = load_settings([str(config)]).settings.haproxy.nodes
    assert node.host == "2001:db8::1"  # without the brackets, which str(HostPort) adds
