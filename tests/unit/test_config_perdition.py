"""Perdition options to settings: each option's mapping, warning or error (perdition(8))."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError, Loaded, load_settings
from authsvc.config.perdition_options import OPTIONS
from authsvc.redact import Secret
from authsvc.settings import (
    BackendTls,
    FileMapSettings,
    HostPort,
    ListenerSettings,
    ListenTls,
    MailProtocol,
    MySqlMapSettings,
    NoMapSettings,
    RegexMapSettings,
    Stage,
)

#: Lines 1-2 of every test file: no map, a fallback server, so nothing else warns.
BASE = 'map_library ""\noutgoing_server 127.0.0.9\n'


def write(tmp_path: Path, text: str, name: str = "perdition.imap4.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, name: str = "perdition.imap4.conf") -> Loaded:
    return load_settings([str(write(tmp_path, text, name))])


def listener(tmp_path: Path, text: str, name: str = "perdition.imap4.conf") -> ListenerSettings:
    return load(tmp_path, BASE + text, name).settings.listeners[0]


def warnings(tmp_path: Path, text: str, name: str = "perdition.imap4.conf") -> list[str]:
    """The warnings, without the "f.conf:" prefix."""
    loaded = load(tmp_path, text, name)
    return [str(w).split(":", 1)[1] for w in loaded.warnings]


def errors(tmp_path: Path, text: str, name: str = "perdition.imap4.conf") -> list[str]:
    """The errors, without the "f.conf:" prefix."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, name)
    return [str(i).split(":", 1)[1] for i in caught.value.issues]


# -- which protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "listener_name", "protocol", "port", "tls"),
    [
        ("perdition.imap4.conf", "imap4", MailProtocol.IMAP, 143, ListenTls.NONE),
        ("perdition.imaps.conf", "imaps", MailProtocol.IMAP, 993, ListenTls.IMPLICIT),
        ("perdition.imap4s.conf", "imaps", MailProtocol.IMAP, 993, ListenTls.IMPLICIT),
        ("perdition.pop3.conf", "pop3", MailProtocol.POP3, 110, ListenTls.NONE),
        ("perdition.pop3s.conf", "pop3s", MailProtocol.POP3, 995, ListenTls.IMPLICIT),
        ("perdition.pops.conf", "pop3s", MailProtocol.POP3, 995, ListenTls.IMPLICIT),
    ],
)
def test_protocol_from_the_file_name(
    tmp_path: Path, name: str, listener_name: str, protocol: MailProtocol, port: int,
    tls: ListenTls,
) -> None:
    found = listener(tmp_path, "", name)
    assert (found.name, found.protocol, found.bind, found.tls) == (
        listener_name, protocol, (HostPort("0.0.0.0", port),), tls)
    assert found.default_port == port  # outgoing_port defaults to the protocol's port


def test_protocol_from_proto_equals(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, "perdition.conf")
    found = load_settings([f"pop3={path}"]).settings.listeners[0]
    assert (found.name, found.protocol) == ("pop3", MailProtocol.POP3)


def test_proto_equals_wins_over_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, "perdition.imap4.conf")
    assert load_settings([f"imaps={path}"]).settings.listeners[0].name == "imaps"


def test_no_protocol_is_an_error_asking_for_proto(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE, "perdition.conf") == [
        "0: protocol: cannot tell the protocol from the file name; write PROTO=FILE with PROTO "
        "one of imap4, imaps, pop3, pop3s"
    ]


def test_a_protocol_line_wins_and_warns(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "protocol pop3\n")
    assert loaded.settings.listeners[0].name == "pop3"
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "3: protocol: the file name or PROTO= says IMAP4; this line wins, as in Perdition"
    ]


def test_a_protocol_line_names_the_protocol_of_an_unnamed_file(tmp_path: Path) -> None:
    assert listener(tmp_path, "P IMAP4S\nssl_mode ssl_listen\n", "perdition.conf").name == "imaps"


def test_managesieve_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "protocol MANAGESIEVE\n") == [
        "3: protocol: ManageSieve is not supported by authsvc"
    ]


