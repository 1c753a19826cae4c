"""One suite for every map: the map file and MariaDB (binary collation) answer alike.

Each case is a key and the route a Perdition-style listener (default port 143,
the seed's) would take from the answer.  The MySQL leg is the seed's map
(``storage_ip``, ``address``, constant port 143) on a table of its own in the
session's test database; the file leg is a popmap with the same rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authsvc.maps import MapBackend, MapEntry
from authsvc.maps.file import FileMap
from authsvc.maps.mysql import MySqlMap
from authsvc.routing import LoginRequest, Route, Router
from authsvc.settings import (
    FileMapSettings,
    ListenerSettings,
    LoginPolicy,
    MailProtocol,
    Settings,
    Stage,
)
from tests.services.mariadb import TestDatabase

ROWS: list[tuple[str, str]] = [
    ("bob@riseup.net", "10.0.0.2"),
    ("alice@riseup.net", "10.0.0.3:993"),
    ("carol@riseup.net", "dave@10.0.0.4:2143"),
    ("erin@riseup.net", "erin@10.0.0.5"),
    ("empty@riseup.net", ""),
    ("v6@riseup.net", "[2001:db8::1]:1143"),
    ("Mixed@riseup.net", "10.0.0.6"),
    ("josé@riseup.net", "10.0.0.7"),
    ("o'brien@riseup.net", "10.0.0.8"),
    ("100%@riseup.net", "10.0.0.9"),
    ("bare", "10.0.0.10"),
]

DEFAULT_PORT = 143

# key -> (host, port after the listener's default, user) or None
CASES: list[tuple[str, tuple[str, int, str | None] | None]] = [
    ("bob@riseup.net", ("10.0.0.2", 143, None)),
    # A port in the value wins over the default (and over MySQL's constant).
    ("alice@riseup.net", ("10.0.0.3", 993, None)),
    ("carol@riseup.net", ("10.0.0.4", 2143, "dave")),
    ("erin@riseup.net", ("10.0.0.5", 143, "erin")),
    ("v6@riseup.net", ("2001:db8::1", 1143, None)),
    ("josé@riseup.net", ("10.0.0.7", 143, None)),
    ("o'brien@riseup.net", ("10.0.0.8", 143, None)),
    ("100%@riseup.net", ("10.0.0.9", 143, None)),
    ("Mixed@riseup.net", ("10.0.0.6", 143, None)),
    ("bare", ("10.0.0.10", 143, None)),
    # An empty server is "no server", like a missing key.
    ("empty@riseup.net", None),
    ("missing@riseup.net", None),
    # Binary collation: case matters, as in a GDBM file.
    ("mixed@riseup.net", None),
    ("BOB@riseup.net", None),
    # "%" and "_" are not wildcards; no fallback from bare names to domains
    # (docs/maps.md).
    ("1000@riseup.net", None),
    ("b_b@riseup.net", None),
    ("bob", None),
    ("bare@riseup.net", None),
    ("riseup.net", None),
    ("", None),
]

SEED_POLICY = LoginPolicy(
    lower_case=frozenset(Stage),
    add_domain=frozenset({Stage.LOOKUP}),
    explicit_domain="riseup.net",
)


@pytest.fixture(scope="module")
def contract_table(request: pytest.FixtureRequest) -> str:
    """The contract rows in a table of their own in the session database."""
    db: TestDatabase = request.getfixturevalue("mariadb_db")
    db.create_mailbox_table("contract", collation="utf8mb4_bin")
    db.add_mailboxes(ROWS, table="contract")
    return "contract"


@pytest.fixture(
    params=["file", pytest.param("mysql", marks=pytest.mark.integration)]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MapBackend]:
    if request.param == "file":
        popmap = tmp_path / "popmap"
        popmap.write_text("".join(f"{key}: {value}\n" for key, value in ROWS))
        yield FileMap(FileMapSettings(str(popmap)))
        return
    table = request.getfixturevalue("contract_table")
    db: TestDatabase = request.getfixturevalue("mariadb_db")
    mysql = MySqlMap(db.map_settings(table=table))
    yield mysql
    await mysql.close()


def effective(entry: MapEntry | None) -> tuple[str, int, str | None] | None:
    if entry is None:
        return None
    return entry.host, entry.port if entry.port is not None else DEFAULT_PORT, entry.user


@pytest.mark.parametrize(("key", "expected"), CASES)
async def test_lookup(backend: MapBackend, key: str, expected: object) -> None:
    entry = await backend.lookup(key)
    assert effective(entry) == expected
    if entry is not None:
        assert entry.stale is False


async def test_all_cases_in_one_map(backend: MapBackend) -> None:
    # The same answers again, in one connection's life, in a different order.
    for key, expected in reversed(CASES):
        assert effective(await backend.lookup(key)) == expected, key


async def test_all_cases_at_once(backend: MapBackend) -> None:
    # Concurrent lookups (the MySQL map sends them as one batched statement)
    # answer exactly as one at a time: binary collation, PAD SPACE, no wildcards.
    cases = [*CASES, ("bob@riseup.net  ", ("10.0.0.2", 143, None) if isinstance(
        backend, MySqlMap) else None)]
    answers = await asyncio.gather(*(backend.lookup(key) for key, _ in cases))
    assert [effective(a) for a in answers] == [expected for _, expected in cases]


async def test_check_passes(backend: MapBackend) -> None:
    await backend.check()
    assert backend.describe()


@pytest.mark.parametrize(
    ("login", "key", "host", "port"),
    [
        ("Bob", "bob@riseup.net", "10.0.0.2", 143),
        ("ALICE@riseup.net", "alice@riseup.net", "10.0.0.3", 993),
        ("josé", "josé@riseup.net", "10.0.0.7", 143),
    ],
)
async def test_routes_through_the_seed_rules(
    backend: MapBackend, login: str, key: str, host: str, port: int
) -> None:
    listener = ListenerSettings(
        name="imap4", protocol=MailProtocol.IMAP, login=SEED_POLICY, default_port=DEFAULT_PORT
    )
    router = Router(Settings(listeners=(listener,)), {"imap4": backend})
    decision = await router.route(LoginRequest(login, MailProtocol.IMAP))
    assert isinstance(decision, Route), decision
    assert (decision.key, decision.host, decision.port) == (key, host, port)
