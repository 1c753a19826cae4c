"""CPU per cache miss of the MySQL map behind the route cache, in one process, no HTTP.

``--concurrency`` lookups at a time (default 32, like serve_bench's wrk), each
for a different mailbox, through ``CachedMap(MySqlMap(...))`` on a database of
our own on the machine's MariaDB (``tests/services/mariadb.py``).  Reports
process CPU per lookup (``time.process_time``), which is what micro-batching
in ``maps/mysql.py`` reduces.

Run from the repository root::

    .venv/bin/python -m bench.map_bench [--lookups 20000] [--concurrency 32] [--rounds 3]

Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from authsvc.maps import MapEntry
from authsvc.maps.cached import CachedMap
from authsvc.maps.mysql import MySqlMap
from authsvc.settings import CacheSettings
from tests.services.mariadb import TestDatabase, create_test_database, shared_admin


async def one_round(db: TestDatabase, first: int, lookups: int, concurrency: int) -> float:
    """CPU µs per lookup for ``lookups`` misses starting at user<first>."""
    inner = MySqlMap(db.map_settings(pool_size=10))
    cache = CachedMap(inner, CacheSettings(ttl=600, max_size=1_000_000))
    gate = asyncio.Semaphore(concurrency)

    async def lookup(n: int) -> MapEntry | None:
        async with gate:
            return await cache.lookup(f"user{n}@riseup.net")

    try:
        await cache.lookup("user0@riseup.net")  # connect outside the measurement
        started = time.process_time()
        found = await asyncio.gather(*(lookup(n) for n in range(first, first + lookups)))
        used = time.process_time() - started
    finally:
        await cache.close()
    assert all(entry is not None for entry in found), "every user must be found"
    assert cache.stats.misses == lookups + 1
    return used / lookups * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = 1 + args.lookups * args.rounds
    with create_test_database(shared_admin()) as db:
        db.add_mailboxes((f"user{n}@riseup.net", f"10.0.{n >> 8 & 255}.{n & 255}")
                         for n in range(rows))
        figures = []
        for number in range(args.rounds):
            us = asyncio.run(one_round(db, 1 + number * args.lookups, args.lookups,
                                       args.concurrency))
            figures.append(us)
            print(f"round {number + 1}: {us:.1f} µs CPU per miss", file=sys.stderr)
    print(f"median: {statistics.median(figures):.1f} µs CPU per miss "
          f"({args.concurrency} concurrent lookups, pool 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
