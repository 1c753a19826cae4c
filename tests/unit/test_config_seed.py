"""The seed deployment's Perdition files, verbatim, through load_settings.

The texts below are copied from the seed deployment's write-up (riseup.net's nest,
"Putting it all together"), including the trailing space after ``key.pem``.
Their imaps/pops files are "exactly the same, except for one line".  The
certificate paths are replaced by real files in a temp directory so that the
only warnings left are the ones about Perdition's behaviour.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings
from authsvc.redact import Secret
from authsvc.settings import BackendTls, HostPort, ListenTls, MailProtocol, MySqlMapSettings, Stage

SEED_IMAP4 = """\
connection_limit 0
imap_capability "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE STARTTLS"
ssl_cert_file /etc/certs/mail.riseup.net/cert.pem
ssl_key_file /etc/certs/mail.riseup.net/key.pem 
map_library /usr/lib/libperditiondb_mysql.so.0.0.0
map_library_opt dbhost-vpn:3306:nest:mailboxes:nest_mail:xxxxxxx:storage_ip:address:143
no_lookup
lower_case all
explicit_domain 'riseup.net'
add_domain servername_lookup
ssl_mode tls_listen
"""  # noqa: W291, E501 - verbatim seed text, trailing space included
SEED_IMAPS = SEED_IMAP4.replace("ssl_mode tls_listen", "ssl_mode ssl_listen")
SEED_POP3 = """\
connection_limit 0
ssl_cert_file /etc/certs/mail.riseup.net/cert.pem
ssl_key_file /etc/certs/mail.riseup.net/key.pem 
map_library /usr/lib/libperditiondb_mysql.so.0.0.0
map_library_opt dbhost-vpn:3306:nest:mailboxes:nest_mail:xxxxxxx:storage_ip:address:110
no_lookup
lower_case all
explicit_domain 'riseup.net'
add_domain servername_lookup
ssl_mode tls_listen
"""  # noqa: W291
SEED_POPS = SEED_POP3.replace("ssl_mode tls_listen", "ssl_mode ssl_listen")
#: "General Configuration" plus "Database Lookups": the 8-field misprint.
SEED_DATABASE_LOOKUPS = """\
imap_capability "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
lower_case all
explicit_domain 'riseup.net'
add_domain servername_lookup
ssl_cert_file /etc/certs/mail.riseup.net/cert.pem
ssl_key_file /etc/certs/mail.riseup.net/key.pem 
ssl_mode tls_listen
map_library /usr/lib/libperditiondb_mysql.so.0.0.0
map_library_opt dbhost-vpn:3306:nest:mailboxes:nest_mail:xxxxxx:storage_ip:143
no_lookup
timeout 1800
"""  # noqa: W291, E501


@pytest.fixture
def seed(tmp_path: Path) -> dict[str, Path]:
    """The four seed files in a temp dir, the certificate paths pointing at real files."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "cert.pem").write_text("cert\n")
    (certs / "key.pem").write_text("key\n")
    files = {}
    for name, text in (("perdition.imap4.conf", SEED_IMAP4), ("perdition.imaps.conf", SEED_IMAPS),
                       ("perdition.pop3.conf", SEED_POP3), ("perdition.pops.conf", SEED_POPS)):
        path = tmp_path / name
        path.write_text(text.replace("/etc/certs/mail.riseup.net/", f"{certs}/"))
        files[name] = path
    return files


def test_the_seed_texts_keep_the_trailing_space() -> None:
    assert "key.pem \n" in SEED_IMAP4
    assert "key.pem \n" in SEED_POPS