def test_unknown_protocol_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "protocol smtp\n") == [
        "3: protocol: unknown protocol 'smtp' (POP3, POP3S, IMAP4 or IMAP4S)"
    ]


def test_pops_conf_warns_that_debian_never_read_it(tmp_path: Path) -> None:
    found = warnings(tmp_path, BASE + "ssl_mode ssl_listen\n", "perdition.pops.conf")
    assert found[:1] == [
        "0: protocol: read as POP3S because of its name, but Debian's perdition.pop3s reads "
        "perdition.pop3s.conf (else perdition.conf) and never this name, so in the seed "
        "deployment the POP3S daemon ran on its defaults; rename it to perdition.pop3s.conf"
    ]


# -- option names and values ------------------------------------------------------------


def test_unknown_option_is_an_error_naming_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "bogus_option 1\ntimeout 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:3: bogus_option: unknown option (Perdition would silently ignore this line "
        "and the rest of the file)"
    ]


def test_key_equals_value_gets_a_hint(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "timeout=5\n") == [
        "3: timeout=5: unknown option (Perdition would silently ignore this line and the rest "
        "of the file); Perdition separates key and value with whitespace, not '='"
    ]


def test_an_unknown_one_letter_key_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "x\n")[0].startswith("3: x: unknown option")


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = BASE + "bogus 1\ntimeout\ndebug yes\nlower_case sometimes\ntimeout abc\n"
    assert errors(tmp_path, text) == [
        "3: bogus: unknown option (Perdition would silently ignore this line and the rest of "
        "the file)",
        "4: timeout: needs a value",
        "5: debug: takes no value: a bare 'debug' turns it on, and there is no way to write off",
        "6: lower_case: unknown state 'sometimes' (servername_lookup, server_lookup, "
        "remote_login, local_authentication, local_auth or all)",
        "7: timeout: expected a number of seconds, got the string 'abc'",
    ]


def test_a_repeated_option_warns_and_the_last_wins(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "timeout 5\ntimeout 7\n")
    assert loaded.settings.listeners[0].idle_timeout == 7
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "4: timeout: also set on line 3; this later line wins, as in Perdition"
    ]


def test_short_options_are_the_long_ones(tmp_path: Path) -> None:
    found = listener(tmp_path, "t 60\nL 5\ne example.org\nA server_lookup\nD %\nU\n")
    assert (found.idle_timeout, found.connection_limit) == (60, 5)
    assert found.login.explicit_domain == "example.org"
    assert found.login.add_domain == {Stage.LOOKUP}
    assert found.login.domain_delimiter == "%"
    assert found.login.username_from_database


# -- each mapped option --------------------------------------------------------------------


def test_timeouts_and_connection_limit(tmp_path: Path) -> None:
    found = listener(tmp_path, "timeout 0\nauthenticate_timeout 15\nconnection_limit 20\n")
    assert (found.idle_timeout, found.login_timeout, found.connection_limit) == (0, 15, 20)


def test_defaults_match_perdition(tmp_path: Path) -> None:
    found = listener(tmp_path, "")
    assert (found.idle_timeout, found.login_timeout, found.connection_limit) == (1800, 1800, 0)
    assert found.capability == ("IMAP4", "IMAP4REV1")
    assert found.login.domain_delimiter == "@"
    assert (found.tls, found.backend_tls) == (ListenTls.NONE, BackendTls.NONE)


def test_bind_address_and_listen_port(tmp_path: Path) -> None:
    found = listener(tmp_path, "listen_port 1143\nbind_address 127.0.0.1,[::1]:2143,localhost\n")
    assert found.bind == (HostPort("127.0.0.1", 1143), HostPort("::1", 2143),
                          HostPort("localhost", 1143))


def test_listen_port_service_name(tmp_path: Path) -> None:
    assert listener(tmp_path, "listen_port imaps\n").bind == (HostPort("0.0.0.0", 993),)


def test_bad_listen_port(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "listen_port http-alt\n") == [
        "3: listen_port: expected a whole number, got the string 'http-alt'"
    ]


def test_bad_bind_address(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "bind_address 127.0.0.1:99999\n") == [
        "3: bind_address: port '99999' is not a number from 1 to 65535"
    ]


