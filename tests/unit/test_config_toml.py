"""Native TOML: line numbers, the schema, and every validator message (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError, ConfigSource, Loaded, load_settings, parse_source
from authsvc.config.toml import key_lines
from authsvc.redact import Secret
from authsvc.settings import (
    BackendTls,
    FileMapSettings,
    HostPort,
    ListenTls,
    MailProtocol,
    MySqlMapSettings,
    NoMapSettings,
    PoolNode,
    RegexMapSettings,
    Stage,
)

LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'


def load(tmp_path: Path, text: str) -> Loaded:
    path = tmp_path / "a.toml"
    path.write_text(text)
    return load_settings([str(path)])


def errors(tmp_path: Path, text: str) -> list[str]:
    """Errors without the "<tmp>/a.toml:" prefix."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    prefix = f"{tmp_path / 'a.toml'}:"
    assert all(str(i).startswith(prefix) for i in caught.value.issues)
    return [str(i)[len(prefix):] for i in caught.value.issues]


def warnings(tmp_path: Path, text: str) -> list[str]:
    prefix = f"{tmp_path / 'a.toml'}:"
    return [str(w)[len(prefix):] for w in load(tmp_path, text).warnings]


# -- line numbers ------------------------------------------------------------------------


def test_key_lines_tables_arrays_and_dotted_keys() -> None:
    text = """\
# comment
top = 1
[login]
lower_case = ["all"]
a.b = 2

[[listener]]
name = "x"
[listener.login]
strip_domain = []
[[listener]]
"name" = "y"
"""
    lines = key_lines(text)
    assert lines[("top",)] == 2
    assert lines[("login",)] == 3
    assert lines[("login", "lower_case")] == 4
    assert lines[("login", "a", "b")] == 5
    assert lines[("listener", 0)] == 7
    assert lines[("listener", 0, "name")] == 8
    assert lines[("listener", 0, "login")] == 9
    assert lines[("listener", 0, "login", "strip_domain")] == 10
    assert lines[("listener", 1)] == 11
    assert lines[("listener", 1, "name")] == 12


def test_key_lines_skip_multiline_strings_and_arrays() -> None:
    text = '''\
a = """
fake = 1
"""
b = [
  "x = 1",  # fake = 2
  'y',
]
c = 'it''s'
d = "#not a comment" # real = 3
e = 1
'''
    lines = key_lines(text)
    assert ("fake",) not in lines
    assert ("real",) not in lines
    assert (lines[("a",)], lines[("b",)], lines[("c",)], lines[("d",)], lines[("e",)]) == (
        1, 4, 8, 9, 10)


def test_errors_carry_the_line_of_the_key(tmp_path: Path) -> None:
    text = LISTENER + "\n\n[cache]\n# note\nttl = -5\n"
    assert errors(tmp_path, text) == ["9: cache.ttl: -5 seconds is out of range (0 or more)"]


def test_second_listener_errors_point_at_its_own_lines(tmp_path: Path) -> None:
    text = LISTENER + '[[listener]]\nname = "pop3"\nprotocol = "pop3"\ntimeout = "x"\n'
    assert errors(tmp_path, text) == [
        "8: listener.timeout: expected a number of seconds, got the string 'x'"
    ]


# -- the schema, every key ------------------------------------------------------------------------


