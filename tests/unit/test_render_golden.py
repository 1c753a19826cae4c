"""Golden renders: any change in a template or in authsvc/render/ shows up as a diff here.

Re-pin after an intended change with ``AUTHSVC_UPDATE_GOLDEN=1 .venv/bin/pytest
tests/unit/test_render_golden.py`` and review ``git diff tests/golden``.
"""

from __future__ import annotations

from pathlib import Path

from authsvc.config import load_settings
from authsvc.render import (
    HaproxyOptions,
    NginxOptions,
    parse_node,
    render_haproxy,
    render_nginx,
)
from authsvc.settings import Settings
from tests.golden.cases import check_golden, nest, nest_behind_haproxy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: The seed deployment's four Perdition files, as a migrating operator passes them.
SEED = [str(DEPLOY / "perdition" / f"perdition.{name}.conf")
        for name in ("imap4", "imaps", "pop3", "pop3s")]
POOL = HaproxyOptions(
    nodes=(parse_node("front1=10.0.0.11:9143"), parse_node("front2=10.0.0.12:9143")),
    node_port_offset=10000,
    admin_socket="/run/haproxy/authsvc.sock",
)


def _load(sources: list[str]) -> Settings:
    # Warnings (the seed's certificates are not on this machine) are expected.
    return load_settings(sources).settings


def test_seed_perdition_files_nginx() -> None:
    check_golden("seed.mail.conf", render_nginx(_load(SEED)).text)


def test_seed_perdition_files_nginx_behind_haproxy() -> None:
    options = NginxOptions(listen_offset=10000, proxy_protocol_from=("10.0.0.0/24",))
    check_golden("seed-behind-haproxy.mail.conf", render_nginx(_load(SEED), options).text)


def test_seed_perdition_files_haproxy() -> None:
    check_golden("seed.haproxy.cfg", render_haproxy(_load(SEED), POOL).text)


def test_native_example_nginx() -> None:
    settings = _load([str(DEPLOY / "authsvc.toml")])
    check_golden("authsvc-toml.mail.conf", render_nginx(settings).text)


def test_native_example_haproxy() -> None:
    settings = _load([str(DEPLOY / "authsvc.toml")])
    check_golden("authsvc-toml.haproxy.cfg", render_haproxy(settings, POOL).text)


def test_nest_nginx_include_form() -> None:
    check_golden("nest.mail.conf", render_nginx(nest()).text)


def test_nest_nginx_standalone() -> None:
    options = NginxOptions(standalone=True, prefix="/tmp/authsvc-nginx")
    check_golden("nest.standalone.conf", render_nginx(nest(), options).text)


def test_nest_behind_haproxy_nginx() -> None:
    options = NginxOptions(listen_offset=10000)
    check_golden("nest-behind-haproxy.mail.conf", render_nginx(nest_behind_haproxy(), options).text)


def test_nest_behind_haproxy_haproxy() -> None:
    check_golden("nest-behind-haproxy.haproxy.cfg", render_haproxy(nest_behind_haproxy()).text)


def test_nest_haproxy_v1_from_options() -> None:
    options = HaproxyOptions(proxy_protocol="v1", admin_socket="/run/haproxy/authsvc.sock")
    check_golden(
        "nest-proxy-v1.haproxy.cfg", render_haproxy(nest_behind_haproxy(), options).text
    )
