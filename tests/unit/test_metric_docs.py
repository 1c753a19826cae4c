"""The reader of the docs' metric tables and of an exposition (``tests/helpers/metric_docs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.metric_docs import documented, exposed

DOC = """# Metrics

| metric | type | labels | meaning |
|---|---|---|---|
| `authsvc_x_total` | counter | `listener`, `result` (`ok`, `no_route`) | logins |
| `authsvc_y_seconds` | histogram | `store`, `le` | latency |
| `authsvc_up` | gauge | | up |

Text after the table: `authsvc_not_a_row` is not listed.
"""

TEXT = """# HELP authsvc_x_total Logins.
# TYPE authsvc_x_total counter
authsvc_x_total{listener="imap4",result="ok"} 1
# HELP authsvc_y_seconds Latency.
# TYPE authsvc_y_seconds histogram
authsvc_y_seconds_bucket{store="a:143",le="0.1"} 1
authsvc_y_seconds_bucket{store="a:143",le="+Inf"} 1
authsvc_y_seconds_sum{store="a:143"} 0.05
authsvc_y_seconds_count{store="a:143"} 1
# HELP authsvc_up Up.
# TYPE authsvc_up gauge
authsvc_up 1
"""


def test_the_table_and_the_exposition_describe_the_same_families(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(DOC)
    listed = documented(tmp_path / "doc.md")
    assert listed == {
        "authsvc_x_total": ("counter", frozenset({"listener", "result"})),
        "authsvc_y_seconds": ("histogram", frozenset({"store", "le"})),
        "authsvc_up": ("gauge", frozenset()),
    }
    assert exposed(TEXT) == listed


def test_a_missing_label_or_family_is_a_difference(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(DOC.replace("`listener`, `result`", "`listener`"))
    assert documented(tmp_path / "doc.md") != exposed(TEXT)
    (tmp_path / "doc.md").write_text(DOC.replace("| `authsvc_up` | gauge | | up |\n", ""))
    assert documented(tmp_path / "doc.md") != exposed(TEXT)


def test_a_row_that_is_not_a_metric_row_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(DOC.replace("| `authsvc_up` | gauge |", "| up | gauge |"))
    with pytest.raises(AssertionError, match="metric row"):
        documented(tmp_path / "doc.md")
