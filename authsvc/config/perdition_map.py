"""Perdition's ``map_library`` and ``map_library_opt`` to a native ``[map]`` table.

The library is recognised by its file name wherever it lives and whatever its
``.so`` suffix: the seed's pre-multiarch ``/usr/lib/libperditiondb_mysql.so.0.0.0``
and bookworm's ``/usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0`` are the
same map.  The MySQL option string is split exactly as Perdition splits it
(perditiondb(5); perdition/db/mysql/perditiondb_mysql.c): fields in the order
``dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol``,
empty middle fields kept as empty strings, one trailing empty field dropped.
Whether the pieces are acceptable (identifiers, ports) is for validate.py.
"""

from __future__ import annotations

import os
import re

from authsvc.config.issues import Report
from authsvc.config.perdition_syntax import Directive
from authsvc.config.raw import Pos, RawTable, values
from authsvc.redact import Secret

MYSQL_FIELDS = "dbhost:dbport:dbname:dbtable:dbuser:dbpw:dbsrvcol:dbusercol:dbportcol"
#: Perdition's defaults when the option string has fewer fields (perditiondb_mysql.h).
MYSQL_DEFAULTS = ("localhost", "", "dbPerdition", "tblPerdition", "perdition", "perdition",
                  "servername", "user", "port")
DEFAULT_REGEX_PATH = "/etc/perdition/popmap.re"
DEFAULT_LIBRARY = "/usr/lib/x86_64-linux-gnu/libperditiondb_gdbm.so.0"

_LIBRARY = re.compile(r"^libperditiondb_([a-z_]+?)(?:\.so(?:\.[0-9]+)*)?$")
_BINARY = {"gdbm": "popmap.gdbm.db", "bdb": "popmap.bdb.db"}
_FLAT_SOURCE = (
    "authsvc does not read that binary database: point it at the flat popmap the database "
    "was built from (lines 'key: server'), with native config: [map] type = \"file\", "
    "path = \"/etc/perdition/popmap\""
)


def _column_hint(fields: list[str], index: int) -> str:
    """Why a column slot holds a number, and the fix (perditiondb(5); the riseup.net misprint)."""
    if len(fields) == 8 and index == 7:
        return (
            f"map_library_opt has 8 fields, so {fields[7]!r} is dbusercol, the key column, "
            f"and Perdition would run 'select {fields[7]},{fields[6]},port ...'; "
            f"the fields are {MYSQL_FIELDS}: for a constant port write the 9-field form "
            f"dbhost:dbport:dbname:dbtable:dbuser:dbpw:{fields[6]}:address:{fields[7]} "
            "(with your key column in place of address)"
        )
    return f"the fields are {MYSQL_FIELDS}"


def _mysql(table: RawTable, option: Directive | None, file: str, report: Report) -> None:
    if option is None or option.value is None:
        report.error(file, 0, "map_library_opt",
                     "missing: Perdition's MySQL map never connects without it (every login "
                     f"fails); give the fields {MYSQL_FIELDS}")
        return
    pos = Pos(file, option.line, option.key)
    fields = option.value.split(":")
    if len(fields) > 1 and fields[-1] == "":
        fields.pop()  # vanessa_adt drops one trailing empty field: that column keeps its default
    if len(fields) > 9:
        report.error(file, option.line, option.key,
                     f"{len(fields)} fields, at most 9 ({MYSQL_FIELDS}); a ':' in the "
                     "password cannot be escaped")
        return
    full = fields + list(MYSQL_DEFAULTS[len(fields):])
    host, port, database, db_table, user, password, server_col, user_col, port_col = full
    table.set("type", "mysql", pos)
    host_hint = (f"dbhost is field 1 of {MYSQL_FIELDS}; an empty dbhost makes Perdition "
                 "never connect")
    table.set("hosts", values(host.split(","), pos, host_hint), pos, hint=host_hint)
    if port:
        table.set("port", int(port) if port.isascii() and port.isdigit() else port, pos)
    table.set("database", database, pos)
    table.set("table", db_table, pos, hint=_column_hint(fields, 3))
    table.set("user", user, pos)
    table.set("password", Secret(password), pos)
    table.set("server_column", server_col, pos, hint=_column_hint(fields, 6))
    table.set("user_column", user_col, pos, hint=_column_hint(fields, 7))
    if port_col.isascii() and port_col.isdigit():
        # `...:storage_ip:address:143` selects the literal 143: a constant port
        # (the port column is pasted into the SELECT, perditiondb_mysql.c).
        table.set("port_constant", int(port_col), pos)
    else:
        table.set("port_column", port_col, pos, hint=_column_hint(fields, 8))


def read_map(
    library: Directive | None, option: Directive | None, file: str, report: Report
) -> RawTable | None:
    """The ``[map]`` table for one Perdition file; None (with an error) when unusable."""
    if library is None:
        report.error(
            file, 0, "map_library",
            f"not set, so Perdition used its default GDBM map ({DEFAULT_LIBRARY} with "
            f"/etc/perdition/popmap.gdbm.db); {_FLAT_SOURCE}; or write map_library \"\" "
            "for no map",
        )
        return None
    assert library.value is not None
    pos = Pos(file, library.line, library.key)
    table = RawTable(pos)
    if library.value == "":
        table.set("type", "none", pos)
        if option is not None:
            report.warn(file, option.line, option.key,
                        "ignored: map_library is empty, so there is no map")
        return table
    match = _LIBRARY.match(os.path.basename(library.value))
    kind = match.group(1) if match else None
    if kind == "mysql":
        before = len(report.errors)
        _mysql(table, option, file, report)
        return table if len(report.errors) == before else None
    if kind == "posix_regex":
        table.set("type", "regex", pos)
        if option is not None and option.value is not None:
            table.set("path", option.value, Pos(file, option.line, option.key))
        else:
            table.set("path", DEFAULT_REGEX_PATH, pos,
                      hint="Perdition's default, as map_library_opt is not set")
        return table
    if kind in _BINARY:
        report.error(file, library.line, library.key,
                     f"the {kind.upper()} map ({_BINARY[kind]}) is binary; {_FLAT_SOURCE}")
        return None
    if kind is not None:
        report.error(file, library.line, library.key,
                     f"the Perdition {kind} map is not supported; authsvc reads the flat "
                     "popmap (native config), the POSIX regex map and the MySQL map")
        return None
    report.error(file, library.line, library.key,
                 f"{library.value!r} is not a Perdition map library (libperditiondb_*.so)")
    return None

