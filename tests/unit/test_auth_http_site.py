"""The auth_http listening socket (``authsvc/http/site.py``) and ``wire.examine``.

The acceptor answers nginx's request inside its accept callback when the
first peek holds the whole head and the route is cached; every other case is
handed on (to aiohttp with the socket unread, or to ``NginxProtocol``).  Each
way is driven here over real loopback sockets and must give the same reply
bytes; stopping waits for every reply in flight.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from authsvc.http import site
from authsvc.http.app import AUTH
from authsvc.http.protocol import InFlight, NginxProtocol
from authsvc.http.wire import MAX_FIELD_SIZE, HandOver, Need, OneShot, ReplyCache, examine
from authsvc.maps import MapEntry
from authsvc.maps.cached import CachedMap
from authsvc.settings import CacheSettings
from tests.unit.auth_http_fakes import (
    Maps,
    ScriptedMap,
    exchange,
    make_app,
    make_maps,
    nginx_facing_server,
    nginx_request,
    parse_reply,
    seed_settings,
)

PATH = "/auth"


class GatedMap(ScriptedMap):
    """Answers only once the test opens the gate: a cache miss that is still waiting."""

    def __init__(self) -> None:
        super().__init__(make_maps().scripted.entries)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def lookup(self, key: str) -> MapEntry | None:
        self.asked.append(key)
        self.waiting.set()
        await self.gate.wait()
        return self.entries.get(key)


def cached_maps(inner: ScriptedMap) -> Maps:
    return Maps(inner, CachedMap(inner, CacheSettings(ttl=60, negative_ttl=10)))


@pytest.fixture
def gated() -> GatedMap:
    return GatedMap()


@pytest.fixture
async def port(gated: GatedMap) -> AsyncIterator[int]:
    app = make_app(seed_settings(), cached_maps(gated))
    async with nginx_facing_server(app, max_field_size=MAX_FIELD_SIZE,
                                   max_line_size=MAX_FIELD_SIZE) as bound:
        yield bound


# -- examine(): the decision, whatever the reads -----------------------------------------------


def test_examine_needs_the_blank_line_and_judges_only_then() -> None:
    request = nginx_request(b"Bob")
    for cut in range(len(request)):
        assert examine(request[:cut], PATH) is Need.MORE, cut
    whole = examine(request, PATH)
    assert isinstance(whole, OneShot)
    assert whole.minor == 0
    assert whole.headers["auth-user"] == "Bob"


def test_examine_hands_over_what_is_not_nginx_s_request() -> None:
    keep_alive = b"GET /auth HTTP/1.1\r\nHost: x\r\n\r\n"
    assert examine(keep_alive, PATH) == HandOver(keep_alive)
    assert examine(b"GET /readyz HTTP/1.0\r\n\r\n", PATH) == HandOver(
        b"GET /readyz HTTP/1.0\r\n\r\n")
    # With the fast path off, even nginx's request goes to aiohttp, DEL escaped.
    request = nginx_request(b"bob", b"p\x7fw")
    assert examine(request, None) == HandOver(request.replace(b"\x7f", b"%7F"))
    # Bytes behind the blank line (a pipelined request) go along too.
    assert examine(request + b"GET", PATH) == HandOver(
        request.replace(b"\x7f", b"%7F") + b"GET")


def test_examine_refuses_a_head_past_the_limit_before_it_ends() -> None:
    assert examine(b"GET /auth HTTP/1.0\r\nX-A: " + b"a" * 70000, PATH) is Need.TOO_LONG


# -- the acceptor, over loopback ------------------------------------------------------------------


async def test_a_cache_miss_is_answered_when_the_map_answers_and_blocks_nobody(
    port: int, gated: GatedMap
) -> None:
    waiting = asyncio.create_task(exchange(port, nginx_request(b"Bob")))
    await asyncio.wait_for(gated.waiting.wait(), 5)
    # Meanwhile another request is answered: a refusal that needs no map.
    other = parse_reply(await exchange(port, nginx_request(b"bob\x01x")))
    assert other.get("Auth-Status") == "Invalid login or password"
    assert not waiting.done()
    gated.gate.set()
    first = await asyncio.wait_for(waiting, 5)
    # Now cached: answered inside the accept callback, the same bytes.
    assert await exchange(port, nginx_request(b"Bob")) == first
    assert parse_reply(first).get("Auth-Server") == "10.0.0.5"
    assert gated.asked == ["bob@riseup.net"]


async def test_a_head_cut_into_reads_gets_the_same_reply(port: int, gated: GatedMap) -> None:
    gated.gate.set()
    whole = await exchange(port, nginx_request(b"Bob"))
    assert await exchange(port, nginx_request(b"Bob"), chunks=5) == whole


async def test_a_connection_that_says_nothing_does_not_stop_the_others(
    port: int, gated: GatedMap
) -> None:
    gated.gate.set()
    silent = socket.create_connection(("127.0.0.1", port))
    closed = socket.create_connection(("127.0.0.1", port))
    closed.close()
    reset = socket.create_connection(("127.0.0.1", port))
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.close()
    try:
        reply = parse_reply(await exchange(port, nginx_request(b"Bob")))
        assert reply.get("Auth-Status") == "OK"
    finally:
        silent.close()


async def test_the_listening_socket_defers_accept_until_data() -> None:
    # The option is what makes the acceptor's single read find nginx's request.
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    acceptor = site.Acceptor(listening, None, PATH, ReplyCache(),
                             protocol=lambda _first: asyncio.Protocol(), in_flight=InFlight())
    acceptor.start()
    try:
        assert listening.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    finally:
        acceptor.stop()
    assert listening.fileno() == -1  # stop() closes it, as asyncio's server does


class _Exhausted:
    """A listening socket whose first accept() fails as when descriptors run out."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.failures = 1
        self.family = real.family

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(site, "ACCEPT_RETRY_DELAY", 0.2)
    app = make_app(seed_settings(), make_maps(cached=True))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = runner.server
    assert server is not None
    real = socket.socket()
    real.bind(("127.0.0.1", 0))
    real.listen(16)
    port = real.getsockname()[1]
    exhausted = _Exhausted(real)
    replies = ReplyCache()
    in_flight = InFlight()
    acceptor = site.Acceptor(
        exhausted, app[AUTH], PATH, replies,  # type: ignore[arg-type]
        in_flight=in_flight,
        protocol=lambda first: NginxProtocol(server, app[AUTH], PATH, in_flight, replies,
                                             first=first))
    acceptor.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = parse_reply(await exchange(port, nginx_request(b"Bob")))
        assert reply.get("Auth-Status") == "OK"
        assert exhausted.failures == 0
        # Answered only after the pause, not spun on: the delay is the behaviour.
        assert loop.time() - started >= 0.15
    finally:
        acceptor.stop()
        await runner.cleanup()


