"""The proxy's listening sockets: one per bind address of each listener, per worker.

They are bound in the first process, before any worker forks, so a busy port
or a bad address stops ``authsvc proxy`` at once (``command.py``).  With
``--workers N`` every bind address gets N ``SO_REUSEPORT`` sockets
(``authsvc/runtime/binding.py``) and each worker takes one of each; a worker
closes the others' sockets.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from authsvc.address import well_known_port
from authsvc.runtime.binding import ListenError, bind_tcp
from authsvc.settings import HostPort, ListenerSettings, ListenTls, Settings

#: listener name -> one socket per bind address.
ListenerSockets = Mapping[str, Sequence[socket.socket]]


def bind_listener(listener: ListenerSettings, count: int = 1) -> list[socket.socket]:
    """``count`` sockets per bind address of ``listener`` (SO_REUSEPORT when count > 1).

    The list holds, for each bind address in turn, its ``count`` sockets.
    """
    port = well_known_port(listener.protocol, listener.tls is ListenTls.IMPLICIT)
    binds = [HostPort(b.host, b.port if b.port is not None else port)
             for b in listener.bind] or [HostPort("0.0.0.0", port)]
    found: list[socket.socket] = []
    try:
        for address in binds:
            found += bind_tcp(address, count, backlog=socket.SOMAXCONN)
    except ListenError:
        for sock in found:
            sock.close()
        raise
    return found


def bind_all(settings: Settings, workers: int) -> list[dict[str, list[socket.socket]]]:
    """For each worker, its listening sockets by listener (SO_REUSEPORT across workers)."""
    slots: list[dict[str, list[socket.socket]]] = [{} for _ in range(workers)]
    try:
        for listener in settings.listeners:
            sockets = bind_listener(listener, workers)
            for index, sock in enumerate(sockets):
                slots[index % workers].setdefault(listener.name, []).append(sock)
    except ListenError:
        close_all(slots, [])
        raise
    return slots


def close_all(slots: Sequence[ListenerSockets], health: Sequence[socket.socket],
              keep: int | None = None, *, extra: Sequence[socket.socket] = ()) -> None:
    """Close every worker's sockets (and health socket) but worker ``keep``'s, and ``extra``."""
    for sock in extra:  # shared by every worker (the control port)
        sock.close()
    for index, slot in enumerate(slots):
        if index == keep:
            continue
        for sock in (s for group in slot.values() for s in group):
            sock.close()
        if index < len(health):
            health[index].close()
