"""The operator's control surface: its listener, its endpoints, its trust rule, its client.

* ``listener.py``: the control listener, ``[control] listen``: the source and
  secret checks and the ``event=control`` log line of every request;
* ``trust.py``: who is trusted (a unix socket, a shared secret, the
  allow-list); serve's ``GET /auth`` checks its secret here too;
* ``fanout.py``: a request repeated on every worker's peer socket, summed;
* ``flush.py``: ``POST /cache/flush``;
* ``throttle.py``: ``GET /throttle`` and ``POST /throttle/clear``;
* ``sessions.py``: ``GET /sessions`` and ``POST /sessions/kick`` (the proxy's);
* ``selectors.py``: which sessions ``--user``, ``--client``, ``--store`` mean;
* ``paths.py``: the endpoints' paths;
* ``deprecation.py``: the warning for those endpoints' old places;
* ``holds.py``: ``GET /holds``, ``POST /holds/hold`` and ``/holds/release``,
  repeated on every worker;
* ``client.py``: the one client of those endpoints;
* ``pool.py``: one request to one node, or to every node (``--pool``);
* ``commands.py``: ``authsvc flush`` and ``authsvc throttle``;
* ``session_commands.py``: ``authsvc sessions list|kick``;
* ``hold_commands.py``: ``authsvc hold`` and ``authsvc release``.

Both faces serve these handlers on the control listener (``authsvc serve``
also on its own socket, ``authsvc proxy`` the throttle's on its health port,
both deprecated), so the package sits below the faces and imports neither
(docs/architecture.md, "Layers").
"""
