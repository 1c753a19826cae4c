"""The control listener in process: its checks, its log lines, TLS, its client and its config.

The listener (``authsvc/control/listener.py``) refuses a source outside
``[control] allow`` with a 403 and a request without the control secret with
a 401, each with a fixed body, logs every request as ``event=control``
without the secret, and speaks TLS with ``cert``/``key``.  The client
(``authsvc/control/client.py``) picks the node and the secret.  The
validator names file, line and key for each mistake in ``[control]``.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from authsvc.config import ConfigError, load_settings
from authsvc.control.client import call, credentials, target
from authsvc.control.listener import FORBIDDEN, UNAUTHORIZED, ControlListener
from authsvc.control.trust import CONTROL_HEADER, networks_of, source_allowed
from authsvc.redact import Secret
from authsvc.settings import ControlSettings, HostPort, HttpSettings, Settings
from tests.services.certs import make_test_pki
from tests.unit.auth_http_fakes import seed_settings

SECRET = Secret("ctl-s3cret")
LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"pong": True})


async def boom(request: web.Request) -> web.Response:
    return web.json_response({"error": "no"}, status=400)


@asynccontextmanager
async def listening(settings: ControlSettings) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    listener = ControlListener(settings, [web.get("/ping", ping), web.post("/boom", boom)])
    await listener.start(sock)
    try:
        yield sock.getsockname()[1]
    finally:
        await listener.stop()


async def ask(url: str, headers: dict[str, str] | None = None, *,
              source: str = "127.0.0.1") -> tuple[int, str]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
            url, headers=headers or {}) as reply:
        return reply.status, await reply.text()


async def test_secret_and_allow_list_are_checked_and_every_request_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = ControlSettings(listen=HostPort("127.0.0.1", 0), secret=SECRET,
                               allow=("127.0.0.1/32",))
    caplog.set_level(logging.INFO, logger="authsvc.control")
    async with listening(settings) as port:
        url = f"http://127.0.0.1:{port}/ping"
        assert await ask(url) == (401, UNAUTHORIZED)
        assert await ask(url, {CONTROL_HEADER: "nope"}) == (401, UNAUTHORIZED)
        assert await ask(url, {"X-Authsvc-Key": SECRET.reveal()}) == (401, UNAUTHORIZED)
        assert await ask(url, {CONTROL_HEADER: SECRET.reveal()}, source="127.0.0.2") == (
            403, FORBIDDEN)
        assert (await ask(url, {CONTROL_HEADER: SECRET.reveal()}))[0] == 200
        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/boom", headers={CONTROL_HEADER: SECRET.reveal()}
        ) as reply:
            assert reply.status == 400
    logged = [(r.levelname, r.fields) for r in caplog.records  # type: ignore[attr-defined]
              if getattr(r, "fields", {}).get("event") == "control"]
    assert [(level, f["client"], f["command"], f["status"], f["result"])
            for level, f in logged] == [
        ("WARNING", "127.0.0.1", "GET /ping", 401, "unauthorized"),
        ("WARNING", "127.0.0.1", "GET /ping", 401, "unauthorized"),
        ("WARNING", "127.0.0.1", "GET /ping", 401, "unauthorized"),
        ("WARNING", "127.0.0.2", "GET /ping", 403, "forbidden"),
        ("INFO", "127.0.0.1", "GET /ping", 200, "ok"),
        ("WARNING", "127.0.0.1", "POST /boom", 400, "error"),
    ]
    assert SECRET.reveal() not in caplog.text


async def test_tls_and_the_client_that_trusts_the_pool_certificate(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, ("127.0.0.1",))
    control = ControlSettings(listen=HostPort("127.0.0.1", 0), secret=SECRET,
                              cert=str(pki.cert), key=str(pki.key))
    async with listening(control) as port:
        settings = dataclasses.replace(
            seed_settings(), control=dataclasses.replace(control,
                                                         listen=HostPort("127.0.0.1", port)))
        assert target(settings, None) == (None, f"https://127.0.0.1:{port}")
        assert await call(settings, "GET", "/ping") == (200, {"pong": True})
        # Plain HTTP on the TLS port gets nothing useful.
        with pytest.raises((OSError, http.client.HTTPException)):
            await call(settings, "GET", "/ping", url=f"http://127.0.0.1:{port}")
        # A client that does not trust the certificate refuses it.
        untrusting = dataclasses.replace(settings, control=dataclasses.replace(
            settings.control, cert=None))
        with pytest.raises(ssl.SSLCertVerificationError):
            await call(untrusting, "GET", "/ping", url=f"https://127.0.0.1:{port}")


def test_source_allowed() -> None:
    allow = networks_of(["10.0.0.0/8", "2001:db8::/32"])
    assert source_allowed("10.1.2.3", allow)
    assert source_allowed("::ffff:10.1.2.3", allow)  # IPv4 on a dual-stack socket
    assert source_allowed("2001:db8::1", allow)
    assert not source_allowed("192.0.2.1", allow)
    assert not source_allowed("::ffff:192.0.2.1", allow)
    assert not source_allowed(None, allow)
    assert not source_allowed("not-an-address", allow)
    assert source_allowed("192.0.2.1", ())  # no allow-list: the secret decides


def test_the_client_picks_the_node_and_the_secret() -> None:
    nginx = Secret("nginx-secret")
    http = HttpSettings(secret=nginx)
    control = ControlSettings(listen=HostPort("0.0.0.0", 9144), secret=SECRET)
    both: Settings = dataclasses.replace(seed_settings(http), control=control)
    # The local [control] listen, reached on loopback when it is a wildcard.
    assert target(both, None) == (None, "http://127.0.0.1:9144")
    assert target(dataclasses.replace(both, control=dataclasses.replace(
        control, listen=HostPort("::", 9144))), None) == (None, "http://[::1]:9144")
    assert target(both, "http://10.0.0.5:9144/") == (None, "http://10.0.0.5:9144")
    # The control secret, never nginx's, once there is one.
    assert credentials(both, None) == {CONTROL_HEADER: SECRET.reveal()}
    assert credentials(both, "/run/x.sock") == {}
    # No [control]: serve's own socket and secret, as before.
    legacy = seed_settings(http)
    assert target(legacy, None) == (None, "http://127.0.0.1:9143")
    assert credentials(legacy, None) == {"X-Authsvc-Key": "nginx-secret"}


def test_control_settings_never_show_the_secret(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("  top-secret-value \n")
    (tmp_path / "a.toml").write_text(
        f'[control]\nlisten = "127.0.0.1:9144"\nsecret_file = "s"\n'
        f'allow = ["10.0.0.1", "2001:db8::/32"]\n{LISTENER}')
    control = load_settings([str(tmp_path / "a.toml")]).settings.control
    assert control.secret is not None and control.secret.reveal() == "top-secret-value"
    assert control.allow == ("10.0.0.1/32", "2001:db8::/32")
    assert "top-secret-value" not in repr(control)


def config_errors(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "a.toml").write_text(text + LISTENER)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(tmp_path / "a.toml")])
    prefix = f"{tmp_path / 'a.toml'}:"
    assert all(str(i).startswith(prefix) for i in caught.value.issues)
    return [str(i)[len(prefix):] for i in caught.value.issues]


@pytest.mark.parametrize(("text", "error"), [
    ('[control]\nlisten = "127.0.0.1:9144"\n',
     "2: control.listen: a control listener needs its own secret: set [control] secret_file"),
    ('[control]\nlisten = "127.0.0.1"\nsecret_file = "s"\n',
     "2: control.listen: "),
    ('[control]\nlisten = "127.0.0.1:9144"\nsecret_file = "s"\nallow = ["10.0.0.0/33"]\n',
     "4: control.allow: '10.0.0.0/33' is not a network (CIDR) or address"),
    ('[control]\nlisten = "127.0.0.1:9144"\nsecret_file = "s"\ncert = "c.pem"\n',
     "4: control.cert: give both cert and key, or neither"),
    ('[control]\nlisten = "127.0.0.1:9144"\nsecret_file = "s"\nsecrets = "x"\n',
     "4: control.secrets: unknown key (did you mean 'secret_file'?)"),
    ('[http]\nsecret_file = "s"\n[control]\nlisten = "127.0.0.1:9144"\nsecret_file = "s"\n',
     "5: control.secret_file: must differ from [http] secret_file: nginx's secret must not "
     "open the operator's commands"),
    ('[http]\nlisten = "127.0.0.1:9143"\n[control]\nlisten = "127.0.0.1:9143"\n'
     'secret_file = "s"\n', "4: control.listen: 127.0.0.1:9143 is also [http] listen"),
    ('[proxy]\nhealth_listen = "0.0.0.0:9145"\n[control]\nlisten = "127.0.0.1:9145"\n'
     'secret_file = "s"\n', "4: control.listen: 127.0.0.1:9145 is also [proxy] health_listen"),
])
def test_control_config_errors(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "s").write_text("shared\n")
    found = config_errors(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(error), found


def test_control_keys_without_listen_are_warned_about(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("x\n")
    (tmp_path / "a.toml").write_text(f'[control]\nsecret_file = "s"\n{LISTENER}')
    warnings = [str(w) for w in load_settings([str(tmp_path / "a.toml")]).warnings]
    assert any("control.secret_file: has no effect without [control] listen" in w
               for w in warnings), warnings