def test_every_key(tmp_path: Path) -> None:
    for name in ("popmap", "cert.pem", "key.pem", "db.pw", "secret"):
        (tmp_path / name).write_text("s3cret\n")
    text = """
[login]
lower_case = ["all"]
strip_domain = ["backend_login"]
add_domain = ["lookup"]
add_domain_depth = 2
explicit_domain = "riseup.net"
domain_delimiter = "@"
username_from_database = true
max_login_length = 320

[map]
type = "mysql"
hosts = ["db1:3307", "db2", "/run/mysqld/mysqld.sock", "localhost"]
port = 3306
database = "nest"
table = "mailboxes"
user = "nest_mail"
password_file = "db.pw"
server_column = "storage_ip"
user_column = "address"
port_constant = 143
connect_timeout = 1.5
query_timeout = 2
pool_size = 4
default_server_on_error = true

[cache]
enabled = false
ttl = 30
negative_ttl = 5
max_size = 1000
stale_if_error = 60

[http]
listen = "[::1]:9144"
unix = "/run/authsvc.sock"
path = "/mail-auth"
secret_file = "secret"
secret_header = "X-Key"
max_attempts = 5
auth_wait = 2
ready_requires_map = true
head_timeout = 4.5

[log]
level = "warning"
connection_logging = true
format = "json"

[nginx]
server_name = "mail.riseup.net"
proxy_protocol_from = ["127.0.0.0/8", "::1/128"]
ssl_protocols = ["TLSv1.3"]
auth_http_timeout = 2.5

[haproxy]
proxy_protocol = "v1"
check_inter = 1
check_fall = 2
check_rise = 3
stats = "127.0.0.1:8404"
admin_socket = "/run/haproxy.sock"
[[haproxy.nodes]]
name = "n1"
host = "127.0.0.10"
port_offset = 10000
health = "127.0.0.10:9143"

[[listener]]
name = "imaps"
protocol = "imap"
tls = "implicit"
port = 1993
bind = ["127.0.0.1", "[::1]:2993"]
capability = ["IMAP4rev1", "IDLE"]
outgoing_server = ["10.0.0.1:143", "10.0.0.2"]
outgoing_port = 1143
backend_tls = "starttls_required"
cert = "cert.pem"
key = "key.pem"
connection_limit = 100
timeout = 600
login_timeout = 30
[listener.login]
lower_case = ["lookup"]
[listener.map]
type = "file"
path = "popmap"

[[listener]]
name = "pop3"
protocol = "pop3"
tls = "starttls"
tls_required = true
cert = "cert.pem"
key = "key.pem"
[listener.map]
port_constant = 110
"""
    loaded = load(tmp_path, text)
    assert loaded.warnings == []
    s = loaded.settings
    imaps, pop3 = s.listeners
    assert imaps.login.lower_case == {Stage.LOOKUP}  # overridden key by key...
    assert imaps.login.strip_domain == {Stage.BACKEND_LOGIN}  # ...the rest inherited
    assert imaps.login.add_domain_depth == 2
    assert imaps.login.max_login_length == 320
    assert imaps.login.username_from_database
    assert imaps.map == FileMapSettings(str(tmp_path / "popmap"))  # another type: no inheritance
    assert (imaps.tls, imaps.backend_tls, imaps.default_port) == (
        ListenTls.IMPLICIT, BackendTls.STARTTLS_REQUIRED, 1143)
    assert imaps.bind == (HostPort("127.0.0.1", 1993), HostPort("::1", 2993))
    assert imaps.default_servers == (HostPort("10.0.0.1", 143), HostPort("10.0.0.2"))
    assert imaps.capability == ("IMAP4rev1", "IDLE")
    assert imaps.tls_files.cert_file == str(tmp_path / "cert.pem")
    assert (imaps.connection_limit, imaps.idle_timeout, imaps.login_timeout) == (100, 600, 30)
    assert pop3.protocol is MailProtocol.POP3
    assert pop3.tls_required
    assert pop3.bind == (HostPort("0.0.0.0", 110),)
    mysql = pop3.map
    assert isinstance(mysql, MySqlMapSettings)
    assert mysql.hosts == (HostPort("db1", 3307), HostPort("db2", 3306),
                           HostPort("/run/mysqld/mysqld.sock"), HostPort("localhost"))
    assert mysql.port_constant == 110
    assert mysql.port_column is None
    assert mysql.password_file == str(tmp_path / "db.pw")
    assert mysql.password is None
    assert (mysql.connect_timeout, mysql.query_timeout, mysql.pool_size) == (1.5, 2, 4)
    assert mysql.default_server_on_error
    assert (s.cache.enabled, s.cache.ttl, s.cache.negative_ttl, s.cache.max_size,
            s.cache.stale_if_error) == (False, 30, 5, 1000, 60)
    assert s.http.listen == HostPort("::1", 9144)
    assert s.http.unix == "/run/authsvc.sock"
    assert s.http.secret == Secret("s3cret")
    assert (s.http.path, s.http.secret_header, s.http.max_attempts, s.http.auth_wait,
            s.http.ready_requires_map, s.http.head_timeout) == ("/mail-auth", "X-Key", 5, 2,
                                                                 True, 4.5)
    assert (s.log.level, s.log.connection_logging, s.log.format) == ("warning", True, "json")
    assert s.nginx.server_name == "mail.riseup.net"
    assert s.nginx.proxy_protocol_from == ("127.0.0.0/8", "::1/128")
    assert (s.nginx.ssl_protocols, s.nginx.auth_http_timeout) == (("TLSv1.3",), 2.5)
    assert s.haproxy.nodes == (PoolNode("n1", "127.0.0.10", 10000, HostPort("127.0.0.10", 9143)),)
    assert (s.haproxy.proxy_protocol, s.haproxy.check_inter, s.haproxy.check_fall,
            s.haproxy.check_rise) == ("v1", 1, 2, 3)
    assert s.haproxy.stats == HostPort("127.0.0.1", 8404)
    assert s.haproxy.admin_socket == "/run/haproxy.sock"


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, LISTENER).settings
    (imap4,) = s.listeners
    assert imap4.map == NoMapSettings()
    assert (imap4.tls, imap4.backend_tls, imap4.default_port) == (
        ListenTls.NONE, BackendTls.NONE, 143)
    assert imap4.bind == (HostPort("0.0.0.0", 143),)
    assert s.http.listen == HostPort("127.0.0.1", 9143)
    assert s.http.secret is None
    assert s.http.head_timeout == 10.0  # docs/configuration.md


