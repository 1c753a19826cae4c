"""Drive sans-IO machines from tests: feed chunks, collect and normalise commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from authsvc.proxy.events import Command, DataReceived, Event, Send

from authsvc.settings import ListenerSettings, ListenTls, MailProtocol, ProxySettings, TlsSettings

PROXY = ProxySettings(max_line_length=256, max_literal_length=64, max_bad_commands=5)


class Machine(Protocol):
    def start(self) -> list[Command]: ...
    def handle(self, event: Event) -> list[Command]: ...


def merge(commands: Sequence[Command]) -> list[Command]:
    """Join consecutive Sends: how replies are cut into writes does not matter."""
    out: list[Command] = []
    for command in commands:
        if isinstance(command, Send) and out and isinstance(out[-1], Send):
            out[-1] = Send(out[-1].data + command.data, out[-1].secret or command.secret)
        else:
            out.append(command)
    return out


def feed(machine: Machine, chunks: Sequence[bytes]) -> list[Command]:
    """Every command the machine gives for these reads, merged."""
    out: list[Command] = []
    for chunk in chunks:
        out += machine.handle(DataReceived(chunk))
    return merge(out)


def sent(commands: Sequence[Command]) -> bytes:
    """All bytes the commands write."""
    return b"".join(c.data for c in commands if isinstance(c, Send))


def imap_listener(
    tls: ListenTls = ListenTls.STARTTLS,
    *,
    tls_required: bool = False,
    capability: tuple[str, ...] = ("IMAP4rev1 IDLE",),
) -> ListenerSettings:
    return ListenerSettings(
        name="imap4", protocol=MailProtocol.IMAP, tls=tls, tls_required=tls_required,
        capability=capability, tls_files=TlsSettings("cert.pem", "key.pem"),
    )


def pop3_listener(
    tls: ListenTls = ListenTls.STARTTLS,
    *,
    tls_required: bool = False,
    capability: tuple[str, ...] = (),
) -> ListenerSettings:
    return ListenerSettings(
        name="pop3", protocol=MailProtocol.POP3, tls=tls, tls_required=tls_required,
        capability=capability, default_port=110,
    )
