"""render-nginx against Debian's real nginx 1.22 + libnginx-mod-mail.

* ``nginx -t`` accepts the standalone render and the include form inside a copy
  of Debian's stock ``/etc/nginx/nginx.conf`` (and rejects it inside conf.d/,
  as the output's header comment says);
* a real nginx started from a render greets on every listener, advertises the
  rendered capabilities, reads PROXY headers, and sends ``authsvc serve`` the
  headers it needs (listener, local name, secret, client IP).
"""

from __future__ import annotations

import http.server
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from authsvc.redact import Secret
from authsvc.render import NGINX_MAIL_MODULE, NginxOptions, render_nginx
from authsvc.settings import HostPort, HttpSettings, NginxSettings, Settings
from tests.golden.cases import nest
from tests.services.certs import ServerCert, make_test_pki
from tests.services.nginx import (
    NginxProcess,
    check_config,
    loopback_listeners,
    read_greeting,
    running_nginx,
)
from tests.services.ports import free_port
from tests.services.require import require_file

pytestmark = pytest.mark.integration

DEBIAN_NGINX_CONF = Path("/etc/nginx/nginx.conf")
DEBIAN_MODULES = Path("/etc/nginx/modules-enabled")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _tls_options(pki: ServerCert, **more: object) -> NginxOptions:
    return NginxOptions(ssl_cert=str(pki.cert), ssl_key=str(pki.key), **more)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- nginx -t


def test_standalone_render_passes_nginx_t(tmp_path: Path, pki: ServerCert) -> None:
    options = replace(_tls_options(pki), standalone=True, prefix=str(tmp_path))
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(nest(), options).text)
    result = check_config(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_standalone_render_behind_haproxy_with_secret_passes_nginx_t(
    tmp_path: Path, pki: ServerCert
) -> None:
    settings = nest(
        http=HttpSettings(unix="/run/authsvc/auth.sock", secret=Secret("a b;c")),
        nginx=NginxSettings(proxy_protocol_from=("10.0.0.0/8", "::1")),
    )
    options = replace(_tls_options(pki), standalone=True, prefix=str(tmp_path),
                      listen_offset=10000)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(settings, options).text)
    result = check_config(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_broken_render(tmp_path: Path, pki: ServerCert) -> None:
    """The nginx -t helper can fail: a render with a missing certificate does not pass."""
    options = NginxOptions(standalone=True, prefix=str(tmp_path),
                           ssl_cert=str(tmp_path / "missing.pem"), ssl_key=str(pki.key))
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(nest(), options).text)
    result = check_config(conf, tmp_path)
    assert result.returncode != 0
    assert "missing.pem" in result.stderr


def _debian_copy(tmp_path: Path, mail_conf: Path, *, in_conf_d: bool) -> Path:
    """Debian's stock nginx.conf with every path moved under ``tmp_path``.

    The module stays Debian's own (modules-enabled/*.conf, with the relative
    ``modules/`` made absolute because ``-p`` moves the prefix).  The mail file
    is included at top level after events {} (as the docs say), or into conf.d/.
    """
    require_file(DEBIAN_NGINX_CONF, "nginx")
    modules = tmp_path / "modules-enabled"
    conf_d = tmp_path / "conf.d"
    sites = tmp_path / "sites-enabled"
    for directory in (modules, conf_d, sites):
        directory.mkdir()
    for module in sorted(DEBIAN_MODULES.glob("*.conf")):
        text = module.read_text().replace(
            "load_module modules/", "load_module /usr/lib/nginx/modules/"
        )
        (modules / module.name).write_text(text)
    assert any(NGINX_MAIL_MODULE in p.read_text() for p in modules.glob("*.conf")), (
        "Debian's modules-enabled does not load the mail module (libnginx-mod-mail)"
    )
    text = DEBIAN_NGINX_CONF.read_text()
    replacements = {
        "/run/nginx.pid": str(tmp_path / "nginx.pid"),
        "/var/log/nginx/": f"{tmp_path}/",
        "/etc/nginx/modules-enabled/": f"{modules}/",
        "/etc/nginx/conf.d/": f"{conf_d}/",
        "/etc/nginx/sites-enabled/": f"{sites}/",
    }
    for old, new in replacements.items():
        assert old in text, f"Debian's nginx.conf changed: no {old}"
        text = text.replace(old, new)
    if in_conf_d:
        (conf_d / "mail.conf").write_text(mail_conf.read_text())
    else:
        events = re.search(r"^events \{.*?^\}\n", text, re.S | re.M)
        assert events, "no events {} block in Debian's nginx.conf"
        text = text[: events.end()] + f"\ninclude {mail_conf};\n" + text[events.end() :]
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


