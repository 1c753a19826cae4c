"""The operator's control surface: its HTTP endpoints, its trust rule, its client.

* ``trust.py``: who is trusted (a unix socket, or the shared secret); serve's
  ``GET /auth`` checks its secret here too;
* ``flush.py``: ``POST /cache/flush``, repeated on every worker;
* ``throttle.py``: ``GET /throttle`` and ``POST /throttle/clear``;
* ``client.py``: the one client of those endpoints;
* ``commands.py``: ``authsvc flush`` and ``authsvc throttle``.

Both faces serve these handlers (``authsvc serve`` on its port and control
sockets, ``authsvc proxy`` the throttle's on its health port), so the package
sits below the faces and imports neither (docs/architecture.md, "Layers").
"""
