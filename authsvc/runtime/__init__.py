"""What both faces run on, and neither owns: processes, sockets, signals, health.

* ``binding.py``: listening sockets (TCP with ``SO_REUSEPORT``, unix) bound
  before any worker forks;
* ``workers.py``: the pre-fork supervisor behind ``--workers N``;
* ``signals.py``: SIGTERM/SIGINT stop a process, SIGHUP reloads it;
* ``accepting.py``: accepting in batches by hand, surviving a full descriptor table;
* ``health.py``: ``/healthz``, ``/readyz`` and ``/metrics``.

``authsvc serve`` (``authsvc/http/``) and ``authsvc proxy`` (``proxy/``) import
this package; it imports neither of them (docs/architecture.md, "Layers").
"""
