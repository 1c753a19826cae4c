"""The least a Python IMAP login proxy on stdlib asyncio can do: a yardstick, not a product.

``python -m bench.floor_proxy LISTEN_HOST LISTEN_PORT STORE_HOST STORE_PORT``
accepts IMAP clients, greets them, takes one ``tag LOGIN user password``
line, connects to the one store, sends it the same ``LOGIN``, answers the
client with the store's tagged reply, then copies bytes both ways until
both sides have ended.  Everything runs from ``loop.add_reader`` callbacks:
no task, future, timer or transport per connection.

It has none of what ``authsvc proxy`` does per login: no grammar (it splits
on spaces and trusts whole lines in one read, which only a loopback bench
gives), no route, no limits, timeouts, TLS, logs, metrics, ``Auth:`` line,
throttle or drain.  ``bench/proxy_bench.py --fronts floor`` runs it beside
the others (plain logins only), so that the CPU of one login splits into
what Python, asyncio's loop and the kernel cost at the least (this front
end) and what the proxy's own work adds (docs/benchmarks.md, "Proxy").
"""

from __future__ import annotations

import asyncio
import socket
import sys

GREETING = b"* OK [CAPABILITY IMAP4rev1] floor proxy ready\r\n"
#: Bytes asked of a socket per read, as the proxy's Channel asks.
MAX_READ = 262_144


class Connection:
    """One client, and the store connection its login opens."""

    __slots__ = ("client", "ended", "login", "loop", "state", "store", "store_address", "tag")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 store_address: tuple[str, int]) -> None:
        self.loop = loop
        self.client = client
        self.store: socket.socket | None = None
        self.store_address = store_address
        self.state = "login"  # login -> greeting -> answer -> relay
        self.tag = b""
        self.login = b""
        self.ended = 0
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.send(GREETING)
        loop.add_reader(client.fileno(), self.from_client)

    def from_client(self) -> None:
        try:
            data = self.client.recv(MAX_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.end(self.client, self.store)
            return
        if self.state == "relay":
            assert self.store is not None
            self.store.send(data)
            return
        tag, _, rest = data.rstrip(b"\r\n").partition(b" ")
        verb, _, arguments = rest.partition(b" ")
        if verb.upper() != b"LOGIN" or self.store is not None:
            self.client.send(tag + b" BAD only LOGIN here\r\n")
            return
        self.tag, self.login = tag, arguments
        store = self.store = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        store.setblocking(False)
        store.connect_ex(self.store_address)  # EINPROGRESS: the greeting says it is done
        store.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.state = "greeting"
        self.loop.add_reader(store.fileno(), self.from_store)

    def from_store(self) -> None:
        assert self.store is not None
        try:
            data = self.store.recv(MAX_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.end(self.store, self.client)
            return
        if self.state == "relay":
            self.client.send(data)
        elif self.state == "greeting":
            self.store.send(b"A1 LOGIN " + self.login + b"\r\n")
            self.state = "answer"
        elif data.startswith(b"A1 "):
            self.client.send(self.tag + data[2:])
            self.state = "relay"

    def end(self, source: socket.socket, sink: socket.socket | None) -> None:
        """``source`` said EOF: pass it on; close both once both have."""
        self.loop.remove_reader(source.fileno())
        self.ended += 1
        if sink is None or self.ended == 2:
            for sock in (self.client, self.store):
                if sock is not None:
                    if sock is not source and self.ended < 2:
                        self.loop.remove_reader(sock.fileno())
                    sock.close()
            return
        try:  # noqa: SIM105 - as lean as the rest: no context manager object
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    host, port, store_host, store_port = argv
    loop = asyncio.new_event_loop()
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind((host, int(port)))
    listening.listen(4096)
    listening.setblocking(False)
    store = (store_host, int(store_port))

    def accept() -> None:
        for _ in range(64):
            try:
                client, _ = listening.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            Connection(loop, client, store)

    loop.add_reader(listening.fileno(), accept)
    try:
        loop.run_forever()
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
