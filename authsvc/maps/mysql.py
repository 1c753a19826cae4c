"""Perdition's MySQL map (perditiondb_mysql.c) on an aiomysql pool; the only aiomysql import.

One parametrised query per lookup::

    SELECT `<server col>`[, `<port col>`] FROM `<table>` WHERE `<user col>` = %s LIMIT 1

Lookups that arrive together share one round trip (micro-batching): keys
asked in the same event-loop pass, or while every pooled connection already
has a query in flight, go out as one statement of up to ``BATCH_MAX`` of
those same queries, each tagged with its key's index::

    (SELECT 0, `<server col>` ... WHERE `<user col>` = %s LIMIT 1)
    UNION ALL (SELECT 1, `<server col>` ... WHERE `<user col>` = %s LIMIT 1) ...

Each member is exactly the single-key query, so each key keeps Perdition's
matching (the column's collation against a literal) and "first row wins"
(docs/maps.md, "MySQL / MariaDB map"); a join against a derived table of
keys would compare two implicit collations instead.  A failing batch fails every key in it.  This
cuts the per-key cost of a miss (aiomysql parses the protocol in pure Python,
and most of that cost is per statement, not per row).

The key is always a parameter, never pasted into the SQL (Perdition escapes it
into a 256-byte buffer and truncates).  Identifiers come validated from
the settings and are checked again and backtick-quoted here.  Matching is the
column's collation's business, as in Perdition: a ``_ci`` column matches
``ALICE@...``, and PAD SPACE collations (``utf8mb4_bin`` too) ignore trailing
blanks.

How a row becomes a route (docs/maps.md, "Rows to routes"), with one deliberate
difference:

* first row wins; a NULL or empty server column means "no server" (None);
* the port is the port column's value, or ``port_constant`` (Perdition's
  numeric literal, ``...:storage_ip:address:143``), unless the server value
  carries its own ``:port``, which wins.  Perdition would build
  ``10.0.0.5:993:143`` and fail to connect;
* a ``user@`` in the server value is returned; the router uses it only with
  username_from_database.

Connections: the pool is created on first use, on the first host of
``settings.hosts`` that answers, and dropped after a connection error.  A
connection error (server restarted, connection killed, idle timeout) is
retried once on a fresh connection; a query that outlives ``query_timeout``
closes its connection.  So a MariaDB restart costs no authsvc restart.
``localhost`` without a port means the Unix socket
(``/run/mysqld/mysqld.sock``), as libmysqlclient does; a host that starts with
``/`` is a socket path.  ``tls`` wraps TCP connections in TLS with the
server's certificate verified.

Which host the pool lives on (failover, failback, the replica lag check, the
per-host answers for ``/metrics``) is :mod:`authsvc.maps.mysql_hosts`'s job;
this module gives it the means: opening a pool, ``SHOW REPLICA STATUS``, and
the wording of errors.

Every failure is :class:`MapUnavailable` naming the host and MariaDB's error,
never the password.  An outage is logged once when it starts and once when it
ends, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from typing import Any

import aiomysql

from authsvc.maps import MapEntry, MapUnavailable
from authsvc.maps.mysql_hosts import HostPool, MySqlHosts
from authsvc.maps.serverspec import ServerSpecError, map_port, parse_server
from authsvc.settings import HostPort, MySqlMapSettings

log = logging.getLogger(__name__)

#: libmysqlclient's default socket on Debian, used for host ``localhost``.
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEFAULT_PORT = 3306
#: Connections idle longer than this are replaced before use (below MariaDB's wait_timeout).
POOL_RECYCLE = 300.0
# Unquoted MariaDB identifiers we accept; config/validate.py enforces the same.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}")
# Client-side errors (CR_*, 2000-2999) mean the connection, not the query, failed;
# 1927 ER_CONNECTION_KILLED and 4031 ER_CLIENT_INTERACTION_TIMEOUT likewise.
_CONNECTION_ERRNOS = range(2000, 3000)
_KILLED_ERRNOS = (1927, 4031)
#: Most keys in one batched statement (keeps it far below max_allowed_packet).
BATCH_MAX = 64
# 2026 CR_SSL_CONNECTION_ERROR (a client error: the connection, not the query).
_CR_SSL_CONNECTION_ERROR = 2026
# 1064 ER_PARSE_ERROR: a server before SHOW REPLICA STATUS (MariaDB 10.5.1).
_ER_PARSE_ERROR = 1064
# 1227 ER_SPECIFIC_ACCESS_DENIED_ERROR: "you need ... the REPLICA MONITOR privilege".
_ER_NO_PRIVILEGE = (1227,)

_Row = tuple[object, ...]


def quote_identifier(name: str) -> str:
    """Backtick-quote a validated identifier; anything else is a configuration bug."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f"`{name}`"


