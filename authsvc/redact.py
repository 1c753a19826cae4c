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
        return hmac.compare_digest(_raw(self._value), _raw(candidate))

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            _raw(self._value), _raw(other._value)
        )

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the secret out in the clear; refuse it.
        raise TypeError("a Secret is not pickled")


def _raw(value: str) -> bytes:
    # surrogateescape: an 8-bit password that is not UTF-8 (the proxy keeps
    # such bytes as lone surrogates) compares instead of raising.
    return value.encode("utf-8", "surrogateescape")
