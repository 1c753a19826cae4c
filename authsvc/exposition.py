"""The Prometheus text exposition format (0.0.4), written by hand.

A family opens with its ``# HELP`` and ``# TYPE`` lines, then one
``name{label="v"} value`` line a series.  Why by hand: the format is those few
lines of text, and ``prometheus_client`` would be a new runtime dependency
whose default global registry we would have to avoid anyway (no module-level
mutable state, several workers).  Values are written as Prometheus writes
them, ``NaN``, ``+Inf`` and ``-Inf`` included.  What the series are and where
their numbers come from is ``authsvc/metrics.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name, Prometheus type and help text."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    #: Gauges over several workers: "min" (map_up: down if any worker sees it
    #: down) or "sum" (a count, such as live sessions).
    combine: str = "min"
    #: A histogram's upper bounds in seconds (``+Inf`` is added).
    buckets: tuple[float, ...] = ()


def header(family: Family) -> list[str]:
    """The ``# HELP`` and ``# TYPE`` lines that open a family."""
    return [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(**labels: str) -> str:
    """A label set as written after a series' name: ``{k="v",...}``, or nothing when empty."""
    inner = ",".join(f'{key}="{escape_label(value)}"' for key, value in labels.items())
    return "{" + inner + "}" if inner else ""


def format_value(value: float) -> str:
    """A sample value as Prometheus writes one: ``NaN``, ``+Inf``, ``-Inf``, else a number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def histogram_series(family: Family, **labels: str) -> list[tuple[str, str]]:
    """The series of one labelled histogram in render order: buckets, ``_sum``, ``_count``.

    ``+Inf`` last.  Rendered cumulative (each observation counts in every
    bucket it fits); ``authsvc/metrics.py`` stores each bucket's own count.
    """
    bounds = [repr(b) for b in family.buckets] + ["+Inf"]
    return ([(family.name + "_bucket", format_labels(**labels, le=b)) for b in bounds]
            + [(family.name + "_sum", format_labels(**labels)),
               (family.name + "_count", format_labels(**labels))])


def cumulative_samples(family: Family, values: Mapping[tuple[str, str], float]
                       ) -> list[tuple[str, str, float]]:
    """One histogram family's samples in ``values``' order, its buckets made cumulative.

    A sample is ``(name, labels, value)``.  Each label set is laid out as
    its buckets (``+Inf`` last), ``_sum`` and ``_count``
    (``histogram_series``); a stored bucket counts what fell in it alone.
    """
    bucket, total, count = (family.name + "_bucket", family.name + "_sum",
                            family.name + "_count")
    samples: list[tuple[str, str, float]] = []
    running = 0.0
    for (stored, labels), value in values.items():
        if stored == bucket:
            running += value
            samples.append((stored, labels, running))
        elif stored in (total, count):
            running = 0.0
            samples.append((stored, labels, value))
    return samples