@pytest.mark.parametrize(
    ("protocol", "tls", "backend", "port", "outgoing"),
    [("imap", "none", "none", 143, 143), ("imap", "implicit", "none", 993, 143),
     ("imap", "none", "implicit", 143, 993), ("pop3", "starttls", "starttls", 110, 110),
     ("pop3", "implicit", "implicit", 995, 995)],
)
def test_default_ports_follow_protocol_and_tls(
    tmp_path: Path, protocol: str, tls: str, backend: str, port: int, outgoing: int
) -> None:
    for name in ("c", "k"):
        (tmp_path / name).write_text("x")
    text = (f'[[listener]]\nname = "l"\nprotocol = "{protocol}"\ntls = "{tls}"\n'
            f'backend_tls = "{backend}"\ncert = "c"\nkey = "k"\noutgoing_server = ["h"]\n')
    (found,) = load(tmp_path, text).settings.listeners
    assert (found.bind[0].port, found.default_port) == (port, outgoing)


def test_listener_map_of_the_same_type_overrides_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "a.re").write_text("")
    text = ('[map]\ntype = "regex"\npath = "a.re"\n' + LISTENER +
            "[listener.map]\nperdition_prefix_quirk = true\n")
    assert load(tmp_path, text).settings.listeners[0].map == RegexMapSettings(
        str(tmp_path / "a.re"), True)


@pytest.mark.parametrize("table", [
    'type = "file"\npath = "popmap"\n',
    'type = "regex"\npath = "popmap"\n',
    'type = "mysql"\npassword_file = "popmap"\n',
])
def test_every_map_takes_a_name_and_default_server_on_error(tmp_path: Path, table: str) -> None:
    (tmp_path / "popmap").write_text("")
    text = f'[map]\n{table}name = "nest"\ndefault_server_on_error = true\n' + LISTENER
    found = load(tmp_path, text).settings.listeners[0].map
    assert (found.label, found.default_server_on_error) == ("nest", True)


def test_a_map_without_a_name_is_labelled_by_what_identifies_it(tmp_path: Path) -> None:
    text = ('[map]\ntype = "mysql"\nhosts = ["db1", "db2"]\nport = 3307\ndatabase = "nest"\n'
            'table = "mailboxes"\npassword_file = "/x"\n' + LISTENER)
    assert load(tmp_path, text).settings.listeners[0].map.label == (
        "mysql:db1:3307/nest.mailboxes")
    assert load(tmp_path, '[map]\nname = "static"\n' + LISTENER
                ).settings.listeners[0].map.label == "static"


