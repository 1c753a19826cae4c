"""End to end through HAProxy in front of two nginx + authsvc nodes.

client (127.0.0.77) -> HAProxy 127.0.0.20 --PROXY v2--> nginx 127.0.0.10 / .11
-> authsvc serve on the same node -> MariaDB map -> Dovecot store.

Both HAProxy and the nodes are rendered by authsvc (``render-haproxy``,
``render-nginx --proxy-protocol-from``).  HAProxy checks every node per
listener: the mail greeting through nginx, then ``GET /readyz`` on the node's
authsvc; ``inter 300ms fall 2 rise 1`` keeps state changes quick.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.services.haproxy import server_status, wait_for_status
from tests.services.mailclient import (
    CLIENT_ADDRESS,
    RawLines,
    imap_first_subject,
    open_imap,
    open_pop3,
    pop3_first_subject,
)
from tests.services.mariadb import PrivateMariaDb
from tests.services.require import require_binary
from tests.services.stack import HAPROXY_ADDRESS, LISTENERS, Stack, StackOptions, running_stack

pytestmark = pytest.mark.integration

CHECK_INTER = 0.3
CHECK_FALL = 2
BACKENDS = [f"{name}_nodes" for name in LISTENERS]
TEMPORARY = "Temporary server problem, try again later"


@pytest.fixture(scope="module")
def stack(private_mariadb_server: PrivateMariaDb) -> Iterator[Stack]:
    for binary in ("nginx", "haproxy", "dovecot", "openssl"):
        require_binary(binary)
    options = StackOptions(nodes=2, haproxy=True, check_inter=f"{int(CHECK_INTER * 1000)}ms",
                           check_fall=CHECK_FALL, check_rise=1)
    with running_stack(options, mariadb=private_mariadb_server) as started:
        assert started.admin_socket is not None
        for backend in BACKENDS:
            for node in started.nodes:
                wait_for_status(started.admin_socket, backend, node.name, "UP")
        yield started


def _states(stack: Stack) -> dict[tuple[str, str], str]:
    assert stack.admin_socket is not None
    return server_status(stack.admin_socket)


def _wait_all(stack: Stack, node: str, status: str) -> None:
    assert stack.admin_socket is not None
    for backend in BACKENDS:
        wait_for_status(stack.admin_socket, backend, node, status, timeout=15)


def _login_imap(stack: Stack, login: str, password: str, tls: str = "starttls") -> str:
    listener = "imaps" if tls == "implicit" else "imap4"
    imap = open_imap(stack.front_address, stack.port(listener), tls=tls,
                     context=stack.pki.client_context())
    try:
        imap.login(login, password)
        return imap_first_subject(imap)
    finally:
        imap.logout()


def _login_pop3(stack: Stack, login: str, password: str, tls: str = "implicit") -> str:
    listener = "pop3s" if tls == "implicit" else "pop3"
    pop = open_pop3(stack.front_address, stack.port(listener), tls=tls,
                    context=stack.pki.client_context())
    try:
        pop.user(login)
        pop.pass_(password)
        return pop3_first_subject(pop)
    finally:
        pop.quit()


def _decisions_for(stack: Stack, login: str) -> list[dict[str, str | None]]:
    return [d for node in stack.nodes for d in node.serve.decisions() if d.get("login") == login]


@pytest.mark.parametrize("listener", list(LISTENERS))
def test_client_address_reaches_authsvc_as_client_ip(stack: Stack, listener: str) -> None:
    user = stack.users_on("a")[30 + list(LISTENERS).index(listener)]
    protocol, tls = LISTENERS[listener]
    login = user.local.upper()  # a spelling no other test uses, to find its line
    if protocol == "imap":
        assert _login_imap(stack, login, user.password, tls) == "store-a"
    else:
        assert _login_pop3(stack, login, user.password, tls) == "store-a"
    deadline = time.monotonic() + 5
    while not (found := _decisions_for(stack, login)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(found) == 1, found
    # The client's own address, through HAProxy's PROXY v2 header and nginx's
    # set_real_ip_from; HAProxy's address here would mean forwarding is broken.
    assert found[0]["client"] == CLIENT_ADDRESS
    assert found[0]["client"] != HAPROXY_ADDRESS
    assert found[0]["listener"] == listener
    assert found[0]["result"] == "ok"


@pytest.mark.parametrize("part", ["serve", "nginx"])
def test_a_node_with_a_stopped_part_leaves_the_pool(stack: Stack, part: str) -> None:
    first, second = stack.nodes
    if part == "serve":
        first.serve.stop()
    else:
        first.stop_nginx()
    try:
        _wait_all(stack, first.name, "DOWN")
        states = _states(stack)
        assert all(states[(backend, second.name)] == "UP" for backend in BACKENDS), states
        # Clients keep logging in, through the other node only.
        before = len(second.serve.decisions(settle=True))
        for n in range(4):
            user = stack.users_on("b")[40 + n]
            assert _login_imap(stack, user.local, user.password) == "store-b"
            assert _login_pop3(stack, user.local, user.password) == "store-b"
        assert len(second.serve.decisions(settle=True)) - before == 8
    finally:
        if part == "serve":
            first.serve.start()
        else:
            first.start_nginx()
    _wait_all(stack, first.name, "UP")


def test_shared_database_down_no_node_leaves_the_pool(stack: Stack) -> None:
    cached = stack.users_on("a")[50]
    # Warm both nodes' caches: leastconn may send the login to either.
    for _ in range(4):
        assert _login_imap(stack, cached.local, cached.password) == "store-a"
    assert {d["client"] for d in _decisions_for(stack, cached.local)} == {CLIENT_ADDRESS}
    stack.mariadb.stop()
    try:
        # Longer than fall x inter: a node that failed its checks would be DOWN now.
        time.sleep(CHECK_FALL * CHECK_INTER * 4)
        states = _states(stack)
        assert set(states.values()) == {"UP"}, states
        # Logins still work for cached users; others get the temporary text.
        for node in stack.nodes:
            assert node.serve.get("/readyz")[0] == 200
        uncached = stack.users_on("a")[51]
        with RawLines(stack.front_address, stack.port("imap4")) as conn:
            conn.line()
            assert conn.command(f"a LOGIN {uncached.local} {uncached.password}".encode(),
                                b"a") == [b"a NO " + TEMPORARY.encode() + b"\r\n"]
    finally:
        stack.mariadb.start()
    assert set(_states(stack).values()) == {"UP"}
