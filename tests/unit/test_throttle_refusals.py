"""The store's refusal times per address (authsvc/throttle/refusals.py): kept, shared, bounded."""

from __future__ import annotations

from pathlib import Path

from authsvc.throttle.local import LocalStore
from authsvc.throttle.refusals import RefusalRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_longest_recent_refusal_counts_until_it_expires() -> None:
    clock = Clock()
    record = RefusalRecord(LocalStore(), keep=60.0, clock=clock)
    assert await record.floor("192.0.2.1") == 0.0
    await record.refused("192.0.2.1", 4.5)
    await record.refused("192.0.2.1", 15.5)
    await record.refused("192.0.2.1", 0.5)  # a store's penalty may lapse: the longest still counts
    assert await record.floor("192.0.2.1") == 15.5
    assert await record.floor("192.0.2.2") == 0.0  # per address
    clock.now += 59.0
    assert await record.floor("192.0.2.1") == 15.5
    await record.refused("192.0.2.1", 0.5)  # a refusal keeps the record another minute
    clock.now += 59.0
    assert await record.floor("192.0.2.1") == 15.5
    clock.now += 2.0
    assert await record.floor("192.0.2.1") == 0.0
    await record.refused("192.0.2.1", 0.5)  # after expiry, a new record starts from scratch
    assert await record.floor("192.0.2.1") == 0.5


async def test_a_login_forgets_the_address() -> None:
    record = RefusalRecord(LocalStore(), clock=Clock())
    await record.refused("192.0.2.1", 8.0)
    await record.forget("192.0.2.1")
    assert await record.floor("192.0.2.1") == 0.0


async def test_ipv6_counts_by_its_48_and_unix_peers_not_at_all() -> None:
    record = RefusalRecord(LocalStore(), clock=Clock())
    await record.refused("2001:db8::1", 8.0)
    assert await record.floor("2001:db8:0:1::1") == 8.0  # the /48, as Dovecot counts it
    assert await record.floor("2001:db8:1::1") == 0.0
    await record.refused(None, 8.0)
    await record.refused("unix:/run/x", 8.0)
    assert await record.floor(None) == 0.0


async def test_workers_share_the_record_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "throttle.sqlite3")
    clock = Clock()
    one = RefusalRecord(LocalStore(path), clock=clock)
    two = RefusalRecord(LocalStore(path), clock=clock)
    await one.refused("192.0.2.1", 8.5)
    await two.refused("192.0.2.1", 4.5)
    assert await two.floor("192.0.2.1") == 8.5  # the longest of both workers' refusals
    await one.forget("192.0.2.1")
    assert await one.floor("192.0.2.1") == 0.0
    assert await two.floor("192.0.2.1") == 4.5  # what two recorded itself, until it expires


async def test_the_record_is_bounded_in_the_process_and_in_the_file(tmp_path: Path) -> None:
    clock = Clock()
    local = LocalStore(str(tmp_path / "throttle.sqlite3"))
    record = RefusalRecord(local, limit=3, clock=clock)
    for i in range(10):
        clock.now += 1.0
        await record.refused(f"192.0.2.{i}", 5.0)
    assert len(record) == 3
    none: list[str] = []
    kept = local.read(lambda f: [str(row[0]) for row in f._db.execute(
        "SELECT who FROM refusals ORDER BY who")], none)
    assert kept == ["192.0.2.7", "192.0.2.8", "192.0.2.9"]
    assert await record.floor("192.0.2.0") == 0.0
    assert await record.floor("192.0.2.9") == 5.0
