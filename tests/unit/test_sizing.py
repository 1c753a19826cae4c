"""authsvc/sizing.py: the arithmetic, and the docs and the shipped unit that repeat its numbers."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from authsvc.config import load_settings
from authsvc.render import nginx_view
from authsvc.settings import NginxSettings
from authsvc.sizing import (
    PROXY_UNIT_NOFILE,
    descriptor_headroom,
    nginx_sizing,
    proxy_nofile_for,
    proxy_sessions_fit,
)

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
PROXY_DOC = (ROOT / "docs" / "proxy.md").read_text()
EXAMPLE_LISTENERS = 4  # deploy/authsvc.toml


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end]


def test_nginx_sizing_adds_up() -> None:
    z = nginx_sizing(3000, 1)
    assert z.session_connections == 6000
    assert z.auth_http_connections == 188  # 3000 / 16, rounded up
    assert z.worker_connections == 6000 + 188 + 1
    assert z.worker_rlimit_nofile == z.limit_nofile == z.worker_connections + 64
    assert z.worker_processes == "auto"
    assert nginx_sizing(1, 0).auth_http_connections == 64
    with pytest.raises(ValueError, match="sessions 0"):
        nginx_sizing(0, 4)


@pytest.mark.parametrize("sessions", [1, 999, 1000, 3000, 123_457])
def test_nginx_sizing_explains_itself(sessions: int) -> None:
    z = nginx_sizing(sessions, EXAMPLE_LISTENERS)
    lines = z.arithmetic()
    numbers = [int(re.findall(r"\d+", line)[-1]) for line in lines]
    assert numbers[0] + numbers[1] + numbers[2] == numbers[3] == z.worker_connections
    assert numbers[3] + numbers[4] == int(re.findall(r"\d+", lines[5])[0])
    assert lines[5].startswith(f"= worker_rlimit_nofile {z.worker_rlimit_nofile}")


def test_the_default_fits_the_shipped_example_on_any_machine() -> None:
    """Under 4096, the hard limit Linux gives its first process (INR_OPEN_MAX)."""
    settings = load_settings([str(ROOT / "deploy" / "authsvc.toml")]).settings
    view = nginx_view(settings)
    assert settings.nginx.sessions_per_node == NginxSettings().sessions_per_node
    assert view.sizing.listening == EXAMPLE_LISTENERS
    assert view.sizing.limit_nofile < 4096


def test_operations_md_shows_the_default_next_to_the_include_line() -> None:
    z = nginx_sizing(NginxSettings().sessions_per_node, EXAMPLE_LISTENERS)
    section = _section(OPERATIONS, "## Render the nginx config and include it")
    block = section[section.index("```nginx"):]
    block = block[: block.index("include /etc/nginx/mail.conf;")]
    assert f"worker_processes {z.worker_processes};" in block
    assert f"worker_rlimit_nofile {z.worker_rlimit_nofile};" in block
    assert f"\tworker_connections {z.worker_connections};\n}}\n\n" in block
    assert f"[Service]\nLimitNOFILE={z.limit_nofile}\n" in section
    assert "worker_connections 768;`, which stops each worker at\nabout 380" in section
    assert nginx_sizing(380, 0).worker_connections > 768 > 2 * 380


def _number(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


def test_operations_md_table_is_the_arithmetic() -> None:
    section = _section(OPERATIONS, "### Size nginx for the sessions")
    rows = re.findall(r"^\| ([\d,]+[^|]*) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$", section,
                      re.MULTILINE)
    assert len(rows) >= 4
    for sessions, auth_http, connections, nofile in rows:
        z = nginx_sizing(_number(sessions), EXAMPLE_LISTENERS)
        assert (_number(auth_http), _number(connections), _number(nofile)) == (
            z.auth_http_connections, z.worker_connections, z.worker_rlimit_nofile)


def test_shipped_proxy_unit_sets_the_limit_check_config_assumes() -> None:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "deploy" / "systemd" / "authsvc-proxy.service")
    assert int(parser["Service"]["LimitNOFILE"]) == PROXY_UNIT_NOFILE


def test_proxy_doc_states_what_the_shipped_unit_holds() -> None:
    most = max(s for s in range(120_000, 131_073) if proxy_sessions_fit(s, PROXY_UNIT_NOFILE))
    assert f"{most:,}" == "122,848"
    assert f"`LimitNOFILE={PROXY_UNIT_NOFILE}`" in PROXY_DOC
    assert "holds at most\n  122,848 sessions per process" in PROXY_DOC


@pytest.mark.parametrize("sessions", [0, 1, 10, 100, 1000, 3000, 10_000, 1_000_000])
def test_proxy_nofile_for_is_the_smallest_that_fits(sessions: int) -> None:
    limit = proxy_nofile_for(sessions)
    assert proxy_sessions_fit(sessions, limit)
    assert limit == 1 or not proxy_sessions_fit(sessions, limit - 1)
    assert 2 * sessions + descriptor_headroom(limit) <= limit


def test_descriptor_headroom() -> None:
    assert [descriptor_headroom(n) for n in (1, 8, 64, 1024, 65536)] == [0, 7, 32, 64, 4096]
