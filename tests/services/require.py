"""The one rule for what a test needs: missing skips locally and fails under CI=true.

Every test that needs a daemon, a binary, a packaged file or a reachable
service asks ``require()`` (or ``require_binary``/``require_file``, built on
it). On a developer machine a missing dependency skips the test with the
reason; when ``CI=true`` (``.ci/run`` sets it) the same test fails, because
``tests/run.sh`` installs everything and a skip there would hide a hole.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def in_ci() -> bool:
    """True under ``CI=true``: a missing dependency is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


def require(available: bool, reason: str) -> None:
    """Return when ``available``; else fail under CI=true and skip otherwise."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing dependency fails the run)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, *extra_dirs: str) -> str:
    """The path of the program ``name``, looked up in ``extra_dirs``, sbin and PATH."""
    path = shutil.which(name, path=os.pathsep.join([*extra_dirs, "/usr/sbin", "/usr/bin",
                                                    os.environ.get("PATH", "")]))
    require(path is not None, f"{name} is not installed (bash tests/run.sh installs it)")
    assert path is not None
    return path


def require_file(path: Path | str, package: str) -> Path:
    """``path``, which the Debian ``package`` ships; required like a binary."""
    found = Path(path)
    require(found.exists(), f"{found} is missing ({package}; bash tests/run.sh installs it)")
    return found
