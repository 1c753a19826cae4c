"""The raw tree both readers produce: plain values, each with the file, line and key it came from.

``config/toml.py`` and ``config/perdition.py`` translate their formats into the
same native shape (the TOML schema of docs/configuration.md); only
``config/validate.py`` looks at what the values mean.  A :class:`Pos` keeps the
key as the operator wrote it, so a value a Perdition file set through
``map_library_opt`` is reported under that name, not under ``map.user_column``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from authsvc.redact import Secret


@dataclass(frozen=True, slots=True)
class Pos:
    """Where a value came from: ``file:line`` and the key as written there."""

    file: str
    line: int
    key: str

    def where(self) -> str:
        """``file:line``, for messages that point at a second place."""
        return f"{self.file}:{self.line}"


RawScalar = str | int | float | bool | Secret | datetime.date | datetime.time | datetime.datetime


@dataclass(slots=True)
class RawValue:
    """One value: a scalar, a list of values, or a table; plus its position.

    ``hint`` is text the validator appends when it refuses the value; a reader
    sets it when it knows a likely cause in its own format (the riseup.net
    8-field ``map_library_opt`` misprint, for one).
    """

    value: RawScalar | list[RawValue] | RawTable
    pos: Pos
    hint: str | None = None


@dataclass(slots=True)
class RawTable:
    """A table of keys to values, with the position of its header (or first key)."""

    pos: Pos
    items: dict[str, RawValue] = field(default_factory=dict)

    def set(self, key: str, value: RawScalar | list[RawValue] | RawTable, pos: Pos,
            hint: str | None = None) -> None:
        """Set ``key`` (replacing any earlier value)."""
        self.items[key] = RawValue(value, pos, hint)

    def table(self, key: str, pos: Pos) -> RawTable:
        """The sub-table ``key``, created at ``pos`` if absent."""
        found = self.items.get(key)
        if found is not None and isinstance(found.value, RawTable):
            return found.value
        sub = RawTable(pos)
        self.items[key] = RawValue(sub, pos)
        return sub


def values(items: list[str], pos: Pos, hint: str | None = None) -> list[RawValue]:
    """A list of strings as raw values that all share one position (and hint)."""
    return [RawValue(item, pos, hint) for item in items]


def overlay(base: RawTable, top: RawTable) -> RawTable:
    """``base`` with ``top``'s keys replacing it key by key (positions kept per key).

    Used for a listener's ``[listener.login]`` over the top-level ``[login]``.
    """
    merged = RawTable(top.pos, dict(base.items))
    merged.items.update(top.items)
    return merged