# -- every validator message -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[login]\nexplicit_domain = 5\n",
         "2: login.explicit_domain: expected a string, got the number 5"),
        ('[login]\ndomain_delimiter = ""\n', "2: login.domain_delimiter: must not be empty"),
        ('[login]\nexplicit_domain = "a\\u0001b"\n',
         "2: login.explicit_domain: control character in value"),
        ('[cache]\nenabled = "yes"\n',
         "2: cache.enabled: expected true or false, got the string 'yes'"),
        ("[cache]\nmax_size = 1.5\n", "2: cache.max_size: expected a whole number, got the "
         "number 1.5"),
        ("[cache]\nmax_size = true\n", "2: cache.max_size: expected a whole number, got "
         "true/false"),
        ("[cache]\nmax_size = 0\n", "2: cache.max_size: 0 is out of range 1-100000000"),
        ('[cache]\nttl = "60s"\n',
         "2: cache.ttl: expected a number of seconds, got the string '60s'"),
        ("[cache]\nttl = -1\n", "2: cache.ttl: -1 seconds is out of range (0 or more)"),
        ("[nginx]\nauth_http_timeout = 0\n",
         "2: nginx.auth_http_timeout: 0 seconds is out of range (more than 0)"),
        ("[http]\nhead_timeout = 0\n",
         "2: http.head_timeout: 0 seconds is out of range (more than 0)"),
        ('[log]\nlevel = "verbose"\n',
         "2: log.level: 'verbose' is not one of debug, info, warning, error"),
        ("[log]\nlevel = 1979-05-27\n",
         "2: log.level: a date is not one of debug, info, warning, error"),
        ('[login]\nlower_case = "all"\n',
         "2: login.lower_case: expected a list of strings, got the string 'all'"),
        ("[login]\nlower_case = [1]\n",
         "2: login.lower_case: expected a string in the list, got the number 1"),
        ('[login]\nlower_case = ["lookups"]\n',
         "2: login.lower_case: unknown stage 'lookups' (lookup, backend_login or all)"),
        ('[http]\nlisten = "127.0.0.1"\n', "2: http.listen: '127.0.0.1' needs a port "
         "(host:port)"),
        ('[http]\nlisten = "[::1:80"\n', "2: http.listen: '[::1:80': '[' without ']'"),
        ('[http]\nlisten = "[::1]x"\n', "2: http.listen: '[::1]x': unexpected 'x' after ']'"),
        ('[http]\nlisten = ":80"\n', "2: http.listen: ':80' has no host"),
        ('[http]\nlisten = "bad host:80"\n',
         "2: http.listen: 'bad host' is not an IP address or host name"),
        ('[http]\nlisten = "127.0.0.1:0"\n',
         "2: http.listen: port '0' is not a number from 1 to 65535"),
        ('[http]\nunix = ""\n', "2: http.unix: must not be empty"),
        ('[http]\npath = "auth"\n', "2: http.path: 'auth' must start with '/'"),
        ('[http]\nsecret_header = "X Key"\n',
         "2: http.secret_header: 'X Key' is not an HTTP header name"),
        ('[http]\nsecret_file = "missing"\n', "2: http.secret_file: cannot read {tmp}/missing: "
         "No such file or directory"),
        ('[nginx]\nproxy_protocol_from = ["10.0.0.0/33"]\n',
         "2: nginx.proxy_protocol_from: '10.0.0.0/33' is not a network (CIDR)"),
        ('[nginx]\nssl_protocols = ["SSLv3"]\n',
         "2: nginx.ssl_protocols: 'SSLv3' is not TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"),
        ('[map]\ntype = "mysql"\npassword = "x"\n', "3: map.password: put the password in a file "
         "and name it with password_file: the configuration file holds no secrets"),
        ("login = 5\n", "1: login: expected a table, got the number 5"),
        ('[cache]\nttll = 5\n', "2: cache.ttll: unknown key (did you mean 'ttl'?)"),
        ('[cache]\nzzz = 5\n', "2: cache.zzz: unknown key"),
        ("[mapp]\n", "1: mapp: unknown key (did you mean 'map'?)"),
        ('[map]\ntype = "file"\npath = "/x"\nhosts = ["a"]\n',
         "4: map.hosts: does not apply to type = 'file' maps"),
        ('[map]\ntype = "file"\n', "1: map.path: missing (required)"),
        ('[map]\ntype = "file"\npath = "/x"\nname = ""\n', "4: map.name: must not be empty"),
        ('[map]\nname = "' + "n" * 129 + '"\n', "2: map.name: longer than 128 characters"),
        ('[map]\nname = "a\\nb"\n', "2: map.name: control character in value"),
        ('[map]\ndefault_server_on_error = true\n',
         "2: map.default_server_on_error: does not apply to type = 'none' maps"),
        ('[map]\ntype = "sqlite"\n', "2: map.type: 'sqlite' is not one of file, regex, mysql, "
         "none"),
        ('[map]\ntype = "mysql"\ntable = "a-b"\npassword_file = "/x"\n',
         "3: map.table: table is 'a-b', not an SQL identifier ([A-Za-z_][A-Za-z0-9_]*): it is "
         "pasted into the query"),
        ('[map]\ntype = "mysql"\nuser_column = "143"\npassword_file = "/x"\n',
         "3: map.user_column: user column is a number, not an SQL identifier "
         "([A-Za-z_][A-Za-z0-9_]*): it is pasted into the query"),
        ('[map]\ntype = "mysql"\nhosts = []\npassword_file = "/x"\n',
         "3: map.hosts: no database host given"),
        ('[map]\ntype = "mysql"\nport_column = "p"\nport_constant = 143\npassword_file = "/x"\n',
         "3: map.port_column: give port_column or port_constant, not both"),
        ('[haproxy]\n[[haproxy.nodes]]\nname = "n"\nhost = "a b"\n',
         "4: haproxy.nodes.host: 'a b' is not an IP address or host name"),
        ('[haproxy]\nnodes = [{host = "h"}]\n', "2: haproxy.nodes.name: missing (required)"),
        ('[haproxy]\nnodes = 1\n', "2: haproxy.nodes: expected a list of tables "
         "([[haproxy.nodes]]), got the number 1"),
        ('[haproxy]\nnodes = [1]\n', "2: haproxy.nodes: expected a table, got the number 1"),
    ],
)
def test_value_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert errors(tmp_path, text + LISTENER) == [expected.replace("{tmp}", str(tmp_path))]


