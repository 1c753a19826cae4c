"""``[throttle]``: every key read, documented, and checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings
from authsvc.redact import Secret
from authsvc.settings import ThrottleSettings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'
FULL = {
    "enabled": ("true", True),
    "key": ('"0123456789abcdef-key"', Secret("0123456789abcdef-key")),
    "address_window": ("60", 60.0),
    "address_limit": ("7", 7),
    "login_window": ("30", 30.0),
    "login_limit": ("9", 9),
    "free_failures": ("0", 0),
    "delay": ("0.5", 0.5),
    "max_delay": ("2", 2.0),
    "ipv6_prefix": ("48", 48),
    "trusted": ('["10.1.0.0/16", "2001:db8::1"]', ("10.1.0.0/16", "2001:db8::1/128")),
    "store": ('"redis"', "redis"),
    "redis_url": ('"redis://:pw@127.0.0.1:6390/2"', Secret("redis://:pw@127.0.0.1:6390/2")),
    "redis_timeout": ("1", 1.0),
    "redis_retry": ("2", 2.0),
}
#: The Sentinel form's keys, instead of redis_url (test_redis_sentinel_config.py).
SENTINEL_KEYS = ("redis_sentinels", "redis_service", "redis_password_file",
                 "redis_sentinel_password_file", "redis_username", "redis_sentinel_username")


def load(tmp_path: Path, text: str) -> ThrottleSettings:
    path = tmp_path / "a.toml"
    path.write_text(text + LISTENER)
    return load_settings([str(path)]).settings.throttle


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "a.toml"
    path.write_text(text + LISTENER)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    return [str(issue).split(": ", 1)[1] for issue in caught.value.issues]


def test_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == ThrottleSettings()


def test_every_key_is_read(tmp_path: Path) -> None:
    text = "[throttle]\n" + "".join(f"{key} = {raw}\n" for key, (raw, _) in FULL.items())
    settings = load(tmp_path, text)
    assert {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)} == {
        key: value for key, (_, value) in FULL.items()} | {"redis_sentinel": None}
    assert "pw@" not in repr(settings)


def test_key_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("a-key-from-a-file-0123\n")
    assert load(tmp_path, '[throttle]\nkey_file = "key"\n').key == Secret("a-key-from-a-file-0123")


@pytest.mark.parametrize("key", [*FULL, "key_file", *SENTINEL_KEYS])
def test_every_key_is_documented(key: str) -> None:
    start = DOC.index("### `[throttle]`")
    assert f"| `{key}` |" in DOC[start:DOC.find("\n### ", start + 1)]


@pytest.mark.parametrize(("text", "message"), [
    ('key = "short"', "key: the key must be at least 16 characters"),
    ('key = "0123456789abcdef"\nkey_file = "k"', "key_file: give key or key_file, not both"),
    ('store = "redis"', "redis_url: missing (required)"),
    ('redis_url = "http://x"', "redis_url: must start with redis://, rediss:// or unix://"),
    ("delay = 5\nmax_delay = 1", "max_delay: 1.0 is less than delay (5.0)"),
    ('trusted = ["nope"]', "trusted: 'nope' is not a network (CIDR) or address"),
    ("ipv6_prefix = 8", "ipv6_prefix: 8 is out of range 32-128"),
    ("windw = 3", "windw: unknown key"),
])
def test_bad_values(tmp_path: Path, text: str, message: str) -> None:
    found = errors(tmp_path, "[throttle]\n" + text + "\n")
    assert any(message in e for e in found), found
