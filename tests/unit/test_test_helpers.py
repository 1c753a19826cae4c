"""The test harness's own rules: require() and eventually() cannot let a test pass by accident."""

from __future__ import annotations

import time

import pytest

from tests.helpers.eventually import eventually, eventually_async
from tests.services import require as require_module
from tests.services.require import require, require_binary, require_file


def test_require_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such daemon"):
        require(False, "no such daemon")


def test_require_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no such daemon"):
        require(False, "no such daemon")
    with pytest.raises(pytest.fail.Exception, match="authsvc-no-such-binary"):
        require_binary("authsvc-no-such-binary")
    with pytest.raises(pytest.fail.Exception, match="some-package"):
        require_file("/nonexistent/authsvc/file", "some-package")


def test_require_passes_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "unused")
    assert require_binary("sh").endswith("/sh")
    assert require_module.in_ci()


def test_eventually_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", 7])
    assert eventually(lambda: next(values), timeout=5, interval=0) == 7


def test_eventually_fails_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"workers not met after 0\.1 s \(last value: 0\)"):
        eventually(lambda: 0, timeout=0.1, what="workers")
    assert time.monotonic() - started < 2


def test_eventually_raises_the_last_assertion() -> None:
    seen = iter(range(1000))

    def check() -> bool:
        assert next(seen) < 0, "count is still wrong"
        return True

    with pytest.raises(AssertionError, match=r"still failing after 0\.1 s: count is still wrong"):
        eventually(check, timeout=0.1)


def test_eventually_retries_an_assertion_until_it_holds() -> None:
    seen = iter(range(1000))

    def check() -> int:
        value = next(seen)
        assert value >= 3
        return value

    assert eventually(check, timeout=5, interval=0) == 3


async def test_eventually_async_fails_at_the_timeout() -> None:
    with pytest.raises(AssertionError, match=r"not met after 0\.1 s"):
        await eventually_async(lambda: False, timeout=0.1)


async def test_eventually_async_awaits_the_condition() -> None:
    calls: list[int] = []

    async def ready() -> str:
        calls.append(1)
        return "ready" if len(calls) >= 3 else ""

    assert await eventually_async(ready, timeout=5, interval=0) == "ready"
