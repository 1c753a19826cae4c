"""The control endpoints' paths: one place for the servers and the light client alike.

The commands (``commands.py``, ``session_commands.py``) import these without
the server side's HTTP stack.
"""

FLUSH_PATH = "/cache/flush"
THROTTLE_LIST_PATH = "/throttle"
THROTTLE_CLEAR_PATH = "/throttle/clear"
SESSIONS_LIST_PATH = "/sessions"
SESSIONS_KICK_PATH = "/sessions/kick"