@pytest.mark.parametrize(
    ("listener", "expected"),
    [
        ('protocol = "imap"\n', "1: listener.name: missing (required)"),
        ('name = "imap 4"\nprotocol = "imap"\n',
         "2: listener.name: 'imap 4': use letters, digits, '_', '.' and '-'"),
        ('name = "x"\n', "1: listener.protocol: missing (required): imap or pop3"),
        ('name = "x"\nprotocol = "smtp"\n',
         "3: listener.protocol: 'smtp' is not one of imap, pop3"),
        ('name = "x"\nprotocol = "imap"\ntls_required = true\n',
         '4: listener.tls_required: applies only to tls = "starttls"'),
        ('name = "x"\nprotocol = "imap"\ntls = "starttls"\n',
         "1: listener.cert: missing: required when tls = 'starttls'"),
        ('name = "x"\nprotocol = "imap"\ncapability = [""]\n',
         "4: listener.capability: empty capability"),
        ('name = "x"\nprotocol = "imap"\ncapability = ["STARTTLS"]\n',
         "4: listener.capability: 'STARTTLS' is managed from tls and tls_required (added while "
         "TLS can still be started); remove it from the list"),
        ('name = "x"\nprotocol = "pop3"\ncapability = ["STLS"]\n',
         "4: listener.capability: 'STLS' is managed from tls and tls_required (added while TLS "
         "can still be started); remove it from the list"),
        ('name = "x"\nprotocol = "imap"\ncapability = ["AUTH=PLAIN IDLE"]\n',
         "4: listener.capability: IMAP capability 'AUTH=PLAIN IDLE' contains a space; list one "
         "word per item"),
        ('name = "x"\nprotocol = "imap"\nport = 70000\n',
         "4: listener.port: 70000 is out of range 1-65535"),
        ('name = "x"\nprotocol = "imap"\nlogin = []\n',
         "4: listener.login: expected a table, got a list"),
    ],
)
def test_listener_errors(tmp_path: Path, listener: str, expected: str) -> None:
    text = "[[listener]]\n" + listener + 'outgoing_server = ["h"]\n'
    assert errors(tmp_path, text)[0] == expected