def _query_parts(settings: MySqlMapSettings) -> tuple[str, str]:
    """The selected columns and the ``FROM ... LIMIT 1`` tail, identifiers quoted."""
    columns = [quote_identifier(settings.server_column)]
    if settings.port_constant is None and settings.port_column is not None:
        columns.append(quote_identifier(settings.port_column))
    # Only quoted, validated identifiers are pasted; the key stays a parameter.
    table = quote_identifier(settings.table)
    where = quote_identifier(settings.user_column)
    return ", ".join(columns), f"FROM {table} WHERE {where} = %s LIMIT 1"


def build_query(settings: MySqlMapSettings) -> str:
    """The lookup SQL, with ``%s`` for the key."""
    columns, tail = _query_parts(settings)
    return f"SELECT {columns} {tail}"


def build_batch_query(settings: MySqlMapSettings, count: int) -> str:
    """The SQL for ``count`` keys: the single-key query per key, tagged 0..count-1.

    One ``%s`` per key, in order; rows come back as ``(index, server[, port])``.
    """
    columns, tail = _query_parts(settings)
    return " UNION ALL ".join(f"(SELECT {i}, {columns} {tail})" for i in range(count))


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def row_to_entry(
    row: Sequence[object], port_constant: int | None, delimiter: str
) -> MapEntry | None:
    """A result row as a map entry (docs/maps.md); raises ServerSpecError for nonsense."""
    server = _text(row[0])
    if server is None or not server.strip():
        return None
    entry = parse_server(server, delimiter)
    if entry is None or entry.port is not None:
        return entry  # deliberate: a port in the server value wins
    if port_constant is not None:
        port: int | None = port_constant
    else:
        port_text = _text(row[1]) if len(row) > 1 else None
        port = map_port(port_text.strip()) if port_text and port_text.strip() else None
    return MapEntry(host=entry.host, port=port, user=entry.user)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False  # retrying a slow query would only double the wait
    if isinstance(exc, aiomysql.InterfaceError | OSError):
        return True
    if isinstance(exc, aiomysql.OperationalError):
        errno = _errno(exc)
        return errno in _CONNECTION_ERRNOS or errno in _KILLED_ERRNOS
    return False


def _errno(exc: BaseException) -> int:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0


class _AcquireTimeout(TimeoutError):
    """No pooled connection within connect_timeout: the host does not answer."""


class _QueryTimeout(TimeoutError):
    """A query outlived query_timeout: the host hangs or is overloaded."""


def _mysql_text(exc: BaseException) -> str:
    """MariaDB's message for an exception: ``(1045) Access denied ...``."""
    if isinstance(exc, aiomysql.Error) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