def test_outgoing_server_and_port(tmp_path: Path) -> None:
    found = listener(tmp_path, "outgoing_server 10.0.0.5,10.0.0.6:1143\noutgoing_port 2143\n")
    assert found.default_servers == (HostPort("10.0.0.5"), HostPort("10.0.0.6", 1143))
    assert found.default_port == 2143


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lower_case all\n", {"lower_case": {Stage.LOOKUP, Stage.BACKEND_LOGIN}}),
        ("lower_case servername_lookup\n", {"lower_case": {Stage.LOOKUP}}),
        ("lower_case SERVER_LOOKUP\n", {"lower_case": {Stage.LOOKUP}}),
        ("lower_case remote_login\n", {"lower_case": {Stage.BACKEND_LOGIN}}),
        ("lower_case remote_login\nlower_case server_lookup\n",
         {"lower_case": {Stage.LOOKUP, Stage.BACKEND_LOGIN}}),  # repeated lines are OR-ed
        ("strip_domain remote_login\n", {"strip_domain": {Stage.BACKEND_LOGIN}}),
        ("S all\n", {"strip_domain": {Stage.LOOKUP, Stage.BACKEND_LOGIN}}),
        ("add_domain servername_lookup,2\n", {"add_domain": {Stage.LOOKUP}, "depth": 2}),
        ("add_domain all\n", {"add_domain": {Stage.LOOKUP, Stage.BACKEND_LOGIN}, "depth": 1}),
    ],
)
def test_login_states(tmp_path: Path, text: str, expected: dict[str, object]) -> None:
    login = listener(tmp_path, text).login
    for key, value in expected.items():
        got = login.add_domain_depth if key == "depth" else getattr(login, key)
        assert got == value


def test_local_auth_state_warns_and_is_ignored(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "lower_case local_auth,remote_login\n")
    assert loaded.settings.listeners[0].login.lower_case == {Stage.BACKEND_LOGIN}
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "3: lower_case: state 'local_auth': authsvc does no local authentication, so this "
        "state is ignored"
    ]


def test_explicit_domain_alone_warns(tmp_path: Path) -> None:
    assert warnings(tmp_path, BASE + "explicit_domain riseup.net\n") == [
        "3: explicit_domain: does nothing without add_domain, as in Perdition"
    ]


def test_explicit_domain_with_the_delimiter_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "add_domain all\nexplicit_domain a@b\n") == [
        "4: explicit_domain: contains the domain delimiter '@'"
    ]


def test_debug_quiet_and_connection_logging(tmp_path: Path) -> None:
    log = load(tmp_path, BASE + "debug\nconnection_logging\nquiet\n").settings.log
    assert (log.level, log.connection_logging) == ("debug", True)  # debug overrides quiet
    assert load(tmp_path, BASE + "q\n").settings.log.level == "error"
    assert load(tmp_path, BASE).settings.log.level == "info"


def test_no_lookup_is_accepted_silently(tmp_path: Path) -> None:
    assert warnings(tmp_path, BASE + "no_lookup\n") == []


# -- capabilities ---------------------------------------------------------------------------


def test_imap_capability_words(tmp_path: Path) -> None:
    found = listener(tmp_path, 'imap_capability "IMAP4rev1 IDLE STARTTLS LOGINDISABLED"\n')
    assert found.capability == ("IMAP4rev1", "IDLE")  # managed words follow ssl_mode


def test_imap_capability_double_space_warns(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + 'imap_capability "IMAP4rev1 UIDPLUS  IDLE"\n')
    assert loaded.settings.listeners[0].capability == ("IMAP4rev1", "UIDPLUS", "IDLE")
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "3: imap_capability: runs of spaces: Perdition sent them to clients verbatim, authsvc "
        "sends the words with single spaces"
    ]


def test_pop_capability_dots(tmp_path: Path) -> None:
    found = listener(tmp_path, "pop_capability UIDL.USER.TOP.STLS\n", "perdition.pop3.conf")
    assert found.capability == ("UIDL", "USER", "TOP")


