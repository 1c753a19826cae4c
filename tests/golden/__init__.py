"""Golden files: pinned renders of ``render-nginx`` / ``render-haproxy`` (see cases.py)."""