def test_both_cert_and_key_are_required(tmp_path: Path) -> None:
    text = '[[listener]]\nname = "x"\nprotocol = "imap"\ntls = "implicit"\n'
    assert errors(tmp_path, text) == [
        "1: listener.cert: missing: required when tls = 'implicit'",
        "1: listener.key: missing: required when tls = 'implicit'",
    ]


def test_no_listener(tmp_path: Path) -> None:
    assert errors(tmp_path, '[log]\nlevel = "info"\n') == [
        "0: listener: no listener: define at least one [[listener]]"
    ]


def test_no_listener_still_checks_the_shared_tables(tmp_path: Path) -> None:
    assert errors(tmp_path, "[login]\nlower_case = [2]\n") == [
        "0: listener: no listener: define at least one [[listener]]",
        "2: login.lower_case: expected a string in the list, got the number 2",
    ]


def test_listeners_as_a_scalar(tmp_path: Path) -> None:
    assert errors(tmp_path, "listener = 5\n") == [
        "1: listener: expected a list of tables ([[listener]]), got the number 5",
        "0: listener: no listener: define at least one [[listener]]",
    ]


def test_listeners_list_of_scalars(tmp_path: Path) -> None:
    assert errors(tmp_path, "listener = [1]\n")[0] == (
        "1: listener: expected a table, got the number 1")


def test_duplicate_listener_names(tmp_path: Path) -> None:
    text = LISTENER + LISTENER.replace('["127.0.0.9"]', '["h"]\nport = 1143')
    assert errors(tmp_path, text) == [
        f"6: listener.name: listener name 'imap4' is already used ({tmp_path / 'a.toml'}:2)"
    ]


def test_same_address_twice(tmp_path: Path) -> None:
    text = LISTENER + LISTENER.replace('"imap4"', '"other"').replace(
        '["127.0.0.9"]', '["h"]\nbind = ["127.0.0.1:143"]')
    assert errors(tmp_path, text) == [
        f"9: listener.bind: 127.0.0.1:143 is also listened on by listener 'imap4' as "
        f"0.0.0.0:143 ({tmp_path / 'a.toml'}:1)"
    ]


