"""``[log] client_ip``: no full client address in any log line of either face.

One stack per mode (``tests/services/stack.py``): nginx + ``authsvc serve`` on
127.0.0.10, and ``authsvc proxy`` on the same config (listening on 127.0.0.1,
plus a control port and Perdition's ``Auth:`` line to a syslog socket of the
test's).  Clients connect from 127.0.0.77 (``mailclient.py``) and log in,
fail, name an unknown user and send garbage; then every line serve and the
proxy wrote, every ``Auth:`` datagram and ``authsvc sessions list`` are read.

* ``none``: ``127.0.0.77`` appears nowhere.
* ``truncated``: it appears nowhere either, and its network ``127.0.0.0/24``
  does, where the address was.

nginx's own error log is not authsvc's: it names the client whatever
authsvc does (docs/security.md).
"""

from __future__ import annotations

import imaplib
import json
import poplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.eventually import eventually
from tests.helpers.fail2ban import logfile_line
from tests.services.mailclient import CLIENT_ADDRESS, RawLines, open_imap, open_pop3
from tests.services.mariadb import PrivateMariaDb
from tests.services.ports import free_port
from tests.services.proxy import ProxyProcess
from tests.services.require import require_binary
from tests.services.stack import Stack, StackOptions, running_stack

pytestmark = pytest.mark.integration

SECRET = "privacy-control-secret"
NETWORK = "127.0.0.0/24"


@pytest.fixture(scope="module", params=["none", "truncated"])
def stack(request: pytest.FixtureRequest,
          private_mariadb_server: PrivateMariaDb) -> Iterator[Stack]:
    for binary in ("nginx", "dovecot", "openssl"):
        require_binary(binary)
    options = StackOptions(nodes=1, auth_wait=1, users=50, client_ip=request.param)
    with running_stack(options, mariadb=private_mariadb_server) as started:
        yield started


def proxy_config(stack: Stack, syslog: Path) -> tuple[Path, int]:
    """The stack's config plus a control port and the Auth: line: the proxy's own."""
    control = free_port()
    secret = stack.workdir / "control-secret"
    secret.write_text(SECRET + "\n")
    config = stack.workdir / "proxy.toml"
    config.write_text(stack.config.read_text() + f"""
[proxy]
auth_failure_delay = 0.2
backend_timeout = 5
auth_log = true
auth_log_target = "{syslog}"

[control]
listen = "127.0.0.1:{control}"
secret_file = "{secret}"
""")
    return config, control


def exercise(host: str, ports: dict[str, int], stack: Stack) -> None:
    """A login that works, a wrong password, an unknown user, garbage; IMAP and POP3."""
    user = stack.user("bob@riseup.net")
    context = stack.pki.client_context()
    imap = open_imap(host, ports["imaps"], tls="implicit", context=context)
    assert imap.login(user.local, user.password)[0] == "OK"
    imap.logout()
    for login, password in ((user.local, "wrong-password"), ("nobody-here", "x")):
        imap = open_imap(host, ports["imaps"], tls="implicit", context=context)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(login, password)
        imap.shutdown()
    pop = open_pop3(host, ports["pop3s"], tls="implicit", context=context)
    pop.user(user.local)
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong-password")
    pop.close()
    with RawLines(host, ports["imaps"], context=context) as raw:
        raw.line()
        assert raw.command(b"g1 \x01GARBAGE", b"g1")[-1].startswith(b"g1 BAD")


def test_no_client_address_in_any_log(stack: Stack, tmp_path: Path) -> None:
    mode = stack.options.client_ip
    node = stack.nodes[0]
    # serve, behind nginx: the address arrives as Client-IP.
    exercise(stack.front_address, node.mail_ports, stack)
    eventually(lambda: len(node.serve.decisions()) >= 4, 15)

    syslog_path = tmp_path / "log.sock"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(syslog_path))
    syslog.settimeout(10)
    config, _ = proxy_config(stack, syslog_path)
    proxy = ProxyProcess(config, tmp_path / "proxy.log")
    proxy.start(listening=len(stack.listener_ports))
    try:
        ports = dict(stack.listener_ports)
        exercise("127.0.0.1", ports, stack)
        datagrams = [logfile_line(syslog.recv(9000)) for _ in range(4)]
        user = stack.user("bob@riseup.net")
        with RawLines("127.0.0.1", ports["imaps"], context=stack.pki.client_context()) as held:
            held.line()
            reply = held.command(f"a LOGIN {user.local} {user.password}".encode(), b"a")
            assert reply[-1].startswith(b"a OK"), reply
            listed = subprocess.run(
                [sys.executable, "-m", "authsvc", "sessions", "list", "--json", "-c",
                 str(config)], capture_output=True, text=True, timeout=60, check=False)
            assert listed.returncode == 0, listed.stderr
        proxy.wait_for("session", count=6, timeout=15)
    finally:
        proxy.stop()
        syslog.close()
    shown = json.loads(listed.stdout)["sessions"]
    assert len(shown) == 1

    texts = {"serve": node.serve.log_text(), "proxy": proxy.log_text(),
             "Auth: lines": "\n".join(datagrams), "sessions list": listed.stdout}
    for name, text in texts.items():
        assert CLIENT_ADDRESS not in text, f"{name} names the client:\n{text[-3000:]}"
    if mode == "truncated":
        assert all(d["client"] == NETWORK for d in node.serve.decisions())
        assert {line["client"] for line in proxy.lines("session")} == {NETWORK}
        assert all(f"Auth: {NETWORK}:-->" in line for line in datagrams), datagrams
        assert shown[0]["client"] == NETWORK
    else:
        assert all(d["client"] in (None, "-") for d in node.serve.decisions())
        assert {line["client"] for line in proxy.lines("session")} == {"-"}
        assert all("Auth: -:-->" in line for line in datagrams), datagrams
        assert shown[0]["client"] == "-"
