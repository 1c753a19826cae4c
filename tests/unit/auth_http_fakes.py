"""Shared pieces for the ``authsvc serve`` unit tests: seed settings, scripted maps, raw nginx.

``nginx_request`` builds, byte for byte, the request nginx 1.22 sends to
``auth_http`` (ngx_mail_auth_http_module, "Protocol"; escaping per nginx's ngx_string.c), and
``exchange``
sends it on a fresh connection and reads the reply until nginx would stop
(the server closes; HTTP/1.0, no keep-alive).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from aiohttp import web

from authsvc.http.app import AUTH, create_app
from authsvc.http.site import NginxSite
from authsvc.maps import MapBackend, MapEntry, MapUnavailable
from authsvc.maps.cached import CachedMap
from authsvc.metrics import Metrics
from authsvc.redact import Secret
from authsvc.routing import MapBuilder
from authsvc.settings import (
    CacheSettings,
    HttpSettings,
    ListenerSettings,
    ListenTls,
    LoginPolicy,
    MailProtocol,
    NoMapSettings,
    Settings,
    Stage,
)

#: The seed deployment (perdition-nest-deployment.txt): lower_case all,
#: explicit_domain riseup.net, add_domain servername_lookup.
SEED_POLICY = LoginPolicy(
    lower_case=frozenset(Stage), add_domain=frozenset({Stage.LOOKUP}), explicit_domain="riseup.net"
)
#: add_domain from the local name instead (no explicit_domain).
LOCAL_POLICY = LoginPolicy(add_domain=frozenset({Stage.LOOKUP}))

PASSWORD = "Tr0ub4dor&3 p%ss"  # space and % are escaped by nginx; & is not


class ScriptedMap:
    """A map whose answers the test sets; ``down`` makes it raise MapUnavailable."""

    def __init__(self, entries: Mapping[str, MapEntry], name: str = "scripted") -> None:
        self.entries = dict(entries)
        self.down = False
        self.asked: list[str] = []
        self.checks = 0
        self.name = name

    async def lookup(self, key: str) -> MapEntry | None:
        self.asked.append(key)
        if self.down:
            raise MapUnavailable("db1:3306: Can't connect")
        return self.entries.get(key)

    async def check(self) -> None:
        self.checks += 1
        if self.down:
            raise MapUnavailable("db1:3306: Can't connect")

    def describe(self) -> str:
        return self.name

    async def close(self) -> None:
        return None


SEED_ENTRIES = {
    "bob@riseup.net": MapEntry("10.0.0.5"),
    "alice@riseup.net": MapEntry("10.0.0.6", 1143),
    "v6@riseup.net": MapEntry("2001:db8::25"),
    "named@riseup.net": MapEntry("localhost"),
    "nowhere@riseup.net": MapEntry("nowhere.invalid"),
    "zero@riseup.net": MapEntry("10.0.0.7", 0),
    "ok sp%ce@riseup.net": MapEntry("10.0.0.8"),
    "a+b@riseup.net": MapEntry("10.0.0.9"),
    "jöhn@riseup.net": MapEntry("10.0.0.10"),
    "bob@example.org": MapEntry("10.0.1.5"),
}


def seed_settings(http: HttpSettings | None = None, **cache: object) -> Settings:
    """Four listeners as the seed's four Perdition files, plus one named by local name."""

    def listener(name: str, protocol: MailProtocol, port: int, tls: ListenTls,
                 policy: LoginPolicy = SEED_POLICY) -> ListenerSettings:
        # The map is the test's ScriptedMap (router_factory); its name is the
        # label of its series in /metrics and its line in /readyz.
        return ListenerSettings(name=name, protocol=protocol, tls=tls, default_port=port,
                                login=policy, map=NoMapSettings(name="scripted"))

    return Settings(
        listeners=(
            listener("imap4", MailProtocol.IMAP, 143, ListenTls.STARTTLS),
            listener("imaps", MailProtocol.IMAP, 143, ListenTls.IMPLICIT),
            listener("pop3", MailProtocol.POP3, 110, ListenTls.STARTTLS),
            listener("pop3s", MailProtocol.POP3, 110, ListenTls.IMPLICIT),
            listener("imap-local", MailProtocol.IMAP, 143, ListenTls.NONE, LOCAL_POLICY),
        ),
        http=http or HttpSettings(),
        cache=replace(CacheSettings(), **cache),  # type: ignore[arg-type]
    )


def secret_settings(secret: str = "s3cret-key") -> Settings:  # noqa: S107
    return seed_settings(HttpSettings(secret=Secret(secret)))


@dataclass
class Maps:
    """The maps behind one test app: the scripted map and, when cached, its cache."""

    scripted: ScriptedMap
    backend: MapBackend


