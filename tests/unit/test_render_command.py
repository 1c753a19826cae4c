"""``authsvc render-nginx`` / ``render-haproxy`` through cli.main: stdout, stderr, exit code.

Settings loading is replaced by a stub here (the config readers have their own
tests); the integration tests run the real command on real files.
"""

from __future__ import annotations

import pytest

import authsvc.config
from authsvc.cli import main
from authsvc.config import Issue, Loaded
from authsvc.settings import HostPort, HttpSettings, Settings
from tests.golden.cases import nest


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Make load_settings return the nest settings; records the sources it was given."""
    calls: list[list[str]] = []

    def load_settings(sources: list[str]) -> Loaded:
        calls.append(list(sources))
        settings: Settings = nest(http=HttpSettings(listen=HostPort("127.0.0.1", 9999)))
        return Loaded(settings, [Issue("a.conf", 3, "key", "something odd")])

    monkeypatch.setattr(authsvc.config, "load_settings", load_settings, raising=False)
    return calls


def test_render_nginx_prints_the_config(
    loaded: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["render-nginx", "-c", "imap4=a.conf", "-c", "b.conf", "--bind", "127.0.0.1",
            "--listen-offset", "20000", "--proxy-protocol-from", "127.0.0.1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert loaded == [["imap4=a.conf", "b.conf"]]
    assert "listen 127.0.0.1:20143 proxy_protocol;" in out
    assert "set_real_ip_from 127.0.0.1;" in out
    assert "auth_http http://127.0.0.1:9999/auth;" in out
    assert err == "authsvc: warning: a.conf:3: key: something odd\n"


def test_render_nginx_error_exits_2_and_prints_nothing(
    loaded: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render-nginx", "-c", "x", "--auth-http", "https://h/auth"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "authsvc: render-nginx: auth_http cannot be https://" in err


def test_render_haproxy_with_nodes(
    loaded: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["render-haproxy", "-c", "x", "--node", "a=127.0.0.2:9143", "--node",
            "b=127.0.0.3:9143", "--node-port-offset", "10000", "--proxy-v1",
            "--admin-socket", "/tmp/a.sock", "--stats", "127.0.0.1:8404",
            "--check-inter", "1s"]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert "    server a 127.0.0.2:10143 check\n" in out
    assert "    server b 127.0.0.3:10995 check\n" in out
    assert "default-server inter 1s fall 3 rise 2 send-proxy\n" in out
    assert "stats socket /tmp/a.sock mode 660 level admin" in out
    assert "    bind 127.0.0.1:8404\n" in out


def test_render_haproxy_without_nodes_is_an_error(
    loaded: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render-haproxy", "-c", "x"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "no nodes: set haproxy.nodes or pass --node" in err


def test_bad_node_is_an_error(loaded: list[list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render-haproxy", "-c", "x", "--node", "nohost"]) == 2
    assert "--node: expected NAME=HOST[:HEALTHPORT]" in capsys.readouterr().err
