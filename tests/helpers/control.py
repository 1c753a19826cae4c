"""The ``[control]`` section integration tests give a node, with its secret file."""

from __future__ import annotations

from pathlib import Path


def control_section(root: Path, port: int, secret: str, host: str = "127.0.0.1") -> str:
    """``[control]`` listening on ``host:port``, for loopback, with ``secret`` in ``root``."""
    (root / "control-secret").write_text(secret + "\n")
    return f"""
[control]
listen = "{host}:{port}"
secret_file = "{root / 'control-secret'}"
allow = ["127.0.0.1/32"]
"""
