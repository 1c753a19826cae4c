"""deploy/systemd units: ``systemd-analyze verify`` clean, and the hardening the docs promise."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from tests.services.require import require_binary

pytestmark = pytest.mark.integration

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/authsvc/bin/authsvc"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name", ["authsvc-serve.service", "authsvc-proxy.service"])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, name: str) -> None:
    """verify warns about unknown keys but exits 0, so any output at all is a failure."""
    analyze = require_binary("systemd-analyze")
    # ExecStart must name a binary that exists here; this checkout's entry point does.
    binary = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "authsvc"
    if not binary.exists():
        binary = Path(require_binary("authsvc"))
    text = (UNITS / name).read_text()
    assert INSTALLED in text
    (tmp_path / name).write_text(text.replace(INSTALLED, str(binary)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_can_fail(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nProtectSystm=strict\n")
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert "Unknown key" in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["authsvc-serve.service", "authsvc-proxy.service"])
def test_hardening(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["User"] == "authsvc"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    # Holds survive restarts in /var/lib/authsvc, writable under ProtectSystem=strict.
    assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("authsvc", "0700")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    command = "serve" if "serve" in name else "proxy"
    assert service["ExecStart"] == f"{INSTALLED} {command} --config /etc/authsvc/authsvc.toml"


def test_only_the_proxy_may_bind_low_ports() -> None:
    proxy = _unit("authsvc-proxy.service")["Service"]
    assert proxy["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert proxy["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    serve = _unit("authsvc-serve.service")["Service"]
    assert serve["AmbientCapabilities"] == ""
    assert serve["CapabilityBoundingSet"] == ""
