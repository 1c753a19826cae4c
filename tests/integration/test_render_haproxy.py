"""render-haproxy against Debian's real HAProxy 2.6, in front of a real nginx node.

* ``haproxy -c`` accepts the renders (v2, v1, no PROXY, banner-only);
* a real HAProxy balancing to an nginx node (rendered with PROXY protocol)
  reports the node UP on its admin socket, passes clients through, and marks
  the node DOWN when EITHER the node's authsvc ``/readyz`` fails OR its mail
  listener is gone — and UP again when it recovers.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsvc.render import HaproxyOptions, NginxOptions, render_haproxy, render_nginx
from authsvc.settings import HaproxySettings, HostPort, NginxSettings, PoolNode
from tests.golden.cases import GOLDEN, nest, nest_behind_haproxy
from tests.services.certs import ServerCert, make_test_pki
from tests.services.haproxy import (
    check_config,
    running_haproxy,
    server_states,
    server_status,
    wait_for_status,
)
from tests.services.nginx import loopback_listeners, read_greeting, start_nginx
from tests.services.ports import free_port

pytestmark = pytest.mark.integration

FRONT = "127.0.0.1"  # HAProxy's frontends
NODE = "127.0.0.2"  # the nginx node and its /readyz, on the same port numbers
BACKENDS = ("imap4_nodes", "imaps_nodes", "pop3_nodes", "pop3s_nodes")


@pytest.mark.parametrize(
    "options",
    [
        HaproxyOptions(),
        HaproxyOptions(proxy_protocol="v1", check_inter="500ms"),
        HaproxyOptions(nodes=(PoolNode("solo", "192.0.2.1"),)),
    ],
    ids=["v2", "v1", "banner-only"],
)
def test_renders_pass_haproxy_c(tmp_path: Path, options: HaproxyOptions) -> None:
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render_haproxy(nest_behind_haproxy(), options).text)
    result = check_config(conf)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_proxy_protocol_passes_haproxy_c(tmp_path: Path) -> None:
    settings = nest(
        haproxy=HaproxySettings(nodes=(PoolNode("a", "192.0.2.1"),), proxy_protocol="none")
    )
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render_haproxy(settings).text)
    result = check_config(conf)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "nest-behind-haproxy.haproxy.cfg",
        "nest-proxy-v1.haproxy.cfg",
        "seed.haproxy.cfg",
        "authsvc-toml.haproxy.cfg",
    ],
)
def test_golden_haproxy_files_pass_haproxy_c(name: str) -> None:
    result = check_config(GOLDEN / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_c_can_fail(tmp_path: Path) -> None:
    """The unquoted banner from Dovecot's docs is what haproxy -c rejects (tcp-check expect)."""
    text = render_haproxy(nest_behind_haproxy()).text.replace('"* OK"', "* OK")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(text)
    assert check_config(conf).returncode != 0


@dataclass
class Readyz:
    """A stand-in for a node's ``authsvc serve`` health port: GET /readyz -> ``status``."""

    host: str
    port: int
    status: int = 200


@pytest.fixture
def readyz() -> Iterator[Readyz]:
    stub = Readyz(NODE, free_port(NODE))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(stub.status if self.path == "/readyz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((stub.host, stub.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _wait_all(admin: Path, status: str) -> None:
    for backend in BACKENDS:
        wait_for_status(admin, backend, "node1", status)


def test_haproxy_checks_both_the_mail_port_and_readyz(
    tmp_path: Path, pki: ServerCert, readyz: Readyz
) -> None:
    # Frontends on 127.0.0.1:P, the node's nginx on 127.0.0.2:P (port offset 0).
    settings, ports = loopback_listeners(
        nest(nginx=NginxSettings(proxy_protocol_from=("127.0.0.0/8",))),
        FRONT,
        also_free_on=(NODE,),
    )
    nginx_text = render_nginx(
        settings,
        NginxOptions(standalone=True, prefix=str(tmp_path / "nginx"), bind=NODE,
                     ssl_cert=str(pki.cert), ssl_key=str(pki.key)),
    ).text
    admin = tmp_path / "haproxy" / "admin.sock"
    node = PoolNode("node1", NODE, 0, HostPort(NODE, readyz.port))
    haproxy_text = render_haproxy(
        settings, HaproxyOptions(nodes=(node,), admin_socket=str(admin), check_inter="100ms")
    ).text
    nginx = start_nginx(nginx_text, tmp_path / "nginx", [(NODE, p) for p in ports.values()])
    try:
        with running_haproxy(haproxy_text, tmp_path / "haproxy", admin) as hx:
            _wait_all(admin, "UP")
            states = server_states(admin)
            assert {(b, s) for b, s in states} == {(b, "node1") for b in BACKENDS}
            assert all(state.up and state.address == NODE for state in states.values())
            assert states[("imaps_nodes", "node1")].port == ports["imaps"]

            # Clients pass through; nginx reads HAProxy's PROXY v2 header first.
            context = pki.client_context()
            assert read_greeting(FRONT, ports["imap4"]) == b"* OK IMAP4 ready\r\n"
            assert read_greeting(FRONT, ports["pop3s"], tls=context) == b"+OK POP3 ready\r\n"

            # authsvc not ready -> every backend drops the node, mail port or not.
            readyz.status = 503
            _wait_all(admin, "DOWN")
            readyz.status = 200
            _wait_all(admin, "UP")

            # The node's nginx gone (authsvc still ready) -> DOWN as well.
            nginx.stop()
            _wait_all(admin, "DOWN")
            assert all(not s.up for s in server_states(admin).values())
            assert "DOWN" in hx.log_text()
            nginx = start_nginx(nginx_text, tmp_path / "nginx", [(NODE, p) for p in ports.values()])
            _wait_all(admin, "UP")
            assert set(server_status(admin).values()) == {"UP"}
    finally:
        nginx.stop()
