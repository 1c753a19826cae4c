"""Secrets that cannot leak by accident: a value whose ``repr`` and ``str`` say nothing.

Passwords, shared secrets and the database password travel as :class:`Secret`.
Reading the value takes an explicit call to :meth:`Secret.reveal`, so a stray
f-string, log call or dataclass ``repr`` prints ``Secret('***')`` instead.
"""

from __future__ import annotations

import hmac


class Secret:
    """A string that is never printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call it only where the value leaves the process."""
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison, for shared secrets."""
        return hmac.compare_digest(self._value.encode(), candidate.encode())

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> object:  # pragma: no cover - defensive
        raise TypeError("a Secret is not pickled")
