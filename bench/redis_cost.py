"""What the throttle costs Redis per login: commands counted and Redis CPU, by keyspace size.

One private ``redis-server`` (``tests/services/redis.py``).  For each
``--keys`` size: flush, then count ``size / 4`` failed logins from distinct
addresses through authsvc's own :class:`~authsvc.throttle.service.Throttle`
(``store = "redis"``, the proxy's refusal record on), which leaves about four
keys each (the ``a:``, ``l:``, ``p:`` hashes and the ``s:`` mark); then run
``--logins`` successful proxy logins the way ``proxy/attempt.py`` calls the
throttle (``check``, ``succeeded``, the refusal record's ``forget``) and
serve's (``check`` only), and one failed proxy login path (``check``,
``refused``, ``floor``, ``failed``).  Measured per login from ``INFO
commandstats`` (calls per command) and ``INFO cpu`` (Redis's own CPU seconds)
before and after.

Run (from the repository root; under a minute)::

    .venv/bin/python -m bench.redis_cost --json bench/results/redis_cost.json
    # defaults: --keys 0 4000 20000 --logins 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings
from authsvc.throttle.service import Throttle
from bench.record import finish, run_info
from tests.services.redis import RedisServer


async def info(client: Any) -> tuple[dict[str, int], float]:
    """(calls per command, Redis's CPU seconds) now."""
    stats = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    cpu = await client.info("cpu")
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def per_login(client: Any, count: int,
                    login: Callable[[int], Awaitable[None]]) -> dict[str, object]:
    """Commands and Redis CPU microseconds per call of ``login``, over ``count`` calls."""
    before, cpu_before = await info(client)
    for n in range(count):
        await login(n)
    after, cpu_after = await info(client)
    calls = {k: (v - before.get(k, 0)) / count for k, v in after.items()
             if v - before.get(k, 0) > 0 and k != "info"}
    return {"commands": round(sum(calls.values()), 2),
            "by_command": {k: round(v, 2) for k, v in sorted(calls.items())},
            "redis_cpu_us": (cpu_after - cpu_before) * 1e6 / count}


async def one_size(client: Any, settings: ThrottleSettings, size: int,
                   logins: int) -> list[dict[str, object]]:
    """The three login paths' figures with ``size`` throttle keys in Redis."""
    await client.flushall()
    throttle = Throttle(settings, refusals=True)
    refusals = throttle.refusals
    assert refusals is not None
    for n in range(size // 4):
        await throttle.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", f"gone{n}",
                              Secret(f"pw{n}"))
    keys = int(await client.dbsize())

    async def proxy_ok(n: int) -> None:  # proxy/attempt.py after a store said OK
        ip = f"192.0.2.{n % 250}"
        await throttle.check(ip, f"user{n}")
        await throttle.succeeded(ip, f"user{n}")
        await refusals.forget(ip)

    async def serve_ok(n: int) -> None:  # authsvc/http/auth_http.py, throttled
        await throttle.check(f"198.51.100.{n % 250}", f"user{n}")

    async def proxy_failed(n: int) -> None:  # proxy/attempt.py after a store said NO
        ip = f"203.0.113.{n % 250}"
        await throttle.check(ip, f"user{n}")
        await refusals.refused(ip, 0.1)
        await refusals.floor(ip)
        await throttle.failed(ip, f"user{n}", Secret("wrong"))

    rows: list[dict[str, object]] = []
    for name, login, count in (("proxy_ok", proxy_ok, logins), ("serve_ok", serve_ok, logins),
                               ("proxy_failed", proxy_failed, min(logins, 500))):
        row = {"keys": keys, "path": name, "logins": count,
               **await per_login(client, count, login)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    await throttle.close()
    return rows


async def run(url: str, sizes: list[int], logins: int) -> list[dict[str, object]]:
    import redis.asyncio as aioredis

    settings = ThrottleSettings(enabled=True, store="redis", redis_url=Secret(url),
                                key=Secret("k" * 32), redis_timeout=5.0)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    rows: list[dict[str, object]] = []
    for size in sizes:
        rows += await one_size(client, settings, size, logins)
    await client.aclose()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="*", default=[0, 4000, 20000])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    record = run_info()
    with tempfile.TemporaryDirectory(prefix="authsvc-redis-cost-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            rows = asyncio.run(run(server.url, args.keys, args.logins))
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps({"run": finish(record), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