def test_pop_capability_two_spaces_is_deprecated(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "pop_capability UIDL  USER\n", "perdition.pop3.conf")
    assert loaded.settings.listeners[0].capability == ("UIDL", "USER")
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "3: pop_capability: two spaces as the separator are deprecated in Perdition; "
        "separate with '.'"
    ]


def test_pop_capability_without_separator_is_one_line(tmp_path: Path) -> None:
    found = listener(tmp_path, "pop_capability SASL PLAIN\n", "perdition.pop3.conf")
    assert found.capability == ("SASL PLAIN",)


def test_capability_alias_is_deprecated(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "I IMAP4rev1\n")
    assert loaded.settings.listeners[0].capability == ("IMAP4rev1",)
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "3: I: deprecated in Perdition; read as imap_capability"
    ]


def test_the_other_protocols_capability_is_ignored(tmp_path: Path) -> None:
    assert warnings(tmp_path, BASE + "pop_capability UIDL\n") == [
        "3: pop_capability: has no effect on an IMAP listener; ignored"
    ]
    assert warnings(tmp_path, BASE + "imap_capability IDLE\n", "perdition.pop3.conf") == [
        "3: imap_capability: has no effect on a POP3 listener; ignored"
    ]


def test_an_empty_pop_capability_item_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "pop_capability UIDL..USER\n", "perdition.pop3.conf") == [
        "3: pop_capability: empty capability"
    ]


# -- ssl_mode (perdition(8), --ssl_mode) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "tls", "required", "backend"),
    [
        ("none", ListenTls.NONE, False, BackendTls.NONE),
        ("tls_listen", ListenTls.STARTTLS, False, BackendTls.NONE),
        ("ssl_listen", ListenTls.IMPLICIT, False, BackendTls.NONE),
        ("tls_listen_force", ListenTls.STARTTLS, True, BackendTls.NONE),
        ("ssl_outgoing", ListenTls.NONE, False, BackendTls.IMPLICIT),
        ("tls_outgoing", ListenTls.NONE, False, BackendTls.STARTTLS),
        ("tls_outgoing_force", ListenTls.NONE, False, BackendTls.STARTTLS_REQUIRED),
        ("ssl_all", ListenTls.IMPLICIT, False, BackendTls.IMPLICIT),
        ("tls_all", ListenTls.STARTTLS, False, BackendTls.STARTTLS),
        ("tls_all_force", ListenTls.STARTTLS, True, BackendTls.STARTTLS_REQUIRED),
        ("TLS_LISTEN,ssl_outgoing", ListenTls.STARTTLS, False, BackendTls.IMPLICIT),
    ],
)
def test_ssl_mode(tmp_path: Path, mode: str, tls: ListenTls, required: bool,
                  backend: BackendTls) -> None:
    certs = f"ssl_cert_file {tmp_path}/c.pem\nssl_key_file {tmp_path}/k.pem\n"
    found = listener(tmp_path, f"ssl_mode {mode}\n{certs}")
    assert (found.tls, found.tls_required, found.backend_tls) == (tls, required, backend)


def test_ssl_mode_lines_add_up(tmp_path: Path) -> None:
    found = listener(tmp_path, "ssl_mode tls_listen\nssl_mode tls_outgoing\n")
    assert (found.tls, found.backend_tls) == (ListenTls.STARTTLS, BackendTls.STARTTLS)


def test_unknown_ssl_mode_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "ssl_mode starttls\n") == [
        "3: ssl_mode: unknown ssl_mode 'starttls' (none, ssl_listen, ssl_outgoing, ssl_all, "
        "tls_listen, tls_outgoing, tls_all, tls_listen_force, tls_outgoing_force, tls_all_force)"
    ]


def test_ssl_and_tls_listen_together_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, BASE + "ssl_mode ssl_listen,tls_listen\n") == [
        "3: ssl_mode: ssl_listen and tls_listen together: Perdition logs 'invalid ssl_mode "
        "combination' and uses both; choose one"
    ]


