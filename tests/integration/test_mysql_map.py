"""The MySQL map against the machine's MariaDB: rows to routes, collations, hostile logins, errors.

Everything here runs in a database of its own (``mariadb_db``) with a
read-only user; nothing on the shared server is stopped or changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.mysql import MySqlMap
from authsvc.redact import Secret
from authsvc.routing import FailureKind, LoginRequest, Refusal, Router
from authsvc.settings import (
    HostPort,
    ListenerSettings,
    LoginPolicy,
    MailProtocol,
    MySqlMapSettings,
    Settings,
    Stage,
)
from tests.services.mariadb import TestDatabase
from tests.services.ports import free_port

pytestmark = pytest.mark.integration

SEED_ROWS = [
    ("bob@riseup.net", "10.0.0.2"),
    ("alice@riseup.net", "10.0.0.3"),
    ("moved@riseup.net", "10.0.0.4:993"),
    ("nullish@riseup.net", None),
    ("empty@riseup.net", ""),
    ("blank@riseup.net", "   "),
    ("o'brien@riseup.net", "10.0.0.5"),
    ("back\\slash@riseup.net", "10.0.0.6"),
    ("100%@riseup.net", "10.0.0.7"),
    ("under_score@riseup.net", "10.0.0.8"),
    ("ünïcode@riseup.net", "10.0.0.9"),
    ("carol@riseup.net", "dave@10.0.0.10"),
    ("badport@riseup.net", "10.0.0.11:imap"),
]


@pytest.fixture(scope="module")
def db(mariadb_db: TestDatabase) -> TestDatabase:
    mariadb_db.create_mailbox_table("seed", collation="utf8mb4_bin")
    mariadb_db.add_mailboxes(SEED_ROWS, table="seed")
    return mariadb_db


@pytest.fixture
async def seed_map(db: TestDatabase) -> AsyncIterator[MySqlMap]:
    m = MySqlMap(db.map_settings(table="seed"))
    yield m
    await m.close()


async def lookup_with(settings: MySqlMapSettings, key: str) -> MapEntry | None:
    m = MySqlMap(settings)
    try:
        return await m.lookup(key)
    finally:
        await m.close()


# -- rows to routes (docs/maps.md, "Rows to routes") ------------------------------


async def test_seed_map_rows(seed_map: MySqlMap) -> None:
    assert await seed_map.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    # The port in the value wins over the constant (Perdition: 10.0.0.4:993:143).
    assert await seed_map.lookup("moved@riseup.net") == MapEntry("10.0.0.4", 993)
    assert await seed_map.lookup("carol@riseup.net") == MapEntry("10.0.0.10", 143, user="dave")
    for key in ("nullish@riseup.net", "empty@riseup.net", "blank@riseup.net", "nobody@riseup.net"):
        assert await seed_map.lookup(key) is None, key


async def test_bad_server_value_is_unavailable_not_missing(seed_map: MySqlMap) -> None:
    with pytest.raises(MapUnavailable, match=r"127\.0\.0\.1:3306: bad server value .*imap"):
        await seed_map.lookup("badport@riseup.net")


async def test_describe_shows_sql_with_placeholder(seed_map: MySqlMap, db: TestDatabase) -> None:
    assert seed_map.describe() == (
        f"mysql 127.0.0.1:3306 db {db.name}: "  # noqa: S608 - the expected text
        "SELECT `storage_ip` FROM `seed` WHERE `address` = %s LIMIT 1, port 143"
    )


async def test_port_column(db: TestDatabase) -> None:
    db.execute(
        "CREATE TABLE tblPerdition (user varchar(128) NOT NULL PRIMARY KEY, "
        "servername varchar(255) NOT NULL, port varchar(8) DEFAULT NULL)"
    )
    db.execute(
        "INSERT INTO tblPerdition VALUES ('a', '10.1.0.1', '2143'), ('b', '10.1.0.2', NULL), "
        "('c', '10.1.0.3', ''), ('d', '10.1.0.4:110', '2143')"
    )
    # Perdition's own defaults (perditiondb_mysql.h): servername, user, port.
    settings = db.map_settings(table="tblPerdition", server_column="servername",
                               user_column="user", port_column="port", port_constant=None)
    m = MySqlMap(settings)
    try:
        assert await m.lookup("a") == MapEntry("10.1.0.1", 2143)
        assert await m.lookup("b") == MapEntry("10.1.0.2")
        assert await m.lookup("c") == MapEntry("10.1.0.3")
        assert await m.lookup("d") == MapEntry("10.1.0.4", 110)
        assert "SELECT `servername`, `port` FROM `tblPerdition` WHERE `user` = %s" in m.describe()
    finally:
        await m.close()


async def test_password_file_read_at_connect(db: TestDatabase, tmp_path: Path) -> None:
    path = db.write_password_file(tmp_path / "db.pass")
    settings = db.map_settings(table="seed", password=None, password_file=str(path))
    assert await lookup_with(settings, "bob@riseup.net") == MapEntry("10.0.0.2", 143)


async def test_many_concurrent_lookups_on_a_small_pool(db: TestDatabase) -> None:
    m = MySqlMap(db.map_settings(table="seed", pool_size=2))
    try:
        results = await asyncio.gather(*(m.lookup("bob@riseup.net") for _ in range(40)))
        assert results == [MapEntry("10.0.0.2", 143)] * 40
    finally:
        await m.close()


async def test_failover_to_the_next_host(db: TestDatabase) -> None:
    dead = HostPort("127.0.0.1", free_port())
    settings = db.map_settings(table="seed", hosts=(dead, HostPort("127.0.0.1", db.port)))
    m = MySqlMap(settings)
    try:
        assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
        assert m.describe().startswith(f"mysql {dead},127.0.0.1:{db.port} ")
    finally:
        await m.close()


# -- micro-batching: concurrent keys share one statement ----------------------------


class CountingMap(MySqlMap):
    """A MySqlMap that records the keys of every statement it sends."""

    def __init__(self, settings: MySqlMapSettings) -> None:
        super().__init__(settings)
        self.statements: list[list[str]] = []

    async def _query(self, current: Any, keys: list[str]) -> Any:
        self.statements.append(list(keys))
        return await super()._query(current, keys)


async def test_concurrent_keys_share_one_statement(db: TestDatabase) -> None:
    # Every seed row, a missing key, hostile keys and duplicates, all at once.
    keys = [k for k, _ in SEED_ROWS] + ["nobody@riseup.net", *HOSTILE, "bob@riseup.net"]
    expected: list[MapEntry | MapUnavailable | None] = []
    for key in keys:  # one statement per key, as before batching
        expected_map = MySqlMap(db.map_settings(table="seed"))
        try:
            try:
                expected.append(await expected_map.lookup(key))
            except MapUnavailable as exc:
                expected.append(exc)
        finally:
            await expected_map.close()
    m = CountingMap(db.map_settings(table="seed"))
    try:
        got = await asyncio.gather(*(m.lookup(k) for k in keys), return_exceptions=True)
    finally:
        await m.close()
    for key, want, answer in zip(keys, expected, got, strict=True):
        if isinstance(want, MapUnavailable):  # badport: only that key fails
            assert isinstance(answer, MapUnavailable), key
            assert str(answer) == str(want)
        else:
            assert answer == want, key
    assert got[0] == MapEntry("10.0.0.2", 143) and got[-1] == MapEntry("10.0.0.2", 143)
    # The undecodable key never reaches the database; every other key went in one statement.
    assert len(m.statements) == 1
    assert len(m.statements[0]) == len(set(keys)) - 1


async def test_batches_are_capped_and_overflow_waits_for_a_connection(db: TestDatabase) -> None:
    m = CountingMap(db.map_settings(table="seed", pool_size=1))
    keys = [f"nobody{i}@riseup.net" for i in range(150)] + ["bob@riseup.net"]
    try:
        got = await asyncio.gather(*(m.lookup(k) for k in keys))
    finally:
        await m.close()
    assert got == [None] * 150 + [MapEntry("10.0.0.2", 143)]
    assert [len(s) for s in m.statements] == [64, 64, 23]


@pytest.mark.parametrize(
    ("collation", "upper", "trailing"),
    [
        ("utf8mb4_general_ci", True, True),
        ("utf8mb4_bin", False, True),
        ("utf8mb4_nopad_bin", False, False),
    ],
)
async def test_collation_decides_inside_a_batch(
    db: TestDatabase, collation: str, upper: bool, trailing: bool
) -> None:
    table = f"batch_{collation}"
    db.create_mailbox_table(table, collation=collation)
    db.add_mailboxes([("alice@example.com", "10.2.0.1"), ("bob@example.com", "10.2.0.2")],
                     table=table)
    m = CountingMap(db.map_settings(table=table))
    alice, bob = MapEntry("10.2.0.1", 143), MapEntry("10.2.0.2", 143)
    keys = ["alice@example.com", "ALICE@EXAMPLE.COM", "alice@example.com  ", " alice@example.com",
            "Bob@Example.com", "bob@example.com ", "bob@example.com"]
    try:
        got = await asyncio.gather(*(m.lookup(k) for k in keys))
    finally:
        await m.close()
    assert got == [
        alice,
        alice if upper else None,
        alice if trailing else None,
        None,  # leading blanks never match
        bob if upper else None,
        bob if trailing else None,
        bob,
    ]
    assert m.statements == [keys]


async def test_a_failing_batch_fails_every_key(db: TestDatabase) -> None:
    m = MySqlMap(db.map_settings(table="nosuchtable"))
    try:
        got = await asyncio.gather(*(m.lookup(f"k{i}@riseup.net") for i in range(5)),
                                   return_exceptions=True)
    finally:
        await m.close()
    assert all(isinstance(g, MapUnavailable) for g in got)
    assert {str(g) for g in got} == {
        f"mysql 127.0.0.1:3306: (1146) Table '{db.name}.nosuchtable' doesn't exist"
    }


async def test_a_caller_giving_up_does_not_spoil_the_batch(seed_map: MySqlMap) -> None:
    impatient = asyncio.ensure_future(seed_map.lookup("alice@riseup.net"))
    patient = asyncio.ensure_future(seed_map.lookup("bob@riseup.net"))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == MapEntry("10.0.0.2", 143)
    assert await seed_map.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)


# -- the collation decides matching (docs/maps.md) ----------------------------------------


@pytest.mark.parametrize(
    ("collation", "upper", "trailing"),
    [
        # _ci: case-insensitive, and PAD SPACE ignores trailing blanks; Perdition 2.2 alike.
        ("utf8mb4_general_ci", True, True),
        ("utf8mb4_unicode_ci", True, True),
        # The seed's binary collation is case-sensitive but still PAD SPACE.
        ("utf8mb4_bin", False, True),
        # Only a NO PAD binary collation matches byte for byte, like the map file.
        ("utf8mb4_nopad_bin", False, False),
    ],
)
async def test_collation_decides(
    db: TestDatabase, collation: str, upper: bool, trailing: bool
) -> None:
    table = f"coll_{collation}"
    db.create_mailbox_table(table, collation=collation)
    db.add_mailboxes([("alice@example.com", "10.2.0.1")], table=table)
    settings = db.map_settings(table=table)
    alice = MapEntry("10.2.0.1", 143)
    assert await lookup_with(settings, "alice@example.com") == alice
    assert await lookup_with(settings, "ALICE@EXAMPLE.COM") == (alice if upper else None)
    assert await lookup_with(settings, "alice@example.com  ") == (alice if trailing else None)
    # Leading blanks never match.
    assert await lookup_with(settings, " alice@example.com") is None


# -- hostile logins never change the SQL ------------------------------------------------

HOSTILE = [
    "' OR '1'='1",
    "bob@riseup.net' OR '1'='1",
    "bob@riseup.net'; DROP TABLE seed; --",
    "\" OR \"\"=\"",
    "%",
    "%@riseup.net",
    "_ob@riseup.net",
    "bob@riseup.ne_",
    "100_@riseup.net",
    "\\",
    "back\\\\slash@riseup.net",
    "back\\%@riseup.net",
    "bob@riseup.net\x00",
    "bob\x00' OR 1=1 -- ",
    "b\xf6b@riseup.net",
    "b\udcf6b@riseup.net",  # an undecodable client byte, via surrogateescape
    "bob@riseup.net" + "x" * 300,
    "a" * 1000,
    "' UNION SELECT user() -- ",
]


@pytest.mark.parametrize("login", HOSTILE)
async def test_hostile_keys_find_nothing(seed_map: MySqlMap, db: TestDatabase, login: str) -> None:
    sql_before = seed_map.describe()
    assert await seed_map.lookup(login) is None
    assert seed_map.describe() == sql_before
    assert db.execute("SELECT COUNT(*) FROM seed")[0][0] == len(SEED_ROWS)


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("o'brien@riseup.net", "10.0.0.5"),
        ("back\\slash@riseup.net", "10.0.0.6"),
        ("100%@riseup.net", "10.0.0.7"),
        ("under_score@riseup.net", "10.0.0.8"),
        ("ünïcode@riseup.net", "10.0.0.9"),
    ],
)
async def test_special_characters_match_exactly(seed_map: MySqlMap, key: str, host: str) -> None:
    assert await seed_map.lookup(key) == MapEntry(host, 143)


@pytest.mark.parametrize("login", ["bob\x00evil", "x" * 300, "bob\r\n"])
async def test_router_refuses_before_the_database(seed_map: MySqlMap, login: str) -> None:
    policy = LoginPolicy(lower_case=frozenset(Stage), add_domain=frozenset({Stage.LOOKUP}),
                         explicit_domain="riseup.net")
    listener = ListenerSettings(name="imap4", protocol=MailProtocol.IMAP, login=policy)
    router = Router(Settings(listeners=(listener,)), {"imap4": seed_map})
    decision = await router.route(LoginRequest(login, MailProtocol.IMAP))
    assert isinstance(decision, Refusal)
    assert decision.kind is FailureKind.BAD_LOGIN


# -- misconfiguration: MapUnavailable with host and MariaDB's words, never the password ----

WRONG_PASSWORD = "Wr0ng-Pa55-zq8x"


def assert_no_password(exc: pytest.ExceptionInfo[MapUnavailable], caplog: pytest.LogCaptureFixture,
                       *passwords: str) -> None:
    for password in passwords:
        assert password not in str(exc.value)
        assert password not in repr(exc.value)
        assert password not in caplog.text


async def test_wrong_password(db: TestDatabase, caplog: pytest.LogCaptureFixture) -> None:
    settings = db.map_settings(table="seed", password=Secret(WRONG_PASSWORD))
    m = MySqlMap(settings)
    with caplog.at_level(logging.DEBUG):
        try:
            for _ in range(3):
                with pytest.raises(MapUnavailable) as exc:
                    await m.lookup("bob@riseup.net")
            with pytest.raises(MapUnavailable):
                await m.check()
        finally:
            await m.close()
    assert str(exc.value) == (
        f"mysql 127.0.0.1:3306: (1045) Access denied for user "
        f"'{db.reader_user}'@'127.0.0.1' (using password: YES)"
    )
    assert_no_password(exc, caplog, WRONG_PASSWORD, db.reader_password)
    # The outage is logged once, not once per lookup.
    errors = [r for r in caplog.records if r.name == "authsvc.maps.mysql"]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert "Access denied" in errors[0].getMessage()
    assert repr(settings).count("Secret('***')") == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server_column": "storage"}, r"\(1054\) Unknown column 'storage'"),
        ({"user_column": "email"}, r"\(1054\) Unknown column 'email'"),
        ({"port_constant": None, "port_column": "port"}, r"\(1054\) Unknown column 'port'"),
        ({"table": "nosuchtable"}, r"\(1146\) Table '.*nosuchtable' doesn't exist"),
        ({"database": "authsvc_no_such_db"}, r"\(1044\) Access denied .*authsvc_no_such_db"),
        # MariaDB answers an unknown user with 1045 or, now and then, 1698
        # (ER_ACCESS_DENIED_NO_PASSWORD_ERROR); either way it is "access denied".
        ({"user": "authsvc_nobody"}, r"\((1045|1698)\) Access denied for user 'authsvc_nobody'"),
    ],
)
async def test_misconfigured(
    db: TestDatabase, caplog: pytest.LogCaptureFixture, overrides: dict[str, Any], message: str
) -> None:
    settings = db.map_settings(**{"table": "seed", **overrides})
    m = MySqlMap(settings)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(MapUnavailable) as exc:
            await m.lookup("bob@riseup.net")
        assert str(exc.value).startswith("mysql 127.0.0.1:3306: ")
        assert exc.match(message)
        assert_no_password(exc, caplog, db.reader_password)
        # /readyz's check sees the same problem.
        with pytest.raises(MapUnavailable, match=message):
            await m.check()
    finally:
        await m.close()


async def test_nothing_listening(db: TestDatabase, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = db.map_settings(hosts=(HostPort("127.0.0.1", port),))
    with caplog.at_level(logging.DEBUG), pytest.raises(MapUnavailable) as exc:
        await lookup_with(settings, "bob@riseup.net")
    assert exc.match(rf"^mysql 127\.0\.0\.1:{port}: \(2003\) Can't connect")
    assert_no_password(exc, caplog, db.reader_password)


async def test_unreadable_password_file(db: TestDatabase, tmp_path: Path) -> None:
    settings = db.map_settings(password=None, password_file=str(tmp_path / "missing.pass"))
    with pytest.raises(MapUnavailable, match=r"cannot read password file .*missing\.pass"):
        await lookup_with(settings, "bob@riseup.net")


async def test_query_timeout(db: TestDatabase) -> None:
    m = MySqlMap(db.map_settings(table="seed", query_timeout=0.3))
    try:
        assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
        admin = db.admin.connect(db.name)
        try:
            with admin.cursor() as cursor:
                cursor.execute("LOCK TABLES seed WRITE")  # readers wait for the lock
                with pytest.raises(MapUnavailable, match=r"took longer than query_timeout 0\.3s"):
                    await m.lookup("alice@riseup.net")
                cursor.execute("UNLOCK TABLES")
        finally:
            admin.close()
        # The connection that timed out was closed, not reused half-read.
        assert await m.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)
        assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    finally:
        await m.close()


def test_identifiers_are_checked_again() -> None:
    for bad in ("storage_ip`; DROP TABLE x; --", "a b", "", "1=1 OR x"):
        with pytest.raises(ValueError, match="not a plain SQL identifier"):
            MySqlMap(MySqlMapSettings(server_column=bad))
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        MySqlMap(MySqlMapSettings(table="t; DROP"))


def test_deploy_sql_builds_what_the_seed_map_reads(
    mariadb_db: TestDatabase,
) -> None:
    """deploy/schema.sql and grant-readonly.sql, renamed into a scratch database, work."""
    root = Path(__file__).resolve().parents[2]
    name, reader = f"{mariadb_db.name}_deploy", f"{mariadb_db.reader_user}_d"
    password = "deploy-test-pw"
    schema = (root / "deploy" / "schema.sql").read_text().replace("`nest`", f"`{name}`")
    grant = ((root / "deploy" / "grant-readonly.sql").read_text()
             .replace("`nest`", f"`{name}`").replace("`nest_mail`", f"`{reader}`")
             .replace("'CHANGE-ME'", f"'{password}'"))
    admin = mariadb_db.admin
    try:
        for statement in sql_statements(schema + grant):
            admin.execute(statement)
        admin.execute(f"INSERT INTO `{name}`.mailboxes VALUES (%s, %s)",  # noqa: S608
                      ("bob@riseup.net", "10.0.0.2"))
        settings = mariadb_db.map_settings(database=name, user=reader, password=Secret(password))
        assert asyncio.run(lookup_with(settings, "bob@riseup.net")) == MapEntry("10.0.0.2", 143)
        grants = admin.execute(f"SHOW GRANTS FOR `{reader}`@`127.0.0.1`")
        assert any(f"GRANT SELECT ON `{name}`.`mailboxes`" in row[0] for row in grants)
        assert not any("INSERT" in row[0] or "ALL PRIVILEGES" in row[0] for row in grants)
    finally:
        admin.execute(f"DROP USER IF EXISTS `{reader}`@`127.0.0.1`")
        admin.execute(f"DROP DATABASE IF EXISTS `{name}`")


def sql_statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