class _Waiting:
    """Lookups of one key waiting for the next batch."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[tuple[_Row | None, HostPort]]] = []


class MySqlMap:
    """The MySQL/MariaDB map."""

    def __init__(
        self,
        settings: MySqlMapSettings,
        delimiter: str = "@",
        *,
        pool_recycle: float = POOL_RECYCLE,
    ) -> None:
        if not settings.hosts:
            raise ValueError("a MySQL map needs at least one host")
        self._settings = settings
        self._delimiter = delimiter
        self._recycle = pool_recycle
        self._sql = build_query(settings)
        self._batch_sql: dict[int, str] = {1: self._sql}
        self._description = self._describe()
        # Which host the pool lives on (failover, failback, replica lag).
        self._hosts = MySqlHosts(
            settings,
            open_pool=self._open,
            replica_status=self._replica_status,
            password=self._password,
            explain=lambda exc, password: self._scrub(self._error_text(exc), password),
            failures=(aiomysql.Error, OSError, TimeoutError),
        )
        self._ssl: ssl.SSLContext | None = None
        self._up: bool | None = None  # None until the first answer
        # Micro-batching: keys not yet sent, whether a flush is scheduled, and
        # the batches in flight (at most one per pooled connection).
        self._waiting: dict[str, _Waiting] = {}
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        self._max_batches = max(settings.pool_size, 1)

    # -- the MapBackend interface ---------------------------------------------------

    async def lookup(self, key: str) -> MapEntry | None:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # Undecodable bytes from the client: no utf8mb4 row can hold this key.
            return None
        row, host = await self._enqueue(key)
        if row is None:
            return None
        try:
            return row_to_entry(row, self._settings.port_constant, self._delimiter)
        except ServerSpecError as exc:
            # A row that names no usable server is a data error the operator must
            # see, and a temporary failure for the client, not "no such user".
            raise MapUnavailable(f"mysql {host}: bad server value for {key!r}: {exc}") from None

    async def check(self) -> None:
        # The real query (with a key no mailbox has) also catches a wrong
        # table, column or grant, which "SELECT 1" would not.
        await self._run([""])

    def describe(self) -> str:
        # Computed once: the router asks on every request (Trace.map_description).
        return self._description

    def _describe(self) -> str:
        hosts = ",".join(str(h) for h in self._settings.hosts)
        port = ""
        if self._settings.port_constant is not None:
            port = f", port {self._settings.port_constant}"
        tls = ", TLS" if self._settings.tls else ""
        return f"mysql {hosts} db {self._settings.database}: {self._sql}{port}{tls}"

    async def close(self) -> None:
        await self._hosts.stop_rechecking()
        batches = list(self._batches)
        for batch in batches:
            batch.cancel()
        await asyncio.gather(*batches, return_exceptions=True)
        self._fail_waiting("mysql: map closed")
        await self._hosts.close()

    # -- micro-batching ---------------------------------------------------------------

    def _enqueue(self, key: str) -> asyncio.Future[tuple[_Row | None, HostPort]]:
        """Queue a key for the next batch; the future gets its row and host."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[_Row | None, HostPort]] = loop.create_future()
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting()
        waiting.futures.append(future)
        if not self._flush_scheduled:
            # call_soon runs after every callback already ready in this loop
            # pass, so the keys of one pass of accepted requests travel together.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send waiting keys as batches while a pooled connection is free for one."""
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._batches) < self._max_batches:
            batch: dict[str, _Waiting] = {}
            for key in list(self._waiting)[:BATCH_MAX]:
                batch[key] = self._waiting.pop(key)
            task = loop.create_task(self._send(batch))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)
        # Keys left over wait for the first batch to finish (_batch_done).

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if self._waiting and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: dict[str, _Waiting]) -> None:
        keys = list(batch)
        try:
            rows, host = await self._run(keys)
        except MapUnavailable as exc:
            for waiting in batch.values():
                for future in waiting.futures:
                    if not future.done():
                        # One exception object per waiter: each gets its own traceback.
                        future.set_exception(MapUnavailable(str(exc)))
            return
        except BaseException as exc:
            for waiting in batch.values():
                for future in waiting.futures:
                    if not future.done():
                        future.set_exception(MapUnavailable(f"mysql: lookup aborted: {exc!r}"))
            raise
        for key, row in zip(keys, rows, strict=True):
            for future in batch[key].futures:
                if not future.done():  # a caller may have given up
                    future.set_result((row, host))

    def _fail_waiting(self, message: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            for future in entry.futures:
                if not future.done():
                    future.set_exception(MapUnavailable(message))

    def _sql_for(self, count: int) -> str:
        sql = self._batch_sql.get(count)
        if sql is None:
            sql = self._batch_sql[count] = build_batch_query(self._settings, count)
        return sql

    # -- connections ----------------------------------------------------------------

    def _password(self) -> str:
        settings = self._settings
        if settings.password_file is not None:
            try:
                with open(settings.password_file, encoding="utf-8") as handle:
                    return handle.read().rstrip("\r\n")
            except OSError as exc:
                raise MapUnavailable(
                    f"mysql: cannot read password file {settings.password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        if settings.password is not None:
            return settings.password.reveal()
        return ""

    def _scrub(self, text: str, password: str) -> str:
        # MariaDB never echoes the password, but a message must not carry it even then.
        return text.replace(password, "***") if password else text

    def _tls_context(self) -> ssl.SSLContext:
        """The client TLS context, made once the files can be read (they may come later)."""
        if self._ssl is not None:
            return self._ssl
        settings = self._settings
        try:
            context = ssl.create_default_context(cafile=settings.tls_ca_file)
            if settings.tls_cert_file is not None:
                context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(
                f for f in (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
                if f is not None
            )
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MapUnavailable(f"mysql: cannot load TLS files ({files}): {reason}") from None
        # create_default_context verifies the chain (CERT_REQUIRED); the name
        # check compares the configured host with the certificate's DNS or IP
        # names (Python's ssl module, SSLContext.check_hostname).
        context.check_hostname = settings.tls_verify_name
        self._ssl = context
        return context

    async def _open(self, host: HostPort, password: str) -> Any:
        settings = self._settings
        where: dict[str, Any]
        if host.host.startswith("/"):
            where = {"unix_socket": host.host}
        elif host.host == "localhost" and host.port is None:
            where = {"unix_socket": DEFAULT_SOCKET}
        else:
            where = {"host": host.host, "port": host.port or DEFAULT_PORT}
            if settings.tls:
                # A Unix socket is local: MariaDB counts it as secure transport
                # (require_secure_transport, MariaDB server system variables).
                where["ssl"] = self._tls_context()
        # connect_timeout in aiomysql covers only the TCP connect; the
        # handshake and login are bounded here too.
        async with asyncio.timeout(settings.connect_timeout):
            pool = await aiomysql.create_pool(
                minsize=1,
                maxsize=max(settings.pool_size, 1),
                pool_recycle=self._recycle,
                user=settings.user,
                password=password,
                db=settings.database,
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=settings.connect_timeout,
                **where,
            )
        if "ssl" in where:
            try:
                pool.release(await self._acquire(pool))  # the first connection, checked
            except BaseException:
                pool.terminate()
                raise
        return pool

    async def _acquire(self, pool: Any) -> Any:
        """A pooled connection within connect_timeout; with ``tls``, only an encrypted one."""
        settings = self._settings
        try:
            async with asyncio.timeout(settings.connect_timeout):
                conn = await pool.acquire()
        except RuntimeError as exc:  # the pool was closed under us by another lookup
            raise aiomysql.InterfaceError(0, str(exc)) from None
        except TimeoutError:
            raise _AcquireTimeout(
                f"no connection within connect_timeout {settings.connect_timeout:g}s"
            ) from None
        # aiomysql goes on in plain text when the server does not offer TLS
        # (aiomysql/connection.py, _request_authentication): refuse such a
        # connection before any query.  A Unix socket counts as secure.
        if settings.tls and not getattr(conn, "_secure", False):
            conn.close()
            pool.release(conn)
            raise aiomysql.OperationalError(
                _CR_SSL_CONNECTION_ERROR,
                "TLS: the server did not offer TLS (tls = true); refused before any query",
            )
        return conn

    async def _replica_status(self, pool: Any) -> list[dict[str, Any]] | None:
        """The host's replication status rows by column name; None without the privilege.

        ``SHOW REPLICA STATUS`` (MariaDB 10.5.1+; ``SHOW SLAVE STATUS`` before)
        needs the REPLICA MONITOR privilege (MariaDB's GRANT documentation).
        """
        conn = await self._acquire(pool)
        try:
            rows, names = [], []
            async with asyncio.timeout(self._settings.query_timeout):
                for statement in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):
                    try:
                        async with conn.cursor() as cursor:
                            await cursor.execute(statement)
                            rows = list(await cursor.fetchall())
                            names = [d[0] for d in cursor.description or ()]
                        break
                    except aiomysql.ProgrammingError as exc:
                        if _errno(exc) != _ER_PARSE_ERROR:
                            raise
        except aiomysql.OperationalError as exc:
            if _errno(exc) not in _ER_NO_PRIVILEGE:
                conn.close()
                raise
            return None
        except BaseException:
            conn.close()
            raise
        finally:
            pool.release(conn)
        return [dict(zip(names, row, strict=False)) for row in rows]

    async def _query(self, current: HostPool, keys: list[str]) -> list[_Row | None]:
        """One statement for ``keys``; each key's first row, or None."""
        settings = self._settings
        pool = current.pool
        conn = await self._acquire(pool)
        try:
            try:
                async with asyncio.timeout(settings.query_timeout):
                    async with conn.cursor() as cursor:
                        await cursor.execute(self._sql_for(len(keys)), keys)
                        rows = await cursor.fetchall()
            except TimeoutError:
                raise _QueryTimeout(
                    f"query took longer than query_timeout {settings.query_timeout:g}s"
                ) from None
        except BaseException:
            # Half a reply may still be on the wire: never give this connection back.
            conn.close()
            raise
        finally:
            pool.release(conn)
        if len(keys) == 1:
            return [tuple(rows[0]) if rows else None]
        found: list[_Row | None] = [None] * len(keys)
        for row in rows:
            index = row[0]
            # Each member has LIMIT 1: one row per key at most, and it is the first.
            if isinstance(index, int) and 0 <= index < len(keys) and found[index] is None:
                found[index] = tuple(row[1:])
        return found

    async def _run(self, keys: list[str]) -> tuple[list[_Row | None], HostPort]:
        """Run the query once, and once more on a fresh connection after a connection error."""
        current: HostPool | None = None
        try:
            for attempt in (1, 2):
                current = await self._hosts.get()
                try:
                    rows = await self._query(current, keys)
                except (aiomysql.Error, OSError, TimeoutError) as exc:
                    if isinstance(exc, TimeoutError):
                        # The host hangs (or is overloaded): the next lookups go
                        # to the next host; this one is retried in the background.
                        self._hosts.mark_failed(current)
                    elif _is_connection_error(exc):
                        # The server may have restarted or cut us: the whole pool
                        # is suspect.
                        self._hosts.discard(current)
                    # Once more, from the first host that did not fail lately; a
                    # slow query is not retried (that would only double the wait).
                    if attempt == 1 and (_is_connection_error(exc) or (
                            isinstance(exc, _AcquireTimeout) and len(self._settings.hosts) > 1)):
                        continue
                    raise
                self._hosts.answered(current)
                self._note(True, f"mysql {current.host}")
                return rows, current.host
        except MapUnavailable as exc:
            self._note(False, str(exc))
            raise
        except (aiomysql.Error, OSError, TimeoutError) as exc:
            assert current is not None
            message = self._scrub(
                f"mysql {current.host}: {self._error_text(exc)}", self._password_or_empty()
            )
            self._note(False, message)
            raise MapUnavailable(message) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error_text(self, exc: BaseException) -> str:
        """MariaDB's words, or what TLS refused and where to look."""
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            ca = self._settings.tls_ca_file or "the system's CAs"
            return (f"TLS: the server's certificate was refused: {cause.verify_message} "
                    f"(tls_ca_file {ca}, tls_verify_name "
                    f"{'on' if self._settings.tls_verify_name else 'off'})")
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {cause.reason or cause}"
        return _mysql_text(exc)

    def host_answers(self) -> list[tuple[str, int, bool]]:
        """Each configured host, its answers and whether it is in use (:mod:`.mysql_hosts`)."""
        return self._hosts.host_answers()

    def _password_or_empty(self) -> str:
        try:
            return self._password()
        except MapUnavailable:
            return ""

    def _note(self, up: bool, message: str) -> None:
        """Log a change of state once, not every failing request."""
        if up == self._up:
            return
        if up:
            if self._up is False:
                log.warning("map up again: %s", message)
        else:
            log.error("map unavailable: %s", message)
        self._up = up