async def test_ipv6_listener(gated: GatedMap) -> None:
    gated.gate.set()
    app = make_app(seed_settings(), cached_maps(gated))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        await runner.cleanup()
        pytest.fail("no ::1 here: the test machine's loopback must include it")
    sock.listen(16)
    port = sock.getsockname()[1]
    nginx_site = site.NginxSite(runner, sock, app[AUTH])
    await nginx_site.start()
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        for _ in range(2):  # a miss (through a task), then a hit (in the accept callback)
            reply = parse_reply(await exchange(port, nginx_request(b"Bob"), host="::1"))
            assert (reply.get("Auth-Status"), reply.get("Auth-Server")) == ("OK", "10.0.0.5")
    finally:
        await nginx_site.stop()
        await runner.cleanup()


# -- draining: one record for both adapters --------------------------------------------------------


class _Transport(asyncio.Transport):
    """Records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


async def test_a_reply_begun_in_the_same_loop_pass_as_stop_is_waited_for(
    gated: GatedMap,
) -> None:
    app = make_app(seed_settings(), cached_maps(gated))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        in_flight = InFlight()
        protocol = NginxProtocol(asyncio.Protocol, app[AUTH], PATH, in_flight, ReplyCache())
        transport = _Transport()
        protocol.connection_made(transport)
        # A cache miss: the reply waits for the map, in a task made right here,
        protocol.data_received(nginx_request(b"Bob"))
        # and the stop comes before that task has run at all.
        drained = asyncio.ensure_future(in_flight.drain(5))
        await asyncio.wait_for(gated.waiting.wait(), 5)
        assert not drained.done() and transport.written == b""
        gated.gate.set()
        await asyncio.wait_for(drained, 5)
        assert parse_reply(transport.written).get("Auth-Server") == "10.0.0.5"
        assert transport.closed
    finally:
        await runner.cleanup()


async def test_the_drain_waits_for_replies_that_start_while_it_waits() -> None:
    in_flight = InFlight()
    done: list[str] = []

    async def second() -> None:
        await asyncio.sleep(0.05)
        done.append("second")

    async def first() -> None:
        await asyncio.sleep(0.05)
        in_flight.spawn(second())  # e.g. the rest of a reply that did not fit at once
        done.append("first")

    in_flight.spawn(first())
    await in_flight.drain(5)
    assert done == ["first", "second"]


async def test_nginx_request_is_answered_in_place_and_aiohttp_reads_through_the_protocol(
) -> None:
    app = make_app(seed_settings(), make_maps(cached=True))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = runner.server
    assert server is not None
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    replies, in_flight = ReplyCache(), InFlight()
    made: list[NginxProtocol] = []

    def protocol(first: bytes) -> NginxProtocol:
        made.append(NginxProtocol(server, app[AUTH], PATH, in_flight, replies, first=first))
        return made[-1]

    acceptor = site.Acceptor(listening, app[AUTH], PATH, replies, protocol=protocol,
                             in_flight=in_flight)
    acceptor.start()
    try:
        # nginx's request in one piece: answered in the accept callback.
        whole = await exchange(port, nginx_request(b"Bob"))
        assert parse_reply(whole).get("Auth-Server") == "10.0.0.5" and made == []
        # /readyz in one piece: aiohttp gets it through the protocol, which
        # passes it one checked request and nothing after it.
        ready = parse_reply(await exchange(port, b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n"))
        assert ready.status_line == b"HTTP/1.0 200 OK" and len(made) == 1
        # nginx's request cut into pieces: the protocol reads on, same bytes.
        assert await exchange(port, nginx_request(b"Bob"), chunks=4) == whole
        assert len(made) == 2
    finally:
        acceptor.stop()
        await in_flight.drain(5)
        await runner.cleanup()
