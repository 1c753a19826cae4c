"""``[holds]`` in the one validator, and the commands' own checks of bad input."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from authsvc.cli import main
from authsvc.config import ConfigError, load_settings
from authsvc.control.hold_commands import format_holds, parse_for, parse_until
from authsvc.redact import Secret
from authsvc.settings import HoldsSettings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
LISTENER = '[[listener]]\nname = "imap4"\nprotocol = "imap"\noutgoing_server = ["127.0.0.9"]\n'


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "a.toml"
    path.write_text(text + LISTENER)
    return path


def test_defaults_and_every_key(tmp_path: Path) -> None:
    assert load_settings([str(config(tmp_path, ""))]).settings.holds == HoldsSettings()
    text = ('[holds]\nstore = "redis"\nredis_url = "redis://:pw@127.0.0.1:6390/2"\n'
            "redis_timeout = 1\n")
    holds = load_settings([str(config(tmp_path, text))]).settings.holds
    assert holds == HoldsSettings(store="redis", redis_url=Secret("redis://:pw@127.0.0.1:6390/2"),
                                  redis_timeout=1.0)
    assert "pw@" not in repr(holds)
    state = load_settings([str(config(tmp_path, '[holds]\nstate_file = "/srv/h.json"\n'))])
    assert state.settings.holds.state_file == "/srv/h.json"


@pytest.mark.parametrize("key", [
    *(f.name for f in dataclasses.fields(HoldsSettings) if f.name != "redis_sentinel"),
    "redis_sentinels", "redis_service", "redis_password_file", "redis_sentinel_password_file",
    "redis_username", "redis_sentinel_username"])
def test_every_key_is_documented(key: str) -> None:
    start = DOC.index("### `[holds]`")
    assert f"| `{key}` |" in DOC[start:DOC.find("\n### ", start + 1)]


@pytest.mark.parametrize(("text", "message"), [
    ('store = "redis"', "redis_url: missing (required)"),
    ('store = "sqlite"', "store:"),
    ('redis_url = "http://x"', "redis_url: must start with redis://, rediss:// or unix://"),
    ('state_file = ""', "state_file: must name a file"),
    ("redis_timeout = 0", "redis_timeout"),
    ("sate_file = 3", "sate_file: unknown key"),
])
def test_bad_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([str(config(tmp_path, "[holds]\n" + text + "\n"))])
    found = [str(issue) for issue in caught.value.issues]
    assert any(message in e for e in found), found


def test_durations_and_times() -> None:
    assert parse_for("90") == 90 and parse_for("30m") == 1800 and parse_for("2h") == 7200
    assert parse_for("1d") == 86400
    for bad in ("0", "2 weeks", "-1h", "h"):
        with pytest.raises(ValueError, match="--for"):
            parse_for(bad)
    now = time.time()
    assert parse_until("2999-01-01T00:00+00:00", now) > now
    with pytest.raises(ValueError, match="not in the future"):
        parse_until("2001-01-01T00:00+00:00", now)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_until("tomorrow", now)


@pytest.mark.parametrize("argv", [
    ["hold", "user", "bob smith"],
    ["hold", "user", "[ab]@riseup.net"],
    ["hold", "store", "store:99999"],
    ["hold", "store", "bad host"],
    ["hold", "user", "bob@riseup.net", "--for", "soon"],
    ["hold", "user", "bob@riseup.net", "--until", "2001-01-01T00:00Z"],
    ["release", "store", "[10.0.0.5]"],
])
def test_bad_input_is_one_line_and_exit_2_before_any_request(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A URL nobody listens on: a request would fail with exit 1, not 2.
    path = config(tmp_path, "")
    assert main([*argv, "--config", str(path), "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"authsvc {argv[0]}: "), err


def test_an_unreachable_node_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, "")
    assert main(["hold", "store", "10.0.0.5", "--config", str(path),
                 "--url", "http://127.0.0.1:1"]) == 1
    assert "cannot reach authsvc" in capsys.readouterr().err


def test_the_listing() -> None:
    assert format_holds({"holds": []}) == "no holds"
    text = format_holds({"holds": [{"kind": "store", "target": "10.0.0.5", "reason": "fsck",
                                    "until": None, "since": 0, "by": "127.0.0.1"}]})
    assert text.splitlines()[1].split()[:2] == ["store", "10.0.0.5"]
    assert text.splitlines()[1].endswith("fsck")
