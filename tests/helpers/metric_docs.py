"""The metric lists of docs/serve.md and docs/proxy.md, and the families a ``/metrics`` shows.

A list is a Markdown table whose header starts ``| metric | type |``: the
first column holds one family's name in backticks, the second its type.
:func:`documented` reads every such table of a file; :func:`exposed` reads
the ``# TYPE`` lines of an exposition.  Both give ``{name: type}``, so a test
can ask that the docs and the output name the same series with the same types.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^\|\s*metric\s*\|\s*type\s*\|")
_ROW = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram)\s*\|")


def documented(path: Path) -> dict[str, str]:
    """``{family: type}`` from the metric tables of a docs file."""
    found: dict[str, str] = {}
    in_table = False
    for line in path.read_text().splitlines():
        if _HEADER.match(line):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if in_table:
            row = _ROW.match(line)
            if row is not None:
                found[row.group(1)] = row.group(2)
            elif not line.startswith("|--") and not line.startswith("|---"):
                raise AssertionError(f"{path.name}: a metric row must be | `name` | type |: {line}")
    return found


def exposed(text: str) -> dict[str, str]:
    """``{family: type}`` from the ``# TYPE`` lines of a Prometheus text exposition."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            found[name] = kind
    return found
