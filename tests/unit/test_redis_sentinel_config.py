"""The Sentinel form of ``[throttle]``'s and ``[holds]``' Redis store, in the one validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.config import ConfigError, load_settings
from authsvc.redact import Secret
from authsvc.settings import HostPort, RedisSentinel, Settings

LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'
SENTINELS = '["127.0.0.1:26379", "[::1]:26380", "sentinel-3.example.org"]'


def load(tmp_path: Path, text: str) -> tuple[Settings, list[str]]:
    path = tmp_path / "a.toml"
    path.write_text(text + LISTENER)
    loaded = load_settings([str(path)])
    return loaded.settings, [str(w) for w in loaded.warnings]


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "a.toml"
    path.write_text(text + LISTENER)
    with pytest.raises(ConfigError) as caught:
        load_settings([str(path)])
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize("section", ["throttle", "holds"])
def test_the_sentinel_form_with_passwords_from_files_and_acl_users(
        tmp_path: Path, section: str) -> None:
    (tmp_path / "redis.pass").write_text("data-pw-1\n")
    (tmp_path / "sentinel.pass").write_text("watch-pw-2\n")
    settings, warnings = load(tmp_path, f"""[{section}]
store = "redis"
redis_sentinels = {SENTINELS}
redis_service = "authsvc"
redis_password_file = "redis.pass"
redis_sentinel_password_file = "sentinel.pass"
redis_username = "authsvc-data-user"
redis_sentinel_username = "authsvc-watch-user"
""")
    found = getattr(settings, section)
    assert found.redis_url is None
    assert found.redis_sentinel == RedisSentinel(
        sentinels=(HostPort("127.0.0.1", 26379), HostPort("::1", 26380),
                   HostPort("sentinel-3.example.org")),
        service="authsvc", password=Secret("data-pw-1"), sentinel_password=Secret("watch-pw-2"),
        username=Secret("authsvc-data-user"), sentinel_username=Secret("authsvc-watch-user"))
    shown = repr(settings)
    assert not any(s in shown for s in ("data-pw-1", "watch-pw-2", "-data-user", "-watch-user"))
    assert not [w for w in warnings if "redis" in w]
    # Without the users: Redis's ``default`` user.
    bare, _ = load(tmp_path, f'[{section}]\nstore = "redis"\nredis_sentinels = {SENTINELS}\n'
                   'redis_service = "authsvc"\n')
    assert getattr(bare, section).redis_sentinel.username is None


@pytest.mark.parametrize("section", ["throttle", "holds"])
@pytest.mark.parametrize("key", ["redis_username", "redis_sentinel_username"])
def test_an_acl_user_with_a_url_is_an_error_naming_file_line_and_key(
        tmp_path: Path, section: str, key: str) -> None:
    found = errors(tmp_path, f'[{section}]\nstore = "redis"\n'
                   f'redis_url = "redis://u:p@127.0.0.1:1/0"\n{key} = "someone"\n')
    here = f"{tmp_path / 'a.toml'}:4"
    assert any(e.startswith(here) and f"{key}: belongs to the Sentinel form" in e
               for e in found), found
    if key == "redis_username":
        assert any("the user goes in the URL: redis://user:password@host" in e
                   for e in found), found
    assert not any("someone" in e for e in found), found


@pytest.mark.parametrize(("user", "password"), [
    ("redis_username", "redis_password_file"),
    ("redis_sentinel_username", "redis_sentinel_password_file")])
def test_an_acl_user_needs_its_password_file(tmp_path: Path, user: str, password: str) -> None:
    found = errors(tmp_path, '[throttle]\nstore = "redis"\nredis_sentinels = ["127.0.0.1"]\n'
                   f'redis_service = "s"\n{user} = "someone"\n')
    assert any(f"{user}: give {password} too" in e for e in found), found


@pytest.mark.parametrize("text", ['""', '"two words"', "1"])
def test_a_bad_acl_user(tmp_path: Path, text: str) -> None:
    found = errors(tmp_path, '[holds]\nstore = "redis"\nredis_sentinels = ["127.0.0.1"]\n'
                   f'redis_service = "s"\nredis_sentinel_username = {text}\n')
    assert any("redis_sentinel_username:" in e for e in found), found
    assert not any("two words" in e for e in found), found


def test_holds_wait_for_one_replica_with_sentinel_and_none_with_a_url(tmp_path: Path) -> None:
    sentinel = f'[holds]\nstore = "redis"\nredis_sentinels = {SENTINELS}\nredis_service = "s"\n'
    assert load(tmp_path, sentinel)[0].holds.redis_replicas == 1
    assert load(tmp_path, sentinel + "redis_replicas = 0\n")[0].holds.redis_replicas == 0
    assert load(tmp_path, sentinel + "redis_replicas = 2\n")[0].holds.redis_replicas == 2
    url = '[holds]\nstore = "redis"\nredis_url = "redis://127.0.0.1:6390/0"\n'
    assert load(tmp_path, url)[0].holds.redis_replicas == 0
    assert load(tmp_path, url + "redis_replicas = 1\n")[0].holds.redis_replicas == 1


@pytest.mark.parametrize("section", ["throttle", "holds"])
def test_fewer_than_three_sentinels_is_a_warning(tmp_path: Path, section: str) -> None:
    _, warnings = load(tmp_path, f'[{section}]\nstore = "redis"\n'
                       'redis_sentinels = ["127.0.0.1:26379", "127.0.0.1:26380"]\n'
                       'redis_service = "s"\n')
    assert any("redis_sentinels" in w and "at least three" in w for w in warnings), warnings


@pytest.mark.parametrize("section", ["throttle", "holds"])
@pytest.mark.parametrize(("text", "message"), [
    (f'redis_url = "redis://127.0.0.1:1/0"\nredis_sentinels = {SENTINELS}\n'
     'redis_service = "s"', "redis_sentinels: give redis_url or redis_sentinels, not both"),
    (f"redis_sentinels = {SENTINELS}", "redis_service: missing (required)"),
    ('redis_sentinels = []\nredis_service = "s"', "redis_sentinels: no sentinel given"),
    ('redis_sentinels = ["::1:26379"]\nredis_service = "s"', "redis_sentinels:"),
    ('redis_sentinels = ["127.0.0.1:0"]\nredis_service = "s"',
     "redis_sentinels: port '0' is not a number from 1 to 65535"),
    ('redis_sentinels = ["127.0.0.1"]\nredis_service = ""', "redis_service:"),
    ('redis_url = "redis://127.0.0.1:1/0"\nredis_service = "s"',
     "redis_service: belongs to the Sentinel form"),
    ('redis_url = "redis://127.0.0.1:1/0"\nredis_password_file = "p"',
     "redis_password_file: belongs to the Sentinel form"),
    ('redis_sentinels = ["127.0.0.1"]\nredis_service = "s"\nredis_password_file = "nope"',
     "redis_password_file: cannot read"),
    ('redis_sentinels = ["127.0.0.1"]\nredis_service = "s"\nredis_sentinel = 1',
     "redis_sentinel: unknown key"),
])
def test_bad_sentinel_forms(tmp_path: Path, section: str, text: str, message: str) -> None:
    found = errors(tmp_path, f'[{section}]\nstore = "redis"\n{text}\n')
    assert any(message in e for e in found), found


def test_a_password_file_must_hold_one_line(tmp_path: Path) -> None:
    (tmp_path / "p").write_text("")
    found = errors(tmp_path, '[throttle]\nstore = "redis"\nredis_sentinels = ["127.0.0.1"]\n'
                   'redis_service = "s"\nredis_password_file = "p"\n')
    assert any("redis_password_file:" in e and "one line" in e for e in found), found
