"""Brute-force throttling for ``serve`` and ``proxy`` (docs/security.md).

* ``policy.py``: the sans-IO core: which address a client counts as, which
  counters a failure touches, how many failures earn which delay, password
  fingerprints.  No I/O, no clock of its own.
* ``store.py``: the counter store protocol; ``local.py`` (SQLite, in memory or
  in a file shared by every worker) and ``redis.py`` (several nodes).
* ``service.py``: :class:`~authsvc.throttle.service.Throttle`, what serve and
  proxy call: policy + store + Redis fallback + metrics.
* ``control.py`` / ``command.py``: ``GET /throttle``, ``POST /throttle/clear``
  and ``authsvc throttle list|clear``.
"""
