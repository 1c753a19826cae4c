"""Holds: a user or a store in maintenance, refused new logins with a temporary failure.

* ``rules.py``: what a hold is, the mask and store syntax, and the set of
  holds the router consults after the map (pure);
* ``state.py``: one process's holds, loaded from their store at start and
  again when the operator changes them, with their metric and expiry;
* ``store.py``: the state file, written atomically (temp file and rename);
* ``redis.py``: the Redis store, imported only when ``[holds] store = "redis"``.

The control endpoints and the commands are ``authsvc/control/holds.py`` and
``authsvc/control/hold_commands.py``; docs/operations.md ("Holds") has the
operator's view.
"""
