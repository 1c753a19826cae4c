"""The layering rules of docs/architecture.md, checked on the source's imports (AST).

* only ``authsvc.routing`` imports ``authsvc.login`` (one place normalises names);
* only ``authsvc.routing`` and the maps themselves import ``authsvc.maps``
  (one place reads maps);
* only ``authsvc/maps/mysql.py`` imports aiomysql;
* the pure modules import no event loop, HTTP or database library;
* ``authsvc`` never imports ``authsvc.proxy`` except lazily from ``cli.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = {"authsvc.login", "authsvc.settings", "authsvc.redact", "authsvc.maps.serverspec",
        "authsvc.failures"}
IO_LIBRARIES = {"asyncio", "aiohttp", "aiomysql", "pymysql", "socket"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "proxy":  # proxy/ installs as authsvc.proxy (pyproject's package-dir)
        parts.insert(0, "authsvc")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else (
        module_name(path)
    )
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def sources() -> list[Path]:
    files = [*ROOT.glob("authsvc/**/*.py"), *ROOT.glob("proxy/**/*.py")]
    return sorted(p for p in files if "__pycache__" not in p.parts)


def importers_of(target: str) -> set[str]:
    return {
        module_name(path)
        for path in sources()
        if any(name == target or name.startswith(target + ".") for name in imports_of(path))
    }


def test_the_check_sees_the_tree() -> None:
    names = {module_name(p) for p in sources()}
    assert {"authsvc.routing", "authsvc.login", "authsvc.maps"} <= names


def test_only_routing_normalises_names() -> None:
    assert importers_of("authsvc.login") <= {"authsvc.routing"}


def test_only_routing_reads_maps() -> None:
    outside = {m for m in importers_of("authsvc.maps") if not m.startswith("authsvc.maps")}
    assert outside <= {"authsvc.routing"}


def test_only_the_mysql_map_imports_aiomysql() -> None:
    assert importers_of("aiomysql") <= {"authsvc.maps.mysql"}
    assert importers_of("pymysql") <= {"authsvc.maps.mysql"}


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_do_no_io(module: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    io = {name.split(".")[0] for name in imports_of(path)} & IO_LIBRARIES
    assert io == set(), f"{module} imports {io}"


def test_config_readers_do_no_network_io() -> None:
    for path in ROOT.glob("authsvc/config/*.py"):
        io = {name.split(".")[0] for name in imports_of(path)} & IO_LIBRARIES
        assert io == set(), f"{module_name(path)} imports {io}"


def test_authsvc_imports_proxy_only_from_cli() -> None:
    users = {m for m in importers_of("authsvc.proxy") if not m.startswith("authsvc.proxy")}
    assert users <= {"authsvc.cli"}


def test_nothing_imports_a_top_level_proxy() -> None:
    assert importers_of("proxy") == set()