def test_imaps_without_ssl_mode_is_ssl_all_and_warns(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE, "perdition.imaps.conf")
    found = loaded.settings.listeners[0]
    assert (found.tls, found.backend_tls, found.default_port) == (
        ListenTls.IMPLICIT, BackendTls.IMPLICIT, 993)
    messages = [str(w).split(":", 1)[1] for w in loaded.warnings]
    assert messages[0] == (
        "0: ssl_mode: not set, so IMAP4S means ssl_all, as in Perdition: implicit TLS to "
        "clients AND to the backends (default port 993); write 'ssl_mode ssl_listen' for "
        "plaintext backends"
    )


def test_imaps_with_tls_listen_is_a_plaintext_port_and_warns(tmp_path: Path) -> None:
    messages = warnings(tmp_path, BASE + "ssl_mode tls_listen\n", "perdition.imaps.conf")
    assert "1: ssl_mode: IMAP4S with tls_listen is a plaintext port with STARTTLS" in (
        messages[0].replace("3: ssl_mode", "1: ssl_mode"))


def test_imaps_plaintext_backend_default_port_993_warns(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "ssl_mode ssl_listen\n", "perdition.imaps.conf")
    assert loaded.settings.listeners[0].default_port == 993  # imap4s_port(): as Perdition
    assert [str(w).split(":", 1)[1] for w in loaded.warnings if "outgoing_port" in str(w)] == [
        "0: outgoing_port: not set, so it is 993 for IMAP4S as in Perdition, although the "
        "backend connection is plaintext: map entries without a port go to port 993"
    ]


def test_tls_without_cert_files_uses_perditions_defaults(tmp_path: Path) -> None:
    loaded = load(tmp_path, BASE + "ssl_mode tls_listen\n")
    files = loaded.settings.listeners[0].tls_files
    assert (files.cert_file, files.key_file) == ("/etc/perdition/perdition.crt.pem",
                                                 "/etc/perdition/perdition.key.pem")
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        "0: ssl_cert_file: certificate /etc/perdition/perdition.crt.pem does not exist or is "
        "not readable (Perdition's default, as the file sets none)",
        "0: ssl_key_file: private key /etc/perdition/perdition.key.pem does not exist or is "
        "not readable (Perdition's default, as the file sets none)",
    ]


def test_relative_cert_paths_resolve_against_the_files_directory(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("c")
    (tmp_path / "k.pem").write_text("k")
    loaded = load(tmp_path, BASE + "ssl_mode tls_listen\nssl_cert_file c.pem\n"
                  "ssl_key_file k.pem\n")
    assert loaded.settings.listeners[0].tls_files.cert_file == str(tmp_path / "c.pem")
    assert loaded.warnings == []


# -- ignored options ----------------------------------------------------------------------------


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.ignored], ids=lambda o: o.name)
def test_every_ignored_option_warns_with_its_reason(tmp_path: Path, option: object) -> None:
    from authsvc.config.perdition_options import Option

    assert isinstance(option, Option)
    assert option.ignored is not None
    line = f"{option.name} x\n" if option.takes_value else f"{option.name}\n"
    assert warnings(tmp_path, BASE + line) == [f"3: {option.name}: {option.ignored}"]


def test_query_key_warning_says_what_happens(tmp_path: Path) -> None:
    (message,) = warnings(tmp_path, BASE + "query_key \\\\U,\\\\u\n")
    assert "looks up exactly one key" in message
    assert "never tried" in message


# -- maps ----------------------------------------------------------------------------------------


def mysql_map(tmp_path: Path, opt: str, library: str = "libperditiondb_mysql.so.0"
              ) -> MySqlMapSettings:
    text = f"map_library {library}\nmap_library_opt {opt}\n"
    found = load(tmp_path, text).settings.listeners[0].map
    assert isinstance(found, MySqlMapSettings)
    return found


@pytest.mark.parametrize(
    "library",
    ["/usr/lib/libperditiondb_mysql.so.0.0.0",
     "/usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0",
     "/opt/perdition/lib/libperditiondb_mysql.so", "libperditiondb_mysql"],
)
def test_mysql_library_anywhere_any_suffix(tmp_path: Path, library: str) -> None:
    assert mysql_map(tmp_path, "db:3306:n:t:u:pw:s:k:143", library).port_constant == 143