def test_secret_file_must_hold_text(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    assert errors(tmp_path, '[http]\nsecret_file = "empty"\n' + LISTENER) == [
        f"2: http.secret_file: {tmp_path / 'empty'} must hold one line of text"
    ]


def test_toml_syntax_error(tmp_path: Path) -> None:
    (message,) = errors(tmp_path, LISTENER + "oops =\n")
    assert message.startswith("5: toml: Invalid value (at line 5, column 7)")


# -- warnings ----------------------------------------------------------------------------


def test_missing_files_are_warnings(tmp_path: Path) -> None:
    text = ('[map]\ntype = "file"\npath = "nope"\n[[listener]]\nname = "x"\nprotocol = "imap"\n'
            'tls = "starttls"\ncert = "c.pem"\nkey = "k.pem"\n')
    assert warnings(tmp_path, text) == [
        f"8: listener.cert: certificate {tmp_path / 'c.pem'} does not exist or is not readable",
        f"9: listener.key: private key {tmp_path / 'k.pem'} does not exist or is not readable",
        f"3: map.path: map file {tmp_path / 'nope'} does not exist or is not readable",
    ]


def test_mysql_without_password_warns(tmp_path: Path) -> None:
    assert warnings(tmp_path, '[map]\ntype = "mysql"\n' + LISTENER) == [
        "1: map.password_file: no password_file: connecting without a password"
    ]


def test_no_map_and_no_outgoing_server_warns(tmp_path: Path) -> None:
    assert warnings(tmp_path, '[[listener]]\nname = "x"\nprotocol = "imap"\n') == [
        "1: listener.outgoing_server: listener 'x' has no map and no outgoing_server: every "
        "login will be refused"
    ]


# -- sources -----------------------------------------------------------------------------


def test_parse_source() -> None:
    assert parse_source("a.toml") == ConfigSource("a.toml")
    assert parse_source("IMAPS=/etc/p.conf") == ConfigSource("/etc/p.conf", "imaps")
    assert parse_source("./x=y.conf") == ConfigSource("./x=y.conf")


def test_parse_source_unknown_protocol() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_source("imap=p.conf")
    assert str(caught.value) == (
        "imap=p.conf:0: PROTO: unknown protocol 'imap': use imap4, imaps, imap4s, pop3 or "
        "pop3s (write ./FILE for a file name with '=' in it)")


def test_parse_source_without_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_source("pop3=")
    assert str(caught.value) == "pop3=:0: PROTO: no file after '='"


def test_proto_with_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(LISTENER)
    with pytest.raises(ConfigError) as caught:
        load_settings([f"imap4={path}"])
    assert str(caught.value) == f"{path}:0: PROTO: PROTO= applies to Perdition files only"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([str(tmp_path / "none.toml")])
    assert str(caught.value) == f"{tmp_path / 'none.toml'}:0: (file): cannot read: No such file " \
        "or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "perdition.imap4.conf"
    path.write_bytes(b"debug\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    assert str(caught.value) == f"{path}:2: (file): not valid UTF-8"


def test_no_sources() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([])
    assert str(caught.value) == "(command line):0: --config: no configuration file"


def test_config_error_lists_every_issue_one_per_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[cache]\nttl = -1\nmax_size = 0\n" + LISTENER)
    assert str(caught.value).count("\n") == 1


MYSQL = '[map]\ntype = "mysql"\nhosts = ["db1:3306", "db2:3306"]\n'


def test_mysql_failover_and_tls_keys(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    loaded = load(tmp_path, MYSQL + 'failback_interval = 2\nmax_replica_lag = 0\ntls = true\n'
                  'tls_ca_file = "ca.pem"\ntls_cert_file = "client.pem"\n'
                  'tls_key_file = "client.key"\ntls_verify_name = false\n' + LISTENER)
    settings = loaded.settings.listeners[0].map
    assert isinstance(settings, MySqlMapSettings)
    assert (settings.failback_interval, settings.max_replica_lag) == (2.0, 0.0)
    assert settings.tls and not settings.tls_verify_name
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    defaults = load(tmp_path, MYSQL + LISTENER).settings.listeners[0].map
    assert isinstance(defaults, MySqlMapSettings)
    assert (defaults.failback_interval, defaults.max_replica_lag, defaults.tls,
            defaults.tls_ca_file, defaults.tls_verify_name) == (30.0, 5.0, False, None, True)


def test_mysql_tls_key_errors_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "client.pem").write_text("x")
    found = errors(tmp_path, MYSQL + 'tls = true\ntls_cert_file = "client.pem"\n'
                   'failback_interval = 0\nmax_replica_lag = -1\n' + LISTENER)
    assert any("map.tls_cert_file: give tls_cert_file and tls_key_file together" in e
               for e in found), found
    assert any("map.failback_interval: 0 seconds is out of range (more than 0)" in e
               for e in found), found
    assert any("map.max_replica_lag: -1 seconds is out of range (0 or more)" in e
               for e in found), found
    said = warnings(tmp_path, MYSQL + 'tls_verify_name = false\n' + LISTENER)
    assert any("map.tls_verify_name: does nothing without tls = true" in w for w in said), said
