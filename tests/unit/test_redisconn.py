"""``redisconn.py``, the one home of Redis connections, and the holds' ``WAIT`` rule.

No Redis server here: the Sentinel form is built without I/O, a sentinel
that nobody listens on is an error of the caller's type, and the holds'
replica count is checked on a scripted pipeline.  The real failover is
tests/integration/test_redis_sentinel.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from authsvc.holds.redis import HASH, RedisHoldStore
from authsvc.holds.rules import Hold
from authsvc.holds.store import HoldStoreError
from authsvc.redact import Secret
from authsvc.redisconn import SENTINEL_PORT, RedisConnection
from authsvc.settings import HostPort, RedisSentinel
from authsvc.throttle.store import StoreError
from tests.services.ports import free_port

SENTINEL = RedisSentinel(sentinels=(HostPort("127.0.0.1", 26390), HostPort("::1")),
                         service="authsvc", password=Secret("data-pw-9"),
                         sentinel_password=Secret("watch-pw-8"),
                         username=Secret("data-user-7"), sentinel_username=Secret("watch-user-6"))


async def test_the_sentinel_form_asks_every_sentinel_for_the_service() -> None:
    connection = RedisConnection(url=None, sentinel=SENTINEL, timeout=0.5)
    try:
        assert connection.sentinel and connection.describe() == "redis sentinel service authsvc"
        watchers = [s.connection_pool.connection_kwargs for s in connection._sentinel.sentinels]
        assert [(w["host"], w["port"]) for w in watchers] == [
            ("127.0.0.1", 26390), ("::1", SENTINEL_PORT)]
        assert {(w["username"], w["password"]) for w in watchers} == {
            ("watch-user-6", "watch-pw-8")}
        data = connection.client.connection_pool
        assert data.service_name == "authsvc"
        assert (data.connection_kwargs["username"],
                data.connection_kwargs["password"]) == ("data-user-7", "data-pw-9")
        shown = repr(connection.client) + repr(SENTINEL) + repr(connection._sentinel)
        assert "pw-" not in shown and "user-" not in shown
    finally:
        await connection.close()


async def test_the_url_form_passes_its_acl_user_and_never_shows_it() -> None:
    port = free_port()  # nobody listens: the refusal's text must not carry the URL
    connection = RedisConnection(url=Secret(f"redis://acl-user-5:pw-7@127.0.0.1:{port}/0"),
                                 sentinel=None, timeout=0.5)
    try:
        assert not connection.sentinel and connection.describe() == "redis"
        kwargs = connection.client.connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("acl-user-5", "pw-7")
        with pytest.raises(StoreError) as caught:
            await connection.run(connection.client.get("k"), StoreError)
        shown = repr(connection.client) + str(caught.value)
        assert "acl-user" not in shown and "pw-7" not in shown
    finally:
        await connection.close()
    with pytest.raises(ValueError, match="redis_url or redis_sentinels"):
        RedisConnection(url=None, sentinel=None, timeout=0.5)


async def test_no_sentinel_answering_is_the_callers_error_within_the_timeout() -> None:
    nobody = RedisSentinel(sentinels=(HostPort("127.0.0.1", free_port()),), service="authsvc",
                           password=Secret("data-pw-9"))
    connection = RedisConnection(url=None, sentinel=nobody, timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            await connection.run(connection.client.get("k"), StoreError)
    finally:
        await connection.close()
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith("redis: ") and "pw" not in str(caught.value)


async def test_a_refused_acl_user_is_the_callers_error_naming_neither() -> None:
    """A server that answers ``AUTH`` with ``WRONGPASS`` (redis.io, "AUTH")."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = RedisConnection(url=Secret(f"redis://acl-user-5:pw-7@127.0.0.1:{port}/0"),
                                 sentinel=None, timeout=2)
    try:
        with pytest.raises(StoreError) as caught:
            await connection.run(connection.client.get("k"), StoreError)
    finally:
        await connection.close()
        server.close()
    message = str(caught.value)
    assert message.startswith("redis: AuthenticationError: "), message
    assert "acl-user" not in message and "pw-7" not in message


class ScriptedPipeline:
    def __init__(self, client: ScriptedClient) -> None:
        self._client = client

    def execute_command(self, *args: object) -> None:
        self._client.sent.append(args)

    async def execute(self) -> list[int]:
        return self._client.answers.pop(0)


class ScriptedClient:
    """A redis-py client's pipeline, as the holds use it: the commands sent, scripted answers."""

    def __init__(self, *answers: list[int]) -> None:
        self.sent: list[tuple[object, ...]] = []
        self.answers = list(answers)

    def pipeline(self, transaction: bool) -> ScriptedPipeline:
        assert not transaction  # WAIT is no command for MULTI
        return ScriptedPipeline(self)


def holds_store(replicas: int, client: Any) -> RedisHoldStore:
    store = RedisHoldStore(None, timeout=2.0, sentinel=SENTINEL, replicas=replicas)
    store._client = client
    return store


HOLD = Hold(kind="store", target="10.0.0.5", reason="fsck", until=None, since=1.0, by="op")


async def test_a_hold_waits_for_its_replicas_on_the_same_connection() -> None:
    client = ScriptedClient([1, 1], [1, 2])
    store = holds_store(1, client)
    await store.put(HOLD)
    assert await store.remove("store", "10.0.0.5")
    assert [c[0] for c in client.sent] == ["HSET", "WAIT", "HDEL", "WAIT"]
    assert client.sent[0][1] == HASH and client.sent[1][1:] == (1, 1000)  # half of 2 s


async def test_too_few_replicas_fail_the_command_and_say_why() -> None:
    store = holds_store(1, ScriptedClient([1, 0]))
    with pytest.raises(HoldStoreError) as caught:
        await store.put(HOLD)
    message = str(caught.value)
    assert "0 of the 1 replica(s) required ([holds] redis_replicas)" in message
    assert "run the command again" in message


async def test_no_replicas_required_no_wait() -> None:
    client = ScriptedClient([0])
    assert not await holds_store(0, client).remove("user", "bob@riseup.net")
    assert [c[0] for c in client.sent] == ["HDEL"]