def test_mysql_all_nine_fields(tmp_path: Path) -> None:
    found = mysql_map(tmp_path, "h1,h2:3307:nest:mailboxes:nest_mail:pw:storage_ip:address:pcol")
    assert found.hosts == (HostPort("h1", 3307), HostPort("h2", 3307))
    assert (found.database, found.table, found.user) == ("nest", "mailboxes", "nest_mail")
    assert found.password == Secret("pw")
    assert (found.server_column, found.user_column) == ("storage_ip", "address")
    assert (found.port_column, found.port_constant) == ("pcol", None)


def test_mysql_defaults_for_absent_fields(tmp_path: Path) -> None:
    found = mysql_map(tmp_path, "dbhost")
    assert found.hosts == (HostPort("dbhost"),)
    assert (found.database, found.table, found.user, found.password) == (
        "dbPerdition", "tblPerdition", "perdition", Secret("perdition"))
    assert (found.server_column, found.user_column, found.port_column) == (
        "servername", "user", "port")


def test_mysql_eight_fields_is_legal_with_the_port_column_default(tmp_path: Path) -> None:
    found = mysql_map(tmp_path, "db:3306:n:t:u:pw:storage_ip:address")
    assert (found.user_column, found.port_column, found.port_constant) == ("address", "port", None)


def test_mysql_trailing_empty_field_keeps_the_default(tmp_path: Path) -> None:
    found = mysql_map(tmp_path, "db:3306:n:t:u:pw:storage_ip:address:")
    assert found.port_column == "port"


def test_mysql_localhost_ignores_dbport(tmp_path: Path) -> None:
    assert mysql_map(tmp_path, "localhost:3306").hosts == (HostPort("localhost"),)


def test_mysql_empty_port_field_keeps_the_library_default(tmp_path: Path) -> None:
    assert mysql_map(tmp_path, "db::n").hosts == (HostPort("db"),)


def test_mysql_empty_middle_field_is_kept_and_refused(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_mysql.so\n"
                  "map_library_opt db:3306:n::u:pw\n") == [
        "2: map_library_opt: table is empty, not an SQL identifier ([A-Za-z_][A-Za-z0-9_]*): "
        "it is pasted into the query; the fields are "
        "dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol"
    ]


def test_mysql_empty_dbhost_is_refused(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_mysql.so\nmap_library_opt :3306:n\n") == [
        "2: map_library_opt: '' has no host; dbhost is field 1 of "
        "dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol; an empty "
        "dbhost makes Perdition never connect"
    ]


def test_mysql_sql_expression_column_is_refused(tmp_path: Path) -> None:
    (message,) = errors(tmp_path, "map_library libperditiondb_mysql.so\n"
                        "map_library_opt db:3306:n:t:u:pw:concat(a,b)\n")
    assert message.startswith("2: map_library_opt: server column is 'concat(a,b)', not an SQL "
                              "identifier")


def test_mysql_non_numeric_port_is_refused(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_mysql.so\n"
                  "map_library_opt db:mysql:n\n") == [
        "2: map_library_opt: expected a whole number, got the string 'mysql'"
    ]


def test_mysql_more_than_nine_fields_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_mysql.so\n"
                  "map_library_opt db:3306:n:t:u:p:w:s:k:143\n") == [
        "2: map_library_opt: 10 fields, at most 9 (dbhost:dbport:dbname:dbtable:dbuser:dbpw:"
        "dbsrvcol:dbusercol:dbportcol); a ':' in the password cannot be escaped"
    ]


def test_mysql_without_map_library_opt_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_mysql.so\n") == [
        "0: map_library_opt: missing: Perdition's MySQL map never connects without it (every "
        "login fails); give the fields "
        "dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol"
    ]


def test_mysql_password_is_never_printed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "map_library libperditiondb_mysql.so\nmap_library_opt "
             "db:3306:n:t:u:s3cret-pw:1:2:3\n")
    assert "s3cret-pw" not in str(caught.value)
    found = mysql_map(tmp_path, "db:3306:n:t:u:s3cret-pw")
    assert "s3cret-pw" not in repr(found)


