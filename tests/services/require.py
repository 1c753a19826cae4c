"""Find a daemon's binary, or skip (developer machine) / fail (CI) the test."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, *extra_dirs: str) -> str:
    """The path of ``name``; skips locally and fails under CI=true when missing."""
    path = shutil.which(name, path=os.pathsep.join([*extra_dirs, "/usr/sbin", "/usr/bin",
                                                    os.environ.get("PATH", "")]))
    if path is not None:
        return path
    message = f"{name} is not installed (bash tests/run.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
