"""The proxy's metric families on top of ``authsvc.metrics`` (the same /metrics as serve).

The families are fixed per process (listener names come from the settings),
so every worker's metrics file has the same layout and a scrape from any
worker shows the totals over all of them (``authsvc/metrics.py``): counters
add up, and the two session gauges are added up over the live workers too.
The gauges and the byte counters are copied from the server's own counts on
every scrape and once a second (:meth:`ProxyMetrics.refresh`), so the hot path
only ever increments a float.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from authsvc.proxy.limits import Refused

from authsvc.failures import MEANINGS, FailureKind
from authsvc.metrics import Family, FamilySeries, Metrics

SESSIONS = Family("authsvc_proxy_sessions", "gauge",
                  "Logged-in sessions, relaying between client and store.", combine="sum")
PREAUTH = Family("authsvc_proxy_preauth_sessions", "gauge",
                 "Connections not logged in yet (PROXY header, TLS handshake, login).",
                 combine="sum")
CONNECTIONS = Family("authsvc_proxy_connections_total", "counter", "Connections accepted.")
REFUSED = Family("authsvc_proxy_refused_total", "counter",
                 "Connections refused before a session: limits, the descriptor headroom, "
                 "untrusted or bad PROXY headers.")
LOGINS = Family("authsvc_proxy_logins_total", "counter", "Login attempts by result.")
TLS_FAILURES = Family("authsvc_proxy_tls_handshake_failures_total", "counter",
                      "TLS handshakes that failed, with clients or with stores.")
BYTES = Family("authsvc_proxy_bytes_total", "counter",
               "Bytes read from (in) and written to (out) clients.")

REFUSALS = (*(r.value for r in Refused), "proxy_untrusted", "proxy_invalid")
#: ``result`` of a login: "ok", or the failure's label in authsvc/failures.py.
LOGIN_RESULTS = ("ok", *(meaning.label for meaning in MEANINGS.values()))
SIDES = ("client", "store")
DIRECTIONS = ("in", "out")


def families(listeners: Iterable[str]) -> list[FamilySeries]:
    """Every series the proxy records, for ``Metrics(families=...)``."""
    names = list(listeners)
    return [
        (SESSIONS, [{"listener": n} for n in names]),
        (PREAUTH, [{"listener": n} for n in names]),
        (CONNECTIONS, [{"listener": n} for n in names]),
        (REFUSED, [{"listener": n, "reason": r} for n in names for r in REFUSALS]),
        (LOGINS, [{"listener": n, "result": r} for n in names for r in LOGIN_RESULTS]),
        (TLS_FAILURES, [{"listener": n, "side": s} for n in names for s in SIDES]),
        (BYTES, [{"listener": n, "direction": d} for n in names for d in DIRECTIONS]),
    ]


class ProxyMetrics:
    """What the server and its sessions record."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def connection(self, listener: str) -> None:
        self.metrics.add(CONNECTIONS, listener=listener)

    def refused(self, listener: str, reason: str) -> None:
        self.metrics.add(REFUSED, listener=listener, reason=reason)

    def login(self, listener: str, kind: FailureKind | None) -> None:
        result = "ok" if kind is None else kind.meaning.label
        self.metrics.add(LOGINS, listener=listener, result=result)

    def tls_failure(self, listener: str, side: str) -> None:
        self.metrics.add(TLS_FAILURES, listener=listener, side=side)

    def refresh(
        self,
        sessions: Mapping[str, int],
        preauth: Mapping[str, int],
        bytes_by_listener: Mapping[str, tuple[int, int]],
    ) -> None:
        """Copy the server's live counts (gauges) and byte totals (counters)."""
        for listener, count in sessions.items():
            self.metrics.set(SESSIONS, count, listener=listener)
        for listener, count in preauth.items():
            self.metrics.set(PREAUTH, count, listener=listener)
        for listener, (bytes_in, bytes_out) in bytes_by_listener.items():
            self.metrics.set(BYTES, bytes_in, listener=listener, direction="in")
            self.metrics.set(BYTES, bytes_out, listener=listener, direction="out")