def make_maps(cached: bool = False, clock: Callable[[], float] | None = None) -> Maps:
    scripted = ScriptedMap(SEED_ENTRIES)
    backend: MapBackend = scripted
    if cached:
        settings = CacheSettings(ttl=60, negative_ttl=10, stale_if_error=3600)
        backend = (CachedMap(scripted, settings) if clock is None
                   else CachedMap(scripted, settings, clock=clock))
    return Maps(scripted, backend)


def map_builder(maps: Maps) -> MapBuilder:
    """A ``build_map`` that routes every listener through ``maps.backend``."""
    return lambda _map, _delimiter, _cache: maps.backend


def make_app(settings: Settings, maps: Maps, metrics: Metrics | None = None,
             **kw: object) -> web.Application:
    return create_app(settings, metrics, build_map=map_builder(maps), **kw)  # type: ignore[arg-type]


# -- nginx on the wire --------------------------------------------------------------------------


def nginx_escape(raw: bytes) -> bytes:
    """nginx's NGX_ESCAPE_MAIL_AUTH: 0x00-0x1F, space and % as upper-case %XX, nothing else."""
    return b"".join(
        b"%%%02X" % byte if byte <= 0x20 or byte == 0x25 else bytes([byte]) for byte in raw
    )


def nginx_request(
    user: bytes,
    password: bytes = PASSWORD.encode(),
    *,
    protocol: bytes = b"imap",
    attempt: int = 1,
    client_ip: bytes = b"192.0.2.7",
    ssl: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (
        (b"X-Authsvc-Listener", b"imap4"),
        (b"X-Authsvc-Local-Name", b"mail.riseup.net"),
    ),
    path: bytes = b"/auth",
    method: bytes = b"plain",
) -> bytes:
    """The exact bytes nginx 1.22's ngx_mail_auth_http_create_request writes."""
    lines = [
        b"GET " + path + b" HTTP/1.0",
        b"Host: 127.0.0.1",
        b"Auth-Method: " + method,
        b"Auth-User: " + nginx_escape(user),
        b"Auth-Pass: " + nginx_escape(password),
        b"Auth-Protocol: " + protocol,
        b"Auth-Login-Attempt: " + str(attempt).encode(),
        b"Client-IP: " + client_ip,
    ]
    if ssl:
        lines.append(b"Auth-SSL: on")
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class Reply:
    """A reply as nginx reads it: the status line, the header lines, and what followed."""

    raw: bytes
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def get(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower().encode()]
        return found[-1].decode() if found else None

    def names(self) -> list[str]:
        return [k.decode() for k, _ in self.headers]

    def head_size(self) -> int:
        return len(self.raw) - len(self.body)


def parse_reply(raw: bytes) -> Reply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {raw!r}"
    status_line, *lines = head.split(b"\r\n")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        assert colon, line
        headers.append((name, value.strip()))
    return Reply(raw, status_line, headers, body)


async def exchange(port: int, request: bytes, *, chunks: int = 1, host: str = "127.0.0.1",
                   unix: str | None = None) -> bytes:
    """Send ``request`` (in ``chunks`` pieces) on a new connection; read until the server closes."""
    if unix is not None:
        reader, writer = await asyncio.open_unix_connection(unix)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        step = max(1, len(request) // chunks)
        for start in range(0, len(request), step):
            writer.write(request[start : start + step])
            await writer.drain()
            if chunks > 1:
                await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            return await reader.read()  # until EOF: nginx reads until the server closes
    finally:
        writer.close()


@asynccontextmanager
async def nginx_facing_server(app: web.Application, *, shim: bool = True,
                              fast_path: bool = True, unix: Sequence[str] = (),
                              **runner_kw: object) -> AsyncIterator[int]:
    """``app`` on a loopback port through the same site class ``authsvc serve`` uses.

    ``shim=False``: plain aiohttp (no wire.py at all); ``fast_path=False``:
    wire.py's DEL escaping only, aiohttp parses every request.
    ``unix``: also listen on these unix socket paths (plain aiohttp sites).
    """
    runner_kw.setdefault("access_log", None)
    runner = web.AppRunner(app, **runner_kw)  # type: ignore[arg-type]
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    nginx_site = NginxSite(runner, sock, app[AUTH] if fast_path else None) if shim else None
    if nginx_site is not None:
        await nginx_site.start()
    else:
        await web.SockSite(runner, sock).start()
    for path in unix:
        await web.UnixSite(runner, path).start()
    try:
        yield sock.getsockname()[1]
    finally:
        if nginx_site is not None:
            await nginx_site.stop()
        await runner.cleanup()
        sock.close()
