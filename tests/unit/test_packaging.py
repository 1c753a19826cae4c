"""The wheel ships every package: pyproject's explicit list names each one.

The list is explicit because ``templates/`` installs as ``authsvc.templates``;
an editable install hides a forgotten package, a real install (the README's
run command) fails on it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(i.parent.relative_to(ROOT).parts) for i in (ROOT / "authsvc").rglob("__init__.py")
    }
    found |= {
        ".".join(("authsvc", *i.parent.relative_to(ROOT).parts))
        for i in (ROOT / "proxy").rglob("__init__.py")
    }
    # The walk found the trees at all (else the subset below holds of nothing).
    assert {"authsvc", "authsvc.http", "authsvc.proxy", "authsvc.proxy.imap"} <= found, found
    assert found <= listed
    assert "authsvc.templates" in listed
    assert not {name for name in listed if not name.startswith("authsvc")}
    dirs = config["tool"]["setuptools"]["package-dir"]
    assert dirs == {"authsvc.proxy": "proxy", "authsvc.templates": "templates"}