def test_the_four_seed_files_give_four_listeners(seed: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_settings([str(p) for p in seed.values()])
    names = [(ls.name, ls.protocol, ls.tls, ls.bind) for ls in loaded.settings.listeners]
    assert names == [
        ("imap4", MailProtocol.IMAP, ListenTls.STARTTLS, (HostPort("0.0.0.0", 143),)),
        ("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT, (HostPort("0.0.0.0", 993),)),
        ("pop3", MailProtocol.POP3, ListenTls.STARTTLS, (HostPort("0.0.0.0", 110),)),
        ("pop3s", MailProtocol.POP3, ListenTls.IMPLICIT, (HostPort("0.0.0.0", 995),)),
    ]
    imap4 = loaded.settings.listeners[0]
    # key.pem with its trailing space trimmed, so the real file is found: no warning.
    assert imap4.tls_files.key_file == str(tmp_path / "certs" / "key.pem")
    assert imap4.tls_files.cert_file == str(tmp_path / "certs" / "cert.pem")
    assert all(ls.backend_tls is BackendTls.NONE for ls in loaded.settings.listeners)


def test_the_seed_login_rules(seed: dict[str, Path]) -> None:
    login = load_settings([str(seed["perdition.imap4.conf"])]).settings.listeners[0].login
    assert login.lower_case == {Stage.LOOKUP, Stage.BACKEND_LOGIN}
    assert login.add_domain == {Stage.LOOKUP}
    assert login.explicit_domain == "riseup.net"
    assert login.strip_domain == frozenset()


def test_the_seed_mysql_map_in_nine_field_form(seed: dict[str, Path]) -> None:
    listeners = load_settings([str(p) for p in seed.values()]).settings.listeners
    imap_map = listeners[0].map
    assert isinstance(imap_map, MySqlMapSettings)
    assert imap_map.hosts == (HostPort("dbhost-vpn", 3306),)
    assert (imap_map.database, imap_map.table, imap_map.user) == ("nest", "mailboxes", "nest_mail")
    assert (imap_map.server_column, imap_map.user_column) == ("storage_ip", "address")
    assert (imap_map.port_column, imap_map.port_constant) == (None, 143)
    assert imap_map.password == Secret("xxxxxxx")
    assert "xxxxxxx" not in repr(imap_map)
    assert listeners[1].map == imap_map  # IMAP and IMAPS share one map
    pop_map = listeners[2].map
    assert isinstance(pop_map, MySqlMapSettings)
    assert pop_map.port_constant == 110


def test_the_seed_capability_drops_starttls(seed: dict[str, Path]) -> None:
    listeners = load_settings([str(p) for p in seed.values()]).settings.listeners
    assert listeners[0].capability == (
        "IMAP4rev1", "UIDPLUS", "CHILDREN", "NAMESPACE", "THREAD=ORDEREDSUBJECT",
        "THREAD=REFERENCES", "SORT", "QUOTA", "IDLE")
    assert listeners[2].capability == ("UIDL", "USER")  # Perdition's POP3 default


def test_the_only_warning_is_the_pops_file_name(
    seed: dict[str, Path],
) -> None:
    warnings = [str(w) for w in load_settings([str(p) for p in seed.values()]).warnings]
    pops = str(seed["perdition.pops.conf"])
    assert warnings == [
        f"{pops}:0: protocol: read as POP3S because of its name, but Debian's "
        "perdition.pop3s reads perdition.pop3s.conf (else perdition.conf) and never this "
        "name, so in the seed deployment the POP3S daemon ran on its defaults; rename it to "
        "perdition.pop3s.conf"
    ]


def test_the_8_field_database_lookups_misprint_is_refused_with_the_9_field_form(
    tmp_path: Path,
) -> None:
    path = tmp_path / "perdition.imap4.conf"
    path.write_text(SEED_DATABASE_LOOKUPS)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:9: map_library_opt: user column is a number, not an SQL identifier "
        "([A-Za-z_][A-Za-z0-9_]*): it is pasted into the query; map_library_opt has 8 "
        "fields, so '143' is dbusercol, the key column, and Perdition would run 'select "
        "143,storage_ip,port ...'; the fields are "
        "dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol: for a constant "
        "port write the 9-field form dbhost:dbport:dbname:dbtable:dbuser:dbpw:storage_ip:"
        "address:143 (with your key column in place of address)"
    ]
    assert "xxxxxx" not in str(caught.value)


def test_the_deploy_examples_match_the_seed() -> None:
    root = Path(__file__).resolve().parents[2] / "deploy" / "perdition"
    loaded = load_settings([str(root / f"perdition.{n}.conf")
                            for n in ("imap4", "imaps", "pop3", "pop3s")])
    assert [ls.name for ls in loaded.settings.listeners] == ["imap4", "imaps", "pop3", "pop3s"]
    ports = [ls.map.port_constant for ls in loaded.settings.listeners
             if isinstance(ls.map, MySqlMapSettings)]
    assert ports == [143, 143, 110, 110]
