"""render-haproxy: frontends, backends and the two-step health check, line by line."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from authsvc.render import HaproxyOptions, RenderError, parse_node, render_haproxy
from authsvc.settings import (
    HaproxySettings,
    HostPort,
    ListenTls,
    MailProtocol,
    PoolNode,
    Settings,
)
from tests.golden.cases import nest, nest_behind_haproxy, nest_listener

NODES = (
    PoolNode("n1", "10.0.0.1", 10000, HostPort("10.0.0.1", 9143)),
    PoolNode("n2", "10.0.0.2", 10000, HostPort("10.0.0.2", 9143)),
)


def section(text: str, header: str) -> list[str]:
    """The stripped lines of one section (``frontend x``, ``backend y``, ``global``)."""
    match = re.search(rf"^{re.escape(header)}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    assert match, f"no section {header!r}"
    return [line.strip() for line in match.group(1).splitlines() if not line.strip()
            .startswith("#")]


def render(settings: Settings | None = None, **options: object) -> str:
    settings = settings or nest(haproxy=HaproxySettings(nodes=NODES))
    return render_haproxy(settings, HaproxyOptions(**options)).text  # type: ignore[arg-type]


def test_a_frontend_and_backend_per_listener() -> None:
    text = render()
    for name, port in (("imap4", 143), ("imaps", 993), ("pop3", 110), ("pop3s", 995)):
        front = section(text, f"frontend {name}_in")
        assert front == [f"bind :{port}", "timeout client 31m", f"default_backend {name}_nodes"]
        back = section(text, f"backend {name}_nodes")
        assert back[0] == "balance leastconn"
        assert "timeout server 31m" in back
        assert back[-2:] == [
            f"server n1 10.0.0.1:{port + 10000} check",
            f"server n2 10.0.0.2:{port + 10000} check",
        ]


def test_imap_check_banner_then_readyz() -> None:
    back = section(render(), "backend imap4_nodes")
    start = back.index("option tcp-check")
    assert back[start : start + 10] == [
        "option tcp-check",
        "tcp-check connect send-proxy",
        'tcp-check expect string "* OK"',
        r'tcp-check send "a1 LOGOUT\r\n"',
        'tcp-check expect string "* BYE"',
        "tcp-check connect port 9143",
        r'tcp-check send "GET /readyz HTTP/1.0\r\n\r\n"',
        r"tcp-check expect rstring '^HTTP/1\.[01] 200'",
        "default-server inter 2s fall 3 rise 2 send-proxy-v2",
        "server n1 10.0.0.1:10143 check",
    ]


def test_pop3_banner_and_tls_checks() -> None:
    text = render()
    pop3 = section(text, "backend pop3_nodes")
    assert 'tcp-check expect string "+OK"' in pop3
    assert r'tcp-check send "QUIT\r\n"' in pop3
    pop3s = section(text, "backend pop3s_nodes")
    # 995 is TLS from the first byte: the check speaks TLS after the PROXY header.
    assert "tcp-check connect ssl send-proxy" in pop3s
    assert "default-server inter 2s fall 3 rise 2 send-proxy-v2 verify none" in pop3s


def test_proxy_v1_and_none() -> None:
    back = section(render(proxy_protocol="v1"), "backend imap4_nodes")
    assert "default-server inter 2s fall 3 rise 2 send-proxy" in back
    assert "tcp-check connect send-proxy" in back
    settings = nest(haproxy=HaproxySettings(nodes=NODES, proxy_protocol="none"))
    text = render(settings)
    assert "send-proxy" not in text
    assert "tcp-check connect\n" in text
    with pytest.raises(RenderError, match="v1, v2 or none"):
        render(nest(haproxy=HaproxySettings(nodes=NODES, proxy_protocol="v3")))


def test_timeouts_cover_imap_idle_and_the_node_idle_timeout() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS), idle_timeout=3600.0
    )
    text = render(Settings(listeners=(listener,), haproxy=HaproxySettings(nodes=NODES)))
    assert "timeout client 61m" in section(text, "frontend imap4_in")
    assert "timeout server 61m" in section(text, "backend imap4_nodes")
    short = replace(listener, idle_timeout=60.0)
    text = render(Settings(listeners=(short,), haproxy=HaproxySettings(nodes=NODES)))
    assert "timeout client 31m" in section(text, "frontend imap4_in")


def test_nodes_from_options_replace_settings() -> None:
    nodes = (parse_node("a=127.0.0.1:9000"), parse_node("b=127.0.0.2:9000"))
    text = render(nest(haproxy=HaproxySettings(nodes=NODES)), nodes=nodes, node_port_offset=5)
    back = section(text, "backend imap4_nodes")
    assert back[-2:] == ["server a 127.0.0.1:148 check", "server b 127.0.0.2:148 check"]
    assert "tcp-check connect port 9000" in back


def test_no_health_port_means_banner_only_and_a_warning() -> None:
    nodes = (PoolNode("n1", "10.0.0.1"),)
    rendered = render_haproxy(nest(haproxy=HaproxySettings(nodes=nodes)))
    assert "/readyz" not in rendered.text.split("global", 1)[1]
    assert rendered.warnings == (
        "no node has a health port: checks test the mail banner only, not authsvc /readyz",
    )
    assert "# WARNING: no node has a health port" in rendered.text


def test_health_ports_must_agree() -> None:
    mixed = (NODES[0], PoolNode("n3", "10.0.0.3"))
    with pytest.raises(RenderError, match="same health port"):
        render(nest(haproxy=HaproxySettings(nodes=mixed)))
    other = (NODES[0], PoolNode("n3", "10.0.0.3", 0, HostPort("10.0.0.3", 9999)))
    with pytest.raises(RenderError, match="same health port"):
        render(nest(haproxy=HaproxySettings(nodes=other)))
    elsewhere = (PoolNode("n1", "10.0.0.1", 0, HostPort("10.0.0.9", 9143)),)
    with pytest.raises(RenderError, match="node's own address"):
        render(nest(haproxy=HaproxySettings(nodes=elsewhere)))


def test_no_nodes_or_duplicate_nodes() -> None:
    with pytest.raises(RenderError, match="no nodes"):
        render(nest())
    with pytest.raises(RenderError, match="duplicate"):
        render(nest(haproxy=HaproxySettings(nodes=(NODES[0], NODES[0]))))


def test_admin_socket_stats_and_bind() -> None:
    text = render(nest_behind_haproxy(), bind="127.0.0.5", check_inter="500ms")
    assert section(text, "global") == [
        "log stdout format raw local0",
        "user haproxy",
        "group haproxy",
        "chroot /var/lib/haproxy",
        "stats socket /run/haproxy/authsvc.sock mode 660 level admin expose-fd listeners",
        "stats timeout 30s",
    ]
    assert "bind 127.0.0.1:8404" in section(text, "listen stats")
    assert section(text, "frontend imaps_in")[0] == "bind 127.0.0.5:993"
    assert "default-server inter 500ms fall 3 rise 2 send-proxy-v2" in section(
        text, "backend imap4_nodes"
    )
    assert "stats socket" not in render()
    with pytest.raises(RenderError, match="check-inter"):
        render(check_inter="2 seconds")


def test_bound_listener_addresses_become_frontend_binds() -> None:
    listener = replace(
        nest_listener("imap4", MailProtocol.IMAP, ListenTls.STARTTLS),
        bind=(HostPort("192.0.2.1"), HostPort("2001:db8::1")),
    )
    text = render(Settings(listeners=(listener,), haproxy=HaproxySettings(nodes=NODES)))
    assert section(text, "frontend imap4_in")[:2] == [
        "bind 192.0.2.1:143",
        "bind [2001:db8::1]:143",
    ]


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("n1=10.0.0.1", PoolNode("n1", "10.0.0.1")),
        ("n1=10.0.0.1:9143", PoolNode("n1", "10.0.0.1", 0, HostPort("10.0.0.1", 9143))),
        ("n1=::1", PoolNode("n1", "::1")),
        ("n1=[::1]:9143", PoolNode("n1", "::1", 0, HostPort("::1", 9143))),
        ("n1=[::1]", PoolNode("n1", "::1")),
    ],
)
def test_parse_node(text: str, node: PoolNode) -> None:
    assert parse_node(text) == node


@pytest.mark.parametrize("text", ["n1", "=10.0.0.1", "n1=", "n1=h:x", "n1=h:70000", "n1=[::1"])
def test_parse_node_rejects(text: str) -> None:
    with pytest.raises(RenderError, match="--node"):
        parse_node(text)
