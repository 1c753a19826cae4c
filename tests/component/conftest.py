"""Fixtures: a test PKI, scripted stores and a running proxy with the seed's login rules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from authsvc.proxy.server import ProxyServer

from authsvc.routing import Router, open_router
from authsvc.settings import (
    CacheSettings,
    FileMapSettings,
    HostPort,
    ListenerSettings,
    ListenTls,
    LoginPolicy,
    LogSettings,
    MailProtocol,
    MapSettings,
    ProxySettings,
    Settings,
    Stage,
    TlsSettings,
)
from authsvc.throttle.service import Throttle
from tests.component.fakestore import FakeStore
from tests.services.certs import ServerCert, make_test_pki

#: The seed's rules: lower_case all, explicit_domain riseup.net, add_domain servername_lookup.
SEED_POLICY = LoginPolicy(
    lower_case=frozenset({Stage.LOOKUP, Stage.BACKEND_LOGIN}),
    add_domain=frozenset({Stage.LOOKUP}),
    explicit_domain="riseup.net",
)
SEED_IMAP_CAPABILITY = ("IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
                        "THREAD=REFERENCES SORT QUOTA IDLE STARTTLS",)
FAST = ProxySettings(auth_failure_delay=0.2, backend_timeout=1.0, max_bad_commands=5)


if os.environ.get("AUTHSVC_LOOP", "").strip().lower() == "uvloop":
    # tests/run.sh runs this directory once more with AUTHSVC_LOOP=uvloop, for
    # the authsvc[uvloop] extra (docs/testing-deps.md); asked for and missing
    # is an error, here as in authsvc/runtime/loop.py.
    try:
        import uvloop
    except ImportError as exc:
        raise pytest.UsageError("AUTHSVC_LOOP=uvloop: uvloop is not installed "
                                "(pip install 'authsvc[uvloop]')") from exc

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        """Every asyncio test here on uvloop's loop (pytest-asyncio's hook)."""
        return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Proxy:
    """A running ProxyServer and how to reach its listeners."""

    server: ProxyServer
    settings: Settings
    router: Router
    stores: dict[str, FakeStore] = field(default_factory=dict)

    def port(self, listener: str) -> int:
        return self.server.addresses(listener)[0][1]

    def host(self, listener: str) -> str:
        return self.server.addresses(listener)[0][0]


def make_listener(
    name: str,
    protocol: MailProtocol,
    tls: ListenTls,
    map_settings: MapSettings,
    pki: ServerCert,
    *,
    host: str = "127.0.0.1",
    **overrides: object,
) -> ListenerSettings:
    fields: dict[str, object] = {
        "name": name,
        "protocol": protocol,
        "tls": tls,
        "bind": (HostPort(host, 0),),
        "capability": SEED_IMAP_CAPABILITY if protocol is MailProtocol.IMAP else (),
        "login": SEED_POLICY,
        "map": map_settings,
        "tls_files": TlsSettings(str(pki.cert), str(pki.key)),
        "login_timeout": 5.0,
        "idle_timeout": 30.0,
    }
    fields.update(overrides)
    return ListenerSettings(**fields)  # type: ignore[arg-type]


def seed_listeners(map_path: Path, pki: ServerCert, **overrides: object) -> tuple[
        ListenerSettings, ...]:
    """The seed's four Perdition files as listeners (on free loopback ports)."""
    file_map = FileMapSettings(str(map_path))
    specs = [("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
             ("imaps", MailProtocol.IMAP, ListenTls.IMPLICIT),
             ("pop3", MailProtocol.POP3, ListenTls.STARTTLS),
             ("pop3s", MailProtocol.POP3, ListenTls.IMPLICIT)]
    return tuple(make_listener(n, p, t, file_map, pki, **overrides)  # type: ignore[arg-type]
                 for n, p, t in specs)


def write_map(path: Path, routes: dict[str, FakeStore]) -> Path:
    path.write_text("".join(f"{key}: {s.host}:{s.port}\n" for key, s in routes.items()))
    return path


@contextlib.asynccontextmanager
async def running(
    listeners: Sequence[ListenerSettings],
    proxy: ProxySettings = FAST,
    router: Router | None = None,
    log: LogSettings | None = None,
    throttle: Throttle | None = None,
    descriptors: int | None = None,
) -> AsyncIterator[Proxy]:
    """The proxy on ``listeners``; ``descriptors``: the descriptor limit it plans for."""
    settings = Settings(listeners=tuple(listeners), proxy=proxy,
                        cache=CacheSettings(enabled=False), log=log or LogSettings())
    async with contextlib.AsyncExitStack() as stack:
        if router is None:
            router = await stack.enter_async_context(open_router(settings))
        server = ProxyServer(settings, router, throttle=throttle, descriptors=descriptors)
        await server.start()
        try:
            yield Proxy(server, settings, router)
        finally:
            await server.stop(0)


@pytest.fixture
async def imap_store() -> AsyncIterator[FakeStore]:
    store = FakeStore("imap")
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def tls_store(pki: ServerCert) -> AsyncIterator[FakeStore]:
    """An IMAP store behind implicit TLS, with the test CA's certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    store = FakeStore("imap", tls=context)
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def pop3_store() -> AsyncIterator[FakeStore]:
    store = FakeStore("pop3")
    await store.start()
    yield store
    await store.stop()


@pytest.fixture
async def seed_proxy(
    tmp_path: Path, pki: ServerCert, imap_store: FakeStore, pop3_store: FakeStore
) -> AsyncIterator[Proxy]:
    """The seed's four listeners; bob and alice live on the fake stores."""
    imap_map = write_map(tmp_path / "imap.map", {"bob@riseup.net": imap_store,
                                                 "alice@riseup.net": imap_store})
    pop_map = write_map(tmp_path / "pop.map", {"bob@riseup.net": pop3_store,
                                               "alice@riseup.net": pop3_store})
    listeners = [
        *(ls for ls in seed_listeners(imap_map, pki) if ls.protocol is MailProtocol.IMAP),
        *(ls for ls in seed_listeners(pop_map, pki) if ls.protocol is MailProtocol.POP3),
    ]
    async with running(listeners) as proxy:
        proxy.stores = {"imap": imap_store, "pop3": pop3_store}
        yield proxy

