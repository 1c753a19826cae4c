"""``authsvc serve``'s app against a real MariaDB map: outages, recovery, flush.

The outage test stops and restarts a PRIVATE mariadbd (``private_mariadb``);
the machine's shared MariaDB is never touched.  The app is the one ``serve``
runs, with the real ``open_router`` (MySQL map behind the route cache).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from authsvc.http.app import AUTH, create_app
from authsvc.http.auth_http import TEXT_INVALID, TEXT_TEMPORARY
from authsvc.redact import Secret
from authsvc.settings import (
    CacheSettings,
    HttpSettings,
    ListenerSettings,
    LoginPolicy,
    MailProtocol,
    Settings,
    Stage,
)
from tests.helpers.eventually import eventually_async
from tests.helpers.prometheus import Scrape
from tests.services.mariadb import PrivateMariaDb, TestDatabase

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

SEED_POLICY = LoginPolicy(lower_case=frozenset(Stage), add_domain=frozenset({Stage.LOOKUP}),
                          explicit_domain="riseup.net")
SECRET = "flush-key-123"


def seed_settings(db: TestDatabase, cache: CacheSettings) -> Settings:
    """The seed's four listeners over the test database (port 143 / 110 constants)."""
    imap_map = db.map_settings(connect_timeout=1.0, query_timeout=1.0)
    pop_map = db.map_settings(connect_timeout=1.0, query_timeout=1.0, port_constant=110)
    return Settings(
        listeners=tuple(
            ListenerSettings(name=name, protocol=proto, login=SEED_POLICY, map=m,
                             default_port=port)
            for name, proto, m, port in (
                ("imap4", MailProtocol.IMAP, imap_map, 143),
                ("imaps", MailProtocol.IMAP, imap_map, 143),
                ("pop3", MailProtocol.POP3, pop_map, 110),
                ("pop3s", MailProtocol.POP3, pop_map, 110),
            )
        ),
        cache=cache,
        http=HttpSettings(secret=Secret(SECRET)),
    )


async def auth(client: Client, user: str, listener: str = "imap4") -> dict[str, str]:
    headers = {"Auth-Method": "plain", "Auth-User": user, "Auth-Pass": "pw",
               "Auth-Protocol": "pop3" if listener.startswith("pop") else "imap",
               "Auth-Login-Attempt": "1", "Client-IP": "192.0.2.1",
               "X-Authsvc-Listener": listener, "X-Authsvc-Local-Name": "mail.riseup.net",
               "X-Authsvc-Key": SECRET}
    async with client.get("/auth", headers=headers) as reply:
        assert reply.status == 200
        return {k: v for k, v in reply.headers.items() if k.startswith("Auth-")}


async def readyz(client: Client) -> tuple[int, dict[str, object]]:
    async with client.get("/readyz") as reply:
        return reply.status, await reply.json()


async def metric(client: Client, name: str) -> float:
    """The sum of every series of ``name``."""
    async with client.get("/metrics") as reply:
        return Scrape(await reply.text()).sum(name)


async def test_outage_serves_stale_refuses_temporarily_stays_ready_and_recovers(
    aiohttp_client: MakeClient,
    private_mariadb: PrivateMariaDb,
    private_mariadb_db: TestDatabase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "authsvc.auth")
    db = private_mariadb_db
    db.add_mailboxes([("bob@riseup.net", "127.0.0.2"), ("alice@riseup.net", "127.0.0.3")])
    # A short TTL so that, during the outage, bob's route is past it: stale.
    cache = CacheSettings(ttl=0.5, negative_ttl=0.5, stale_if_error=600.0)
    client = await aiohttp_client(create_app(seed_settings(db, cache)))

    assert await auth(client, "Bob") == {"Auth-Status": "OK", "Auth-Server": "127.0.0.2",
                                         "Auth-Port": "143", "Auth-User": "bob"}
    assert await auth(client, "nobody") == {"Auth-Status": TEXT_INVALID, "Auth-Wait": "3"}
    status, body = await readyz(client)
    assert (status, body["status"]) == (200, "ready")

    private_mariadb.stop()
    await asyncio.sleep(0.7)  # bob's cached route expires; only the stale copy is left

    assert (await auth(client, "Bob"))["Auth-Server"] == "127.0.0.2"
    client.app[AUTH].flush_log()  # decision lines are batched (authsvc/log.py)
    stale = [r for r in caplog.records if getattr(r, "fields", {}).get("source") == "stale"]
    assert stale, "bob was not served from the stale store"
    assert await auth(client, "alice") == {"Auth-Status": TEXT_TEMPORARY, "Auth-Wait": "3"}

    async def reported_down() -> bool:
        status, body = await readyz(client)
        assert status == 200  # a shared map outage must not pull the node
        maps = body.get("maps", {})
        assert isinstance(maps, dict)
        return body["status"] == "degraded" and all(not m["up"] for m in maps.values())

    await eventually_async(reported_down, 20, interval=0.2)
    assert await metric(client, "authsvc_cache_stale_total") >= 1
    assert await metric(client, "authsvc_map_errors_total") >= 1
    assert await metric(client, "authsvc_map_up") == 0

    private_mariadb.start()  # no restart of authsvc: the pool reconnects by itself

    async def alice_routed() -> bool:
        return (await auth(client, "alice")).get("Auth-Server") == "127.0.0.3"

    await eventually_async(alice_routed, 20, interval=0.2)

    async def reported_up() -> bool:
        return (await readyz(client))[1]["status"] == "ready"

    await eventually_async(reported_up, 20, interval=0.2)
    # The IMAP and POP3 maps read one table: one series, up when both are.
    assert await metric(client, "authsvc_map_up") == 1


async def test_flush_drops_a_route_at_once(
    aiohttp_client: MakeClient, private_mariadb_db: TestDatabase
) -> None:
    db = private_mariadb_db
    db.add_mailboxes([("bob@riseup.net", "127.0.0.2")])
    client = await aiohttp_client(create_app(seed_settings(db, CacheSettings(ttl=300.0))))
    assert (await auth(client, "bob"))["Auth-Server"] == "127.0.0.2"
    assert (await auth(client, "bob", "pop3"))["Auth-Port"] == "110"

    db.set_storage("bob@riseup.net", "127.0.0.9")  # the mailbox moved
    assert (await auth(client, "bob"))["Auth-Server"] == "127.0.0.2"  # cached for 300 s

    async with client.post("/cache/flush", data={"user": "bob@riseup.net"},
                           headers={"X-Authsvc-Key": SECRET}) as reply:
        assert reply.status == 200
        assert await reply.json() == {"dropped": 2, "workers": 1, "failed": []}
    assert (await auth(client, "bob"))["Auth-Server"] == "127.0.0.9"
    assert (await auth(client, "bob", "pop3"))["Auth-Server"] == "127.0.0.9"
