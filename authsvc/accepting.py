"""Accepting on a listening socket by hand, for the front ends that answer in the accept callback.

``authsvc serve`` (``authsvc/http/site.py``) and ``authsvc proxy``
(``proxy/server.py``) watch their listening sockets with ``loop.add_reader``
and accept themselves, rather than through asyncio's server, which spends a
task and a transport on every connection.  Both accept in batches and both
must survive a full descriptor table (Perdition's listener exited on a failed
accept: vanessa_socket's __vanessa_socket_server_accept, docs/perdition-compatibility.md);
that part is here.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

#: accept() errors that mean "out of descriptors or memory": Linux keeps
#: reporting the socket readable, so the caller must stop watching it a while.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def accept_batch(listening: socket.socket, batch: int,
                 accepted: Callable[[socket.socket, object], None]) -> OSError | None:
    """Accept up to ``batch`` waiting connections, handing each to ``accepted``.

    Returns None when the queue is empty or the batch done, or the error when
    the process ran out of resources; the caller pauses accepting then (as
    asyncio's own server does).  Any other error from ``accept`` is raised.
    """
    for _ in range(batch):
        try:
            conn, address = listening.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionAbortedError:
            continue  # gone before we took it
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                return exc
            raise
        accepted(conn, address)
    return None
