"""The built distribution works on its own: wheel and sdist, in a fresh venv, away from the repo.

The other tests run from the repository, whose root is on ``sys.path``: a
module missing from the wheel, a template left out of the package data, or a
leftover top-level ``proxy`` import would pass them all. Here ``python -m
build`` makes an sdist and, from it, a wheel; the wheel is installed (not
editable, with the ``[redis]`` extra so that every optional module imports)
into a new venv, and everything runs from a directory outside the repository.

It needs the package index (the build's setuptools, the wheel's
dependencies): unreachable, the test skips locally and fails under CI=true
(tests/services/require.py). About a minute.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import authsvc
from tests.services.require import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "authsvc.toml"
PERDITION_EXAMPLES = sorted((ROOT / "deploy" / "perdition").glob("perdition.*.conf"))
#: Not part of the source: build output, caches, the development venv.
SKIPPED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                 ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
                                 "tmp")

#: Walks every module of the installed package and imports each one;
#: walk_packages alone would swallow an ImportError in a subpackage.
#: ``__main__`` runs the CLI when imported: ``python -m authsvc`` runs it instead.
IMPORT_ALL = """
import importlib, pkgutil, sys
import authsvc

def fail(name):
    raise SystemExit(f"cannot import {name}: {sys.exc_info()[1]!r}")

names = [m.name for m in pkgutil.walk_packages(authsvc.__path__, "authsvc.", onerror=fail)]
for name in names:
    if not name.endswith(".__main__"):
        importlib.import_module(name)
print(authsvc.__file__)
print(*names, sep="\\n")
"""


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    venv: Path
    #: Outside the repository: nothing there shadows the installed package.
    elsewhere: Path

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items()
               if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        return subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.elsewhere,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)


def _index_reachable(scratch: Path) -> bool:
    """True when pip can fetch from the package index (the build's setuptools)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--timeout", "20",
         "--retries", "1", "--dest", str(scratch), "setuptools>=77"],
        capture_output=True, text=True, timeout=120, check=False)
    return probe.returncode == 0


def _checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{result.args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    require(importlib.util.find_spec("build") is not None,
            "the build package is not installed (the [test] extra has it)")
    work = tmp_path_factory.mktemp("wheel")
    require(_index_reachable(work / "probe"), "the package index is unreachable")
    # A copy of the working tree: the build writes its egg-info into the source.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIPPED)
    dist = work / "dist"
    # Without --sdist/--wheel, build makes the sdist and then the wheel from
    # the unpacked sdist: a file the sdist lacks is missing from the wheel too.
    _checked(subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                            capture_output=True, text=True, timeout=600, check=False))
    [wheel] = dist.glob("authsvc-*.whl")
    [sdist] = dist.glob("authsvc-*.tar.gz")
    venv = work / "venv"
    _checked(subprocess.run([sys.executable, "-m", "venv", str(venv)],
                            capture_output=True, text=True, timeout=120, check=False))
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    built = Built(wheel, sdist, venv, elsewhere)
    _checked(built.run("python", "-m", "pip", "install", "-q", f"{wheel}[redis]", timeout=600))
    return built


def _site_packages(built: Built) -> Path:
    out = _checked(built.run("python", "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    return Path(out.strip())


def test_every_module_imports_from_the_installed_wheel(built: Built) -> None:
    lines = _checked(built.run("python", "-c", IMPORT_ALL)).splitlines()
    location, names = Path(lines[0]), set(lines[1:])
    assert location.is_relative_to(_site_packages(built)), location
    for name in ("authsvc.cli", "authsvc.templates", "authsvc.proxy", "authsvc.proxy.server",
                 "authsvc.proxy.imap", "authsvc.proxy.pop3"):
        assert name in names, sorted(names)


def test_nothing_installs_outside_the_authsvc_package(built: Built) -> None:
    site = _site_packages(built)
    assert not (site / "proxy").exists()
    assert not (site / "templates").exists()
    with zipfile.ZipFile(built.wheel) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"authsvc"}, tops
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
    assert "authsvc/templates/nginx-mail.conf.j2" in names
    assert "authsvc/templates/haproxy.cfg.j2" in names
    assert "authsvc/py.typed" in names


def test_sdist_holds_the_proxy_and_templates_folders(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert "proxy/__init__.py" in names
    assert "proxy/server.py" in names
    assert "templates/nginx-mail.conf.j2" in names
    assert "templates/haproxy.cfg.j2" in names
    assert "pyproject.toml" in names


def test_installed_commands_run(built: Built) -> None:
    version = _checked(built.run("authsvc", "--version"))
    assert version.strip() == f"authsvc {authsvc.__version__}"
    assert _checked(built.run("python", "-m", "authsvc", "--version")) == version
    nginx = _checked(built.run("authsvc", "render-nginx", "-c", str(EXAMPLE)))
    assert "mail {" in nginx
    assert "auth_http" in nginx
    perdition = [arg for path in PERDITION_EXAMPLES for arg in ("-c", str(path))]
    assert perdition, "deploy/perdition/ has no example"
    assert "mail {" in _checked(built.run("authsvc", "render-nginx", *perdition))
    usage = _checked(built.run("authsvc", "proxy", "--help"))
    assert usage.startswith("usage: authsvc proxy")
