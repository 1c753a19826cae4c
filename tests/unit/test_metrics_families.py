"""Extra metric families (``authsvc proxy``): rendered, and combined over workers."""

from __future__ import annotations

import os
from pathlib import Path

from authsvc.exposition import Family
from authsvc.metrics import FamilySeries, Metrics

PROXY_SESSIONS = Family("authsvc_test_sessions", "gauge", "Live sessions.", combine="sum")
PROXY_BYTES = Family("authsvc_test_bytes_total", "counter", "Bytes.")
PROXY_UP = Family("authsvc_test_up", "gauge", "Up.")
EXTRA: list[FamilySeries] = [(PROXY_SESSIONS, [{"listener": "imap4"}, {"listener": "pop3"}]),
         (PROXY_BYTES, [{"listener": "imap4"}]), (PROXY_UP, [{}])]


def test_extra_families_render_and_sum_over_workers(tmp_path: Path) -> None:
    one = Metrics(str(tmp_path), pid=os.getpid(), families=EXTRA)
    two = Metrics(str(tmp_path), pid=os.getppid(), families=EXTRA)
    for metrics, sessions, up in ((one, 3, 1.0), (two, 4, 0.0)):
        metrics.attach_maps([])
        metrics.add(PROXY_SESSIONS, sessions, listener="imap4")
        metrics.add(PROXY_BYTES, 100, listener="imap4")
        metrics.set(PROXY_UP, up)
    text = one.render()
    assert "# TYPE authsvc_test_sessions gauge" in text
    assert 'authsvc_test_sessions{listener="imap4"} 7' in text  # summed, not the minimum
    assert 'authsvc_test_sessions{listener="pop3"} 0' in text
    assert 'authsvc_test_bytes_total{listener="imap4"} 200' in text
    assert "authsvc_test_up 0" in text  # the default combine: the minimum
    one.close()
    two.close()
