"""The proxy's metric families on top of ``authsvc.metrics`` (the same /metrics as serve).

The families are fixed per process (listener names come from the settings),
so every worker's metrics file has the same layout and a scrape from any
worker shows the totals over all of them (``authsvc/metrics.py``): counters
add up, and the two session gauges are added up over the live workers too.
The gauges and the byte counters are copied from the server's own counts on
every scrape and once a second (:meth:`ProxyMetrics.refresh`), so the hot path
only ever increments a float.

Health by store: connect failures, connect and login latency and open
sessions, labelled ``store="host:port"`` as the map names it.  A store's
series are added after the first login goes to it: adding them rewrites the
worker's metrics file (``Metrics.add_series``), so a login only notes the new
store and its numbers, and the next refresh (every second, and before this
worker answers a scrape) adds the series and records them.  Past
:data:`STORE_LABELS` stores a worker counts the rest under ``store="other"``,
so a map gone wrong cannot make thousands of series (docs/proxy.md, "Health,
metrics and workers").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from authsvc.proxy.limits import Refused

from authsvc.exposition import Family
from authsvc.failures import MEANINGS, FailureKind
from authsvc.metrics import BUCKETS, FamilySeries, Metrics

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

KICKED = Family("authsvc_proxy_sessions_kicked_total", "counter",
                "Sessions ended by an operator (authsvc sessions kick).")
STORE_CONNECT_FAILURES = Family("authsvc_proxy_store_connect_failures_total", "counter",
                                "Connections to a store that failed or timed out.")
STORE_CONNECT = Family("authsvc_proxy_store_connect_seconds", "histogram",
                       "Time to connect to a store (TCP, and TLS for implicit TLS).",
                       buckets=BUCKETS)
STORE_LOGIN = Family("authsvc_proxy_store_login_seconds", "histogram",
                     "Time from connected to the store accepting the login.", buckets=BUCKETS)
STORE_SESSIONS = Family("authsvc_proxy_store_sessions", "gauge",
                        "Logged-in sessions relaying to a store.", combine="sum")
STORE_FAMILIES = (STORE_CONNECT_FAILURES, STORE_CONNECT, STORE_LOGIN, STORE_SESSIONS)
#: Store label values one worker gives before it counts the rest as "other".
STORE_LABELS = 32
OTHER_STORE = "other"

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
        (KICKED, [{"listener": n} for n in names]),
        *((family, [{"store": OTHER_STORE}]) for family in STORE_FAMILIES),
    ]


class ProxyMetrics:
    """What the server and its sessions record."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: Store label values given so far (at most STORE_LABELS, then "other").
        self._stores: set[str] = set()
        #: Stores seen since the last refresh, and what was recorded for them
        #: (family, value or None for a count), added at the refresh.
        self._pending: dict[str, list[tuple[Family, float | None]]] = {}

    def _label(self, store: str) -> str | None:
        """The ``store`` label for ``host:port``; None for a store new since the refresh."""
        if store in self._stores:
            return store
        if store in self._pending:
            return None
        if len(self._stores) + len(self._pending) >= STORE_LABELS or store == OTHER_STORE:
            return OTHER_STORE
        self._pending[store] = []
        return None

    def _record(self, family: Family, store: str, value: float | None) -> None:
        label = self._label(store)
        if label is None:
            self._pending[store].append((family, value))
        elif value is None:
            self.metrics.add(family, store=label)
        else:
            self.metrics.observe(family, value, store=label)

    def _add_pending(self) -> None:
        """Add the series of the stores seen since the last refresh, and their numbers."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self.metrics.add_series((family, {"store": store})
                                for store in pending for family in STORE_FAMILIES)
        self._stores.update(pending)
        for store, recorded in pending.items():
            for family, value in recorded:
                self._record(family, store, value)

    def store_connect(self, store: str, seconds: float | None) -> None:
        """A connect to ``store``: its time, or None when it failed."""
        if seconds is None:
            self._record(STORE_CONNECT_FAILURES, store, None)
        else:
            self._record(STORE_CONNECT, store, seconds)

    def store_login(self, store: str, seconds: float) -> None:
        """A login the store accepted, ``seconds`` after the connect."""
        self._record(STORE_LOGIN, store, seconds)

    def kicked(self, listener: str) -> None:
        self.metrics.add(KICKED, listener=listener)

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
        by_store: Mapping[str, int] | None = None,
    ) -> None:
        """Copy the server's live counts (gauges) and byte totals (counters)."""
        self._add_pending()
        if by_store is not None:
            # A session relays to a store it logged in at: its series exist by now.
            counts: dict[str, int] = dict.fromkeys([*self._stores, OTHER_STORE], 0)
            for store, count in by_store.items():
                label = store if store in self._stores else OTHER_STORE
                counts[label] = counts.get(label, 0) + count
            for label, count in counts.items():
                self.metrics.set(STORE_SESSIONS, count, store=label)
        for listener, count in sessions.items():
            self.metrics.set(SESSIONS, count, listener=listener)
        for listener, count in preauth.items():
            self.metrics.set(PREAUTH, count, listener=listener)
        for listener, (bytes_in, bytes_out) in bytes_by_listener.items():
            self.metrics.set(BYTES, bytes_in, listener=listener, direction="in")
            self.metrics.set(BYTES, bytes_out, listener=listener, direction="out")