def test_include_form_in_debian_stock_nginx_conf(tmp_path: Path, pki: ServerCert) -> None:
    mail_conf = tmp_path / "mail.conf"
    mail_conf.write_text(render_nginx(nest(), _tls_options(pki)).text)
    conf = _debian_copy(tmp_path, mail_conf, in_conf_d=False)
    result = check_config(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_include_form_in_conf_d_is_rejected(tmp_path: Path, pki: ServerCert) -> None:
    """Why the header says "not conf.d/": conf.d is included inside http {}."""
    mail_conf = tmp_path / "rendered.conf"
    mail_conf.write_text(render_nginx(nest(), _tls_options(pki)).text)
    conf = _debian_copy(tmp_path, mail_conf, in_conf_d=True)
    result = check_config(conf, tmp_path)
    assert result.returncode != 0
    assert '"mail" directive is not allowed here' in result.stderr


def _main_context_from_comments(text: str) -> str:
    """The main-context lines the include form's header says to set, uncommented."""
    lines = text.splitlines()
    start = lines.index("# In /etc/nginx/nginx.conf, main context:") + 1
    end = next(n for n in range(start, len(lines)) if not lines[n].startswith("#     "))
    return "".join(line.removeprefix("#     ") + "\n" for line in lines[start:end])


def test_include_form_with_its_sizing_in_debian_stock_nginx_conf(
    tmp_path: Path, pki: ServerCert
) -> None:
    """An operator copies the header's worker_* lines over Debian's: nginx -t accepts them."""
    settings = nest(nginx=NginxSettings(sessions_per_node=3000))
    text = render_nginx(settings, _tls_options(pki)).text
    main = _main_context_from_comments(text)
    assert main.startswith("worker_processes auto;\nworker_rlimit_nofile 6256;\nevents {\n")
    mail_conf = tmp_path / "mail.conf"
    mail_conf.write_text(text)
    conf = _debian_copy(tmp_path, mail_conf, in_conf_d=False)
    stock = conf.read_text()
    sized = re.sub(r"^worker_processes auto;\n", "", stock, flags=re.M)
    sized, replaced = re.subn(r"^events \{.*?^\}\n", lambda _m: main, sized, flags=re.S | re.M)
    assert replaced == 1 and "worker_connections 768;" not in sized
    conf.write_text(sized)
    result = check_config(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authsvc", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_cli_render_of_the_seed_files_passes_nginx_t(tmp_path: Path, pki: ServerCert) -> None:
    """The migration path: Perdition's four files in, a working nginx.conf out."""
    configs = [arg for name in ("imap4", "imaps", "pop3", "pop3s")
               for arg in ("--config", str(DEPLOY / "perdition" / f"perdition.{name}.conf"))]
    result = _cli("render-nginx", *configs, "--standalone", "--prefix", str(tmp_path),
                  "--ssl-cert", str(pki.cert), "--ssl-key", str(pki.key))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("    server {") == 4
    conf = tmp_path / "nginx.conf"
    conf.write_text(result.stdout)
    check = check_config(conf, tmp_path)
    assert check.returncode == 0, check.stderr


def test_cli_render_of_the_native_example_in_debian_conf(tmp_path: Path, pki: ServerCert) -> None:
    result = _cli("render-nginx", "--config", str(DEPLOY / "authsvc.toml"),
                  "--ssl-cert", str(pki.cert), "--ssl-key", str(pki.key))
    assert result.returncode == 0, result.stderr
    mail_conf = tmp_path / "mail.conf"
    mail_conf.write_text(result.stdout)
    conf = _debian_copy(tmp_path, mail_conf, in_conf_d=False)
    check = check_config(conf, tmp_path)
    assert check.returncode == 0, check.stderr


# --------------------------------------------------------------------------- real nginx


@dataclass
class AuthStub:
    """A fake ``authsvc serve``: records nginx's auth_http requests and refuses them."""

    port: int
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def auth_stub() -> Iterator[AuthStub]:
    stub = AuthStub(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.requests.append({k: v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Auth-Status", "Invalid login or password")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", stub.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


def _exchange(sock: socket.socket | ssl.SSLSocket, line: bytes, until: bytes) -> bytes:
    sock.sendall(line)
    data = b""
    while until not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _running(
    settings: Settings, tmp_path: Path, pki: ServerCert
) -> AbstractContextManager[NginxProcess]:
    options = replace(_tls_options(pki), standalone=True, prefix=str(tmp_path))
    text = render_nginx(settings, options).text
    return running_nginx(text, tmp_path, [lst.bind[0].port or 0 for lst in settings.listeners])


def test_real_nginx_greets_on_every_listener(tmp_path: Path, pki: ServerCert) -> None:
    settings, ports = loopback_listeners(nest())
    with _running(settings, tmp_path, pki):
        context = pki.client_context()
        assert read_greeting("127.0.0.1", ports["imap4"]) == b"* OK IMAP4 ready\r\n"
        assert read_greeting("127.0.0.1", ports["imaps"], tls=context) == b"* OK IMAP4 ready\r\n"
        assert read_greeting("127.0.0.1", ports["pop3"]) == b"+OK POP3 ready\r\n"
        assert read_greeting("127.0.0.1", ports["pop3s"], tls=context) == b"+OK POP3 ready\r\n"


def test_real_nginx_advertises_the_rendered_capabilities(tmp_path: Path, pki: ServerCert) -> None:
    settings, ports = loopback_listeners(nest())
    with _running(settings, tmp_path, pki):
        with socket.create_connection(("127.0.0.1", ports["imap4"]), timeout=5) as sock:
            _exchange(sock, b"", b"\r\n")
            reply = _exchange(sock, b"a1 CAPABILITY\r\n", b"a1 OK")
            # Perdition's list without its STARTTLS; nginx adds STARTTLS and AUTH=PLAIN.
            assert reply.startswith(
                b"* CAPABILITY IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
                b"THREAD=REFERENCES SORT QUOTA IDLE AUTH=PLAIN STARTTLS\r\n"
            ), reply
            assert reply.count(b"STARTTLS") == 1
            assert _exchange(sock, b"a2 STARTTLS\r\n", b"\r\n").startswith(b"a2 OK")
            with pki.client_context().wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                reply = _exchange(tls, b"a3 CAPABILITY\r\n", b"a3 OK")
                assert b"STARTTLS" not in reply
                assert b" IDLE " in reply
        with socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=5) as sock:
            _exchange(sock, b"", b"\r\n")
            reply = _exchange(sock, b"CAPA\r\n", b"\r\n.\r\n")
            assert reply.split(b"\r\n")[1:3] == [b"UIDL", b"USER"]
            assert b"STLS\r\n" in reply


def test_real_nginx_sends_serve_its_headers(
    tmp_path: Path, pki: ServerCert, auth_stub: AuthStub
) -> None:
    """The auth_http request carries listener, local name, secret and the PROXY client IP."""
    base = nest(
        http=HttpSettings(listen=HostPort("127.0.0.1", auth_stub.port), secret=Secret("k e y")),
        nginx=NginxSettings(proxy_protocol_from=("127.0.0.0/8",)),
    )
    settings, ports = loopback_listeners(base)
    with _running(settings, tmp_path, pki):
        # Without a PROXY header nginx waits for one and never greets.
        with (
            socket.create_connection(("127.0.0.1", ports["pop3"]), timeout=0.5) as sock,
            pytest.raises(TimeoutError),
        ):
            sock.recv(100)
        proxy = b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 110\r\n"
        with socket.create_connection(("127.0.0.1", ports["imap4"]), timeout=5) as sock:
            sock.sendall(proxy)
            assert _exchange(sock, b"", b"\r\n") == b"* OK IMAP4 ready\r\n"
            reply = _exchange(sock, b"a1 LOGIN bob@riseup.net secret\r\n", b"\r\n")
            assert reply == b"a1 NO Invalid login or password\r\n"
        with socket.create_connection(("127.0.0.1", ports["pop3s"]), timeout=5) as raw:
            raw.sendall(proxy)
            with pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                _exchange(sock, b"", b"\r\n")
                _exchange(sock, b"USER alice\r\n", b"\r\n")
                assert _exchange(sock, b"PASS pw\r\n", b"\r\n").startswith(b"-ERR Invalid login")
    imap, pop3s = auth_stub.requests
    assert imap["X-Authsvc-Listener"] == "imap4"
    assert imap["X-Authsvc-Local-Name"] == "127.0.0.1"
    assert imap["X-Authsvc-Key"] == "k e y"
    assert imap["Client-IP"] == "192.0.2.9"
    assert imap["Auth-Protocol"] == "imap"
    assert imap["Auth-User"] == "bob@riseup.net"
    assert pop3s["X-Authsvc-Listener"] == "pop3s"
    assert pop3s["Auth-SSL"] == "on"
    assert pop3s["Client-IP"] == "192.0.2.9"
