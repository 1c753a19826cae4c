"""The MySQL map on a primary and a replica: failover, failback, the replica lag rule.

Two private ``mariadbd`` with MariaDB's GTID replication
(``tests/services/mariadb.py``, :class:`ReplicatedMariaDb`); the map lists
both, the primary first, as Perdition's comma-separated ``dbhost`` or TOML's
``hosts``.  The rule under test is docs/maps.md, "Failover and failback".
The whole login loop through ``authsvc serve`` and ``authsvc proxy`` is
tests/integration/test_replicated_logins.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from authsvc.config import load_settings
from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.mysql import MySqlMap
from authsvc.settings import MySqlMapSettings
from tests.helpers.eventually import eventually_async
from tests.services.mariadb import (
    REPLICA_ADDRESS,
    ReplicatedMariaDb,
    TestDatabase,
    replicated_test_database,
)

pytestmark = pytest.mark.integration

ROWS = [("bob@riseup.net", "10.0.0.2"), ("alice@riseup.net", "10.0.0.3")]
#: Short: the failback is a behaviour under test, measured against this.
FAILBACK = 1.0


@pytest.fixture
def db(replicated_mariadb: ReplicatedMariaDb) -> Iterator[TestDatabase]:
    with replicated_test_database(replicated_mariadb) as db:
        db.add_mailboxes(ROWS)
        replicated_mariadb.sync()
        yield db


@pytest.fixture
async def open_maps() -> AsyncIterator[list[MySqlMap]]:
    maps: list[MySqlMap] = []
    yield maps
    for m in maps:
        await m.close()


def in_use(m: MySqlMap) -> str | None:
    used = [host for host, _, used in m.host_answers() if used]
    return used[0] if used else None


def answers(m: MySqlMap) -> dict[str, int]:
    return {host: count for host, count, _ in m.host_answers()}


def settings_for(pair: ReplicatedMariaDb, db: TestDatabase,
                 **overrides: object) -> MySqlMapSettings:
    return db.map_settings(**{"hosts": pair.hosts, "connect_timeout": 1.0, "query_timeout": 1.0,
                              "failback_interval": FAILBACK, **overrides})


def test_failover_hosts_in_perdition_form_and_toml(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, tmp_path: Path
) -> None:
    pair = replicated_mariadb
    perdition = tmp_path / "perdition.imap4.conf"
    opt = db.map_library_opt(hosts=["127.0.0.1", REPLICA_ADDRESS])
    assert opt.startswith(f"127.0.0.1,{REPLICA_ADDRESS}:{pair.port}:")
    perdition.write_text(
        "map_library /usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0\n"
        f"map_library_opt {opt}\n"
    )
    toml = tmp_path / "authsvc.toml"
    db.write_password_file(tmp_path / "pw")
    toml.write_text(f"""
[map]
type = "mysql"
hosts = ["127.0.0.1:{pair.port}", "{REPLICA_ADDRESS}:{pair.port}"]
database = "{db.name}"
table = "mailboxes"
user = "{db.reader_user}"
password_file = "pw"
server_column = "storage_ip"
user_column = "address"
port_constant = 143
failback_interval = 2
max_replica_lag = 10

[[listener]]
name = "imap4"
protocol = "imap"
port = 1143
""")
    for source, failback, lag in ((str(perdition), 30.0, 5.0), (str(toml), 2.0, 10.0)):
        settings = load_settings([source]).settings.listeners[0].map
        assert isinstance(settings, MySqlMapSettings)
        assert settings.hosts == pair.hosts, source
        assert (settings.failback_interval, settings.max_replica_lag) == (failback, lag)


async def test_killed_primary_then_back(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, open_maps: list[MySqlMap],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pair = replicated_mariadb
    primary, replica = (str(h) for h in pair.hosts)
    m = MySqlMap(settings_for(pair, db))
    open_maps.append(m)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    assert in_use(m) == primary

    pair.primary.stop(crash=True)
    with caplog.at_level(logging.WARNING, logger="authsvc.maps.mysql"):
        # The pooled connection is dead; the retry walks on to the replica.
        assert await m.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)
        assert in_use(m) == replica
        assert answers(m)[replica] == 1
        pair.primary.start()

        async def failed_back() -> bool:
            assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
            return in_use(m) == primary

        # Tried again every failback_interval; one interval and a lookup suffice.
        await eventually_async(failed_back, timeout=FAILBACK * 3 + 5)
    messages = [r.getMessage() for r in caplog.records]
    assert any(message.startswith(f"map now on mysql {replica}") for message in messages)
    assert any(message.startswith(f"map back on mysql {primary}") for message in messages)


async def test_lagging_replica_is_skipped_while_another_host_answers(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, open_maps: list[MySqlMap],
) -> None:
    pair = replicated_mariadb
    primary, replica = (str(h) for h in pair.hosts)
    pair.grant_replica_monitor(db.reader_user)
    # The replica first: a site that prefers a replica nearby.
    pair.replica.admin.execute("STOP SLAVE SQL_THREAD")  # Seconds_Behind_Master: NULL
    m = MySqlMap(settings_for(pair, db, hosts=tuple(reversed(pair.hosts))))
    open_maps.append(m)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    assert in_use(m) == primary

    pair.replica.admin.execute("START SLAVE SQL_THREAD")

    async def back_on_replica() -> bool:
        await m.lookup("bob@riseup.net")
        return in_use(m) == replica

    await eventually_async(back_on_replica, timeout=FAILBACK * 3 + 5)

    # With the primary gone, a lagging replica is still better than nothing.
    pair.replica.admin.execute("STOP SLAVE SQL_THREAD")
    pair.primary.stop(crash=True)
    m2 = MySqlMap(settings_for(pair, db, hosts=tuple(reversed(pair.hosts))))
    open_maps.append(m2)
    assert await m2.lookup("alice@riseup.net") == MapEntry("10.0.0.3", 143)
    assert in_use(m2) == replica


async def test_without_replica_monitor_the_lag_check_is_off(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, open_maps: list[MySqlMap],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pair = replicated_mariadb
    replica = str(pair.hosts[1])
    pair.replica.admin.execute("STOP SLAVE SQL_THREAD")
    m = MySqlMap(settings_for(pair, db, hosts=tuple(reversed(pair.hosts))))
    open_maps.append(m)
    with caplog.at_level(logging.WARNING, logger="authsvc.maps.mysql"):
        for _ in range(3):
            assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
        await m.check()
    assert in_use(m) == replica  # the check is off: the first host that answers
    said = [r.getMessage() for r in caplog.records if "REPLICA MONITOR" in r.getMessage()]
    assert len(said) == 1, said  # once, not per lookup
    assert said[0].startswith(f"mysql {replica}: the map's user may not read replication status")


async def test_every_host_down(
    replicated_mariadb: ReplicatedMariaDb, db: TestDatabase, open_maps: list[MySqlMap],
) -> None:
    pair = replicated_mariadb
    m = MySqlMap(settings_for(pair, db))
    open_maps.append(m)
    assert await m.lookup("bob@riseup.net") == MapEntry("10.0.0.2", 143)
    pair.replica.stop(crash=True)
    pair.primary.stop(crash=True)
    with pytest.raises(MapUnavailable) as failed:
        await m.lookup("bob@riseup.net")
    # Each host's own error, in the order tried.
    assert str(failed.value).startswith(f"mysql {pair.hosts[0]}: (2003) ")
    assert f"; {pair.hosts[1]}: (2003) " in str(failed.value)
