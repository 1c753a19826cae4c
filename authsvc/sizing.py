"""How many connections and descriptors a front-end node needs for its sessions.

The one home of that arithmetic, for both front ends:

* :func:`nginx_sizing` turns ``[nginx] sessions_per_node`` into nginx's
  ``worker_processes``, ``worker_connections``, ``worker_rlimit_nofile`` and
  systemd's ``LimitNOFILE``; ``render-nginx`` writes them into its output and
  ``--standalone`` applies them (docs/operations.md, "Size nginx for the sessions");
* :func:`descriptor_headroom` is what ``authsvc proxy`` keeps free of client
  connections (``proxy/limits.py``), and :func:`proxy_sessions_fit` /
  :func:`proxy_nofile_for` say whether a session count fits in a descriptor
  limit, which ``check-config`` asks about the proxy's ``connection_limit``
  (docs/proxy.md, "Limits").

Pure integers, no I/O: the limits compared are the ones configured or shipped,
never the limit of the shell that runs the command.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A relayed mail session holds two connections at once, the client's and the
#: store's, in nginx (ngx_mail_proxy_module.c keeps both) as in ``authsvc proxy``.
CONNECTIONS_PER_SESSION = 2

#: nginx asks auth_http on a connection of its own for each login and closes it
#: before it connects to the store (ngx_mail_auth_http_module.c), so a login
#: holds client + auth_http, then client + store.  Logins that arrive while the
#: node is full, and the reconnect wave after a restart, still need room: one
#: auth_http connection per ``AUTH_HTTP_SHARE`` sessions, at least ``AUTH_HTTP_MIN``.
AUTH_HTTP_SHARE = 16
AUTH_HTTP_MIN = 64

#: Descriptors an nginx worker holds besides its connections: the error and
#: access logs and the files it opens while running.  worker_connections counts
#: connections only; worker_rlimit_nofile counts every descriptor (nginx docs,
#: worker_connections: "cannot exceed the current limit on the maximum number of
#: open files").
NGINX_FILES = 64

#: ``worker_processes auto``: one worker per core (nginx docs, worker_processes).
#: The other numbers are per worker and do not depend on how many there are.
NGINX_WORKER_PROCESSES = "auto"

#: Linux's default ``fs.nr_open``: no process may have more descriptors unless
#: the sysctl is raised (proc(5), /proc/sys/fs/nr_open; systemd.exec(5), LimitNOFILE=).
LINUX_NR_OPEN = 1_048_576

#: ``LimitNOFILE=`` in deploy/systemd/authsvc-proxy.service, the unit the
#: project ships (tests/unit/test_sizing.py reads the unit and compares).
PROXY_UNIT_NOFILE = 262_144

#: ``authsvc proxy`` keeps ``max(HEADROOM_MIN, N // HEADROOM_SHARE)`` of its
#: ``N`` descriptors free of client connections (docs/proxy.md, "Limits").
HEADROOM_MIN = 32
HEADROOM_SHARE = 16

#: Descriptors a proxy process holds besides its sessions: standard streams,
#: the event loop, listening sockets, logs, map and Redis connections.  The
#: kernel gives each new descriptor the lowest free number (POSIX, "File
#: Descriptor Allocation"), so these sit below the client connections and
#: count against the room under the headroom too.
PROXY_OWN_DESCRIPTORS = 64


@dataclass(frozen=True, slots=True)
class NginxSizing:
    """nginx's main-context numbers and systemd's limit for a node's sessions."""

    sessions: int
    #: Listening sockets: each takes a connection slot in every worker
    #: (ngx_event_process_init in ngx_event.c).
    listening: int
    #: ``CONNECTIONS_PER_SESSION`` x sessions.
    session_connections: int
    #: auth_http connections allowed for at once (logins being answered).
    auth_http_connections: int
    worker_processes: str
    worker_connections: int
    worker_rlimit_nofile: int
    #: ``LimitNOFILE=`` for nginx.service: the same as worker_rlimit_nofile.
    limit_nofile: int

    def arithmetic(self) -> tuple[str, ...]:
        """How the numbers add up, one line each (the render writes them as comments)."""
        return (
            f"  {CONNECTIONS_PER_SESSION} connections per session (client and store) "
            f"x {self.sessions} = {self.session_connections}",
            f"+ auth_http connections of logins in flight ({self.sessions} / "
            f"{AUTH_HTTP_SHARE}, at least {AUTH_HTTP_MIN}) = {self.auth_http_connections}",
            f"+ listening sockets = {self.listening}",
            f"= worker_connections {self.worker_connections}",
            f"+ descriptors besides connections (logs, files) = "
            f"{self.worker_rlimit_nofile - self.worker_connections}",
            f"= worker_rlimit_nofile {self.worker_rlimit_nofile}, and LimitNOFILE the same",
        )


def nginx_sizing(sessions: int, listening: int) -> NginxSizing:
    """The numbers for ``sessions`` relayed sessions on a node with ``listening`` sockets.

    Per worker, every session: with ``accept_mutex`` off (nginx's default since
    1.11.3, nginx docs, accept_mutex) the kernel hands each new connection to
    one waiting worker, with no balancing between them, so one worker may end
    up holding nearly all of a node's sessions.  A worker that runs out of
    connections logs "worker_connections are not enough" (ngx_get_connection
    in ngx_connection.c) and closes the new client at once
    (ngx_event_accept.c).  ``LimitNOFILE`` equals ``worker_rlimit_nofile`` so
    the limit holds even where nginx may not raise its hard limit.
    """
    if sessions < 1 or listening < 0:
        raise ValueError(f"sessions {sessions}, listening {listening}")
    session_connections = CONNECTIONS_PER_SESSION * sessions
    auth_http = max(AUTH_HTTP_MIN, -(-sessions // AUTH_HTTP_SHARE))
    worker_connections = session_connections + auth_http + listening
    rlimit = worker_connections + NGINX_FILES
    return NginxSizing(
        sessions=sessions,
        listening=listening,
        session_connections=session_connections,
        auth_http_connections=auth_http,
        worker_processes=NGINX_WORKER_PROCESSES,
        worker_connections=worker_connections,
        worker_rlimit_nofile=rlimit,
        limit_nofile=rlimit,
    )


def descriptor_headroom(limit: int) -> int:
    """Descriptors ``authsvc proxy`` keeps free of client connections under ``limit``."""
    limit = max(limit, 1)
    return min(max(HEADROOM_MIN, limit // HEADROOM_SHARE), limit - 1)


def proxy_sessions_fit(sessions: int, limit: int) -> bool:
    """Whether ``sessions`` logged-in proxy sessions, with the process's own
    descriptors, fit below the headroom of ``limit``."""
    needed = CONNECTIONS_PER_SESSION * sessions + PROXY_OWN_DESCRIPTORS
    return needed <= max(limit, 1) - descriptor_headroom(limit)


def proxy_nofile_for(sessions: int) -> int:
    """The smallest descriptor limit in which ``sessions`` proxy sessions fit.

    ``limit - descriptor_headroom(limit)`` never decreases as the limit grows,
    so the smallest fitting limit is found by bisection.
    """
    low = 1
    high = 2 * (CONNECTIONS_PER_SESSION * max(sessions, 0) + PROXY_OWN_DESCRIPTORS + HEADROOM_MIN)
    while low < high:
        middle = (low + high) // 2
        if proxy_sessions_fit(sessions, middle):
            high = middle
        else:
            low = middle + 1
    return low