def test_mysql_with_outgoing_server_warns_about_database_errors(tmp_path: Path) -> None:
    assert warnings(tmp_path, "map_library libperditiondb_mysql.so\nmap_library_opt db\n"
                    "outgoing_server 10.0.0.1\n") == [
        "3: outgoing_server: on a database error Perdition sent logins here; authsvc refuses "
        "them with a temporary error instead (set default_server_on_error in native config "
        "for Perdition's way)"
    ]


def test_regex_map_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "popmap.re").write_text("^bob: 10.0.0.5\n")
    found = load(tmp_path, "map_library /usr/lib/libperditiondb_posix_regex.so.0\n"
                 "map_library_opt popmap.re\n").settings.listeners[0].map
    assert found == RegexMapSettings(str(tmp_path / "popmap.re"))


def test_regex_map_default_path(tmp_path: Path) -> None:
    loaded = load(tmp_path, "map_library libperditiondb_posix_regex.so\n")
    assert loaded.settings.listeners[0].map == RegexMapSettings("/etc/perdition/popmap.re")


def test_regex_map_missing_file_warns(tmp_path: Path) -> None:
    # The default path exists wherever Debian's perdition package is installed
    # (the compatibility rig installs it), so the warning is shown on a path
    # that certainly does not.
    missing = tmp_path / "popmap.re"
    loaded = load(
        tmp_path,
        f"map_library libperditiondb_posix_regex.so\nmap_library_opt {missing}\n",
    )
    assert [str(w).split(":", 1)[1] for w in loaded.warnings] == [
        f"2: map_library_opt: regex map file {missing} does not exist or is not readable"
    ]


def test_empty_map_library_is_no_map(tmp_path: Path) -> None:
    assert listener(tmp_path, "").map == NoMapSettings()


def test_map_library_opt_with_no_map_warns(tmp_path: Path) -> None:
    assert warnings(tmp_path, BASE + "map_library_opt x\n") == [
        "3: map_library_opt: ignored: map_library is empty, so there is no map"
    ]


def test_no_map_and_no_outgoing_server_warns(tmp_path: Path) -> None:
    assert warnings(tmp_path, 'map_library ""\n') == [
        "1: map_library: listener 'imap4' has no map and no outgoing_server: every login will "
        "be refused"
    ]


@pytest.mark.parametrize(("library", "kind", "db"), [
    ("/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0", "GDBM", "popmap.gdbm.db"),
    ("libperditiondb_bdb.so.0", "BDB", "popmap.bdb.db"),
])
def test_binary_maps_are_refused_with_the_flat_file_advice(
    tmp_path: Path, library: str, kind: str, db: str
) -> None:
    assert errors(tmp_path, f"map_library {library}\n") == [
        f"1: map_library: the {kind} map ({db}) is binary; authsvc does not read that binary "
        "database: point it at the flat popmap the database was built from (lines 'key: "
        "server'), with native config: [map] type = \"file\", path = \"/etc/perdition/popmap\""
    ]


def test_no_map_library_means_perditions_gdbm_default_and_is_refused(tmp_path: Path) -> None:
    (message,) = errors(tmp_path, "outgoing_server 10.0.0.1\n")
    assert message.startswith("0: map_library: not set, so Perdition used its default GDBM map")
    assert 'map_library ""' in message


def test_other_perdition_maps_are_not_supported(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library libperditiondb_ldap.so.0\n") == [
        "1: map_library: the Perdition ldap map is not supported; authsvc reads the flat popmap "
        "(native config), the POSIX regex map and the MySQL map"
    ]


def test_not_a_map_library(tmp_path: Path) -> None:
    assert errors(tmp_path, "map_library /usr/lib/libfoo.so\n") == [
        "1: map_library: '/usr/lib/libfoo.so' is not a Perdition map library "
        "(libperditiondb_*.so)"
    ]


def test_file_map_is_native_only(tmp_path: Path) -> None:
    # There is no Perdition library for the flat file; the native reader has it.
    listeners = load(tmp_path, BASE).settings.listeners
    assert listeners
    assert not any(isinstance(ls.map, FileMapSettings) for ls in listeners)
