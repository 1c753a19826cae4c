"""The layering rules of docs/architecture.md ("Layers"), checked on the source's imports (AST).

From the top down: the CLI; the two faces, ``authsvc.http`` (``authsvc serve``)
and ``authsvc.proxy``; the control surface (``authsvc.control``) and the
process runtime (``authsvc.runtime``), which both faces use; then everything
else (reload, routing, maps, throttle, metrics, log, config, settings...).

* the faces do not import each other;
* nothing below the faces imports a face;
* ``authsvc`` imports ``authsvc.proxy`` only lazily, from ``cli.py``;
* the proxy without a health port never imports aiohttp;
* the throttle's policy (and its store protocol) imports no I/O, directly or
  through another of our modules;
* only ``authsvc.routing`` imports ``authsvc.login`` (one place normalises names);
* only ``authsvc.routing`` and the maps themselves import ``authsvc.maps``
  (one place reads maps);
* only ``authsvc/maps/mysql.py`` imports aiomysql;
* only ``authsvc/redisconn.py`` imports redis (one home for Redis connections);
* only ``authsvc/runtime/loop.py`` imports uvloop (an optional extra: one
  place decides the loop);
* the pure modules and the configuration readers import no event loop,
  network, HTTP or database library;
* nothing imports a top-level ``proxy`` (it installs as ``authsvc.proxy``).

Each rule is a function of the sources (module name -> text), so that a test
can feed it a made-up module and watch it report the import.  Imports under
``if TYPE_CHECKING:`` never run and do not count; imports inside a function
count, but are lazy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: module name -> source text.
Sources = Mapping[str, str]
Rule = Callable[[Sources], list[str]]

FACES = ("authsvc.http", "authsvc.proxy")
#: Above the faces: the command line, which starts either.
ABOVE_FACES = ("authsvc.cli", "authsvc.__main__")
PURE = ("authsvc.login", "authsvc.settings", "authsvc.redact", "authsvc.maps.serverspec",
        "authsvc.address", "authsvc.control.trust", "authsvc.failures",
        "authsvc.control.selectors", "authsvc.control.paths", "authsvc.holds.rules",
        "authsvc.sizing", "authsvc.exposition")
THROTTLE_POLICY = ("authsvc.throttle.policy", "authsvc.throttle.store")
IO_LIBRARIES = frozenset({"asyncio", "aiohttp", "aiomysql", "pymysql", "socket", "sqlite3",
                          "redis", "ssl", "selectors", "select", "subprocess", "threading",
                          "concurrent", "multiprocessing", "http", "urllib"})
NETWORK_LIBRARIES = frozenset({"asyncio", "aiohttp", "aiomysql", "pymysql", "socket"})


# --- reading the sources -----------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "proxy":  # proxy/ installs as authsvc.proxy (pyproject's package-dir)
        parts.insert(0, "authsvc")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def tree_sources() -> dict[str, str]:
    """Every module of ``authsvc/`` and ``proxy/``, by the name it installs under."""
    files = [*ROOT.glob("authsvc/**/*.py"), *ROOT.glob("proxy/**/*.py")]
    return {module_name(p): p.read_text() for p in sorted(files) if "__pycache__" not in p.parts}


@dataclass(frozen=True)
class Imports:
    """What one module imports: at any depth, and when it is imported (not in a function)."""

    every: frozenset[str]
    eager: frozenset[str]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, lazy
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]), lazy)
        else:
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _import_nodes(child, inner)


@cache
def imports_in(module: str, source: str, *, package: bool = False) -> Imports:
    """Every module (and from-imported name) ``source`` imports; relative ones resolved."""
    anchor = module.split(".") if package else module.split(".")[:-1]
    every: set[str] = set()
    eager: set[str] = set()
    for node, lazy in _import_nodes(ast.parse(source, module), lazy=False):
        names: set[str] = set()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        else:
            base = node.module or ""
            if node.level:
                parent = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        every |= names
        if not lazy:
            eager |= names
    return Imports(frozenset(every), frozenset(eager))


def parsed(sources: Sources) -> dict[str, Imports]:
    packages = {name.rsplit(".", 1)[0] for name in sources if "." in name}
    return {name: imports_in(name, text, package=name in packages)
            for name, text in sources.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def importers_of(target: str, sources: Sources) -> set[str]:
    return {module for module, found in parsed(sources).items()
            if any(within(name, target) for name in found.every)}


def reached(start: str, sources: Sources, *, eager_only: bool) -> set[str]:
    """Every name imported by ``start`` or, in turn, by our modules it imports."""
    table = parsed(sources)
    seen: set[str] = set()
    todo = [start]
    names: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module not in table:
            continue
        seen.add(module)
        found = table[module].eager if eager_only else table[module].every
        names |= found
        for name in found:
            parts = name.split(".")
            # the module itself, or the module a name was taken from, and its packages
            todo += [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return names


# --- the rules ----------------------------------------------------------------------


def faces_import_each_other(sources: Sources) -> list[str]:
    found = []
    for face in FACES:
        for other in FACES:
            if other != face:
                found += [f"{m} imports {other}" for m in sorted(importers_of(other, sources))
                          if within(m, face)]
    return found


def something_below_imports_a_face(sources: Sources) -> list[str]:
    found = []
    for face in FACES:
        found += [f"{m} imports {face}" for m in sorted(importers_of(face, sources))
                  if not any(within(m, top) for top in (*FACES, *ABOVE_FACES))]
    return found


def authsvc_imports_proxy_eagerly(sources: Sources) -> list[str]:
    table = parsed(sources)
    found = []
    for module in sorted(importers_of("authsvc.proxy", sources)):
        if within(module, "authsvc.proxy"):
            continue
        if module != "authsvc.cli":
            found.append(f"{module} imports authsvc.proxy")
        elif any(within(name, "authsvc.proxy") for name in table[module].eager):
            found.append(f"{module} imports authsvc.proxy when it is imported")
    return found


def proxy_needs_aiohttp(sources: Sources) -> list[str]:
    if "authsvc.proxy.command" not in sources:
        return ["authsvc.proxy.command (``authsvc proxy``) is missing"]
    names = reached("authsvc.proxy.command", sources, eager_only=True)
    return ["authsvc.proxy.command imports aiohttp when it is imported"] if any(
        within(n, "aiohttp") for n in names) else []


def throttle_policy_does_io(sources: Sources) -> list[str]:
    found = []
    for module in THROTTLE_POLICY:
        io = {n.split(".")[0] for n in reached(module, sources, eager_only=False)} & IO_LIBRARIES
        found += [f"{module} reaches {lib}" for lib in sorted(io)]
    return found


def pure_modules_do_io(sources: Sources) -> list[str]:
    found = []
    for module in PURE:
        io = {n.split(".")[0] for n in reached(module, sources, eager_only=False)} & IO_LIBRARIES
        found += [f"{module} reaches {lib}" for lib in sorted(io)]
    return found


def config_does_network_io(sources: Sources) -> list[str]:
    table = parsed(sources)
    return [f"{m} imports {lib}" for m in sorted(table) if within(m, "authsvc.config")
            for lib in sorted({n.split(".")[0] for n in table[m].every} & NETWORK_LIBRARIES)]


def login_normalised_elsewhere(sources: Sources) -> list[str]:
    return [f"{m} imports authsvc.login" for m in sorted(importers_of("authsvc.login", sources))
            if m != "authsvc.routing"]


def maps_read_elsewhere(sources: Sources) -> list[str]:
    return [f"{m} imports authsvc.maps" for m in sorted(importers_of("authsvc.maps", sources))
            if m != "authsvc.routing" and not within(m, "authsvc.maps")]


def mysql_client_elsewhere(sources: Sources) -> list[str]:
    return [f"{m} imports {lib}" for lib in ("aiomysql", "pymysql")
            for m in sorted(importers_of(lib, sources)) if m != "authsvc.maps.mysql"]


def redis_client_elsewhere(sources: Sources) -> list[str]:
    return [f"{m} imports redis" for m in sorted(importers_of("redis", sources))
            if m != "authsvc.redisconn"]


def uvloop_elsewhere(sources: Sources) -> list[str]:
    return [f"{m} imports uvloop" for m in sorted(importers_of("uvloop", sources))
            if m != "authsvc.runtime.loop"]


def top_level_proxy_imported(sources: Sources) -> list[str]:
    return [f"{m} imports proxy" for m in sorted(importers_of("proxy", sources))]


RULES: dict[str, Rule] = {
    "faces do not import each other": faces_import_each_other,
    "nothing below the faces imports a face": something_below_imports_a_face,
    "authsvc imports the proxy only lazily, from the CLI": authsvc_imports_proxy_eagerly,
    "the proxy without a health port needs no aiohttp": proxy_needs_aiohttp,
    "the throttle's policy does no I/O": throttle_policy_does_io,
    "pure modules do no I/O": pure_modules_do_io,
    "config readers do no network I/O": config_does_network_io,
    "only routing normalises names": login_normalised_elsewhere,
    "only routing reads maps": maps_read_elsewhere,
    "only the MySQL map imports aiomysql": mysql_client_elsewhere,
    "only redisconn imports redis": redis_client_elsewhere,
    "only the loop module imports uvloop": uvloop_elsewhere,
    "nothing imports a top-level proxy": top_level_proxy_imported,
}


# --- the tree obeys every rule ------------------------------------------------------


def test_the_check_sees_the_tree() -> None:
    names = set(tree_sources())
    assert {"authsvc.routing", "authsvc.login", "authsvc.maps", "authsvc.http.app",
            "authsvc.proxy.server", "authsvc.runtime.workers", "authsvc.control.flush",
            *PURE, *THROTTLE_POLICY} <= names


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_tree_keeps_the_rule(rule: str) -> None:
    assert RULES[rule](tree_sources()) == []


# --- each rule reports a made-up import -----------------------------------------------


def with_fake(**modules: str) -> dict[str, str]:
    """The tree with some modules replaced or added (``authsvc__routing`` = authsvc.routing)."""
    return {**tree_sources(), **{k.replace("__", "."): v for k, v in modules.items()}}


BROKEN: list[tuple[str, dict[str, str], str]] = [
    ("faces do not import each other",
     {"authsvc__http__app": "import authsvc.proxy.server\n"},
     "authsvc.http.app imports authsvc.proxy"),
    ("faces do not import each other",
     {"authsvc__proxy__health": "from authsvc.http.health import Health\n"},
     "authsvc.proxy.health imports authsvc.http"),
    ("nothing below the faces imports a face",
     {"authsvc__routing": "import authsvc.http.app\n"},
     "authsvc.routing imports authsvc.http"),
    ("nothing below the faces imports a face",
     {"authsvc__runtime__workers": "from authsvc.http.server import run_server\n"},
     "authsvc.runtime.workers imports authsvc.http"),
    ("nothing below the faces imports a face",
     {"authsvc__control__flush": "def f():\n    from authsvc.proxy import health\n"},
     "authsvc.control.flush imports authsvc.proxy"),
    ("nothing below the faces imports a face",
     {"authsvc__throttle__command": "from ..http.flush import target\n"},
     "authsvc.throttle.command imports authsvc.http"),
    ("authsvc imports the proxy only lazily, from the CLI",
     {"authsvc__cli": "from authsvc.proxy.command import main\n"},
     "authsvc.cli imports authsvc.proxy when it is imported"),
    ("authsvc imports the proxy only lazily, from the CLI",
     {"authsvc__commands": "def lookup():\n    import authsvc.proxy.session\n"},
     "authsvc.commands imports authsvc.proxy"),
    ("the proxy without a health port needs no aiohttp",
     {"authsvc__proxy__run": "from authsvc.proxy.health import HealthEndpoint\n"},
     "authsvc.proxy.command imports aiohttp when it is imported"),
    ("the throttle's policy does no I/O",
     {"authsvc__throttle__policy": "import sqlite3\n"},
     "authsvc.throttle.policy reaches sqlite3"),
    ("the throttle's policy does no I/O",
     {"authsvc__throttle__policy": "from authsvc.throttle import counts\n",
      "authsvc__throttle__counts": "import redis.asyncio\n"},
     "authsvc.throttle.policy reaches redis"),
    ("pure modules do no I/O",
     {"authsvc__settings": "import socket\n"},
     "authsvc.settings reaches socket"),
    ("pure modules do no I/O",
     {"authsvc__control__trust": "from aiohttp import web\n"},
     "authsvc.control.trust reaches aiohttp"),
    ("config readers do no network I/O",
     {"authsvc__config__toml": "import asyncio\n"},
     "authsvc.config.toml imports asyncio"),
    ("only routing normalises names",
     {"authsvc__proxy__session": "from authsvc.login import normalise\n"},
     "authsvc.proxy.session imports authsvc.login"),
    ("only routing reads maps",
     {"authsvc__http__app": "from authsvc.maps.file import FileMap\n"},
     "authsvc.http.app imports authsvc.maps"),
    ("only the MySQL map imports aiomysql",
     {"authsvc__maps__file": "import aiomysql\n"},
     "authsvc.maps.file imports aiomysql"),
    ("only redisconn imports redis",
     {"authsvc__holds__redis": "def f():\n    import redis.asyncio\n"},
     "authsvc.holds.redis imports redis"),
    ("only the loop module imports uvloop",
     {"authsvc__proxy__command": "def f():\n    import uvloop\n"},
     "authsvc.proxy.command imports uvloop"),
    ("nothing imports a top-level proxy",
     {"authsvc__cli": "def f():\n    from proxy.server import main\n"},
     "authsvc.cli imports proxy"),
]


@pytest.mark.parametrize(("rule", "modules", "report"), BROKEN,
                         ids=[f"{rule}: {next(iter(m))}" for rule, m, _ in BROKEN])
def test_the_rule_reports_a_made_up_import(rule: str, modules: dict[str, str],
                                           report: str) -> None:
    assert report in RULES[rule](with_fake(**modules))


def test_every_rule_is_shown_failing() -> None:
    assert {rule for rule, _, _ in BROKEN} == set(RULES)


def test_authsvc_proxy_starts_without_aiohttp() -> None:
    """What the AST rule predicts, in a fresh interpreter."""
    code = ("import sys, authsvc.cli, authsvc.proxy.command, authsvc.proxy.run\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]"


def test_type_checking_imports_do_not_count_and_function_imports_are_lazy() -> None:
    found = imports_in("authsvc.x", "from typing import TYPE_CHECKING\n"
                                    "if TYPE_CHECKING:\n    import aiohttp\n"
                                    "def f():\n    import socket\n"
                                    "import ssl\n")
    assert "aiohttp" not in found.every
    assert "socket" in found.every and "socket" not in found.eager
    assert "ssl" in found.eager
