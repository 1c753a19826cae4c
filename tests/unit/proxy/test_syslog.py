"""The ``Auth:`` line writer looks a UDP host name up at start, never on the event loop per line."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from authsvc.proxy import syslog
from authsvc.proxy.syslog import SyslogSender


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


class Resolver:
    """getaddrinfo for one name, answering 127.0.0.1; records who asked, from which thread."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, host: str, port: int, **kwargs: Any) -> Sequence[tuple[Any, ...]]:
        self.calls.append((host, port, threading.get_ident()))
        if self.failures:
            self.failures -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port))]


def test_a_host_name_is_resolved_once_when_the_writer_is_made(udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    resolver = Resolver()
    sender = SyslogSender(f"syslog.example:{port}", resolve=resolver)
    assert sender.address == ("127.0.0.1", port)
    assert [(host, asked) for host, asked, _ in resolver.calls] == [("syslog.example", port)]
    assert sender.send(b"one") and sender.send(b"two")
    assert udp.recv(100) == b"one" and udp.recv(100) == b"two"
    assert len(resolver.calls) == 1  # sending looks nothing up
    sender.close()


def test_an_ip_literal_needs_no_lookup_and_ipv6_keeps_its_family() -> None:
    sender = SyslogSender("[::1]:5514")
    assert sender.address is not None and sender.address[:2] == ("::1", 5514)
    sender.close()
    sender = SyslogSender("127.0.0.1")
    assert sender.address == ("127.0.0.1", 514)
    sender.close()


def address_of(sender: SyslogSender) -> object:
    """The address now (read through a call: it changes while the test awaits)."""
    return sender.address


async def test_a_name_that_did_not_resolve_is_looked_up_again_off_the_loop(
    udp: socket.socket, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(syslog, "RESOLVE_EVERY", 0.0)
    port = udp.getsockname()[1]
    resolver = Resolver(failures=1)
    sender = SyslogSender(f"syslog.example:{port}", resolve=resolver)
    assert sender.address is None
    assert not sender.send(b"lost")  # dropped and counted, the lookup goes on elsewhere
    assert sender.dropped == 1
    for _ in range(200):
        if address_of(sender) is not None:
            break
        await asyncio.sleep(0.01)
    assert address_of(sender) == ("127.0.0.1", port)
    loop_thread = threading.get_ident()
    assert resolver.calls[-1][2] != loop_thread  # the second lookup ran in a worker thread
    assert sender.send(b"found")
    assert udp.recv(100) == b"found"
    sender.close()
