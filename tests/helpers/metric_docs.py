"""The metric lists of docs/serve.md and docs/proxy.md, and the families a ``/metrics`` shows.

A list is a Markdown table whose header starts ``| metric | type | labels |``:
the first column holds one family's name in backticks, the second its type,
the third its label names in backticks (a parenthesis after a label may list
its values, in backticks or not; those are not label names).
:func:`documented` reads every such table of a file; :func:`exposed` reads an
exposition with ``prometheus_client``'s parser.  Both give
``{name: (type, label names)}``, so a test can ask that the docs and the
output name the same families, with the same types and labels.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Described = dict[str, tuple[str, frozenset[str]]]

_HEADER = re.compile(r"^\|\s*metric\s*\|\s*type\s*\|\s*labels\s*\|")
_ROW = re.compile(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|")
_PARENTHESES = re.compile(r"\([^)]*\)")
_NAME = re.compile(r"`([a-z_][a-z0-9_]*)`")


def documented(path: Path) -> Described:
    """``{family: (type, label names)}`` from the metric tables of a docs file."""
    found: Described = {}
    in_table = False
    for line in path.read_text().splitlines():
        if _HEADER.match(line):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if not in_table or re.match(r"^\|[-| ]+\|$", line):
            continue
        row = _ROW.match(line)
        assert row is not None, f"{path.name}: a metric row is | `name` | type | labels |: {line}"
        labels = frozenset(_NAME.findall(_PARENTHESES.sub("", row.group(3))))
        found[row.group(1)] = (row.group(2), labels)
    return found


def exposed(text: str) -> Described:
    """``{family: (type, label names)}`` from a Prometheus text exposition."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
    labels: dict[str, set[str]] = {name: set() for name in types}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in (sample.name, re.sub(r"_(bucket|sum|count)$", "", sample.name)):
                if name in labels:
                    labels[name].update(sample.labels)
                    break
    return {name: (kind, frozenset(labels[name])) for name, kind in types.items()}
