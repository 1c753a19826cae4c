"""``/metrics`` text read by ``prometheus_client``'s own parser, as a Prometheus server reads it.

A line the parser cannot read fails the test; so does a series written twice,
which the parser lets through.  Look series up by name and labels:
``Scrape(text).value("authsvc_map_up", map="db")``.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """Every family and sample of one exposition."""

    def __init__(self, text: str) -> None:
        assert text.endswith("\n"), "the exposition ends with a newline"
        self.types: dict[str, str] = {}
        self.samples: list[Sample] = []
        seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                series = (sample.name, frozenset(sample.labels.items()))
                assert series not in seen, f"{sample.name}{sample.labels} written twice"
                seen.add(series)
                self.samples.append(sample)

    def find(self, name: str, **labels: str) -> list[Sample]:
        """The samples of ``name`` whose labels include ``labels``."""
        return [s for s in self.samples
                if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` with exactly these labels."""
        found = [s for s in self.find(name, **labels) if s.labels == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return float(found[0].value)

    def has(self, name: str, **labels: str) -> bool:
        return any(s.labels == labels for s in self.find(name, **labels))

    def sum(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        return sum(float(s.value) for s in self.find(name, **labels))

    def series(self, written: str) -> float:
        """The value of a series written as in the text, ``name{a="x",b="y"}`` (plain labels)."""
        found = [s for s in self.samples if _written(s) == written]
        assert len(found) == 1, f"{written}: {len(found)} samples"
        return float(found[0].value)

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes among the samples of ``name``."""
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def _written(sample: Sample) -> str:
    labels = ",".join(f'{key}="{value}"' for key, value in sample.labels.items())
    return f"{sample.name}{{{labels}}}" if labels else sample.name
